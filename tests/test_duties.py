"""Staging, rescuing and pruning: one runner at a time, and another takes over when it dies."""

from __future__ import annotations

import pytest
from django.db import connection

from django_relay import queries
from tests.conftest import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

EXCLUSIVE = ("stage", "rescue", "prune")


def holders() -> dict[str, list[int]]:
    """Backend pids holding each duty's advisory lock in the test database."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT objid::int, pid FROM pg_locks
            WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = %s::oid
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """,
            [queries.DUTY_LOCK_NAMESPACE],
        )
        rows = cursor.fetchall()
    names = {number: name for name, number in queries.DUTY_LOCKS.items()}
    found: dict[str, list[int]] = {name: [] for name in EXCLUSIVE}
    for number, pid in rows:
        found[names[number]].append(pid)
    return found


def held_by_one_each() -> dict[str, int] | None:
    found = holders()
    if all(len(pids) == 1 for pids in found.values()):
        return {name: pids[0] for name, pids in found.items()}
    return None


def test_one_runner_holds_each_duty_and_a_survivor_takes_over(start_runner):
    first = start_runner("default=2")
    before = wait_for(held_by_one_each, timeout=20, message="the first runner to take each duty")
    second = start_runner("default=2")
    second.wait_for_line("ready")
    # Both runners are up: each duty still has exactly one holder, the first runner.
    assert held_by_one_each() == before

    first.kill()

    def taken_over() -> dict[str, int] | None:
        now = held_by_one_each()
        if now and all(now[name] != before[name] for name in EXCLUSIVE):
            return now
        return None

    after = wait_for(taken_over, timeout=20, message="the survivor to take over every duty")
    # The survivor performs all three on its own connections (one per duty).
    assert len(set(after.values())) == len(EXCLUSIVE)
    assert second.proc.poll() is None
