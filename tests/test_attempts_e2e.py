"""Issue 8, part A: every attempt ends in exactly one recorded outcome, and no row,
result or error text can stop a runner or make a job run for ever (real runners)."""

from __future__ import annotations

import json

import pytest
from django.db import connection

from django_relay import await_result_sync, signal_sync
from django_relay.exceptions import RelayDiscard
from django_relay.models import Job
from tests.conftest import wait_for
from tests.poison_workers import (
    BadErrorWorker,
    BadResultWorker,
    HangingAsyncWorker,
    HangingSyncWorker,
    InitRaisesWorker,
    NulCancelWorker,
    RaisesTimeoutErrorsWorker,
    ShortTimeoutSignalWorker,
    SlowAsyncWorker,
)
from tests.workers import EchoWorker, SyncOrmWorker, read_records

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def wait_for_state(job: Job, *states: str, timeout: float = 15.0) -> Job:
    return wait_for(
        lambda: (row := Job.objects.get(pk=job.pk)).state in states and row,
        timeout,
        message=f"job {job.pk} to be {' or '.join(states)}",
    )


def assert_counted(row: Job, kind: str, text: str) -> None:
    """Discarded after exactly its two attempts, each recorded with why."""
    assert row.state == "discarded"
    assert row.attempt == 2
    assert [e["attempt"] for e in row.errors] == [1, 2]
    assert all(e["kind"] == kind for e in row.errors), row.errors
    assert text in row.errors[-1]["error"], row.errors[-1]


def assert_every_outcome_written(runner) -> None:
    assert "no longer this runner's" not in runner.output
    assert "could be written" not in runner.output
    assert "gave back" not in runner.output


def test_a_worker_whose_constructor_raises_is_discarded_after_its_attempts(start_runner):
    runner = start_runner()
    job = InitRaisesWorker.enqueue()
    first = wait_for_state(job, "retryable")
    assert first.attempt == 1
    # Without an instance there is no backoff() to ask: the default delay applies.
    # Make the retry due now rather than wait for it.
    Job.objects.filter(pk=job.pk, state="retryable").update(scheduled_at=first.inserted_at)
    with pytest.raises(RelayDiscard, match="cannot build this worker"):
        await_result_sync(job, timeout=20, with_retries=True)
    assert_counted(Job.objects.get(pk=job.pk), "error", "RuntimeError: cannot build this worker")
    assert_every_outcome_written(runner)


@pytest.mark.parametrize("kind", ["nul", "surrogate", "bigint", "deep", "nul_key"])
def test_a_result_postgresql_cannot_store_fails_the_attempt_and_says_why(start_runner, kind):
    runner = start_runner()
    job = BadResultWorker.enqueue({"kind": kind})
    row = wait_for_state(job, "discarded")
    assert row.result is None
    assert row.attempt == 2
    assert [e["attempt"] for e in row.errors] == [1, 2]
    assert "result" in row.errors[-1]["error"]
    assert_every_outcome_written(runner)
    assert wait_for_state(EchoWorker.enqueue({"value": kind}), "completed").result == kind


def test_an_error_text_holding_nul_is_recorded_escaped(start_runner):
    start_runner()
    row = wait_for_state(BadErrorWorker.enqueue({"kind": "nul"}), "discarded")
    assert_counted(row, "error", "RuntimeError: bad\\x00text")


def test_system_exit_in_process_fails_the_attempt_not_the_runner(start_runner):
    runner = start_runner()
    row = wait_for_state(BadErrorWorker.enqueue({"kind": "exit"}), "discarded")
    assert_counted(row, "error", "SystemExit: 3")
    assert wait_for_state(EchoWorker.enqueue({"value": 4}), "completed").result == 4
    assert runner.proc.poll() is None


def test_an_exception_whose_str_raises_is_recorded(start_runner):
    start_runner()
    row = wait_for_state(BadErrorWorker.enqueue({"kind": "unprintable"}), "discarded")
    assert_counted(row, "error", "Unprintable")


