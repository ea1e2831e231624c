"""A runner's connection budget (README "Running at scale"), counted in pg_stat_activity."""

from __future__ import annotations

import pytest
from django.db import connection

from django_relay.models import Job
from tests.conftest import wait_for
from tests.workers import EchoWorker, SyncOrmWorker

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

#: claim, ack, upkeep (queue control + stage/rescue/prune), heartbeat, listener.
RUNNER_CONNECTIONS = 5


def connections_of(pid: int) -> list[str]:
    """The last statement of each connection the process ``pid`` holds (tests.settings
    names each process's connections ``relay-tests-<pid>``)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT left(query, 40) FROM pg_stat_activity WHERE application_name = %s",
            [f"relay-tests-{pid}"],
        )
        return [row[0] for row in cursor.fetchall()]


def test_a_runner_holds_five_connections_plus_one_per_running_sync_job(start_runner):
    runner = start_runner("default=4")
    pid = runner.proc.pid
    job = EchoWorker.enqueue({"value": 1})  # opens the ack connection
    wait_for(lambda: Job.objects.get(pk=job.pk).state == "completed", 20)
    # Before: claim, ack, control, heartbeat, stage, rescue, prune and listener: 8.
    wait_for(
        lambda: len(connections_of(pid)) == RUNNER_CONNECTIONS,
        timeout=20,
        message=f"{RUNNER_CONNECTIONS} connections (has {connections_of(pid)})",
    )
    # A sync job runs in a thread, on Django's connection of that thread.
    sync = SyncOrmWorker.enqueue({"value": 2})
    wait_for(lambda: Job.objects.get(pk=sync.pk).state == "completed", 20)
    assert RUNNER_CONNECTIONS <= len(connections_of(pid)) <= RUNNER_CONNECTIONS + 1
