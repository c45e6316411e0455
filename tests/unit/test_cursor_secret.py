"""The cursor key: configured, or created once per data dir and shared by its processes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from analytics.adapters.secret_file import load_or_create_secret
from analytics.bootstrap import build_cursor_secret
from analytics.settings import Settings, SettingsError


def test_concurrent_first_starts_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "d" / "cursor_secret"
    with ThreadPoolExecutor(8) as pool:
        secrets = set(pool.map(lambda _: load_or_create_secret(path), range(32)))
    assert len(secrets) == 1 and len(secrets.pop()) == 64
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["cursor_secret"]  # no temp files left


def test_a_truncated_secret_file_is_refused_not_used(tmp_path: Path) -> None:
    path = tmp_path / "cursor_secret"
    path.write_text("short\n")
    with pytest.raises(ValueError, match="too short"):
        load_or_create_secret(path)


def test_configured_secret_wins_and_is_validated(tmp_path: Path) -> None:
    s = Settings.from_env(
        {"ANALYTICS_CURSOR_SECRET": "k" * 20, "ANALYTICS_DATA_DIR": str(tmp_path)}
    )
    assert build_cursor_secret(s) == b"k" * 20 and not (tmp_path / "cursor_secret").exists()
    assert "k" * 20 not in repr(s)
    with pytest.raises(SettingsError, match="ANALYTICS_CURSOR_SECRET"):
        Settings.from_env({"ANALYTICS_CURSOR_SECRET": "short"})
    with pytest.raises(SettingsError, match="ANALYTICS_TASK_STATUS_TTL_S"):
        Settings.from_env({"ANALYTICS_TASK_STATUS_TTL_S": "5"})
