"""``analytics worker`` start-up: the master imports the configuration's modules once,
before dramatiq forks its processes, and only those (README, "Performance": worker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from analytics.adapters.recycler import _is_analytics_worker
from analytics.bootstrap import adapter_modules
from analytics.settings import Settings

AWS = {"analytics.adapters.aws", "analytics.adapters.dynamodb_events",
       "analytics.adapters.dynamodb_aggregates", "analytics.adapters.sns_notifier"}  # fmt: skip


def test_the_embedded_default_preloads_no_aws_adapter() -> None:
    mods = adapter_modules(Settings.from_env({"REDIS_HOST": "127.0.0.1"}))
    assert not AWS & set(mods)
    assert {"analytics.adapters.sqlite_store", "analytics.adapters.sqlite_aggregates",
            "analytics.adapters.redis_task_status"} <= set(mods)  # fmt: skip


def test_dynamodb_and_sns_preload_their_adapters() -> None:
    env = {"ANALYTICS_STORAGE": "dynamodb", "ANALYTICS_SNS_TOPIC_ARN":
           "arn:aws:sns:us-east-1:123456789012:events", "REDIS_HOST": "127.0.0.1"}  # fmt: skip
    mods = adapter_modules(Settings.from_env(env))
    assert AWS <= set(mods)
    assert "analytics.adapters.sqlite_store" not in mods


def test_preloading_imports_no_boto3_and_builds_nothing() -> None:
    """In a fresh interpreter: the modules load, boto3 does not, and no thread starts."""
    code = (
        "import sys, threading, json\n"
        "from analytics.entrypoints.cli import preload_worker_modules\n"
        "from analytics.settings import Settings\n"
        "mods = preload_worker_modules(Settings.from_env({'REDIS_HOST': '127.0.0.1'}))\n"
        "print(json.dumps({'boto3': 'boto3' in sys.modules, 'threads': threading.active_count(),"
        " 'missing': [m for m in mods if m not in sys.modules],"
        " 'worker_app': 'analytics.entrypoints.worker_app' in sys.modules}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60, check=True)  # fmt: skip
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"boto3": False, "threads": 1, "missing": [], "worker_app": False}


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["/venv/bin/python", "-m", "analytics", "worker", "--queues", "high_priority"], True),
        (["/venv/bin/python", "/venv/bin/analytics", "worker"], True),
        (["/venv/bin/python", "-m", "analytics", "dramatiq", "analytics.entrypoints.worker_app"], True),
        (["/venv/bin/python", "-m", "analytics", "api"], False),
        (["/venv/bin/python", "-m", "analytics", "serve"], False),
        (["/venv/bin/python", "-m", "pytest", "worker"], False),
        (["/venv/bin/python", "-m", "analytics"], False),
    ],
)
def test_the_recycler_knows_analytics_worker_as_the_dramatiq_master(
    cmdline: list[str], expected: bool
) -> None:
    assert _is_analytics_worker(cmdline) is expected
