"""config/gunicorn.conf.py: sane values, working prometheus hooks, and how it layers over
the settings-based defaults in ``analytics api --config``."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from analytics.entrypoints.wsgi import GunicornServer, load_config_file
from analytics.settings import Settings
from tests.support import ROOT

pytestmark = pytest.mark.unit

CONFIG = ROOT / "config" / "gunicorn.conf.py"


@pytest.fixture(scope="module")
def conf() -> dict[str, object]:
    return load_config_file(CONFIG)


def test_every_name_is_a_gunicorn_setting(conf: dict[str, object]) -> None:
    known = set(Config().settings)
    helpers = {"os", "annotations", "Path"}
    unknown = {k for k in conf if k not in known and k not in helpers and not k.isupper()}
    assert not unknown, f"not gunicorn settings (typo?): {unknown}"
    assert "bind" not in conf, "ANALYTICS_HOST/ANALYTICS_PORT decide the bind address"


def test_values_are_sane(conf: dict[str, object]) -> None:
    assert conf["worker_class"] == "gthread"
    cpus = runpy.run_path(str(CONFIG))["CPUS"]
    assert isinstance(cpus, int) and cpus >= 1
    assert 2 <= conf["workers"] <= 16  # type: ignore[operator]
    assert conf["workers"] == max(2, min(16, cpus))
    assert 8 <= conf["threads"] <= 32  # type: ignore[operator]
    assert 0 < conf["graceful_timeout"] < conf["timeout"] <= 120  # type: ignore[operator]
    assert conf["keepalive"] >= 1  # type: ignore[operator]
    assert conf["max_requests"] >= 1000  # type: ignore[operator]
    assert 0 < conf["max_requests_jitter"] < conf["max_requests"]  # type: ignore[operator]


def test_prometheus_hooks(
    conf: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    (multiproc / "counter_4242.db").write_bytes(b"old run")
    (multiproc / "gauge_livesum_4243.db").write_bytes(b"x")
    (multiproc / "keep.txt").write_text("not a metrics file")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc))

    conf["child_exit"](None, SimpleNamespace(pid=4243))  # type: ignore[operator]
    assert not (multiproc / "gauge_livesum_4243.db").exists(), "a dead worker's live gauge"
    assert (multiproc / "counter_4242.db").exists(), "counters of dead workers still count"

    conf["on_starting"](None)  # type: ignore[operator]
    assert sorted(p.name for p in multiproc.iterdir()) == ["keep.txt"]


def test_hooks_do_nothing_without_multiproc_dir(
    conf: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    conf["on_starting"](None)  # type: ignore[operator]
    conf["child_exit"](None, SimpleNamespace(pid=1))  # type: ignore[operator]


def test_the_file_replaces_defaults_but_not_explicit_settings(conf: dict[str, object]) -> None:
    plain = GunicornServer(Settings.from_env({}))
    assert plain.cfg.max_requests == 0  # the settings-based default: no recycling

    server = GunicornServer(
        Settings.from_env({"ANALYTICS_GUNICORN_CONFIG": str(CONFIG), "ANALYTICS_PORT": "9123"})
    )
    assert server.cfg.workers == conf["workers"]
    assert server.cfg.threads == conf["threads"]
    assert server.cfg.max_requests == conf["max_requests"]
    assert server.cfg.max_requests_jitter == conf["max_requests_jitter"]
    assert server.cfg.graceful_timeout == conf["graceful_timeout"]
    assert server.cfg.child_exit.__module__ == "__config__"
    assert server.cfg.bind == ["127.0.0.1:9123"]

    explicit = GunicornServer(
        Settings.from_env(
            {
                "ANALYTICS_GUNICORN_CONFIG": str(CONFIG),
                "ANALYTICS_WEB_WORKERS": "3",
                "ANALYTICS_WEB_THREADS": "5",
            }
        ),
        options={"timeout": 7},
    )
    assert (explicit.cfg.workers, explicit.cfg.threads, explicit.cfg.timeout) == (3, 5, 7)
    assert explicit.cfg.max_requests == conf["max_requests"]


def test_api_refuses_a_missing_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from analytics.entrypoints.cli import main  # noqa: PLC0415

    for key in ("ANALYTICS_GUNICORN_CONFIG", "ANALYTICS_STORAGE"):
        monkeypatch.delenv(key, raising=False)
    assert main(["api", "--config", str(tmp_path / "nope.py")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("hsts", [0, 1234])
def test_answers_gunicorn_refuses_carry_every_security_header(monkeypatch, hsts: int) -> None:  # type: ignore[no-untyped-def]
    """QA: with ANALYTICS_HSTS_SECONDS set, a 414 (URI too long, refused by gunicorn before
    the app) carried every security header but Strict-Transport-Security."""
    import socket

    from gunicorn import util

    from analytics.entrypoints.api.middleware import security_headers
    from analytics.entrypoints.wsgi import answer_protocol_errors_as_problems

    monkeypatch.setattr(util, "write_error", util.write_error)  # restored after the test
    answer_protocol_errors_as_problems(hsts)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        util.write_error(ours, 414, "Request-URI Too Long", "the URI is too long")
        head = theirs.recv(65536).split(b"\r\n\r\n")[0].decode("latin-1")
    lines = set(head.split("\r\n")[1:])
    assert {f"{k}: {v}" for k, v in security_headers(hsts).items()} <= lines
    assert any(x.startswith("Strict-Transport-Security: max-age=1234") for x in lines) == bool(hsts)
