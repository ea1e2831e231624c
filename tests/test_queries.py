"""The SQL that moves job states, and the triggers that announce it, on real PostgreSQL.

Runner-side statements run on our own psycopg connections (``django_relay.pg.connect``),
as the runner runs them; rows are made with the ORM through :class:`JobFactory`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import factory
import psycopg
import psycopg.errors
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from psycopg import AsyncConnection

from django_relay import codec, pg, queries
from django_relay.models import Job, JobState, Node
from django_relay.queries import Ack
from tests.factories import JobFactory, NodeFactory
from tests.workers import EchoWorker

pytestmark = pytest.mark.django_db(transaction=True)

ME = "node-me"
OTHER = "node-other"


# -- helpers ----------------------------------------------------------------------------------


@sync_to_async
def make(**fields: Any) -> Job:
    return JobFactory(**fields)


@sync_to_async
def make_node(**fields: Any) -> Node:
    return NodeFactory(**fields)


async def fetch(job: Job | int) -> Job:
    return await Job.objects.aget(pk=job if isinstance(job, int) else job.pk)


async def clock(conn: AsyncConnection) -> dt.datetime:
    """The database's wall clock now (not the transaction's now())."""
    cur = await conn.execute("SELECT clock_timestamp()")
    return (await cur.fetchone())[0]


async def heartbeat(conn: AsyncConnection, node: str, age: float = 0.0) -> None:
    """Give ``node`` a heartbeat ``age`` seconds old on the database clock."""
    await queries.heartbeat(conn, node, "test-host", 1, "{}")
    await conn.execute(
        "UPDATE django_relay_node SET heartbeat_at = now() - %s * interval '1 second'"
        " WHERE id = %s",
        (age, node),
    )


async def claim_one(conn: AsyncConnection, job: Job, node: str = ME) -> tuple:
    rows = await queries.claim(conn, job.queue, 1, node)
    assert [row[0] for row in rows] == [job.pk]
    return rows[0]


async def collect(listener: AsyncConnection, count: int, timeout: float = 5.0) -> list[Any]:
    """Up to ``count`` notifications as ``(channel, payload)``; fewer if ``timeout`` passes."""
    got = []
    async for note in listener.notifies(timeout=timeout, stop_after=count):
        payload: Any = note.payload
        if note.channel == queries.EVENTS_CHANNEL or note.channel.startswith("relay_finished"):
            # The contract: [id, state, attempt] per job the statement finished.
            payload = [(job_id, state) for job_id, state, _ in json.loads(payload)]
        elif note.channel == queries.AVAILABLE_CHANNEL:
            # The contract: the queue and how many of its jobs became available.
            available = queries.available_payload(payload)
            assert available is not None, payload
            payload = (available.queue, available.count)
        got.append((note.channel, payload))
    return got


@pytest.fixture
async def conn() -> AsyncIterator[AsyncConnection]:
    connection = await pg.connect()
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def conn2() -> AsyncIterator[AsyncConnection]:
    connection = await pg.connect()
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def listener() -> AsyncIterator[AsyncConnection]:
    connection = await pg.connect(listen=True)
    try:
        await connection.execute(f"LISTEN {queries.AVAILABLE_CHANNEL}")
        # Every finished job is on the event feed's channel; a waiter's is below.
        await connection.execute(f"LISTEN {queries.EVENTS_CHANNEL}")
        yield connection
    finally:
        await connection.close()


def ago(seconds: float) -> dt.datetime:
    return timezone.now() - dt.timedelta(seconds=seconds)


# -- claim ------------------------------------------------------------------------------------


async def test_claim_orders_by_priority_then_scheduled_at_then_id(conn):
    a = await make(priority=1, scheduled_at=ago(10))
    b = await make(priority=0, scheduled_at=ago(5))
    c = await make(priority=0, scheduled_at=ago(20))
    d = await make(priority=0, scheduled_at=c.scheduled_at)
    e = await make(priority=9, scheduled_at=ago(100))
    expected = [c.pk, d.pk, b.pk, a.pk, e.pk]

    one_by_one = []
    for _ in expected:
        rows = await queries.claim(conn, "default", 1, ME)
        one_by_one.extend(row[0] for row in rows)
    assert one_by_one == expected
    assert await queries.claim(conn, "default", 1, ME) == []


async def test_claim_returns_a_batch_in_claim_order(conn):
    jobs = [
        await make(priority=p, scheduled_at=ago(s)) for p, s in [(3, 1), (0, 2), (0, 9), (1, 5)]
    ]
    rows = await queries.claim(conn, "default", 10, ME)
    by_order = sorted(jobs, key=lambda j: (j.priority, j.scheduled_at, j.pk))
    assert [row[0] for row in rows] == [job.pk for job in by_order]


async def test_claim_takes_at_most_limit(conn):
    jobs = [await make(scheduled_at=ago(10 - n)) for n in range(5)]
    rows = await queries.claim(conn, "default", 2, ME)
    assert [row[0] for row in rows] == [jobs[0].pk, jobs[1].pk]
    states = [(await fetch(job)).state for job in jobs]
    assert states == ["executing", "executing", "available", "available", "available"]


async def test_claim_plan_stays_on_the_fetch_index_after_an_empty_analyze_and_a_burst(conn):
    """The claim's plan never depends on statistics taken while the queue was empty.

    A plan cached while the table was empty (a drained queue, just analysed) is a
    sequential scan and a nested loop over the whole table: once a burst lands, each
    claim of 100 scanned the table 100 times. ``auto_explain`` reports the plan of
    the claim exactly as the runner executes it; generic plans are forced, so a
    prepared claim would reuse the one made while the table was empty.
    """
    plans: list[str] = []
    conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        await conn.execute("LOAD 'auto_explain'")
    except psycopg.errors.UndefinedFile:
        pytest.skip(
            "this PostgreSQL has no auto_explain (the embedded server's wheel ships no "
            "contrib modules): run with DATABASE_URL at a full PostgreSQL to check the plan"
        )
    await conn.execute("SET auto_explain.log_min_duration = 0")
    await conn.execute("SET client_min_messages = log")
    await conn.execute("ANALYZE django_relay_job")
    for _ in range(10):  # more than psycopg's prepare threshold and the server's 5 custom plans
        assert await queries.claim(conn, "burst", 100, ME) == []
    await sync_to_async(JobFactory.create_batch)(2000, queue="burst")

    plans.clear()
    assert len(await queries.claim(conn, "burst", 100, ME)) == 100
    [plan] = [text for text in plans if "claim_token_seq" in text]
    assert "relay_job_fetch" in plan
    assert "Seq Scan" not in plan


async def test_claim_takes_only_the_given_queue(conn):
    mine = [await make(queue="mail"), await make(queue="mail")]
    theirs = await make(queue="default")
    similar = await make(queue="mail2")
    rows = await queries.claim(conn, "mail", 10, ME)
    assert {row[0] for row in rows} == {job.pk for job in mine}
    assert (await fetch(theirs)).state == JobState.AVAILABLE
    assert (await fetch(similar)).state == JobState.AVAILABLE


async def test_claim_takes_only_available_jobs(conn):
    for traits in ("scheduled", "executing", "retryable", "completed", "discarded", "cancelled"):
        await make(**{traits: True})
    await make(state=JobState.SUSPENDED)
    await make(state=JobState.RETRYABLE, scheduled_at=ago(60))  # due, but not staged yet
    assert await queries.claim(conn, "default", 100, ME) == []


async def test_claim_marks_the_job_executing_as_ours(conn):
    job = await make(attempt=2, max_attempts=5, args={"value": {"d": "x"}})
    before = await clock(conn)
    row = await claim_one(conn, job)
    after = await clock(conn)
    claimed = dict(zip(queries.JOB_COLUMNS, row, strict=True))
    assert claimed["state"] == "executing"
    assert claimed["attempt"] == 3
    assert claimed["attempted_by"] == ME
    assert before <= claimed["attempted_at"] <= after
    assert codec.loads(claimed["args"]) == {"value": {"d": "x"}}
    assert claimed["worker"] == EchoWorker.__relay_worker__

    stored = await fetch(job)
    assert (stored.state, stored.attempt, stored.attempted_by) == ("executing", 3, ME)
    assert stored.attempted_at == claimed["attempted_at"]
    assert stored.finished_at is None


async def test_concurrent_claims_skip_each_others_locked_jobs(conn, conn2):
    jobs = [await make(scheduled_at=ago(100 - n)) for n in range(10)]
    async with conn.transaction():
        first = await queries.claim(conn, "default", 3, "node-a")
        # conn still holds its row locks: conn2 must skip them, not wait, not take them.
        async with conn2.transaction():
            second = await asyncio.wait_for(queries.claim(conn2, "default", 10, "node-b"), 5)
    first_ids = {row[0] for row in first}
    second_ids = {row[0] for row in second}
    assert first_ids == {job.pk for job in jobs[:3]}
    assert second_ids == {job.pk for job in jobs[3:]}
    owners = {job.pk: (await fetch(job)).attempted_by for job in jobs}
    assert {pk for pk, node in owners.items() if node == "node-a"} == first_ids
    assert {pk for pk, node in owners.items() if node == "node-b"} == second_ids


async def test_racing_claimers_never_take_the_same_job(conn, conn2):
    await sync_to_async(JobFactory.create_batch)(60)

    async def drain(connection: AsyncConnection, node: str) -> list[int]:
        taken: list[int] = []
        while True:
            async with connection.transaction():
                rows = await queries.claim(connection, "default", 4, node)
                await asyncio.sleep(0)  # hold the locks while the other claims
            if not rows:
                return taken
            taken.extend(row[0] for row in rows)

    a, b = await asyncio.wait_for(asyncio.gather(drain(conn, "node-a"), drain(conn2, "node-b")), 30)
    assert len(a) + len(b) == 60
    assert len(set(a) | set(b)) == 60
    assert not set(a) & set(b)
    assert await Job.objects.filter(state="executing", attempt=1).acount() == 60


# -- ack --------------------------------------------------------------------------------------


async def claimed_job(conn: AsyncConnection, node: str = ME, **fields: Any) -> Job:
    job = await make(**fields)
    await claim_one(conn, job, node)
    return await fetch(job)


async def test_ack_completed_stores_the_result_and_finishes(conn):
    job = await claimed_job(conn)
    result = codec.dumps({"sum": 3, "at": dt.date(2024, 1, 1)})
    before = await clock(conn)
    acks = [Ack(job.pk, 1, JobState.COMPLETED, result=result, token=job.claim_token)]
    ours = await queries.ack(conn, ME, acks)
    after = await clock(conn)
    assert ours == {job.claim_token}
    stored = await fetch(job)
    assert stored.state == JobState.COMPLETED
    assert stored.result == {"sum": 3, "at": dt.date(2024, 1, 1)}
    assert before <= stored.finished_at <= after
    assert stored.attempt == 1
    assert stored.errors == []
    assert stored.scheduled_at == job.scheduled_at


async def test_ack_retryable_appends_the_error_and_schedules_after_the_delay(conn):
    job = await claimed_job(conn, errors=[{"attempt": 0, "error": "earlier"}])
    error = codec.dumps({"attempt": 1, "kind": "error", "error": "ValueError: x"})
    before = await clock(conn)
    acks = [Ack(job.pk, 1, JobState.RETRYABLE, error=error, delay=30, token=job.claim_token)]
    ours = await queries.ack(conn, ME, acks)
    after = await clock(conn)
    assert ours == {job.claim_token}
    stored = await fetch(job)
    assert stored.state == JobState.RETRYABLE
    assert stored.attempt == 1  # a failure counts
    assert stored.finished_at is None
    assert stored.result is None
    delay = dt.timedelta(seconds=30)
    assert before + delay <= stored.scheduled_at <= after + delay
    assert len(stored.errors) == 2
    assert stored.errors[0] == {"attempt": 0, "error": "earlier"}
    entry = stored.errors[1]
    assert {k: v for k, v in entry.items() if k != "at"} == {
        "attempt": 1,
        "kind": "error",
        "error": "ValueError: x",
    }
    assert before <= dt.datetime.fromisoformat(entry["at"]) <= after  # the database's clock


@pytest.mark.parametrize("state", [JobState.DISCARDED, JobState.CANCELLED])
async def test_ack_discarded_or_cancelled_finishes_with_the_error(conn, state):
    job = await claimed_job(conn)
    error = codec.dumps({"attempt": 1, "kind": "error", "error": "last words"})
    before = await clock(conn)
    acks = [Ack(job.pk, 1, state, error=error, token=job.claim_token)]
    assert await queries.ack(conn, ME, acks) == {job.claim_token}
    after = await clock(conn)
    stored = await fetch(job)
    assert stored.state == state
    assert before <= stored.finished_at <= after
    assert [e["error"] for e in stored.errors] == ["last words"]
    assert stored.result is None


async def test_ack_snooze_gives_the_attempt_back_and_reschedules(conn):
    job = await claimed_job(conn, attempt=2, max_attempts=3)  # claimed: attempt 3 of 3
    assert job.attempt == 3
    before = await clock(conn)
    ours = await queries.ack(
        conn,
        ME,
        [Ack(job.pk, 3, JobState.SCHEDULED, delay=120, attempt_delta=-1, token=job.claim_token)],
    )
    after = await clock(conn)
    assert ours == {job.claim_token}
    stored = await fetch(job)
    assert stored.state == JobState.SCHEDULED
    assert stored.attempt == 2
    assert stored.errors == []
    assert stored.finished_at is None
    delay = dt.timedelta(seconds=120)
    assert before + delay <= stored.scheduled_at <= after + delay


@pytest.mark.parametrize("delay", [float("inf"), float("nan"), 1e300, 1e13], ids=repr)
async def test_ack_with_an_absurd_delay_still_lands_with_its_batch(conn, delay):
    # A user's backoff() may return anything; one bad delay must not fail the batch.
    absurd, fine = await make(), await make()
    tokens = {row[0]: row[-1] for row in await queries.claim(conn, "default", 2, ME)}
    acks = [
        Ack(
            absurd.pk,
            1,
            JobState.RETRYABLE,
            error='{"error": "x"}',
            delay=delay,
            token=tokens[absurd.pk],
        ),
        Ack(fine.pk, 1, JobState.COMPLETED, result="1", token=tokens[fine.pk]),
    ]
    assert await queries.ack(conn, ME, acks) == set(tokens.values())
    stored = await fetch(absurd)
    assert stored.state == JobState.RETRYABLE
    years = (stored.scheduled_at - await clock(conn)).days / 365.25
    assert 9.9 < years <= 10
    assert (await fetch(fine)).state == JobState.COMPLETED


async def test_ack_merges_meta(conn):
    job = await claimed_job(conn, meta={"keep": 1, "replace": "old"})
    meta = codec.dumps({"replace": "new", "result_too_large": {"size": 9, "limit": 5}})
    acks = [Ack(job.pk, 1, JobState.COMPLETED, meta=meta, token=job.claim_token)]
    assert await queries.ack(conn, ME, acks) == {job.claim_token}
    stored = await fetch(job)
    assert stored.meta == {"keep": 1, "replace": "new", "result_too_large": {"size": 9, "limit": 5}}
    assert stored.result is None


async def test_ack_writes_a_batch_in_one_call(conn):
    jobs = [await make() for _ in range(3)]
    tokens = {row[0]: row[-1] for row in await queries.claim(conn, "default", 3, ME)}
    t = [tokens[job.pk] for job in jobs]
    acks = [
        Ack(jobs[0].pk, 1, JobState.COMPLETED, result="1", token=t[0]),
        Ack(jobs[1].pk, 1, JobState.SCHEDULED, delay=60, attempt_delta=-1, token=t[1]),
        Ack(jobs[2].pk, 1, JobState.CANCELLED, token=t[2]),
    ]
    assert await queries.ack(conn, ME, acks) == set(t)
    states = [(await fetch(job)).state for job in jobs]
    assert states == ["completed", "scheduled", "cancelled"]


async def assert_unchanged(job: Job) -> None:
    stored = await fetch(job)
    for field in ("state", "attempt", "attempted_by", "result", "errors", "scheduled_at"):
        assert getattr(stored, field) == getattr(job, field), field
    assert stored.finished_at is None


async def test_ack_from_another_node_is_fenced_off(conn):
    job = await claimed_job(conn, node=ME)
    acks = [Ack(job.pk, 1, JobState.COMPLETED, result="1", token=job.claim_token)]
    assert await queries.ack(conn, OTHER, acks) == set()
    await assert_unchanged(job)


async def test_ack_of_another_claim_is_fenced_off(conn):
    job = await claimed_job(conn, attempt=1)  # now attempt 2
    for token in (None, 0, job.claim_token - 1, job.claim_token + 1):
        acks = [Ack(job.pk, 2, JobState.COMPLETED, result="1", token=token)]
        assert await queries.ack(conn, ME, acks) == set()
    await assert_unchanged(job)


async def test_each_claim_draws_a_new_token(conn):
    job = await claimed_job(conn)
    await queries.release(conn, ME, [job.claim_token])  # attempt given back: 1 again
    again = await claimed_job_again(conn, job)
    assert again.attempt == job.attempt == 1
    assert again.claim_token > job.claim_token


async def claimed_job_again(conn: AsyncConnection, job: Job, node: str = ME) -> Job:
    await claim_one(conn, job, node)
    return await fetch(job)


@pytest.mark.parametrize("give_back", ["release", "reconcile", "snooze"])
async def test_a_stale_ack_after_a_give_back_and_a_new_claim_with_the_same_attempt_changes_nothing(
    conn, give_back
):
    job = await claimed_job(conn)  # attempt 1, token t1
    stale = [Ack(job.pk, 1, JobState.COMPLETED, result='"stale"', token=job.claim_token)]
    if give_back == "release":
        assert await queries.release(conn, ME, [job.claim_token]) == 1
    elif give_back == "reconcile":
        assert await queries.reconcile(conn, ME, []) == [(job.pk, "available")]
    else:
        snooze = Ack(
            job.pk, 1, JobState.SCHEDULED, delay=0, attempt_delta=-1, token=job.claim_token
        )
        assert await queries.ack(conn, ME, [snooze]) == {job.claim_token}
        await queries.stage(conn)
    again = await claimed_job_again(conn, job)  # attempt 1 again, by the same node
    assert (again.attempt, again.attempted_by) == (job.attempt, job.attempted_by)
    assert await queries.ack(conn, ME, stale) == set()
    await assert_unchanged(again)
    ours = [Ack(job.pk, 1, JobState.COMPLETED, result='"ok"', token=again.claim_token)]
    assert await queries.ack(conn, ME, ours) == {again.claim_token}
    assert (await fetch(job)).result == "ok"


async def test_ack_after_a_rescue_and_a_new_claim_changes_nothing(conn):
    job = await claimed_job(conn, node=ME)  # ME never heartbeats: its job is an orphan
    assert await queries.rescue(conn, 60) == [(job.pk, "available")]
    late = [Ack(job.pk, 1, JobState.COMPLETED, result='"late"', token=job.claim_token)]
    assert await queries.ack(conn, ME, late) == set()
    rescued = await fetch(job)
    assert rescued.state == JobState.AVAILABLE and rescued.result is None

    await claim_one(conn, job, OTHER)  # attempt 2, by another node
    reclaimed = await fetch(job)
    assert await queries.ack(conn, ME, late) == set()
    theirs = [Ack(job.pk, 2, JobState.COMPLETED, result="1", token=reclaimed.claim_token)]
    assert await queries.ack(conn, ME, theirs) == set()
    await assert_unchanged(reclaimed)
    # The rightful owner's ack still lands.
    right = [Ack(job.pk, 2, JobState.COMPLETED, result='"ok"', token=reclaimed.claim_token)]
    assert await queries.ack(conn, OTHER, right) == {reclaimed.claim_token}
    assert (await fetch(job)).result == "ok"


async def test_ack_after_a_release_changes_nothing(conn):
    job = await claimed_job(conn)
    assert await queries.release(conn, ME, [job.claim_token]) == 1
    released = await fetch(job)
    acks = [Ack(job.pk, 1, JobState.COMPLETED, result="1", token=job.claim_token)]
    assert await queries.ack(conn, ME, acks) == set()
    await assert_unchanged(released)


async def test_ack_of_a_finished_job_is_not_repeated(conn):
    job = await claimed_job(conn)
    acks = [
        Ack(job.pk, 1, JobState.RETRYABLE, error='{"error": "x"}', delay=5, token=job.claim_token)
    ]
    assert await queries.ack(conn, ME, acks) == {job.claim_token}
    # A repeated batch (the acker retries after a lost connection) matches nothing.
    assert await queries.ack(conn, ME, acks) == set()
    assert len((await fetch(job)).errors) == 1


async def test_a_fenced_ack_does_not_stop_the_rest_of_its_batch(conn):
    mine = await claimed_job(conn, node=ME)
    theirs = await claimed_job(conn, node=OTHER)
    acks = [
        Ack(mine.pk, 1, JobState.COMPLETED, result="1", token=mine.claim_token),
        Ack(theirs.pk, 1, JobState.COMPLETED, result="2", token=theirs.claim_token),
        Ack(999_999_999, 1, JobState.COMPLETED, result="3", token=mine.claim_token),
    ]
    assert await queries.ack(conn, ME, acks) == {mine.claim_token}
    assert (await fetch(mine)).state == JobState.COMPLETED
    await assert_unchanged(theirs)


# -- rescue -----------------------------------------------------------------------------------


async def test_rescue_requeues_jobs_of_a_node_with_a_stale_heartbeat(conn):
    await heartbeat(conn, "node-dead", age=120)
    job = await claimed_job(conn, node="node-dead", errors=[{"error": "older"}])
    before = await clock(conn)
    rows = await queries.rescue(conn, 60)
    after = await clock(conn)
    assert rows == [(job.pk, "available")]
    stored = await fetch(job)
    assert stored.state == JobState.AVAILABLE
    assert stored.attempt == 1
    assert stored.finished_at is None
    assert len(stored.errors) == 2
    entry = stored.errors[-1]
    assert entry["kind"] == "rescued"
    assert entry["attempt"] == 1
    assert "node-dead" in entry["error"]
    assert before <= dt.datetime.fromisoformat(entry["at"]) <= after
    # The dead node is forgotten.
    assert not await Node.objects.filter(pk="node-dead").aexists()


async def test_rescue_requeues_jobs_of_a_node_without_a_heartbeat_row(conn):
    job = await claimed_job(conn, node="node-never-seen")
    assert await queries.rescue(conn, 60) == [(job.pk, "available")]
    assert (await fetch(job)).errors[-1]["kind"] == "rescued"


async def test_rescue_discards_a_job_whose_attempts_are_spent(conn):
    job = await claimed_job(conn, node="node-dead", attempt=2, max_attempts=3)
    before = await clock(conn)
    assert await queries.rescue(conn, 60) == [(job.pk, "discarded")]
    after = await clock(conn)
    stored = await fetch(job)
    assert stored.state == JobState.DISCARDED
    assert before <= stored.finished_at <= after
    assert stored.errors[-1]["kind"] == "rescued"


async def test_rescue_leaves_a_live_nodes_jobs_alone(conn):
    await heartbeat(conn, ME, age=10)  # recent enough for after=60
    await heartbeat(conn, "node-dead", age=61)
    live = await claimed_job(conn, node=ME)
    dead = await claimed_job(conn, node="node-dead")
    assert await queries.rescue(conn, 60) == [(dead.pk, "available")]
    await assert_unchanged(live)
    assert await Node.objects.filter(pk=ME).aexists()


async def test_rescue_leaves_jobs_that_are_not_executing_alone(conn):
    await heartbeat(conn, "node-dead", age=120)
    others = [
        await make(completed=True, attempted_by="node-dead"),
        await make(retryable=True, attempted_by="node-dead"),
        await make(scheduled=True),
    ]
    assert await queries.rescue(conn, 60) == []
    for job in others:
        stored = await fetch(job)
        assert stored.state == job.state
        assert stored.errors == job.errors


# -- reconcile and release --------------------------------------------------------------------


async def test_reconcile_gives_back_our_jobs_that_we_are_not_running(conn):
    await heartbeat(conn, ME)
    running = await claimed_job(conn, node=ME)
    lost = [await claimed_job(conn, node=ME), await claimed_job(conn, node=ME)]
    theirs = await claimed_job(conn, node=OTHER)
    returned = await queries.reconcile(conn, ME, [running.claim_token])
    assert sorted(returned) == sorted((job.pk, "available") for job in lost)
    for job in lost:
        stored = await fetch(job)
        assert (stored.state, stored.attempt) == (JobState.AVAILABLE, 0)
    await assert_unchanged(running)
    await assert_unchanged(theirs)


async def test_reconcile_counts_an_attempt_whose_outcome_was_lost(conn):
    # Giving such an attempt back uncounted let a job whose outcome cannot be
    # written run for ever (issue 8).
    spare = await claimed_job(conn, node=ME, attempt=0, max_attempts=2)
    last = await claimed_job(conn, node=ME, attempt=1, max_attempts=2)
    returned = await queries.reconcile(conn, ME, [], [spare.claim_token, last.claim_token])
    assert sorted(returned) == sorted([(spare.pk, "retryable"), (last.pk, "discarded")])
    for job, state in ((spare, JobState.RETRYABLE), (last, JobState.DISCARDED)):
        stored = await fetch(job)
        assert (stored.state, stored.attempt) == (state, job.attempt)
        assert stored.errors[-1]["kind"] == "lost"
        assert (stored.finished_at is not None) == (state == JobState.DISCARDED)


async def test_reconcile_with_nothing_running_gives_back_all_of_ours(conn):
    jobs = [await claimed_job(conn, node=ME) for _ in range(2)]
    returned = await queries.reconcile(conn, ME, [])
    assert sorted(returned) == sorted((job.pk, "available") for job in jobs)


async def test_release_returns_our_unfinished_jobs_with_the_attempt_given_back(conn):
    mine = [await claimed_job(conn, node=ME, attempt=n) for n in (0, 4)]
    theirs = await claimed_job(conn, node=OTHER)
    done = await make(completed=True, attempted_by=ME)
    tokens = [*(job.claim_token for job in mine), theirs.claim_token, done.pk]
    assert await queries.release(conn, ME, tokens) == 2
    assert [(await fetch(job)).attempt for job in mine] == [0, 4]
    assert [(await fetch(job)).state for job in mine] == [JobState.AVAILABLE] * 2
    await assert_unchanged(theirs)
    assert (await fetch(done)).state == JobState.COMPLETED


async def test_release_gives_an_attempt_back_once_then_counts_it(conn):
    # A job that always outlives the grace period (or stops its own runner) was
    # given back uncounted at every shutdown: it could loop for ever (issue 8).
    job = await claimed_job(conn, node=ME, attempt=1, max_attempts=3)  # attempt 2
    assert await queries.release(conn, ME, [job.claim_token]) == 1
    first = await fetch(job)
    assert (first.state, first.attempt, first.errors) == (JobState.AVAILABLE, 1, [])
    again = await claimed_job_again(conn, job)  # attempt 2 again
    assert await queries.release(conn, ME, [again.claim_token]) == 1
    second = await fetch(job)
    assert (second.state, second.attempt) == (JobState.AVAILABLE, 2)  # it counts now
    assert second.errors[-1]["kind"] == "released"
    third = await claimed_job_again(conn, job)  # attempt 3: a new number, one give-back
    assert await queries.release(conn, ME, [third.claim_token]) == 1
    assert (await fetch(job)).attempt == 2
    last = await claimed_job_again(conn, job)  # attempt 3 again: the last one
    assert await queries.release(conn, ME, [last.claim_token]) == 1
    ended = await fetch(job)
    assert (ended.state, ended.attempt) == (JobState.DISCARDED, 3)
    assert ended.finished_at is not None


# -- stage and prune --------------------------------------------------------------------------


async def test_stage_makes_due_scheduled_and_retryable_jobs_available(conn):
    due = [
        await make(state=JobState.SCHEDULED, scheduled_at=ago(1)),
        await make(retryable=True, scheduled_at=ago(30)),
    ]
    future = [
        await make(state=JobState.SCHEDULED, scheduled_at=ago(-3600)),
        await make(retryable=True, scheduled_at=ago(-60)),
    ]
    untouched = [
        await make(state=JobState.SUSPENDED, scheduled_at=ago(60)),
        await make(completed=True),
    ]
    assert await queries.stage(conn) == 2
    assert [(await fetch(job)).state for job in due] == ["available", "available"]
    assert [(await fetch(job)).state for job in future] == ["scheduled", "retryable"]
    assert [(await fetch(job)).state for job in untouched] == ["suspended", "completed"]
    assert await queries.stage(conn) == 0


async def test_stage_respects_its_limit(conn):
    for n in range(3):
        await make(state=JobState.SCHEDULED, scheduled_at=ago(10 - n))
    assert await queries.stage(conn, limit=2) == 2
    assert await Job.objects.filter(state="available").acount() == 2


async def test_prune_deletes_only_finished_jobs_older_than_the_cutoff(conn):
    day = 86_400
    old_finished = [
        await make(completed=True, finished_at=ago(2 * day)),
        await make(discarded=True, finished_at=ago(2 * day)),
        await make(cancelled=True, finished_at=ago(2 * day)),
    ]
    kept = [
        await make(completed=True, finished_at=ago(3600)),
        await make(scheduled_at=ago(10 * day)),
        await make(retryable=True, scheduled_at=ago(10 * day)),
        await make(executing=True, attempted_at=ago(10 * day)),
    ]
    assert await queries.prune(conn, day) == 3
    remaining = {pk async for pk in Job.objects.values_list("pk", flat=True)}
    assert remaining == {job.pk for job in kept}
    assert not remaining & {job.pk for job in old_finished}


# -- triggers: NOTIFY -------------------------------------------------------------------------


async def test_inserting_available_jobs_notifies_their_queue(listener):
    await EchoWorker.aenqueue({"value": 1}, queue="mail")
    assert await collect(listener, 1) == [(queries.AVAILABLE_CHANNEL, ("mail", 1))]


async def test_inserting_a_scheduled_job_does_not_notify(listener):
    await EchoWorker.aenqueue({}, schedule_in=3600, queue="later")
    await EchoWorker.aenqueue({}, queue="marker")
    # Notifications arrive in commit order: the marker's is the first one.
    assert await collect(listener, 1) == [(queries.AVAILABLE_CHANNEL, ("marker", 1))]


async def test_one_insert_of_many_notifies_each_queue(listener):
    from django_relay import aenqueue_many

    await aenqueue_many(
        [EchoWorker.new(queue="q1"), EchoWorker.new(queue="q2"), EchoWorker.new(queue="q1")]
    )
    notes = await collect(listener, 2)
    assert sorted(notes) == [
        (queries.AVAILABLE_CHANNEL, ("q1", 2)),
        (queries.AVAILABLE_CHANNEL, ("q2", 1)),
    ]


async def test_enqueue_many_sends_one_notification_per_queue_with_its_count(listener):
    from django_relay import aenqueue_many

    await aenqueue_many(
        [EchoWorker.new(queue="bulk") for _ in range(250)] + [EchoWorker.new(queue="other")]
    )
    # Waits for a third notification, which never comes: one per queue per statement.
    notes = await collect(listener, 3, timeout=1.0)
    assert sorted(notes) == [
        (queries.AVAILABLE_CHANNEL, ("bulk", 250)),
        (queries.AVAILABLE_CHANNEL, ("other", 1)),
    ]


async def test_available_notifications_are_numbered_for_the_runners_turns(listener):
    await EchoWorker.aenqueue({}, queue="turns")
    await EchoWorker.aenqueue({}, queue="turns")
    notes = [
        queries.available_payload(note.payload)
        async for note in listener.notifies(timeout=5.0, stop_after=2)
    ]
    assert [(n.queue, n.count, n.hops) for n in notes if n] == [("turns", 1, 0)] * 2
    first, second = notes
    assert first and second and second.seq > first.seq


async def finish(conn: AsyncConnection, job: Job) -> None:
    token = (await claim_one(conn, job))[-1]
    await queries.ack(conn, ME, [Ack(job.pk, 1, JobState.COMPLETED, result="1", token=token)])


@pytest.fixture
async def waiting() -> AsyncIterator[tuple[AsyncConnection, str, str]]:
    """A raw connection LISTENing to two waiters' channels (and to ``relay_finished``)."""
    connection = await pg.connect(listen=True)
    channels = queries.finished_channel("one"), queries.finished_channel("two")
    try:
        for channel in (queries.FINISHED_CHANNEL, *channels):
            await connection.execute(f"LISTEN {channel}")
        yield connection, *channels
    finally:
        await connection.close()


