"""Which periods a job owes: catch-up from the watermark, bounded, never a period twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics.application.retention import retention_cutoff
from analytics.application.schedule import due_periods, latest_due_period, period_bounds

pytestmark = pytest.mark.unit
H = 3600
T0 = datetime(2026, 3, 1, 10, 7, tzinfo=UTC)


def test_first_run_only_the_last_closed_period() -> None:
    assert due_periods(T0, period_s=H, delay_s=300, watermark=None, max_catch_up=48) == [
        int(datetime(2026, 3, 1, 9, tzinfo=UTC).timestamp())
    ]


def test_delay_holds_back_a_just_closed_period() -> None:
    at = datetime(2026, 3, 1, 10, 3, tzinfo=UTC)  # 09:00-10:00 closed 3 min ago, delay 5 min
    assert period_bounds(latest_due_period(at, H, 300), H)[0].hour == 8


def test_catch_up_after_downtime_from_the_watermark() -> None:
    wm = int(datetime(2026, 3, 1, 4, tzinfo=UTC).timestamp())
    got = due_periods(T0, period_s=H, delay_s=300, watermark=wm, max_catch_up=48)
    assert [period_bounds(p, H)[0].hour for p in got] == [5, 6, 7, 8, 9]
    assert due_periods(T0, period_s=H, delay_s=300, watermark=got[-1], max_catch_up=48) == []


def test_catch_up_is_bounded_and_optional() -> None:
    wm = int((T0 - timedelta(days=30)).timestamp()) // H * H
    assert len(due_periods(T0, period_s=H, delay_s=0, watermark=wm, max_catch_up=48)) == 48
    assert len(due_periods(T0, period_s=H, delay_s=0, watermark=wm, max_catch_up=48,
                           catch_up=False)) == 1  # fmt: skip


def test_daily_periods_start_at_utc_midnight() -> None:
    (start,) = due_periods(T0, period_s=86400, delay_s=300, watermark=None, max_catch_up=7)
    assert period_bounds(start, 86400) == (
        datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC),
    )  # fmt: skip


@given(
    st.lists(st.integers(min_value=0, max_value=5 * H), min_size=1, max_size=30),
    st.sampled_from([60, H, 86400]),
)
def test_successive_runs_never_repeat_or_skip_a_period(steps: list[int], period: int) -> None:
    """Runs at increasing times, each advancing the watermark, cover every period once."""
    now, wm, seen = T0, None, []
    for step in steps:
        now += timedelta(seconds=step)
        got = due_periods(now, period_s=period, delay_s=0, watermark=wm, max_catch_up=10_000)
        seen += got
        wm = got[-1] if got else wm
    assert seen == sorted(set(seen))
    assert seen == list(range(seen[0], seen[-1] + 1, period))


def test_retention_cutoff_is_a_whole_utc_day() -> None:
    assert retention_cutoff(T0, 90) == datetime(2025, 12, 1, tzinfo=UTC)


def test_job_triggers_fire_at_period_boundaries_plus_delay() -> None:
    from analytics.entrypoints.scheduler import build_jobs, job_trigger
    from analytics.settings import Settings

    jobs = {j.name: j for j in build_jobs(Settings())}
    hourly = job_trigger(jobs["rollup_hourly"])
    nxt = hourly.get_next_fire_time(None, T0)
    assert nxt == datetime(2026, 3, 1, 11, 5, tzinfo=UTC)
    assert hourly.get_next_fire_time(nxt, nxt) == datetime(2026, 3, 1, 12, 5, tzinfo=UTC)
    daily = job_trigger(jobs["rollup_daily"])
    assert daily.get_next_fire_time(None, T0) == datetime(2026, 3, 2, 0, 5, tzinfo=UTC)
    at = T0 + timedelta(seconds=1)
    assert job_trigger(jobs["dlq_depth"]).get_next_fire_time(None, at) == datetime(
        2026, 3, 1, 10, 8, tzinfo=UTC
    )


def test_unknown_scheduler_job_is_a_settings_error() -> None:
    from analytics.entrypoints.scheduler import build_jobs
    from analytics.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="unknown job"):  # at start, for every command
        Settings.from_env({"ANALYTICS_SCHEDULER_JOBS": "rollup_hourly,nope"})
    assert [j.name for j in build_jobs(Settings(scheduler_jobs="dlq_depth"))] == ["dlq_depth"]
