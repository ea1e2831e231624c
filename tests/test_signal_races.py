"""signal() under real concurrency: senders on their own connections, racing."""

from __future__ import annotations

import pytest

from django_relay import signal_sync
from django_relay.models import Job, JobSignal
from tests.concurrency import race
from tests.workers import EchoWorker

pytestmark = pytest.mark.django_db(transaction=True)

TRIALS = 40


def seqs(job: Job) -> list[int]:
    return list(JobSignal.objects.filter(job=job).order_by("seq").values_list("seq", flat=True))


def test_racing_duplicates_of_one_key_are_delivered_once_and_counted_once():
    bad = []
    for trial in range(TRIALS):
        job = EchoWorker.enqueue({}, schedule_in=3600)
        delivered = race(*[lambda pk=job.pk: signal_sync(pk, {"n": 1}, key="once")] * 3)
        assert sorted(delivered) == [0, 0, 1], delivered  # exactly one caller delivered it
        signal_sync(job.pk, {"n": 2})  # no key: the next signal
        job.refresh_from_db()
        if (job.signal_count, seqs(job)) != (2, [1, 2]):
            bad.append((trial, job.signal_count, seqs(job)))
    assert bad == [], f"{len(bad)} of {TRIALS} trials counted a duplicate: {bad[:5]}"


def test_racing_signals_to_one_job_get_gapless_seqs_in_commit_order():
    for _ in range(TRIALS // 4):
        job = EchoWorker.enqueue({}, schedule_in=3600)
        race(*[lambda i=i, pk=job.pk: signal_sync(pk, {"i": i}, key=f"k{i % 3}") for i in range(6)])
        job.refresh_from_db()
        assert job.signal_count == 3
        assert seqs(job) == [1, 2, 3]
        # seq follows commit order: the ids (allocated at insert, under the job's lock) too.
        ids = list(JobSignal.objects.filter(job=job).order_by("seq").values_list("id", flat=True))
        assert ids == sorted(ids)
