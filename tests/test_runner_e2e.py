"""End to end: real ``manage.py relayworker`` processes running jobs from the test database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from example_app.workers import CalculatorWorker, FlakyWorker

from django_relay import enqueue_many
from django_relay.models import Job
from tests.conftest import REPO_ROOT, STARTUP_TIMEOUT, RunnerProcess, subprocess_env, wait_for
from tests.workers import (
    CancelWorker,
    EchoWorker,
    GateWorker,
    RecordWorker,
    SnoozeWorker,
    SyncGateWorker,
    SyncOrmWorker,
    TimeoutWorker,
    read_records,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def reload(job: Job) -> Job:
    return Job.objects.get(pk=job.pk)


def wait_for_state(job: Job, *states: str, timeout: float = 15.0) -> Job:
    """The job's row once it is in one of ``states``."""
    return wait_for(
        lambda: (row := reload(job)).state in states and row,
        timeout,
        message=f"job {job.pk} to be {' or '.join(states)}",
    )


def node_pid(node: str | None) -> int:
    """The pid in a runner node id (``host:pid:suffix``)."""
    assert node is not None
    return int(node.split(":")[-2])


@pytest.fixture
def gate(start_runner: Any, tmp_path: Path) -> Iterator[Path]:
    """A gate file for GateWorker jobs; opened at teardown, before the runners stop."""
    path = tmp_path / "gate"
    yield path
    path.touch()


def test_calculator_completes_with_its_result_stored(start_runner):
    start_runner()
    job = CalculatorWorker.enqueue({"a": 10, "b": 32})
    row = wait_for_state(job, "completed")
    assert row.result == {"result": 42}
    assert row.attempt == 1
    assert row.errors == []
    assert row.finished_at is not None
    assert row.attempted_at is not None


def test_retries_then_success_records_each_error(start_runner):
    start_runner()
    job = FlakyWorker.enqueue({"succeed_on": 3})
    row = wait_for_state(job, "completed")
    assert row.result == {"attempt": 3}
    assert row.attempt == 3
    assert [e["attempt"] for e in row.errors] == [1, 2]
    for attempt, error in enumerate(row.errors, start=1):
        assert error["kind"] == "error"
        assert error["error"] == f"RuntimeError: Flaky failure on attempt {attempt} (succeeds on 3)"
        assert "Traceback (most recent call last)" in error["traceback"]
        assert f"Flaky failure on attempt {attempt}" in error["traceback"]
        assert error["at"]


def test_discarded_after_the_last_attempt(start_runner):
    start_runner()
    job = FlakyWorker.enqueue({"succeed_on": 5}, max_attempts=2)
    row = wait_for_state(job, "discarded")
    assert row.attempt == 2
    assert row.result is None
    assert row.finished_at is not None
    assert [e["attempt"] for e in row.errors] == [1, 2]
    assert row.errors[-1]["error"].startswith("RuntimeError: Flaky failure on attempt 2")
    assert "Traceback" in row.errors[-1]["traceback"]


def test_cancel_with_a_reason(start_runner):
    start_runner()
    job = CancelWorker.enqueue({"reason": "customer closed the account"})
    row = wait_for_state(job, "cancelled")
    assert row.attempt == 1
    assert row.finished_at is not None
    assert row.errors[-1]["error"] == "customer closed the account"
    assert row.errors[-1]["kind"] == "cancel"


def test_snooze_runs_again_later_with_the_same_attempt(start_runner, tmp_path):
    start_runner()
    job = SnoozeWorker.enqueue({"log": str(tmp_path / "runs"), "seconds": 0.5})
    row = wait_for_state(job, "completed")
    assert row.result["attempts"] == [1, 1]
    assert row.attempt == 1
    assert row.errors == []  # a snooze is not a failure
    first, second = row.result["runs"]
    assert second["at"] - first["at"] >= 0.4  # it did wait (database and host share a clock)


def test_async_timeout_makes_the_job_retryable(start_runner, gate):
    start_runner()
    job = TimeoutWorker.enqueue({"gate": str(gate)})
    row = wait_for_state(job, "retryable")
    assert row.attempt == 1
    [error] = row.errors
    assert "timed out" in error["error"]
    assert error["error"] == "TimeoutError: timed out after 0.5s"
    assert row.result is None


