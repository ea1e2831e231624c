"""Structured logs: one line per lifecycle event on ``django_relay.jobs``, with fields."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from django_relay import Cancel, Snooze, signal_sync, worker
from django_relay.testing import drain

pytestmark = pytest.mark.django_db

FIELDS = ("event", "job_id", "worker", "queue", "attempt", "max_attempts", "state")


@worker(queue="logs", max_attempts=2)
class OutcomeWorker:
    async def process(self, job: Any) -> Any:
        match job.args["do"]:
            case "fail":
                raise ValueError("bad input")
            case "cancel":
                return Cancel("not today")
            case "snooze":
                return Snooze(3600)
        return "done"

    def backoff(self, job: Any) -> float:
        return 0


@pytest.fixture
def debug_lines(caplog):
    """Records of ``django_relay.jobs`` at DEBUG, with the DEBUG receivers connected."""
    from django_relay import signal_handlers, signals

    caplog.set_level(logging.DEBUG, logger="django_relay.jobs")
    signal_handlers.connect()  # as relayworker --log-level DEBUG does
    yield lambda: [r for r in caplog.records if r.name == "django_relay.jobs"]
    signals.job_enqueued.disconnect(dispatch_uid="django_relay.log_enqueued")
    signals.job_started.disconnect(dispatch_uid="django_relay.log_started")


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS}


def test_each_lifecycle_event_is_one_line_with_its_fields(debug_lines):
    path = "tests.test_logs.OutcomeWorker"
    done = OutcomeWorker.enqueue({"do": "complete"})
    failing = OutcomeWorker.enqueue({"do": "fail"})
    cancelled = OutcomeWorker.enqueue({"do": "cancel"})
    snoozed = OutcomeWorker.enqueue({"do": "snooze"})
    drain("logs", with_scheduled=False)
    drain("logs", with_scheduled=False)  # the failed job's retry (backoff 0): discarded
    assert signal_sync(snoozed, {"go": True}, sender="alice") == 1

    records = debug_lines()
    events = [(r.event, r.job_id) for r in records]
    assert events.count(("enqueued", done.pk)) == 1
    assert ("started", done.pk) in events
    assert [e for e in events if e[1] == failing.pk] == [
        ("enqueued", failing.pk),
        ("started", failing.pk),
        ("failed", failing.pk),
        ("started", failing.pk),
        ("discarded", failing.pk),
    ]
    by_event = {(r.event, r.job_id): r for r in records}
    completed = by_event["completed", done.pk]
    assert fields(completed) == {
        "event": "completed",
        "job_id": done.pk,
        "worker": path,
        "queue": "logs",
        "attempt": 1,
        "max_attempts": 2,
        "state": "completed",
    }
    assert completed.levelno == logging.INFO
    assert completed.duration > 0
    assert completed.getMessage().startswith(f"job {done.pk} {path} completed in ")

    failed = by_event["failed", failing.pk]
    assert (failed.levelno, failed.state, failed.error) == (
        logging.WARNING,
        "retryable",
        "ValueError: bad input",
    )
    assert failed.getMessage().endswith("(attempt 1/2): ValueError: bad input")
    discarded = by_event["discarded", failing.pk]
    assert (discarded.levelno, discarded.attempt, discarded.state) == (
        logging.ERROR,
        2,
        "discarded",
    )
    assert by_event["cancelled", cancelled.pk].error == "not today"
    assert by_event["snoozed", snoozed.pk].state == "scheduled"
    started = by_event["started", done.pk]
    assert started.levelno == logging.DEBUG
    assert started.wait >= 0  # scheduled_at -> attempted_at, on the database's clock
    signalled = by_event["signalled", snoozed.pk]
    assert (signalled.levelno, signalled.worker, signalled.signal_sender) == (
        logging.INFO,
        path,
        "alice",
    )
    # Every field is JSON-ready, as a JSON formatter needs.
    for record in records:
        json.dumps({name: getattr(record, name, None) for name in (*FIELDS, "duration")})


def test_debug_receivers_are_not_connected_when_debug_is_off():
    # The test settings log django_relay at INFO: the runner then sends no job_started.
    from django_relay import signals

    assert not logging.getLogger("django_relay.jobs").isEnabledFor(logging.DEBUG)

    def ours(signal: Any) -> set[object]:
        # Receivers are keyed by dispatch_uid; other tests' modules may connect their own.
        return {key[0] for key, *_ in signal.receivers}

    assert "django_relay.log_started" not in ours(signals.job_started)
    assert "django_relay.log_enqueued" not in ours(signals.job_enqueued)
    assert "django_relay.log_signalled" in ours(signals.job_signalled)  # INFO: always wanted


@pytest.mark.e2e
def test_relayworker_log_level_debug_logs_started_lines(start_runner):
    from tests.workers import EchoWorker

    runner = start_runner(extra_args=["--log-level", "DEBUG"])
    job = EchoWorker.enqueue({"value": 1})
    runner.wait_for_line(f"job {job.pk} tests.workers.EchoWorker completed in ")
    assert any(
        f"job {job.pk} tests.workers.EchoWorker started (attempt 1/" in ln for ln in runner.lines
    )
