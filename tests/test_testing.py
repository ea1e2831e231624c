"""django_relay.testing: draining jobs in-process inside a test's transaction."""

from typing import Any

import pytest

from django_relay import Cancel, worker
from django_relay.models import Job
from django_relay.testing import assert_enqueued, drain, enqueued_jobs, refute_enqueued

pytestmark = pytest.mark.django_db


@worker(queue="drain")
class CountUsersWorker:
    def process(self, job: Any) -> int:
        from django.contrib.auth.models import User

        return User.objects.filter(username__startswith=job.args["prefix"]).count()


@worker(queue="drain", max_attempts=2)
class FailingWorker:
    async def process(self, job: Any) -> None:
        raise ValueError(f"bad input {job.args['n']}")

    def backoff(self, job: Any) -> float:
        return 3600


@worker(queue="drain")
class FanOutWorker:
    async def process(self, job: Any) -> Any:
        if job.args["n"] > 0:
            from asgiref.sync import sync_to_async

            await sync_to_async(FanOutWorker.enqueue)({"n": job.args["n"] - 1})
            return None
        return Cancel("bottom reached")


@worker(queue="drain")
class SnoozingWorker:
    async def process(self, job: Any) -> Any:
        from django_relay import Snooze

        return Snooze(3600)


def test_drain_runs_jobs_inside_the_test_transaction(django_user_model):
    django_user_model.objects.create(username="ann")
    django_user_model.objects.create(username="anna")
    job = CountUsersWorker.enqueue({"prefix": "ann"})

    assert drain("drain") == {"completed": 1}

    job.refresh_from_db()
    assert (job.state, job.result, job.attempt) == ("completed", 2, 1)


def test_drain_records_failures_and_retries_with_scheduled():
    job = FailingWorker.enqueue({"n": 1})

    assert drain() == {"retryable": 1}
    job.refresh_from_db()
    assert job.state == "retryable"
    assert job.errors[0]["error"] == "ValueError: bad input 1"

    assert drain() == {}  # the retry is an hour away
    assert drain(with_scheduled=True) == {"discarded": 1}
    job.refresh_from_db()
    assert (job.state, job.attempt, len(job.errors)) == ("discarded", 2, 2)


def test_drain_without_safety_raises_in_the_test():
    FailingWorker.enqueue({"n": 2})
    with pytest.raises(AssertionError, match="bad input 2"):
        drain(with_safety=False)


def test_drain_runs_jobs_enqueued_by_jobs():
    FanOutWorker.enqueue({"n": 3})
    assert drain() == {"completed": 3, "cancelled": 1}
    assert Job.objects.filter(state="completed").count() == 3


def test_assertions_on_enqueued_jobs():
    CountUsersWorker.enqueue({"prefix": "bo", "page": 1})
    CountUsersWorker.enqueue({"prefix": "bo", "page": 2})

    assert len(assert_enqueued(CountUsersWorker, args={"prefix": "bo"}, count=2)) == 2
    assert_enqueued("tests.test_testing.CountUsersWorker", args={"page": 2})
    refute_enqueued(FailingWorker)
    with pytest.raises(AssertionError, match="expected 3 job"):
        assert_enqueued(CountUsersWorker, count=3)
    with pytest.raises(AssertionError, match="expected no job"):
        refute_enqueued(CountUsersWorker, args={"page": 1})
    assert enqueued_jobs(queue="other").count() == 0


def test_claimed_rows_match_the_model_field_order():
    # build_job() hands claimed rows to Job.from_db() positionally.
    from django_relay.queries import JOB_COLUMNS

    assert list(JOB_COLUMNS) == [f.attname for f in Job._meta.concrete_fields]


def test_a_claimed_row_builds_the_same_job_as_the_orm():
    from django.db import connection

    from django_relay import queries
    from django_relay.engine.producer import build_job

    job = CountUsersWorker.enqueue({"prefix": "x", "when": __import__("datetime").date(2026, 1, 2)})
    with connection.cursor() as cursor:
        cursor.execute(queries.CLAIM, ("drain", 10, "node"))
        [row] = cursor.fetchall()
    built, loaded = build_job(row), Job.objects.get(pk=job.pk)
    for field in Job._meta.concrete_fields:
        assert getattr(built, field.attname) == getattr(loaded, field.attname), field.name
    assert not built._state.adding and built._state.db == "default"
    assert built.workflow is None and built.pk == job.pk


def test_lifecycle_dispatch_signals_are_sent_with_the_job():
    from django_relay import signals

    seen: list[tuple[str, object, str]] = []

    def receiver(signal_name):
        def receive(sender, job, **kwargs):
            seen.append((signal_name, sender, job.state))

        return receive

    names = [
        "job_enqueued",
        "job_started",
        "job_completed",
        "job_failed",
        "job_discarded",
        "job_cancelled",
        "job_snoozed",
    ]
    receivers = {name: receiver(name) for name in names}
    for name, receive in receivers.items():
        getattr(signals, name).connect(receive)
    try:
        CountUsersWorker.enqueue({"prefix": "z"})
        FailingWorker.enqueue({"n": 3})
        FanOutWorker.enqueue({"n": 0})
        drain(with_scheduled=True)
        SnoozingWorker.enqueue({})
        assert drain() == {"scheduled": 1}
    finally:
        for name, receive in receivers.items():
            getattr(signals, name).disconnect(receive)
    assert ("job_completed", CountUsersWorker, "completed") in seen
    assert ("job_failed", FailingWorker, "retryable") in seen
    assert ("job_discarded", FailingWorker, "discarded") in seen
    assert ("job_cancelled", FanOutWorker, "cancelled") in seen
    assert ("job_snoozed", SnoozingWorker, "scheduled") in seen
    assert sum(name == "job_enqueued" for name, _, _ in seen) == 4
    assert sum(name == "job_started" for name, _, _ in seen) == 5  # the retry too