def test_sync_process_runs_in_a_thread_and_uses_the_orm(start_runner):
    start_runner()
    job = SyncOrmWorker.enqueue({"value": "hello"})
    row = wait_for_state(job, "completed")
    assert row.result["state"] == "executing"  # it read its own row while running
    assert row.result["attempt"] == 1
    assert row.result["value"] == "hello"
    assert row.result["thread"].startswith("relay-job")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("os.system", "'os.system' is not a registered @worker class"),
        ("tests.workers.NotAWorker", "is not a registered @worker class"),
        ("no_such_module.Worker", "cannot import worker 'no_such_module.Worker'"),
    ],
)
def test_an_unregistered_worker_is_discarded_and_never_run(start_runner, tmp_path, path, message):
    marker = tmp_path / "ran"
    runner = start_runner()
    job = Job.objects.create(
        worker=path, args={"command": f"touch {marker}", "marker": str(marker)}, max_attempts=5
    )
    row = wait_for_state(job, "discarded")
    assert row.attempt == 1  # not retried: it would never become runnable
    [error] = row.errors
    assert error["kind"] == "worker"
    assert message in error["error"]
    assert not marker.exists()
    # The runner goes on serving.
    assert wait_for_state(EchoWorker.enqueue({"value": 1}), "completed").result == 1
    assert runner.proc.poll() is None


def test_a_row_whose_args_cannot_be_decoded_is_discarded_and_never_run(start_runner):
    runner = start_runner()
    job = EchoWorker.enqueue({"value": 1}, schedule_in=3600)
    with connection.cursor() as cursor:  # as if written by something else, or tampered with
        cursor.execute(
            "UPDATE django_relay_job SET state = 'available', "
            """args = '{"value": {"__relay__": "pickle", "v": "gANjb3MKc3lzdGVtCg=="}}' """
            "WHERE id = %s",
            [job.pk],
        )
    row = wait_for_state(job, "discarded")
    [error] = row.errors
    assert error["kind"] == "decode"
    assert "unknown tagged value 'pickle'" in error["error"]
    # The runner goes on serving.
    assert wait_for_state(EchoWorker.enqueue({"value": 2}), "completed").result == 2
    assert runner.proc.poll() is None


def test_priority_order_with_concurrency_one(start_runner, tmp_path):
    log = str(tmp_path / "order")
    priorities = [5, 0, 9, 3, 0, 7, 1]
    jobs = enqueue_many([RecordWorker.new({"log": log}, priority=p) for p in priorities])
    start_runner("default=1")
    wait_for(lambda: len(read_records(log)) == len(jobs), message="every job to run")
    ran = [r["job"] for r in read_records(log)]
    expected = [j.id for j in sorted(jobs, key=lambda j: (j.priority, j.id))]
    assert ran == expected
    assert [r["priority"] for r in read_records(log)] == sorted(priorities)


# -- shutdown -------------------------------------------------------------------


def test_sigterm_lets_a_running_job_finish_and_exits_zero(start_runner, gate, tmp_path):
    started = tmp_path / "started"
    runner = start_runner()
    job = GateWorker.enqueue({"gate": str(gate), "started": str(started), "value": "done"})
    wait_for(started.exists, message="the job to start")
    runner.signal(signal.SIGTERM)
    runner.wait_for_line("stopping: waiting")
    late = EchoWorker.enqueue({"value": "late"})  # no claims once stopping
    gate.touch()
    assert runner.proc.wait(15) == 0
    row = reload(job)
    assert (row.state, row.result, row.attempt) == ("completed", "done", 1)
    assert reload(late).state == "available"
    assert "gave back" not in runner.output


def test_a_second_sigint_exits_at_once_and_the_job_is_rescued_later(start_runner, gate, tmp_path):
    started = tmp_path / "started"
    runner = start_runner()
    job = GateWorker.enqueue({"gate": str(gate), "started": str(started), "value": "done"})
    wait_for(started.exists, message="the job to start")
    runner.signal(signal.SIGINT)
    runner.wait_for_line("stopping: waiting")  # graceful: it waits for the running job
    runner.signal(signal.SIGINT)
    # A graceful stop would wait for the job and exit 0; the second SIGINT does not.
    assert runner.proc.wait(5) != 0
    assert reload(job).state == "executing"  # left as it was: the lifeline rescues it
    start_runner()
    gate.touch()
    row = wait_for_state(job, "completed", timeout=20)
    assert (row.result, row.attempt) == ("done", 2)


@pytest.mark.parametrize("worker", [GateWorker, SyncGateWorker], ids=["async", "sync"])
def test_sigterm_gives_back_a_job_longer_than_the_grace_period(
    start_runner, gate, tmp_path, worker
):
    started = tmp_path / "started"
    runner = start_runner(extra_args=["--grace-period", "0.5"])
    job = worker.enqueue({"gate": str(gate), "started": str(started)})
    wait_for(started.exists, message="the job to start")
    runner.signal(signal.SIGTERM)
    assert runner.proc.wait(15) == 0
    row = reload(job)
    assert row.state == "available"
    assert row.attempt == 0  # the interrupted attempt is given back
    assert row.errors == []
    assert row.finished_at is None
    runner.stop()
    assert "gave back 1 unfinished jobs" in runner.output