def test_a_cancel_reason_holding_nul_cancels_with_the_reason_escaped(start_runner):
    start_runner()
    row = wait_for_state(NulCancelWorker.enqueue(), "cancelled")
    assert row.attempt == 1
    assert row.errors[-1]["error"] == "no\\x00way"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ('{"n": ' + "7" * 5000 + "}", "cannot be decoded"),
        ('{"n": ' + "[" * 3000 + "]" * 3000 + "}", "cannot be decoded"),
    ],
    ids=["5000-digit-int", "3000-deep"],
)
def test_a_row_the_codec_cannot_read_is_discarded_and_the_runner_goes_on(
    start_runner, args, reason
):
    runner = start_runner()
    job = EchoWorker.enqueue({"value": 1}, schedule_in=3600)
    with connection.cursor() as cursor:  # written by something else than the codec
        cursor.execute(
            "UPDATE django_relay_job SET state = 'available', args = %s::jsonb WHERE id = %s",
            [args, job.pk],
        )
    row = wait_for_state(job, "discarded")
    [error] = row.errors
    assert error["kind"] == "decode"
    assert row.attempt == 1
    assert wait_for_state(EchoWorker.enqueue({"value": 2}), "completed").result == 2
    assert runner.proc.poll() is None
    assert "shutting down" not in runner.output
    # The ORM (and so the admin) loads the row too.
    assert Job.objects.get(pk=job.pk).args is not None


# -- timeouts (7d, 7e) -------------------------------------------------------------------------


def test_a_live_signal_wait_longer_than_the_worker_timeout_snoozes(start_runner):
    start_runner()
    job = ShortTimeoutSignalWorker.enqueue()
    row = wait_for_state(job, "scheduled", "retryable", "discarded")
    assert row.state == "scheduled", row.errors  # snoozed for its signal, not timed out
    assert row.errors == []
    assert row.meta["signal_wait"]["n"] == 1
    assert signal_sync(job.pk, {"ok": True}) == 1
    assert wait_for_state(job, "completed").result == {"ok": True}


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("relay", "RelayTimeout: job 12345 did not finish within 1.5s"),
        ("signal", "SignalTimeout: job"),
    ],
)
def test_a_timeout_error_raised_by_process_is_not_reported_as_its_own_timeout(
    start_runner, kind, error
):
    start_runner()
    row = wait_for_state(RaisesTimeoutErrorsWorker.enqueue({"kind": kind}), "discarded")
    assert row.errors[-1]["error"].startswith(error), row.errors[-1]
    assert "timed out after" not in row.errors[-1]["error"]


def test_sync_jobs_past_their_timeout_do_not_starve_the_threads(start_runner, tmp_path):
    gate = tmp_path / "gate"
    runner = start_runner("default=2")
    try:
        for n in range(2):  # as many hung threads as the runner has slots
            started = tmp_path / f"started-{n}"
            hung = HangingSyncWorker.enqueue({"gate": str(gate), "started": str(started)})
            row = wait_for_state(hung, "discarded")
            assert row.errors[-1]["error"] == "TimeoutError: timed out after 0.3s"
        # A sync job still gets a thread while both hung ones run on.
        row = wait_for_state(SyncOrmWorker.enqueue({"value": "free"}), "completed")
        assert row.result["value"] == "free"
        assert "runs on after its attempt ended" in runner.output
    finally:
        gate.touch()


# -- dispatch signals and receivers in the runner ----------------------------------------------


def test_rescue_that_discards_a_job_sends_job_discarded(start_runner, tmp_path):
    ledger = str(tmp_path / "ledger")
    doomed = start_runner("default=1")
    started = tmp_path / "started"
    job = HangingAsyncWorker.enqueue(
        {"started": str(started), "gate": str(tmp_path / "gate"), "ledger": ledger}
    )
    wait_for(started.exists, 15, message="the job to start")
    rescuer = start_runner("default=1")
    # The doomed runner's one slot is taken, so the rescuer runs this job, and importing
    # its module connects the receivers, before any rescue can happen (the doomed runner
    # is still alive).
    assert wait_for_state(SlowAsyncWorker.enqueue({"value": 1}), "completed").result == 1
    doomed.kill()
    row = wait_for_state(job, "discarded", timeout=20)
    assert row.errors[-1]["kind"] == "rescued"
    records = wait_for(lambda: read_records(ledger), 10, message="job_discarded in the ledger")
    assert records == [{"signal": "job_discarded", "job": job.pk, "state": "discarded"}]
    assert rescuer.proc.poll() is None


