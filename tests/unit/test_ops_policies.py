"""The retry table: every actor has a bounded policy on a documented queue, and the README
shows the same table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analytics.adapters.dramatiq_queue import QUEUES
from analytics.bootstrap import bootstrap
from analytics.domain.errors import PermanentError
from analytics.entrypoints.actors import register_actors
from analytics.entrypoints.policies import (
    POLICIES,
    actor_options,
    policy_for,
    policy_table_markdown,
)
from analytics.settings import Settings, SettingsError

pytestmark = pytest.mark.unit
README = Path(__file__).resolve().parents[2] / "README.md"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _container():  # type: ignore[no-untyped-def]
    return bootstrap(Settings(broker="stub", storage="memory"))


def test_every_registered_actor_follows_the_table() -> None:
    container = _container()
    actors = register_actors(container)
    for name, actor in actors.items():
        policy = POLICIES[name]  # a new actor needs its row
        assert actor.queue_name == policy.queue
        assert actor.options["max_retries"] == policy.max_retries
        assert actor.options["max_backoff"] == policy.max_backoff_ms
        assert actor.options["time_limit"] == policy.time_limit_ms
        assert actor.options["throws"] == (PermanentError,)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policies_are_bounded_and_above_client_timeouts(name: str) -> None:
    p = POLICIES[name]
    settings = Settings()
    assert p.queue in QUEUES
    assert 0 <= p.max_retries <= 20
    assert p.min_backoff_ms <= p.max_backoff_ms <= 3_600_000  # never Dramatiq's 7 days
    assert p.worst_case_retry_window_ms() <= 6 * 3_600_000
    # TimeLimit cannot interrupt a blocking socket call: the client timeouts fire first.
    assert p.time_limit_ms > settings.redis_timeout_s * 1000
    if p.queue in ("high_priority", "maintenance"):
        assert p.time_limit_ms > SQLITE_BUSY_TIMEOUT_MS


def test_settings_override_the_table_for_tests_and_operators() -> None:
    s = Settings(retry_max_retries=1, retry_min_backoff_ms=5, retry_max_backoff_ms=9)
    p = policy_for("process_events", s)
    assert (p.max_retries, p.min_backoff_ms, p.max_backoff_ms) == (1, 5, 9)
    assert actor_options("process_events")["queue_name"] == "high_priority"
    assert policy_for("unknown_actor").queue == "maintenance"


def test_time_limits_are_configurable_per_actor() -> None:
    """The seed's 'configurable task timeouts': ANALYTICS_TIME_LIMITS_MS over the table,
    down to the option dramatiq's TimeLimit middleware reads on the registered actor."""
    s = Settings.from_env({
        "ANALYTICS_BROKER": "stub", "ANALYTICS_STORAGE": "memory",
        "ANALYTICS_TIME_LIMITS_MS": "generate_aggregations=3600000, process_events=45000",
    })  # fmt: skip
    assert policy_for("generate_aggregations", s).time_limit_ms == 3_600_000
    assert policy_for("warm_dashboard_cache", s).time_limit_ms == POLICIES["warm_dashboard_cache"].time_limit_ms
    actors = register_actors(bootstrap(s))
    assert actors["process_events"].options["time_limit"] == 45_000
    assert actors["generate_aggregations"].options["time_limit"] == 3_600_000


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("process_event=60000", "unknown actor 'process_event'"),
        ("process_events", "is not actor=milliseconds"),
        ("process_events=1m", "is not actor=milliseconds"),
        ("process_events=500", "between 1000 ms and 24 h"),
        ("process_events=20000", "above the longest client timeout"),  # SQLite busy: 30 s
    ],
)
def test_a_bad_time_limit_is_refused_at_start_saying_why(value: str, says: str) -> None:
    from analytics.settings import SettingsError  # noqa: PLC0415

    with pytest.raises(SettingsError, match=re.escape(says)) as err:
        Settings.from_env({"ANALYTICS_TIME_LIMITS_MS": value})
    assert "settings:" not in str(err.value)  # the line names the variable, not "settings"


def test_a_retry_backoff_range_upside_down_is_refused() -> None:
    from analytics.settings import SettingsError  # noqa: PLC0415

    with pytest.raises(SettingsError, match="ANALYTICS_RETRY_MIN_BACKOFF_MS \\(5000\\) is above"):
        Settings.from_env({"ANALYTICS_RETRY_MIN_BACKOFF_MS": "5000",
                           "ANALYTICS_RETRY_MAX_BACKOFF_MS": "10"})  # fmt: skip


def test_readme_retry_table_matches_the_code() -> None:
    text = README.read_text()
    assert policy_table_markdown() in text, "regenerate the README table from policies.py"


def test_readme_lists_every_actor_on_its_queue() -> None:
    text = README.read_text()
    section = text[text.index("## Operations") :]
    for name, p in POLICIES.items():
        assert re.search(rf"`{name}`\s*\|\s*`{p.queue}`", section), name


def test_every_default_time_limit_is_above_the_longest_client_call() -> None:
    """A QA drill stopped moto with SIGSTOP: botocore waited out connect + read on each of
    its ten tries (130 s), past process_events' 2 minutes, so the time limit fired while
    the call still blocked. The worst call now counts every try and botocore's backoff,
    and the defaults stay under every task's limit, on SQLite and on DynamoDB with SNS."""
    from analytics.entrypoints.policies import time_limits_too_short  # noqa: PLC0415

    sqlite = Settings.from_env({})
    aws = Settings.from_env({"ANALYTICS_STORAGE": "dynamodb",
                             "ANALYTICS_SNS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:t"})  # fmt: skip
    assert sqlite.longest_client_block_s == 30  # SQLite's busy timeout; AWS not in play
    assert aws.longest_client_block_s == 3 * (3 + 10) + (1 + 2)  # 42 s: room under 1 min
    assert time_limits_too_short(sqlite) == [] and time_limits_too_short(aws) == []
    ten = Settings.from_env({"ANALYTICS_STORAGE": "dynamodb", "ANALYTICS_AWS_MAX_ATTEMPTS": "10"})
    assert "process_events=120000" in time_limits_too_short(ten)


def test_a_worker_whose_tasks_would_outlive_their_time_limit_does_not_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from analytics.entrypoints.cli import main  # noqa: PLC0415

    for name, value in {"ANALYTICS_STORAGE": "dynamodb", "ANALYTICS_AWS_MAX_ATTEMPTS": "10",
                        "ANALYTICS_DATA_DIR": str(tmp_path)}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    assert main(["worker", "--queues", "high_priority"]) == 2
    err = capsys.readouterr().err
    assert "analytics worker: time limits at or below the longest client call (241 s)" in err
    assert "process_events=120000" in err and "Traceback" not in err
    with pytest.raises(SettingsError, match=re.escape("(241 s: Redis, SQLite busy, or with DynamoDB")):
        Settings.from_env({"ANALYTICS_STORAGE": "dynamodb", "ANALYTICS_AWS_MAX_ATTEMPTS": "10",
                           "ANALYTICS_TIME_LIMITS_MS": "process_events=200000"})  # fmt: skip
    assert Settings.from_env({"ANALYTICS_TIME_LIMITS_MS": "process_events=200000"})  # SQLite: 30 s
