"""``analytics serve``'s restart back-off: quick exits wait longer, a settled child does not."""

from __future__ import annotations

import pytest

from analytics.entrypoints.serve import RestartPolicy

pytestmark = pytest.mark.unit


def test_quick_exits_back_off_to_the_cap_and_a_settled_run_starts_over() -> None:
    now = [0.0]
    policy = RestartPolicy(settled_s=30, first_s=1, max_s=10, clock=lambda: now[0])
    waits = []
    for _ in range(6):
        policy.started("api")
        now[0] += 2  # it exits two seconds after each start
        waits.append(policy.exited("api"))
    assert waits == [1, 2, 4, 8, 10, 10]
    policy.started("api")
    now[0] += 31  # this time it ran: its next exit is a first one again
    assert policy.exited("api") == 1


def test_each_child_has_its_own_count() -> None:
    now = [0.0]
    policy = RestartPolicy(clock=lambda: now[0])
    for name in ("api", "worker"):
        policy.started(name)
    now[0] += 1
    assert [policy.exited("api"), policy.exited("api"), policy.exited("worker")] == [1, 2, 1]
