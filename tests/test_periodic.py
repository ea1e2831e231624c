"""Periodic jobs: one job per tick across runners, catch-up of the last tick only, checks."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

from django_relay import periodic
from django_relay.checks import check_periodic
from django_relay.models import Job, PeriodicEntry
from tests.conftest import wait_for

TICK = "tests.flow_workers.TickWorker"
T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


def relay(*entries: dict) -> override_settings:
    return override_settings(RELAY={**settings.RELAY, "PERIODIC": list(entries)})


def every_second(**extra: object) -> dict:
    return {"cron": "* * * * * *", "worker": TICK, "args": {"n": 1}, **extra}


# -- the pure decision ----------------------------------------------------------------


def test_due_takes_the_latest_tick_only_once() -> None:
    [entry] = periodic.parse([{"cron": "*/5 * * * *", "worker": TICK}])
    now = T0 + dt.timedelta(minutes=12, seconds=3)
    tick = T0 + dt.timedelta(minutes=10)
    assert periodic.due(entry, now, since=T0, last=T0) == tick  # missed two: only the last
    assert periodic.due(entry, now, since=T0, last=tick) is None  # already taken
    # Never ran: no catch-up of a tick before this scheduler started...
    assert periodic.due(entry, now, since=now, last=None) is None
    # ...but a tick after it started is due.
    assert periodic.due(entry, now, since=T0 + dt.timedelta(minutes=9), last=None) == tick


def test_ticks_follow_the_entrys_time_zone() -> None:
    [entry] = periodic.parse([{"cron": "0 9 * * *", "worker": TICK, "timezone": "Europe/Paris"}])
    winter = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
    summer = dt.datetime(2026, 7, 15, 12, 0, tzinfo=dt.UTC)
    assert entry.last_tick(winter) == dt.datetime(2026, 1, 15, 8, 0, tzinfo=dt.UTC)
    assert entry.last_tick(summer) == dt.datetime(2026, 7, 15, 7, 0, tzinfo=dt.UTC)
    assert entry.next_tick(summer) == dt.datetime(2026, 7, 16, 7, 0, tzinfo=dt.UTC)


# -- against the database, with a clock we control ----------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_insert_one_job_per_tick_over_30_ticks() -> None:
    with relay(every_second()):
        since = T0
        for second in range(1, 31):
            now = T0 + dt.timedelta(seconds=second, milliseconds=300)
            later = now + dt.timedelta(milliseconds=400)
            periodic.enqueue_due(now, since)  # runner A
            periodic.enqueue_due(later, since)  # runner B, a bit behind
        ticks = Counter(Job.objects.values_list("meta__tick", flat=True))
    assert len(ticks) == 30
    assert set(ticks.values()) == {1}
    row = PeriodicEntry.objects.get(name=TICK)
    assert row.last_tick == T0 + dt.timedelta(seconds=30)
    assert Job.objects.get(pk=row.last_job_id).meta["tick"] == row.last_tick.isoformat()


@pytest.mark.django_db(transaction=True)
def test_concurrent_schedulers_race_for_a_tick_and_one_wins() -> None:
    barrier = threading.Barrier(8)
    won: list[int] = []

    def scheduler() -> None:
        try:
            barrier.wait(20)
            won.extend(job.pk for job in periodic.enqueue_due(T0 + dt.timedelta(seconds=1), T0))
        finally:
            connections.close_all()

    with relay(every_second()):
        threads = [threading.Thread(target=scheduler) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert len(won) == 1
    assert Job.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_runner_that_was_down_catches_up_the_last_tick_only() -> None:
    with relay(every_second(cron="*/5 * * * *")):
        periodic.enqueue_due(T0 + dt.timedelta(seconds=1), T0)  # the 12:00 tick
        assert Job.objects.count() == 1
        # Down for an hour: twelve ticks missed, one job (for 13:00).
        [job] = periodic.enqueue_due(T0 + dt.timedelta(hours=1, seconds=2), T0)
    assert job.meta["tick"] == (T0 + dt.timedelta(hours=1)).isoformat()
    assert Job.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_options_args_and_run_now() -> None:
    entry = every_second(name="nightly", options={"queue": "mail", "priority": 3})
    with relay(entry):
        [job] = periodic.enqueue_due(T0 + dt.timedelta(seconds=1), T0)
        manual = periodic.run_now("nightly")
        with pytest.raises(KeyError):
            periodic.run_now("nope")
    assert (job.queue, job.priority, job.args) == ("mail", 3, {"n": 1})
    assert job.meta["periodic"] == "nightly"
    assert manual.meta == {"periodic": "nightly", "manual": True}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"cron": "61 * * * *", "worker": TICK}], "is not a valid cron expression"),
        ([{"cron": "every day", "worker": TICK}], "is not a valid cron expression"),
        ([{"cron": "* * * * *", "worker": "tests.nowhere.Worker"}], "cannot import worker"),
        ([{"cron": "* * * * *", "worker": "tests.workers.NotAWorker"}], "not a registered"),
        ([{"cron": "* * * * *", "worker": TICK, "timezone": "Mars/Base"}], "unknown time zone"),
        ([{"cron": "* * * * *", "worker": TICK, "options": {"colour": 1}}], "may only have"),
        ([{"cron": "* * * * *", "worker": TICK, "options": {"priority": 12}}], "priority"),
        ([{"worker": TICK}], "must be a cron expression"),
        ([every_second(), every_second()], "is used twice"),
        ("* * * * *", "must be a list"),
    ],
)
def test_bad_entries_are_refused_by_a_system_check(entries: object, message: str) -> None:
    with override_settings(RELAY={**settings.RELAY, "PERIODIC": entries}):
        errors = check_periodic(None)
    assert [e.id for e in errors] == ["django_relay.E011"]
    assert message in errors[0].msg


def test_a_valid_entry_passes_the_check() -> None:
    with relay(every_second(), every_second(name="two", cron="0 3 * * 1")):
        assert check_periodic(None) == []


# -- real runners ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_two_runners_enqueue_exactly_one_job_per_tick(start_runner) -> None:
    start_runner(PERIODIC=[every_second()])
    start_runner(PERIODIC=[every_second()])

    def ticks() -> Counter:
        return Counter(Job.objects.values_list("meta__tick", flat=True))

    wait_for(lambda: len(ticks()) >= 8, 40, message="8 ticks enqueued")
    counted = ticks()
    assert set(counted.values()) == {1}, counted
    assert Job.objects.filter(state="completed").exists()  # and they run