def test_a_row_discarded_as_unreadable_sends_job_discarded(start_runner, tmp_path):
    ledger = str(tmp_path / "ledger")
    runner = start_runner("default=1")
    assert wait_for_state(SlowAsyncWorker.enqueue({"value": 1}), "completed").result == 1
    job = SlowAsyncWorker.enqueue({"ledger": ledger}, schedule_in=3600)
    args = json.dumps({"ledger": ledger, "n": {"__relay__": "pickle", "v": "x"}})
    with connection.cursor() as cursor:  # the ORM's encoder would escape the tag
        cursor.execute(
            "UPDATE django_relay_job SET state = 'available', args = %s::jsonb WHERE id = %s",
            [args, job.pk],
        )
    assert wait_for_state(job, "discarded").errors[-1]["kind"] == "decode"
    records = wait_for(lambda: read_records(ledger), 10, message="job_discarded in the ledger")
    assert records == [{"signal": "job_discarded", "job": job.pk, "state": "discarded"}]
    assert runner.proc.poll() is None


def test_receivers_that_raise_neither_fail_the_job_nor_stop_the_runner(start_runner):
    runner = start_runner("default=1")
    ok = SlowAsyncWorker.enqueue({"value": "kept", "explode": True})
    row = wait_for_state(ok, "completed")
    assert row.result == "kept"
    assert row.attempt == 1 and row.errors == []  # job_started's failure did not fail it
    runner.wait_for_line("this receiver always fails")
    bad = BadErrorWorker.enqueue({"kind": "nul", "explode": True}, max_attempts=1)
    assert wait_for_state(bad, "discarded").attempt == 1
    assert wait_for_state(EchoWorker.enqueue({"value": 3}), "completed").result == 3
    assert runner.proc.poll() is None


def test_a_row_with_a_timestamp_python_cannot_hold_still_runs_once(start_runner):
    # '-infinity' (written by raw SQL) is due, so it is staged and claimed; loading it
    # failed the whole claim, and reconcile gave the batch back uncounted, for ever.
    runner = start_runner("default=1")
    job = EchoWorker.enqueue({"value": "odd"}, schedule_in=3600)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE django_relay_job SET scheduled_at = '-infinity' WHERE id = %s", [job.pk]
        )

    def finished() -> tuple | None:  # raw SQL: Django cannot load '-infinity' either
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT state, result::text, attempt FROM django_relay_job WHERE id = %s",
                [job.pk],
            )
            row = cursor.fetchone()
        return row if row[0] == "completed" else None

    assert wait_for(finished, 15, message="the job to complete") == ("completed", '"odd"', 1)
    assert "claiming from default failed" not in runner.output
    assert wait_for_state(EchoWorker.enqueue({"value": 5}), "completed").result == 5


REFUSE_OUTCOMES = """
CREATE FUNCTION relay_test_refuse_outcomes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Refuses every way out of executing for these jobs but reconcile's "lost" record.
    IF OLD.state = 'executing' AND NEW.state <> 'executing' AND NOT (
        jsonb_array_length(NEW.errors) > jsonb_array_length(OLD.errors)
        AND NEW.errors -> -1 ->> 'kind' = 'lost') THEN
        RAISE EXCEPTION 'this job refuses its outcome';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER relay_test_refuse_outcomes BEFORE UPDATE ON django_relay_job
FOR EACH ROW WHEN (OLD.args ? 'unwritable') EXECUTE FUNCTION relay_test_refuse_outcomes();
"""


@pytest.fixture
def outcomes_refused(transactional_db):
    with connection.cursor() as cursor:
        cursor.execute(REFUSE_OUTCOMES)
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER relay_test_refuse_outcomes ON django_relay_job")
        cursor.execute("DROP FUNCTION relay_test_refuse_outcomes()")


def test_an_attempt_no_outcome_of_which_can_be_written_is_recorded_and_counted(
    outcomes_refused, start_runner
):
    runner = start_runner()
    job = SlowAsyncWorker.enqueue({"unwritable": True, "value": 1}, max_attempts=2)
    row = wait_for_state(job, "discarded", timeout=20)
    assert row.attempt == 2
    assert [(e["attempt"], e["kind"]) for e in row.errors] == [(1, "lost"), (2, "lost")]
    runner.wait_for_line("no outcome of attempt 2 could be written")
    assert wait_for_state(EchoWorker.enqueue({"value": 6}), "completed").result == 6