async def test_a_job_nobody_waits_on_sends_no_relay_finished_notification(conn, waiting):
    listener, one, _ = waiting
    nobodys, waited = await make(queue="work"), await make(queue="work")
    assert await queries.subscribe(conn, [waited.pk], one)
    await finish(conn, nobodys)
    await finish(conn, waited)
    # Waits for a second notification, which never comes: nothing for nobody's job.
    assert await collect(listener, 2, timeout=1.0) == [(one, [(waited.pk, "completed")])]


async def test_every_waiter_of_a_job_hears_of_it_once(conn, waiting):
    listener, one, two = waiting
    job = await make(queue="work")
    for channel in (one, two, one):  # subscribing twice adds the channel once
        [row] = await queries.subscribe(conn, [job.pk], channel)
        assert row[:2] == (job.pk, "available")
    stored = await fetch(job)
    assert stored.waiters == [one, two]
    await finish(conn, job)
    notes = await collect(listener, 3, timeout=1.0)
    assert sorted(notes) == [(one, [(job.pk, "completed")]), (two, [(job.pk, "completed")])]


async def test_subscribing_to_an_available_job_announces_it_again(conn, listener):
    # A claim that ran while the subscribing UPDATE held the row skipped it.
    job = await make(queue="work")
    assert await collect(listener, 1) == [(queries.AVAILABLE_CHANNEL, ("work", 1))]
    await queries.subscribe(conn, [job.pk], queries.finished_channel("one"))
    assert await collect(listener, 1) == [(queries.AVAILABLE_CHANNEL, ("work", 1))]
    await queries.subscribe(conn, [job.pk], queries.finished_channel("one"))  # no change
    await make(queue="marker")
    assert await collect(listener, 1) == [(queries.AVAILABLE_CHANNEL, ("marker", 1))]


