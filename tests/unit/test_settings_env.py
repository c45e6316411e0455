"""Settings from the environment: the seed's old REDIS_URL, and the RabbitMQ extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from analytics.settings import Settings, SettingsError


def test_the_seeds_old_redis_url_is_understood() -> None:
    s = Settings.from_env({"REDIS_URL": "redis://redis:6380/2"})
    assert (s.redis_host, s.redis_port, s.redis_db, s.redis_password) == ("redis", 6380, 2, None)
    s = Settings.from_env({"REDIS_URL": "redis://:p%40ss@cache.internal"})
    assert (s.redis_host, s.redis_port, s.redis_db) == ("cache.internal", 6379, 0)
    assert s.redis_password == "p@ss"
    # As written in the seed's migration guide:
    assert Settings.from_env({"REDIS_URL": "redis://redis:6379"}).redis_kwargs()["host"] == "redis"


def test_an_explicit_redis_password_wins_over_the_urls() -> None:
    s = Settings.from_env({"REDIS_URL": "redis://:old@r:6379/0", "REDIS_PASSWORD": "new"})
    assert s.redis_password == "new"


@pytest.mark.parametrize("other", ["REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_SOCKET"])
def test_both_forms_at_once_is_refused_naming_them(other: str) -> None:
    value = {"REDIS_HOST": "h", "REDIS_PORT": "6379", "REDIS_DB": "1", "REDIS_SOCKET": "/s"}
    with pytest.raises(SettingsError, match=f"REDIS_URL and {other}"):
        Settings.from_env({"REDIS_URL": "redis://r:6379/0", other: value[other]})


@pytest.mark.parametrize(
    "url",
    ["rediss://r:6379/0", "unix:///tmp/r.sock", "redis://:6379/0", "redis://r:99999/0",
     "redis://r:6379/x", "not a url"],
)  # fmt: skip
def test_a_redis_url_we_cannot_map_is_a_clear_error(url: str) -> None:
    with pytest.raises(SettingsError, match="REDIS_URL"):
        Settings.from_env({"REDIS_URL": url})


def test_the_error_never_echoes_the_url_and_its_password() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"REDIS_URL": "rediss://:s3cr3t-pw@cache:6380/0"})
    assert "s3cr3t-pw" not in str(info.value)


def test_rabbitmq_without_its_extra_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pika", None)  # as if not installed
    with pytest.raises(SettingsError, match=r"pip install -e '\.\[rabbitmq\]'"):
        Settings.from_env({"ANALYTICS_BROKER": "rabbitmq"})
    monkeypatch.delitem(sys.modules, "pika")
    assert Settings.from_env({"ANALYTICS_BROKER": "rabbitmq"}).broker == "rabbitmq"


def test_the_cli_says_so_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from analytics.entrypoints.cli import main  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "pika", None)
    monkeypatch.setenv("ANALYTICS_BROKER", "rabbitmq")
    assert main(["worker", "--queues", "high_priority"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("analytics worker: ANALYTICS_BROKER=rabbitmq needs the AMQP client")
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [["worker", "--queues", "high_priority"], ["api"], ["serve"]])
def test_a_data_directory_that_cannot_be_made_is_one_line_and_exit_2(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    from analytics.entrypoints.cli import main  # noqa: PLC0415

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("ANALYTICS_DATA_DIR", str(blocker / "data"))
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"analytics {command[0]}: the data directory")
    assert "cannot be created: Not a directory" in err and "Traceback" not in err


@pytest.mark.parametrize("url", ["http://x", "localhost:5672", "redis://127.0.0.1:6379/0"])
def test_a_rabbitmq_url_that_is_not_amqp_stops_the_start(url: str) -> None:
    """pika took any URL and failed at every connect: a worker logged a traceback every
    3 s and `dlq` blamed Redis (QA)."""
    with pytest.raises(SettingsError, match="RABBITMQ_URL"):
        Settings.from_env({"RABBITMQ_URL": url})
    assert Settings.from_env({"RABBITMQ_URL": "amqps://u:p@mq.example:5671/prod"}).rabbitmq_url
    with pytest.raises(SettingsError) as info:  # and its password is never echoed
        Settings.from_env({"RABBITMQ_URL": "htp://guest:s3cr3t-pw@mq:5672/"})
    assert "s3cr3t-pw" not in str(info.value)


def test_a_worker_memory_limit_below_16_mib_is_refused() -> None:
    """Mutation QA: any Python worker holds more than 16 MiB, so a limit below it (a value
    in bytes or GiB typed as MiB, e.g. 2) recycled every worker after each message, for
    ever. 0 (off) and 16 are accepted; 15 stops the start naming the variable."""
    with pytest.raises(SettingsError, match="ANALYTICS_WORKER_MAX_RSS_MB"):
        Settings.from_env({"ANALYTICS_WORKER_MAX_RSS_MB": "15"})
    with pytest.raises(SettingsError, match="ANALYTICS_WORKER_MAX_RSS_MB"):
        Settings.from_env({"ANALYTICS_WORKER_MAX_RSS_MB": "2"})
    assert Settings.from_env({"ANALYTICS_WORKER_MAX_RSS_MB": "16"}).worker_max_rss_mb == 16
    assert Settings.from_env({"ANALYTICS_WORKER_MAX_RSS_MB": "0"}).worker_max_rss_mb == 0


def test_an_sns_topic_in_another_region_than_the_clients_is_refused() -> None:
    """Mutation QA: the SNS client works in ``ANALYTICS_AWS_REGION``; a topic ARN of another
    region made ``init`` create the tables and a stray topic in the wrong region before it
    said the topic was missing. The start stops with both regions named."""
    arn = "arn:aws:sns:eu-central-1:123456789012:analytics"
    with pytest.raises(SettingsError, match="region eu-central-1.*us-east-1"):
        Settings.from_env({"ANALYTICS_SNS_TOPIC_ARN": arn, "ANALYTICS_AWS_REGION": "us-east-1"})
    s = Settings.from_env({"ANALYTICS_SNS_TOPIC_ARN": arn, "ANALYTICS_AWS_REGION": "eu-central-1"})
    assert (s.sns_topic_arn, s.aws_region) == (arn, "eu-central-1")


def test_an_unknown_scheduler_job_stops_every_command_at_start() -> None:
    """QA: only the scheduler checked the names, so serve restarted it for ever (exit 2,
    1 s, 2 s, ...) with the API and the workers up."""
    from analytics.entrypoints.scheduler import build_jobs
    from analytics.settings import SCHEDULER_JOBS

    with pytest.raises(SettingsError, match=r"ANALYTICS_SCHEDULER_JOBS.*unknown job\(s\) nope"):
        Settings.from_env({"ANALYTICS_SCHEDULER_JOBS": "rollup_hourly,nope"})
    assert tuple(j.name for j in build_jobs(Settings())) == SCHEDULER_JOBS  # one list


@pytest.mark.parametrize(
    ("given", "origins"),
    [
        ("https://app.example.com", ("https://app.example.com",)),
        ("HTTPS://App.Example.com:443/, http://localhost:3000", ("https://app.example.com", "http://localhost:3000")),
        ("http://a.test:80,*", ("http://a.test", "*")),
        ("https://[::1]:8443", ("https://[::1]:8443",)),
        ("https://b\u00fccher.de", ("https://xn--bcher-kva.de",)),  # as browsers send it
        ("", ()),
    ],
)
def test_cors_origins_are_written_as_browsers_send_them(given: str, origins: tuple[str, ...]) -> None:
    """QA: ``https://App.Example.com`` or ``...:443`` never matched the browser's Origin."""
    assert Settings.from_env({"ANALYTICS_CORS_ORIGINS": given}).cors_origin_list == origins


