"""The deployment files agree with the code: Dockerfile and compose.yaml against the CLI,
the settings and the HTTP routes (no Docker engine runs here, so the files are parsed).

Every ``command`` must parse with the real CLI parser, every variable must be a setting the
service reads (Settings.from_env accepts the whole block), ports match, every service has a
health check and a restart policy, and the health checks call real commands and routes:
the image's HEALTHCHECK snippet is run against the real app on a loopback port.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
import yaml

from analytics.adapters.dramatiq_queue import QUEUES
from analytics.bootstrap import bootstrap
from analytics.entrypoints.api.app import create_app
from analytics.entrypoints.cli import build_parser
from analytics.settings import Settings
from tests.support import ROOT, free_port

pytestmark = pytest.mark.unit

COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
IMAGE = "analytics-service:latest"
# Read by botocore itself, not by our settings (DynamoDB Local accepts any credentials).
BOTOCORE_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
ONE_SHOT = {"analytics-init"}


# --- parsing -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def ours(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run our image (the ``analytics`` CLI is their entrypoint)."""
    return {name: svc for name, svc in services.items() if svc.get("image") == IMAGE}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions:
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def image_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """ENV of the final stage (``ENV K=V K2="V 2"``)."""
    env: dict[str, str] = {}
    for word, rest in stages(instructions)[-1]:
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec (JSON) form: {args}"
    return [str(v) for v in value]


def setting_names() -> set[str]:
    return {f.alias or f"ANALYTICS_{n.upper()}" for n, f in Settings.model_fields.items()}


def test_compose_has_the_seed_services(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "analytics-service", "analytics-worker", "analytics-worker-maintenance",
        "analytics-beat", "analytics-init", "redis", "dynamodb", "prometheus", "grafana",
    }  # fmt: skip
    assert expected <= set(services)


# --- commands ------------------------------------------------------------------------------
def test_every_command_parses_with_the_real_cli(ours: dict[str, dict[str, Any]]) -> None:
    parser = build_parser()
    expected = {
        "analytics-service": "api", "analytics-worker": "worker",
        "analytics-worker-maintenance": "worker", "analytics-beat": "scheduler",
        "analytics-init": "init",
    }  # fmt: skip
    assert set(expected) <= set(ours)
    for name, svc in ours.items():
        command = svc["command"]
        assert isinstance(command, list), f"{name}: use the list form of command"
        args = parser.parse_args(command)
        assert args.command == expected.get(name, args.command), name


def test_api_loads_the_gunicorn_config_that_exists(ours: dict[str, dict[str, Any]]) -> None:
    args = build_parser().parse_args(ours["analytics-service"]["command"])
    assert args.config is not None
    assert args.config.startswith("/app/config/")
    assert (ROOT / "config" / args.config.removeprefix("/app/config/")).is_file()


def test_workers_consume_every_queue_once(ours: dict[str, dict[str, Any]]) -> None:
    parser = build_parser()
    consumed: list[str] = []
    for svc in ours.values():
        args = parser.parse_args(svc["command"])
        if args.command == "worker":
            consumed += args.queues
    assert sorted(consumed) == sorted(QUEUES), "each queue needs exactly one worker service"
    worker = parser.parse_args(ours["analytics-worker"]["command"])
    assert worker.queues == ["high_priority", "aggregations"]
    assert (worker.processes, worker.threads) == (4, 8)
    assert (
        "maintenance" in parser.parse_args(ours["analytics-worker-maintenance"]["command"]).queues
    )


# --- environment ---------------------------------------------------------------------------
def test_every_variable_is_a_setting_and_the_block_is_valid(
    ours: dict[str, dict[str, Any]], dockerfile: list[tuple[str, str]]
) -> None:
    names = setting_names()
    base = image_env(dockerfile)
    for name, svc in ours.items():
        env = {k: str(v) for k, v in svc["environment"].items()}
        ours_vars = [k for k in env if k.startswith(("ANALYTICS_", "REDIS_", "AWS_"))]
        unknown = [k for k in ours_vars if k not in names and k not in BOTOCORE_ENV]
        assert not unknown, f"{name}: not settings: {unknown}"
        settings = Settings.from_env({**base, **env})  # raises SettingsError on a bad value
        assert settings.storage == "dynamodb"
        assert settings.redis_host == "redis"
        assert settings.broker == "redis"
    for key in base:
        if key.startswith("ANALYTICS_"):
            assert key in names, f"Dockerfile ENV {key} is not a setting"