async def test_subscribing_returns_the_outcome_the_update_saw(conn, waiting):
    _, one, _ = waiting
    job = await make(queue="work")
    await finish(conn, job)
    [row] = await queries.subscribe(conn, [job.pk, 10**12], one)  # a missing id: no row
    assert row[:3] == (job.pk, "completed", "1")


async def test_a_bad_channel_name_in_waiters_never_aborts_an_ack(conn, waiting):
    listener, one, _ = waiting
    job = await make(queue="work")
    await conn.execute(
        "UPDATE django_relay_job SET waiters = ARRAY['', %s, %s] WHERE id = %s",
        ("é" * 40, one, job.pk),  # 40 characters, 80 bytes: too long a channel
    )
    await finish(conn, job)
    assert (await fetch(job)).state == JobState.COMPLETED
    assert await collect(listener, 1) == [(one, [(job.pk, "completed")])]


async def test_an_ack_of_many_jobs_sends_their_outcomes_in_batches_of_100(conn, listener):
    from django_relay import aenqueue_many

    jobs = await aenqueue_many([EchoWorker.new(queue="bulk") for _ in range(250)])
    assert await collect(listener, 1) == [(queries.AVAILABLE_CHANNEL, ("bulk", 250))]
    rows = await queries.claim(conn, "bulk", 250, ME)
    acks = [Ack(row[0], 1, JobState.COMPLETED, result="1", token=row[-1]) for row in rows]
    assert len(await queries.ack(conn, ME, acks)) == 250
    notes = await collect(listener, 4, timeout=1.0)
    assert [(channel, len(events)) for channel, events in notes] == [
        (queries.EVENTS_CHANNEL, 100),
        (queries.EVENTS_CHANNEL, 100),
        (queries.EVENTS_CHANNEL, 50),
    ]
    finished = sorted(event for _, events in notes for event in events)
    assert finished == sorted((job.pk, "completed") for job in jobs)


