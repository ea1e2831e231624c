"""enqueue_many's insert: one JSON document per statement, the rows it returns, and a
batch too large for one statement going in several, all or nothing."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_relay import enqueue_many, queries
from django_relay.models import Job
from tests.workers import EchoWorker

pytestmark = pytest.mark.django_db


def test_each_instance_gets_its_rows_id_state_and_timestamps():
    later = timezone.now() + dt.timedelta(hours=1)
    jobs = [
        EchoWorker.new({"n": 1}),
        EchoWorker.new({"n": 2, "text": "é\n\"'\\"}, scheduled_at=later, priority=3),
        EchoWorker.new({"n": 3}, meta={"k": [1, 2.5, None]}, queue="other", max_attempts=2),
    ]
    assert enqueue_many(jobs) is not None
    assert [job.id for job in jobs] == sorted(job.id for job in jobs)
    for job in jobs:
        stored = Job.objects.get(pk=job.pk)
        assert (job.state, job.scheduled_at, job.inserted_at) == (
            stored.state,
            stored.scheduled_at,
            stored.inserted_at,
        )
        assert (stored.args, stored.meta, stored.queue, stored.priority, stored.max_attempts) == (
            job.args,
            job.meta,
            job.queue,
            job.priority,
            job.max_attempts,
        )
    assert [job.state for job in jobs] == ["available", "scheduled", "available"]
    assert jobs[1].scheduled_at == later


@pytest.mark.django_db(transaction=True)
def test_a_batch_past_one_statement_goes_in_several_all_or_nothing(monkeypatch):
    monkeypatch.setattr(queries.enqueue, "STATEMENT_BYTES", 300)  # a few rows each
    jobs = [EchoWorker.new({"n": i}) for i in range(20)]
    with CaptureQueriesContext(connection) as sent:
        enqueue_many(jobs)
    assert sum("INSERT INTO django_relay_job" in query["sql"] for query in sent) > 1
    assert list(Job.objects.order_by("id").values_list("args__n", flat=True)) == list(range(20))
    assert [job.id for job in jobs] == list(Job.objects.order_by("id").values_list("id", flat=True))

    # The database refuses the last row (outside the priority check): the rows of
    # the statements before it are not left behind.
    bad = [EchoWorker.new({"n": i}) for i in range(20)]
    bad[-1].priority = 42
    with pytest.raises(IntegrityError):
        enqueue_many(bad)
    assert Job.objects.count() == 20
