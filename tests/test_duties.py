"""Staging, rescuing and pruning: one runner at a time, and another takes over when it dies."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.db import connection
from django.utils import timezone

from django_relay import queries
from django_relay.models import Job
from tests.conftest import server_url, wait_for
from tests.workers import EchoWorker

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

HOLD = """
import sys, time, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
conn.execute("SELECT pg_advisory_lock(%s, %s)", (int(sys.argv[2]), int(sys.argv[3])))
print("held", flush=True)
time.sleep(600)
"""


def test_a_duty_held_elsewhere_is_skipped_and_taken_over_when_its_holder_dies(start_runner):
    # Another process performs the rescue duty (it holds its lock) until it is killed.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLD,
            server_url(connection.settings_dict["NAME"]),
            str(queries.DUTY_LOCK_NAMESPACE),
            str(queries.DUTY_LOCKS["rescue"]),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # An orphan: executing for a runner that does not exist, on a queue nobody serves.
        orphan = EchoWorker.enqueue({"n": 1})
        Job.objects.filter(pk=orphan.pk).update(
            queue="elsewhere",
            state="executing",
            attempt=1,
            attempted_by="ghost",
            attempted_at=timezone.now(),
        )
        start_runner("default=2")
        # The runner performs the duties nobody else holds: a due job is staged and run.
        due = EchoWorker.enqueue({"n": 2})
        Job.objects.filter(pk=due.pk).update(
            state="scheduled", scheduled_at=timezone.now() - timezone.timedelta(seconds=1)
        )
        wait_for(
            lambda: Job.objects.get(pk=due.pk).state == "completed",
            timeout=20,
            message="the stager to make the due job available",
        )
        # ...but not the one held elsewhere: the rescue is the holder's to do.
        assert Job.objects.get(pk=orphan.pk).state == "executing"
    finally:
        holder.kill()
        holder.wait(10)

    def rescued() -> Job | None:
        job = Job.objects.get(pk=orphan.pk)
        return job if job.state == "available" else None

    job = wait_for(rescued, timeout=20, message="the runner to take the rescue over")
    assert job.errors[-1]["kind"] == "rescued"