async def test_staging_notifies_the_queue(conn, listener):
    await make(state=JobState.SCHEDULED, scheduled_at=ago(1), queue="staged")
    assert await queries.stage(conn) == 1
    assert await collect(listener, 1) == [(queries.AVAILABLE_CHANNEL, ("staged", 1))]


async def test_claim_does_not_notify_but_leaving_executing_does(conn, listener):
    job = await make(queue="work")
    assert await collect(listener, 1) == [(queries.AVAILABLE_CHANNEL, ("work", 1))]
    token = (await claim_one(conn, job))[-1]
    await queries.ack(conn, ME, [Ack(job.pk, 1, JobState.COMPLETED, result="1", token=token)])
    # The first notification after the claim is the ack's: available -> executing sent none.
    assert await collect(listener, 1) == [(queries.EVENTS_CHANNEL, [(job.pk, "completed")])]


@pytest.mark.parametrize(
    "ack",
    [
        {"state": JobState.RETRYABLE, "delay": 60, "error": '{"error": "x"}'},
        {"state": JobState.DISCARDED, "error": '{"error": "x"}'},
        {"state": JobState.CANCELLED},
        {"state": JobState.SCHEDULED, "delay": 60, "attempt_delta": -1},
    ],
    ids=lambda ack: ack["state"],
)
async def test_every_way_out_of_executing_notifies_finished(conn, listener, ack):
    job = await make(queue="work")
    token = (await claim_one(conn, job))[-1]
    assert await queries.ack(conn, ME, [Ack(job.pk, 1, token=token, **ack)]) == {token}
    notes = await collect(listener, 2)
    assert notes == [
        (queries.AVAILABLE_CHANNEL, ("work", 1)),
        (queries.EVENTS_CHANNEL, [(job.pk, str(ack["state"]))]),
    ]