@pytest.mark.parametrize("bad", ["app.example.com", "https://app.example.com/path", "ftp://x.test",
                                 "https://x.test:99999", "https://u@x.test", "https://*.x.test",
                                 "null"])  # fmt: skip
def test_a_cors_origin_that_is_not_one_stops_the_start(bad: str) -> None:
    with pytest.raises(SettingsError, match="ANALYTICS_CORS_ORIGINS.*(is not an origin|wildcards)"):
        Settings.from_env({"ANALYTICS_CORS_ORIGINS": f"https://ok.test,{bad}"})


@pytest.mark.parametrize("name", ["ANALYTICS_AWS_ENDPOINT_URL", "ANALYTICS_DYNAMODB_ENDPOINT_URL"])
def test_an_aws_endpoint_that_is_not_a_url_is_refused_by_name(name: str) -> None:
    """QA: botocore's "Invalid endpoint: abc" named no setting."""
    with pytest.raises(SettingsError, match=f"{name}: .*http:// or https:// URL"):
        Settings.from_env({name: "abc"})
    assert Settings.from_env({name: "http://localhost:4566"})


def test_a_misspelt_setting_is_named_with_the_one_it_means() -> None:
    from analytics.settings import unknown_names

    lines = unknown_names({"ANALYTICS_LOG_LEVLE": "DEBUG", "ANALYTICS_FOO": "1",
                           "ANALYTICS_KEY": "ak_x", "ANALYTICS_LOG_LEVEL": "INFO", "PATH": "/bin",
                           "ANALYTICS_REDIS_HOST": "r"})  # fmt: skip
    assert lines == {
        "ANALYTICS_REDIS_HOST": "ANALYTICS_REDIS_HOST is not a setting and is ignored"
                                " (did you mean REDIS_HOST?)",
        "ANALYTICS_FOO": "ANALYTICS_FOO is not a setting and is ignored",
        "ANALYTICS_LOG_LEVLE": "ANALYTICS_LOG_LEVLE is not a setting and is ignored"
                               " (did you mean ANALYTICS_LOG_LEVEL?)",
    }  # fmt: skip