def test_idle_sigterm_exits_cleanly_without_waiting_for_anything(start_runner):
    # How fast is the benchmark's business; here: a clean exit, with nothing to wait for.
    runner = start_runner()
    runner.signal(signal.SIGTERM)
    assert runner.proc.wait(10) == 0
    runner.stop()
    assert "stopping: waiting" not in runner.output
    assert "gave back" not in runner.output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_runner_still_waiting_for_its_database_stops_on_a_signal(transactional_db, signum):
    # Its first heartbeat cannot be written (no such database): it retries, and a
    # signal (systemd's stop, Ctrl-C) must end it, not leave it retrying forever.
    env = {**subprocess_env(), "RELAY_TEST_DB_NAME": "relay_no_such_database"}
    runner = RunnerProcess(["--queues", "default=2"], env)
    try:
        runner.wait_for_line("heartbeat connection failed")
        runner.signal(signum)
        assert runner.proc.wait(STARTUP_TIMEOUT) == 0, runner.output
    finally:
        runner.stop()
    assert "stopped before it was ready" in runner.output


def test_kill_9_mid_job_is_rescued_and_completes_on_another_runner(start_runner, gate, tmp_path):
    started = tmp_path / "started"
    first = start_runner()
    job = GateWorker.enqueue({"gate": str(gate), "started": str(started), "value": "survived"})
    wait_for(started.exists, message="the job to start")
    first_node = reload(job).attempted_by
    assert node_pid(first_node) == first.proc.pid
    first.kill()
    assert first.proc.returncode == -signal.SIGKILL
    assert reload(job).state == "executing"  # orphaned: its runner is gone
    gate.touch()
    second = start_runner()
    row = wait_for_state(job, "completed", timeout=20)
    assert row.result == "survived"
    assert row.attempt == 2
    assert node_pid(row.attempted_by) == second.proc.pid
    [rescued] = row.errors
    assert rescued["kind"] == "rescued"
    assert rescued["attempt"] == 1
    assert first_node in rescued["error"]


def test_two_runners_share_one_queue_and_run_each_job_once(start_runner, tmp_path):
    log = str(tmp_path / "runs")
    runners = [start_runner("default=5"), start_runner("default=5")]
    jobs = enqueue_many(
        [RecordWorker.new({"log": log, "value": i, "pause": 0.01}) for i in range(200)]
    )
    ids = [j.id for j in jobs]

    def all_completed() -> bool:
        return Job.objects.filter(pk__in=ids, state="completed").count() == len(ids)

    wait_for(all_completed, timeout=30, message="200 jobs to complete")
    rows = list(Job.objects.filter(pk__in=ids))
    assert {r.attempt for r in rows} == {1}
    assert all(r.errors == [] for r in rows)
    pids = {r.proc.pid for r in runners}
    assert {node_pid(r.attempted_by) for r in rows} == pids
    assert all(r.result["pid"] == node_pid(r.attempted_by) for r in rows)
    runs = read_records(log)
    assert sorted(r["job"] for r in runs) == sorted(ids)  # each job ran exactly once
    assert {r["pid"] for r in runs} == pids


@pytest.mark.parametrize(
    ("queues", "message"),
    [
        ("bad name=2", "--queues: invalid queue name 'bad name'"),
        ("default=0", "--queues: 'default=0': write queue=concurrency"),
        ("default=ten", "--queues: 'default=ten': write queue=concurrency"),
        ("default=1,default=2", "--queues: queue 'default' is given twice"),
    ],
)
def test_bad_queues_option_exits_nonzero_with_a_clear_message(queues, message):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "RELAY_TEST_DB_NAME": connection.settings_dict["NAME"],
    }
    done = subprocess.run(
        [sys.executable, "-m", "django", "relayworker", "--queues", queues],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert "ready" not in done.stderr + done.stdout


def test_a_burst_of_jobs_is_drained_with_bounded_ack_batches(start_runner):
    # Regression: with slots freed before acks land, claims once outran the acker and
    # one ack statement grew to tens of thousands of rows with a quadratic plan.
    enqueue_many([EchoWorker.new({"value": i}) for i in range(5000)])
    start_runner("default=100")
    wait_for(
        lambda: not Job.objects.exclude(state="completed").exists(),
        timeout=60,
        message="5000 jobs to complete",
    )
    assert Job.objects.filter(state="completed", attempt=1).count() == 5000


def test_log_level_warning_drops_job_lines_but_still_says_ready(start_runner):
    runner = start_runner(extra_args=["--log-level", "WARNING"])
    assert wait_for_state(EchoWorker.enqueue({"value": 3}), "completed").result == 3
    assert not any(" completed in " in line for line in runner.lines)
    assert sum("ready: queues default=10" in line for line in runner.lines) == 1


def test_a_job_can_relay_to_another_job_from_async_and_sync_process(start_runner):
    from tests.workflow_workers import NestedRelayWorker, SyncNestedRelayWorker

    start_runner("default=4")
    outer = NestedRelayWorker.enqueue({"value": "a"})
    sync_outer = SyncNestedRelayWorker.enqueue({"value": "s"})
    assert wait_for_state(outer, "completed").result == {"inner": "a"}
    assert wait_for_state(sync_outer, "completed").result == {"inner": "s"}
