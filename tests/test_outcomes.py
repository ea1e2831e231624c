"""What ``process`` produced, mapped to the ack that finishes the attempt (no database)."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from decimal import Decimal

import pytest

from django_relay import Cancel, Snooze, codec
from django_relay.engine.executor import decide, describe
from django_relay.models import Job, JobState
from django_relay.registry import default_backoff
from tests.workers import EchoWorker

LIMIT = 8192


def make_job(attempt: int = 1, max_attempts: int = 3) -> Job:
    return Job(
        id=42,
        worker=EchoWorker.__relay_worker__,
        queue="default",
        state=JobState.EXECUTING,
        attempt=attempt,
        max_attempts=max_attempts,
        claim_token=7,
    )


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a real traceback, as ``process`` would have raised it."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def error_of(ack) -> dict:
    assert ack.error is not None
    return json.loads(ack.error)


# -- values -----------------------------------------------------------------------------------


def test_a_value_completes_with_the_encoded_result():
    value = {"sum": 3, "at": dt.date(2024, 1, 2), "id": uuid.UUID(int=9), "d": Decimal("1.10")}
    ack = decide(make_job(), value, backoff=99.0, max_result_bytes=LIMIT)
    assert ack.job_id == 42
    assert ack.attempt == 1
    assert ack.state == JobState.COMPLETED
    assert codec.loads(ack.result) == value
    assert ack.error is None
    assert ack.delay is None
    assert ack.attempt_delta == 0
    assert ack.meta is None


@pytest.mark.parametrize("value", [0, "", [], {}, False])
def test_falsy_values_are_results_too(value):
    ack = decide(make_job(), value, backoff=0.0, max_result_bytes=LIMIT)
    assert ack.state == JobState.COMPLETED
    assert ack.result is not None
    assert codec.loads(ack.result) == value


def test_none_completes_without_a_result():
    ack = decide(make_job(), None, backoff=5.0, max_result_bytes=LIMIT)
    assert ack.state == JobState.COMPLETED
    assert ack.result is None
    assert ack.error is None
    assert ack.delay is None


def test_a_too_large_result_completes_with_meta_and_no_result():
    value = {"blob": "x" * 200}
    ack = decide(make_job(attempt=1, max_attempts=5), value, backoff=10.0, max_result_bytes=100)
    assert ack.state == JobState.COMPLETED  # never retried for it
    assert ack.result is None
    assert ack.error is None
    meta = json.loads(ack.meta)
    assert meta == {
        "result_too_large": {"size": len(codec.dumps(value).encode()), "limit": 100},
    }


def test_an_unserializable_result_is_an_error_of_the_attempt():
    ack = decide(make_job(attempt=1), {"s": {1, 2}}, backoff=12.0, max_result_bytes=LIMIT)
    assert ack.state == JobState.RETRYABLE
    assert ack.result is None
    assert ack.delay == 12.0
    error = error_of(ack)
    assert error["kind"] == "error"
    assert error["error"].startswith("EncodeError: result.s: set is not serializable")


def test_an_unserializable_result_on_the_last_attempt_discards():
    ack = decide(make_job(attempt=3, max_attempts=3), object(), backoff=0.0, max_result_bytes=LIMIT)
    assert ack.state == JobState.DISCARDED
    assert "EncodeError" in error_of(ack)["error"]


# -- Cancel and Snooze ------------------------------------------------------------------------


def test_cancel_with_a_reason_cancels_and_records_it():
    ack = decide(
        make_job(attempt=2), Cancel("no longer wanted"), backoff=9.0, max_result_bytes=LIMIT
    )
    assert ack.state == JobState.CANCELLED
    assert ack.result is None
    assert ack.delay is None
    assert ack.attempt_delta == 0
    assert error_of(ack) == {"attempt": 2, "kind": "cancel", "error": "no longer wanted"}


def test_cancel_without_a_reason_cancels_without_an_error_entry():
    ack = decide(make_job(), Cancel(), backoff=9.0, max_result_bytes=LIMIT)
    assert ack.state == JobState.CANCELLED
    assert ack.error is None


@pytest.mark.parametrize("reason", [404, {"code": 7}, object()], ids=["int", "dict", "object"])
def test_cancel_records_any_reason_as_text(reason):
    assert Cancel(reason).reason == str(reason)
    ack = decide(make_job(), Cancel(reason), backoff=0.0, max_result_bytes=LIMIT)
    assert ack.state == JobState.CANCELLED
    assert error_of(ack)["error"] == str(reason)


@pytest.mark.parametrize("seconds", [0, 30, 2.5])
def test_snooze_reschedules_and_gives_the_attempt_back(seconds):
    ack = decide(
        make_job(attempt=3, max_attempts=3), Snooze(seconds), backoff=99.0, max_result_bytes=LIMIT
    )
    # Even on the last attempt: a snooze is not a failure.
    assert ack.state == JobState.SCHEDULED
    assert ack.delay == seconds
    assert ack.attempt_delta == -1
    assert ack.attempt == 3
    assert ack.error is None
    assert ack.result is None


def test_snooze_accepts_a_timedelta():
    assert Snooze(dt.timedelta(minutes=2, milliseconds=500)).seconds == 120.5
    ack = decide(make_job(), Snooze(dt.timedelta(seconds=7)), backoff=0.0, max_result_bytes=LIMIT)
    assert ack.delay == 7.0


@pytest.mark.parametrize(
    "seconds",
    [-1, -0.001, dt.timedelta(seconds=-1), "10", None, [5], float("nan"), float("inf"), True],
    ids=repr,
)
def test_snooze_refuses_negative_and_non_numbers(seconds):
    with pytest.raises(ValueError, match="Snooze needs a number of seconds"):
        Snooze(seconds)


# -- exceptions -------------------------------------------------------------------------------


def test_an_exception_with_attempts_left_is_retryable_with_backoff_and_traceback():
    exc = raised(ValueError("bad input 7"))
    ack = decide(make_job(attempt=2, max_attempts=3), exc, backoff=33.5, max_result_bytes=LIMIT)
    assert ack.state == JobState.RETRYABLE
    assert ack.delay == 33.5
    assert ack.attempt_delta == 0
    assert ack.result is None
    error = error_of(ack)
    assert error["attempt"] == 2
    assert error["kind"] == "error"
    assert error["error"] == "ValueError: bad input 7"
    assert error["traceback"].startswith("Traceback (most recent call last):")
    assert "in raised" in error["traceback"]
    assert error["traceback"].rstrip().endswith("ValueError: bad input 7")


def test_an_exception_on_the_last_attempt_discards():
    exc = raised(KeyError("missing"))
    ack = decide(make_job(attempt=3, max_attempts=3), exc, backoff=33.5, max_result_bytes=LIMIT)
    assert ack.state == JobState.DISCARDED
    assert ack.delay is None
    error = error_of(ack)
    assert error["error"] == "KeyError: 'missing'"
    assert "Traceback" in error["traceback"]


def test_a_single_attempt_job_is_discarded_on_its_first_failure():
    ack = decide(
        make_job(attempt=1, max_attempts=1),
        raised(RuntimeError()),
        backoff=1.0,
        max_result_bytes=LIMIT,
    )
    assert ack.state == JobState.DISCARDED
    assert error_of(ack)["error"] == "RuntimeError"


def test_describe_names_the_exception_type():
    assert describe(ValueError("x")) == "ValueError: x"
    assert describe(TimeoutError()) == "TimeoutError"


# -- default backoff --------------------------------------------------------------------------


def nominal(attempt: int) -> float:
    return min(15 + 2**attempt, 86_400)


@pytest.mark.parametrize("attempt", [0, 1, 2, 5, 10, 16, 17, 20, 25, 100, 10_000])
def test_default_backoff_stays_within_its_jitter_bounds_and_the_cap(attempt):
    base = nominal(min(attempt, 20))
    for _ in range(200):
        delay = default_backoff(attempt)
        assert math.isfinite(delay)
        assert base * 0.9 <= delay <= base * 1.1
        assert delay <= 86_400 * 1.1


def test_default_backoff_grows_with_the_attempt():
    attempts = range(1, 21)
    lows = {a: min(default_backoff(a) for _ in range(50)) for a in attempts}
    highs = {a: max(default_backoff(a) for _ in range(50)) for a in attempts}
    # From attempt 3 on, doubling outgrows the +-10% jitter: every draw waits longer
    # than any draw of the attempt before, until the one-day cap (attempt 17).
    for attempt in range(4, 17):
        assert lows[attempt] > highs[attempt - 1], attempt
    assert lows[20] > 10 * highs[10]
    for attempt in range(17, 21):
        assert 86_400 * 0.9 <= lows[attempt] <= highs[attempt] <= 86_400 * 1.1


def test_default_backoff_is_jittered():
    assert len({default_backoff(8) for _ in range(20)}) > 1


def test_default_backoff_is_capped_at_a_day():
    assert all(default_backoff(50) <= 86_400 * 1.1 for _ in range(100))
    assert any(default_backoff(50) >= 86_400 * 0.9 for _ in range(100))