def test_the_api_port_matches_settings_image_and_healthcheck(
    ours: dict[str, dict[str, Any]], dockerfile: list[tuple[str, str]]
) -> None:
    svc = ours["analytics-service"]
    settings = Settings.from_env({**image_env(dockerfile), **svc["environment"]})
    assert settings.port == 8083 == Settings().port
    assert settings.host == "0.0.0.0"  # noqa: S104 - inside the container
    published = {str(p).split(":")[-1] for p in svc["ports"]}
    assert published == {str(settings.port)}
    exposed = [rest for word, rest in stages(dockerfile)[-1] if word == "EXPOSE"]
    assert exposed == [str(settings.port)]
    snippet = svc["healthcheck"]["test"][-1]
    assert f"127.0.0.1:{settings.port}/health" in snippet


# --- health checks and restarts ------------------------------------------------------------
def test_every_service_has_a_healthcheck_and_a_restart_policy(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in services.items():
        assert svc.get("restart") in {"always", "unless-stopped"} or (
            name in ONE_SHOT and str(svc.get("restart")).startswith("on-failure")
        ), f"{name}: restart policy"
        check = svc.get("healthcheck")
        assert check, f"{name}: no healthcheck"
        if check.get("disable"):
            assert name in ONE_SHOT, f"{name}: only a one-shot job may disable its health check"
            continue
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert {"interval", "timeout", "retries"} <= set(check), name


def test_app_services_wait_for_init_and_healthy_dependencies(
    ours: dict[str, dict[str, Any]],
) -> None:
    for name, svc in ours.items():
        if name in ONE_SHOT:
            assert svc["depends_on"]["dynamodb"]["condition"] == "service_healthy"
            continue
        deps = svc["depends_on"]
        assert deps["analytics-init"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["dynamodb"]["condition"] == "service_healthy", name


def test_worker_and_scheduler_healthchecks_are_real_commands(
    ours: dict[str, dict[str, Any]],
) -> None:
    parser = build_parser()
    for name, svc in ours.items():
        test = svc["healthcheck"].get("test")
        if not test or test[1] != "analytics":
            continue
        args = parser.parse_args(test[2:])
        assert args.command == "check", name
        role = parser.parse_args(svc["command"])
        assert args.component == {"worker": "worker", "scheduler": "scheduler"}[role.command]
        if role.command == "worker":
            assert args.queues == role.queues, f"{name}: checks the queues it consumes"
    checked = {
        n for n, s in ours.items() if s["healthcheck"].get("test", [""])[1:2] == ["analytics"]
    }
    assert checked == {"analytics-worker", "analytics-worker-maintenance", "analytics-beat"}


def test_redis_is_durable_and_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    cmd = " ".join(redis["command"])
    for flag in ("--appendonly yes", "--appendfsync always", "--maxmemory-policy noeviction"):
        assert flag in cmd
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert services["dynamodb"]["image"].startswith("amazon/dynamodb-local")


def test_prometheus_and_grafana_are_provisioned_from_config(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"
    scrape = yaml.safe_load((ROOT / "config/prometheus/prometheus.yml").read_text())
    targets = {
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in services, f"scrape target {target} is not a compose service"
        env = services[host].get("environment", {})
        if host == "analytics-service":
            assert port == str(Settings.from_env(env).port)
        else:
            assert port == str(Settings.from_env(env).worker_metrics_port)  # type: ignore[attr-defined]
            assert Settings.from_env(env).worker_metrics_host == "0.0.0.0"  # type: ignore[attr-defined]  # noqa: S104


# --- Dockerfile ----------------------------------------------------------------------------
def test_dockerfile_is_multi_stage_slim_non_root(dockerfile: list[tuple[str, str]]) -> None:
    froms = [rest for word, rest in dockerfile if word == "FROM"]
    assert len(froms) >= 2
    assert " AS " in froms[0].upper()
    final = stages(dockerfile)[-1]
    assert "slim" in final[0][1]
    copies = [rest for word, rest in final if word == "COPY"]
    assert any(c.startswith("--from=") for c in copies), "runtime copies the venv from build"
    assert not any(word == "RUN" and "pip install" in rest for word, rest in final)
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    env = image_env(dockerfile)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["ANALYTICS_HOST"] == "0.0.0.0"  # noqa: S104
    settings = Settings.from_env(env)
    assert str(settings.data_dir).startswith("/var/lib/")
    assert settings.gunicorn_config is not None
    assert (ROOT / "config" / str(settings.gunicorn_config).removeprefix("/app/config/")).is_file()


def test_dockerfile_entrypoint_is_the_cli(dockerfile: list[tuple[str, str]]) -> None:
    final = stages(dockerfile)[-1]
    entry = [exec_form(rest) for word, rest in final if word == "ENTRYPOINT"]
    cmd = [exec_form(rest) for word, rest in final if word == "CMD"]
    assert entry == [["analytics"]]
    assert build_parser().parse_args(cmd[-1]).command == "api"
    with (ROOT / "pyproject.toml").open("rb") as fh:
        import tomllib  # noqa: PLC0415

        scripts = tomllib.load(fh)["project"]["scripts"]
    assert scripts["analytics"] == "analytics.entrypoints.cli:main"


def healthcheck_snippet(dockerfile: list[tuple[str, str]]) -> list[str]:
    checks = [rest for word, rest in stages(dockerfile)[-1] if word == "HEALTHCHECK"]
    assert len(checks) == 1
    _, _, cmd = checks[0].partition("CMD ")
    return exec_form(cmd)


@pytest.fixture(scope="module")
def live_app() -> Iterator[int]:
    """The real Falcon app (on fakes) behind a loopback WSGI server."""

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    # auth: the security settings, where present (/health is open either way).
    settings = Settings(broker="stub", storage="memory", auth="disabled")  # type: ignore[call-arg]
    app = create_app(bootstrap(settings))
    port = free_port()
    server = make_server("127.0.0.1", port, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


def run_check(argv: list[str], port: int) -> int:
    assert argv[0] == "python"
    env = {"ANALYTICS_PORT": str(port), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, *argv[1:]], env=env, timeout=20, check=False).returncode  # noqa: S603


def test_image_healthcheck_passes_on_the_real_app_and_fails_without_it(
    dockerfile: list[tuple[str, str]], live_app: int
) -> None:
    argv = healthcheck_snippet(dockerfile)
    assert run_check(argv, live_app) == 0
    assert run_check(argv, free_port()) != 0  # nothing listens there


def test_compose_api_healthcheck_passes_on_the_real_app(
    ours: dict[str, dict[str, Any]], live_app: int
) -> None:
    argv = list(ours["analytics-service"]["healthcheck"]["test"][1:])
    argv[-1] = argv[-1].replace(":8083/", f":{live_app}/")
    assert run_check(argv, live_app) == 0
    argv[-1] = argv[-1].replace("/health", "/no-such-route")
    assert run_check(argv, live_app) != 0


def test_the_deployment_files_are_in_the_repo() -> None:
    for path in ("Dockerfile", ".dockerignore", "compose.yaml", "config/gunicorn.conf.py"):
        assert (ROOT / path).is_file(), path
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and "tests" in ignored


def compose_tool() -> list[str] | None:
    """``docker-compose`` (Debian package docker-compose) validates without an engine."""
    found = shutil.which("docker-compose")
    return [found] if found else None


@pytest.mark.skipif(compose_tool() is None, reason="needs docker-compose (apt package)")
def test_compose_validates_with_docker_compose(tmp_path: Path) -> None:
    tool = compose_tool()
    assert tool is not None

    def validate(directory: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603
            [*tool, "-f", "compose.yaml", "config", "-q"], cwd=directory,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    good = validate(ROOT)
    assert good.returncode == 0, good.stderr
    # The tool does check: the same file with one misspelt key is refused.
    (tmp_path / "compose.yaml").write_text(
        COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_perod:", 1)
    )
    bad = validate(tmp_path)
    assert bad.returncode != 0 and "stop_grace_perod" in bad.stderr