def test_the_cli_warns_about_a_misspelt_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from analytics.entrypoints.cli import main

    monkeypatch.setenv("ANALYTICS_RATE_LIMIT_PER_MINUT", "5")
    main(["keys", "list", "--data-dir", str(tmp_path)])  # no keys there: exit 2, after the warning
    assert ("analytics keys: warning: ANALYTICS_RATE_LIMIT_PER_MINUT is not a setting and is"
            " ignored (did you mean ANALYTICS_RATE_LIMIT_PER_MINUTE?)") in capsys.readouterr().err  # fmt: skip


def test_every_setting_name_the_repository_writes_is_a_setting() -> None:
    """The warning above found three in this repository: a benchmark's and two tests'
    settings that were silently ignored (one test then ran on RabbitMQ's default vhost)."""
    import re

    from analytics.settings import NOT_SETTINGS, env_names

    root = Path(__file__).resolve().parents[2]
    names = env_names() | NOT_SETTINGS
    files = [root / "README.md", root / "Dockerfile", root / "compose.yaml",
             *[p for d in ("src", "tests", "bench", "config", ".ci") for p in (root / d).rglob("*")
               if p.is_file() and p.suffix in (".py", ".yaml", ".yml", ".md", ".json", ".sh", "")]]  # fmt: skip
    # A name followed by * or _* is a family (ANALYTICS_CACHE_TTL_*), not a name.
    token = re.compile(r"\bANALYTICS_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_]*\*)(?![a-z{<])")
    unknown = {}
    for path in files:
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        if path == Path(__file__).resolve():  # the misspelt names above, on purpose
            continue
        for name in set(token.findall(text)) - names - {"ANALYTICS_LOG_LEVLE"}:  # README's typo example
            unknown.setdefault(name, []).append(str(path.relative_to(root)))
    assert not unknown, unknown