async def test_rescue_notifies_finished_and_available(conn, listener):
    job = await make(queue="work")
    await claim_one(conn, job, node="node-dead")
    assert await collect(listener, 1) == [(queries.AVAILABLE_CHANNEL, ("work", 1))]
    await queries.rescue(conn, 60)
    notes = await collect(listener, 2)
    assert sorted(notes, key=str) == sorted(
        [
            (queries.AVAILABLE_CHANNEL, ("work", 1)),
            (queries.EVENTS_CHANNEL, [(job.pk, "available")]),
        ],
        key=str,
    )


async def test_cancelling_a_job_that_is_not_executing_notifies_finished(conn, listener):
    job = await make(scheduled=True)
    cancelled = await queries.cancel_unstarted(conn, [job.pk], "not needed")
    assert cancelled == [job.pk]
    assert await collect(listener, 1) == [(queries.EVENTS_CHANNEL, [(job.pk, "cancelled")])]
    stored = await fetch(job)
    assert stored.state == JobState.CANCELLED
    assert stored.finished_at is not None
    assert stored.errors[-1]["error"] == "not needed"


async def test_moves_between_unfinished_states_do_not_notify_finished(conn, listener):
    job = await make(scheduled=True)
    await conn.execute("UPDATE django_relay_job SET state = 'retryable' WHERE id = %s", (job.pk,))
    await conn.execute("UPDATE django_relay_job SET state = 'scheduled' WHERE id = %s", (job.pk,))
    marker = await make(queue="marker")
    assert marker.pk
    assert await collect(listener, 1) == [(queries.AVAILABLE_CHANNEL, ("marker", 1))]


