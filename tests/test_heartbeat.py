"""The heartbeat has its own thread: a job blocking the runner's loop gets nothing rescued."""

from __future__ import annotations

import pytest

from django_relay.models import Job
from tests.conftest import FAST, wait_for
from tests.workers import LoopBlockingWorker, read_records

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_job_blocking_the_loop_past_rescue_after_is_not_rescued(start_runner, tmp_path):
    blocked = start_runner("default=2")
    # A second runner, on another queue: its lifeline rescues the first one's jobs
    # as soon as the first one's heartbeat is older than RESCUE_AFTER.
    start_runner("elsewhere=1")
    log = tmp_path / "runs"
    seconds = FAST["RESCUE_AFTER"] * 2.5
    job = LoopBlockingWorker.enqueue({"log": str(log), "seconds": seconds})

    def finished() -> Job | None:
        job.refresh_from_db()
        return job if job.state in ("completed", "discarded", "cancelled") else None

    wait_for(finished, timeout=60, message="the blocking job to finish")
    assert (job.state, job.attempt, job.errors) == ("completed", 1, [])
    assert len(read_records(log)) == 1
    line = blocked.wait_for_line("event loop was blocked")
    assert "async process()" in line
