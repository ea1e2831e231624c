"""Awaiting signals with a real relayworker: live waits, snoozes, replay, deadlines."""

from __future__ import annotations

import asyncio
import signal as os_signal
import threading

import pytest

from django_relay import EncodeError, await_result, await_signal, signal, signal_sync
from django_relay.models import Job, JobSignal
from tests.conftest import await_for
from tests.signal_workers import (
    ApprovalWorker,
    ConsumeThenBlockWorker,
    SyncApprovalWorker,
    TwoSignalsWorker,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def job_row(job_id: int) -> Job:
    return await Job.objects.aget(pk=job_id)


async def snoozed_for_signal(job_id: int, n: int = 1) -> bool:
    job = await job_row(job_id)
    return job.state == "scheduled" and (job.signal_wait or {}).get("n") == n


async def test_live_wait_resumes_in_place(start_runner):
    start_runner()
    job = await ApprovalWorker.aenqueue({"user_id": 7, "wait_timeout": 30})
    await await_for(lambda: job_row(job.id), message="job row")
    await await_for(lambda: _executing(job.id), message="job executing")

    assert await signal(job.id, {"decision": "approved", "by": "ann"}) == 1
    assert await await_result(job, timeout=10) == {"charged": 7, "by": "ann"}
    row = await job_row(job.id)
    assert row.attempt == 1 and row.state == "completed"
    [sig] = [s async for s in JobSignal.objects.filter(job_id=job.id)]
    assert (sig.seq, sig.consumed_attempt) == (1, 1) and sig.consumed_at is not None


async def _executing(job_id: int) -> bool:
    return (await job_row(job_id)).state == "executing"


async def test_snoozes_without_holding_a_slot_then_resumes_on_signal(start_runner):
    start_runner("default=1")
    job = await ApprovalWorker.aenqueue({"user_id": 1, "wait_timeout": 0})
    await await_for(lambda: snoozed_for_signal(job.id), message="snoozed for a signal")
    row = await job_row(job.id)
    assert row.attempt == 0  # waiting gives the attempt back
    assert row.signal_wait["deadline"] is None and row.signal_wait["since"]

    # The only slot is free while it waits: another job runs meanwhile.
    other = await ApprovalWorker.aenqueue({"user_id": 2, "wait_timeout": 0})
    await await_for(lambda: snoozed_for_signal(other.id), message="second job snoozed")

    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    await signal(job.id, {"decision": "approved"})
    assert await await_result(job, timeout=10) == {"charged": 1, "by": None}
    assert loop.time() - sent_at < 1.0  # woken at once, not at a poll
    row = await job_row(job.id)
    assert (row.state, row.attempt) == ("completed", 1)
    assert "signal_wait" not in row.meta


async def test_signal_sent_before_await_signal_is_reached_is_consumed(start_runner):
    job = await ApprovalWorker.aenqueue({"user_id": 3}, schedule_in=3600)
    assert await signal(job.id, {"decision": "approved"}) == 1
    await Job.objects.filter(pk=job.id).aupdate(state="available")
    start_runner()
    assert await await_result(job, timeout=10) == {"charged": 3, "by": None}


async def test_decline_cancels_with_the_reason(start_runner):
    start_runner()
    job = await ApprovalWorker.aenqueue({"user_id": 4, "wait_timeout": 0})
    await await_for(lambda: snoozed_for_signal(job.id), message="snoozed")
    await signal(job.id, {"decision": "declined"})
    from django_relay import RelayCancelled

    with pytest.raises(RelayCancelled, match="declined: declined") as info:
        await await_result(job, timeout=10)
    assert info.value.reason == "declined: declined"


async def test_deadline_passes_and_signal_timeout_is_raised(start_runner):
    start_runner()
    job = await ApprovalWorker.aenqueue({"wait_for": 0.5, "wait_timeout": 0})
    from django_relay import RelayCancelled

    with pytest.raises(RelayCancelled, match="no decision"):
        await await_result(job, timeout=15)
    row = await job_row(job.id)
    assert row.attempt == 1  # the snooze did not burn an attempt


async def test_two_signals_arrive_in_order_across_snoozes(start_runner):
    start_runner()
    job = await TwoSignalsWorker.aenqueue({})
    await await_for(lambda: snoozed_for_signal(job.id, 1), message="first wait")
    await signal(job.id, {"n": "one"})
    await await_for(lambda: snoozed_for_signal(job.id, 2), message="second wait")
    await signal(job.id, {"n": "two"})
    assert await await_result(job, timeout=10) == [{"n": "one"}, {"n": "two"}]


async def test_relay_waits_through_signal_snoozes(start_runner):
    start_runner()
    relay = asyncio.ensure_future(TwoSignalsWorker.relay({}, timeout=20))
    job = await await_for(
        lambda: Job.objects.filter(worker__endswith="TwoSignalsWorker").afirst(),
        message="relayed job",
    )
    await await_for(lambda: snoozed_for_signal(job.id, 1), message="first wait")
    await signal(job.id, 1)
    await await_for(lambda: snoozed_for_signal(job.id, 2), message="second wait")
    assert not relay.done()
    await signal(job.id, 2)
    assert await relay == [1, 2]


async def test_sync_process_uses_await_signal_sync(start_runner):
    start_runner()
    job = await SyncApprovalWorker.aenqueue({})
    await await_for(lambda: snoozed_for_signal(job.id), message="snoozed")
    await signal(job.id, {"ok": True})
    assert await await_result(job, timeout=10) == {"ok": True}


async def test_runner_killed_after_a_signal_was_consumed_replays_it(start_runner, tmp_path):
    first = start_runner()
    flag = tmp_path / "release"
    job = await ConsumeThenBlockWorker.aenqueue({"flag": str(flag)})
    await await_for(lambda: _executing(job.id), message="executing")
    await signal(job.id, {"secret": 42})
    await await_for(
        lambda: JobSignal.objects.filter(job_id=job.id, consumed_at__isnull=False).aexists(),
        message="signal consumed",
    )
    first.signal(os_signal.SIGKILL)
    first.proc.wait(10)

    start_runner()  # rescues the orphan after RESCUE_AFTER
    await await_for(lambda: _attempt_is(job.id, 2), timeout=20, message="second attempt")
    flag.write_text("go")
    assert await await_result(job, timeout=10) == {"payload": {"secret": 42}, "attempt": 2}


async def _attempt_is(job_id: int, attempt: int) -> bool:
    row = await job_row(job_id)
    return row.state == "executing" and row.attempt == attempt


# -- delivery rules (no runner needed) -------------------------------------------


async def test_delivery_counts_and_no_ops():
    waiting = await ApprovalWorker.aenqueue({}, schedule_in=3600)
    other = await ApprovalWorker.aenqueue({}, schedule_in=3600)
    done = await ApprovalWorker.aenqueue({})
    await Job.objects.filter(pk=done.id).aupdate(state="completed")

    assert await signal([waiting.id, other.id, done.id, 10**12], {"x": 1}) == 2
    assert await signal(done.id, {"x": 1}) == 0
    assert await signal(10**12, {"x": 1}) == 0
    assert await signal([], {"x": 1}) == 0
    assert await JobSignal.objects.filter(job_id=done.id).acount() == 0


def test_idempotency_key_delivers_once_and_records_the_sender():
    job = ApprovalWorker.enqueue({}, schedule_in=3600)
    assert signal_sync(job.id, {"decision": "approved"}, sender="ann", key="k1") == 1
    assert signal_sync(job.id, {"decision": "approved"}, sender="ann", key="k1") == 0
    assert signal_sync(job.id, {"decision": "declined"}, key="k2") == 1
    rows = list(JobSignal.objects.filter(job=job).values_list("seq", "sender", "key"))
    assert rows == [(1, "ann", "k1"), (2, "", "k2")]


def test_bad_payloads_are_refused_and_store_nothing(settings):
    job = ApprovalWorker.enqueue({}, schedule_in=3600)
    with pytest.raises(EncodeError, match="set is not serializable"):
        signal_sync(job.id, {"bad": {1, 2}})
    settings.RELAY = {"MAX_ARGS_BYTES": 20}
    with pytest.raises(EncodeError, match="limit is 20"):
        signal_sync(job.id, {"text": "x" * 100})
    with pytest.raises(TypeError, match="job ids"):
        signal_sync("12", {})
    assert not JobSignal.objects.filter(job=job).exists()


def test_fifty_concurrent_senders_lose_and_duplicate_nothing():
    job = ApprovalWorker.enqueue({}, schedule_in=3600)
    barrier = threading.Barrier(50)
    results: list[int] = []

    def send(i: int) -> None:
        from django.db import connection

        barrier.wait()
        try:
            results.append(signal_sync(job.id, {"i": i}))
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [1] * 50
    rows = list(JobSignal.objects.filter(job=job).values_list("seq", "payload"))
    assert sorted(seq for seq, _ in rows) == list(range(1, 51))
    assert sorted(p["i"] for _, p in rows) == list(range(50))


async def test_await_signal_outside_a_job_raises():
    with pytest.raises(RuntimeError, match="inside a job"):
        await await_signal()