async def test_an_update_that_keeps_the_state_does_not_notify(conn, listener):
    job = await make(queue="work")
    assert await collect(listener, 1) == [(queries.AVAILABLE_CHANNEL, ("work", 1))]
    await conn.execute("UPDATE django_relay_job SET priority = 5 WHERE id = %s", (job.pk,))
    await make(queue="marker")
    assert await collect(listener, 1) == [(queries.AVAILABLE_CHANNEL, ("marker", 1))]


async def test_notifications_wait_for_commit(conn, listener):
    job = await make(scheduled=True, queue="tx")
    async with conn.transaction():
        await conn.execute(
            "UPDATE django_relay_job SET state = 'available' WHERE id = %s", (job.pk,)
        )
        await make(queue="marker")  # committed at once, on Django's connection
        assert await collect(listener, 1) == [(queries.AVAILABLE_CHANNEL, ("marker", 1))]
    assert await collect(listener, 1) == [(queries.AVAILABLE_CHANNEL, ("tx", 1))]


async def test_claim_returns_a_batch_in_claim_order_whatever_the_join_plan(conn):
    await sync_to_async(JobFactory.create_batch)(
        300,
        priority=factory.Iterator([5, 2, 9, 0, 3]),
        scheduled_at=factory.LazyFunction(timezone.now),
    )
    # The plan a big table gets: a merge join on id, whose output is in id order.
    await conn.execute("SET enable_nestloop = off")
    await conn.execute("SET enable_hashjoin = off")
    rows = await queries.claim(conn, "default", 300, ME)
    priority, scheduled_at = (queries.JOB_COLUMNS.index(c) for c in ("priority", "scheduled_at"))
    keys = [(row[priority], row[scheduled_at], row[0]) for row in rows]
    assert len(keys) == 300
    assert keys == sorted(keys)
