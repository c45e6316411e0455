"""The import rule of the design card, enforced by an AST scan of every module.

domain imports only the standard library and msgspec; application imports domain (and
msgspec); nothing outside entrypoints imports entrypoints.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "src" / "analytics"

ALLOWED_THIRD_PARTY = {
    "domain": {"msgspec"},
    "application": {"msgspec"},
}
FORBIDDEN_INTERNAL = {
    "domain": ("analytics.application", "analytics.adapters", "analytics.entrypoints",
               "analytics.bootstrap", "analytics.settings"),
    "application": ("analytics.adapters", "analytics.entrypoints", "analytics.bootstrap"),
    "adapters": ("analytics.entrypoints",),
}  # fmt: skip


def imported_modules(source: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def violations(layer: str, source: str) -> list[str]:
    bad = []
    for name in imported_modules(source):
        top = name.split(".")[0]
        if name.startswith(FORBIDDEN_INTERNAL.get(layer, ())):
            bad.append(name)
        elif (
            layer in ALLOWED_THIRD_PARTY
            and top not in sys.stdlib_module_names
            and top != "analytics"
            and top not in ALLOWED_THIRD_PARTY[layer]
        ):
            bad.append(name)
    return bad


@pytest.mark.parametrize("layer", ["domain", "application", "adapters"])
def test_layer_imports_respect_the_rule(layer: str) -> None:
    found = {}
    for path in (PKG / layer).rglob("*.py"):
        if bad := violations(layer, path.read_text()):
            found[str(path.relative_to(PKG))] = bad
    assert found == {}


@pytest.mark.parametrize(
    "source",
    ["import falcon", "from dramatiq import actor", "import boto3", "import redis.client",
     "import structlog", "from analytics.adapters.memory import X", "import requests"],
)  # fmt: skip
def test_the_scan_catches_a_broken_rule(source: str) -> None:
    assert violations("domain", source), f"{source!r} must be reported in domain"


def test_the_scan_allows_what_domain_may_use() -> None:
    assert violations("domain", "import msgspec\nfrom datetime import UTC\nimport uuid") == []
