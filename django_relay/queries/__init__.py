"""Every SQL statement that moves a job's state, in one place.

Enqueueing runs on Django's connection (so it joins the caller's transaction);
the runner and the relay listener run these statements on their own psycopg
connections, where batches of ids travel as arrays: one round trip for many
jobs, with a statement whose text never changes (so it stays prepared).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

TERMINAL = "('completed', 'discarded', 'cancelled')"

#: NOTIFY channel (sent by a trigger on ``Job``): payload is a queue with available work.
AVAILABLE_CHANNEL = "relay_available"
#: NOTIFY channel: payload is ``{"id", "state", "attempt"}`` of a job that finished an
#: attempt (left ``executing``) or reached a terminal state.
FINISHED_CHANNEL = "relay_finished"


def finished_payload(payload: str) -> tuple[int, str, int] | None:
    """``(job_id, state, attempt)`` from a ``FINISHED_CHANNEL`` payload; None if malformed."""
    try:
        event = json.loads(payload)
        return int(event["id"]), str(event["state"]), int(event["attempt"])
    except (ValueError, KeyError, TypeError):
        return None


#: NOTIFY channel (sent by a trigger on ``JobSignal``): payload is the signalled job's id.
SIGNAL_CHANNEL = "relay_signal"

# -- enqueue (Django's connection, inside the caller's transaction) -----------

_INSERT_JOBS = """
INSERT INTO django_relay_job ({id_column}worker, queue, state, args, meta, result, errors, attempt,
                              max_attempts, priority, scheduled_at, inserted_at, signal_count,
                              workflow_id, step, deps, ignore_cancelled, ignore_discarded)
SELECT {id_value}r.worker, r.queue,
       coalesce(r.state, CASE WHEN r.scheduled_at > now() THEN 'scheduled' ELSE 'available' END),
       r.args::jsonb, r.meta::jsonb, NULL, '[]'::jsonb, 0,
       r.max_attempts, r.priority, coalesce(r.scheduled_at, now()), now(), 0,
       r.workflow_id, r.step, coalesce(r.deps::jsonb, '[]'::jsonb),
       coalesce(r.ignore_cancelled, false), coalesce(r.ignore_discarded, false)
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::int[],
            %s::timestamptz[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::bool[],
            %s::bool[], %s::bigint[])
     WITH ORDINALITY AS r(worker, queue, args, meta, max_attempts, priority, scheduled_at,
                          state, workflow_id, step, deps, ignore_cancelled, ignore_discarded,
                          id, ord)
ORDER BY r.ord
{on_conflict}
RETURNING id, state, scheduled_at, inserted_at
"""
INSERT_JOBS = _INSERT_JOBS.format(id_column="", id_value="", on_conflict="")
#: relay()'s insert: ids reserved beforehand (RESERVE_JOB_IDS), so a try sent again
#: after a lost reply finds the row that landed instead of inserting it twice.
INSERT_RESERVED_JOBS = _INSERT_JOBS.format(
    id_column="id, ", id_value="r.id, ", on_conflict="ON CONFLICT (id) DO NOTHING"
)

RESERVE_JOB_IDS = """
SELECT nextval(pg_get_serial_sequence('django_relay_job', 'id')) FROM generate_series(1, %s)
"""

#: The rows of reserved ids that an earlier try of the insert already landed.
RESERVED_JOBS = """
SELECT id, state, scheduled_at, inserted_at FROM django_relay_job WHERE id = ANY(%s::bigint[])
"""


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job row to insert; JSON columns already encoded by the codec."""

    worker: str
    queue: str
    args: str
    meta: str
    max_attempts: int
    priority: int
    scheduled_at: datetime | None
    state: str | None = None
    workflow_id: int | None = None
    step: str | None = None
    deps: str | None = None
    ignore_cancelled: bool = False
    ignore_discarded: bool = False
    #: Reserved beforehand (relay's inserts); None: the next id of the sequence.
    id: int | None = None


def _insert_params(jobs: Sequence[NewJob]) -> list[list[Any]]:
    return [[getattr(job, name) for job in jobs] for name in NewJob.__dataclass_fields__]


def insert_jobs(cursor: Any, jobs: Sequence[NewJob]) -> list[tuple[Any, ...]]:
    """Insert ``jobs`` in one statement; return ``(id, state, scheduled_at, inserted_at)``."""
    cursor.execute(INSERT_JOBS, _insert_params(jobs))
    return list(cursor.fetchall())


async def reserve_job_ids(conn: AsyncConnection, count: int) -> list[int]:
    """Take ``count`` job ids from the table's sequence, for :func:`ainsert_reserved_jobs`."""
    async with conn.cursor() as cur:
        await cur.execute(RESERVE_JOB_IDS, (count,))
        return [row[0] for row in await cur.fetchall()]


async def ainsert_reserved_jobs(
    conn: AsyncConnection, jobs: Sequence[NewJob]
) -> list[tuple[Any, ...]]:
    """Insert ``jobs``, each with a reserved ``id``, in autocommit (relay's own inserts).

    Safe to repeat: a job whose id is already in the table (an earlier try landed
    and its reply was lost) is not inserted again, and the row returned for it is
    the one that landed. Rows come back in the order of ``jobs``.
    """
    async with conn.cursor() as cur:
        await cur.execute(INSERT_RESERVED_JOBS, _insert_params(jobs))
        rows = await cur.fetchall()
        if len(rows) < len(jobs):
            # A new statement, so a new snapshot: it sees the rows that conflicted.
            inserted = {row[0] for row in rows}
            await cur.execute(RESERVED_JOBS, ([j.id for j in jobs if j.id not in inserted],))
            rows += await cur.fetchall()
    by_id = {row[0]: row for row in rows}
    return [by_id[job.id] for job in jobs]


# -- the runner's hot path ----------------------------------------------------

#: Column order of a claimed row; matches ``Job``'s concrete fields.
JOB_COLUMNS = (
    "id",
    "worker",
    "queue",
    "state",
    "args",
    "meta",
    "result",
    "errors",
    "attempt",
    "max_attempts",
    "priority",
    "scheduled_at",
    "inserted_at",
    "attempted_at",
    "finished_at",
    "signal_count",
    "attempted_by",
    "workflow_id",
    "step",
    "deps",
    "ignore_cancelled",
    "ignore_discarded",
    "claim_token",
)

CLAIM = """
WITH next AS (
    SELECT id FROM django_relay_job
    WHERE state = 'available' AND queue = %s
    ORDER BY priority, scheduled_at, id
    LIMIT %s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE django_relay_job AS j
    SET state = 'executing', attempt = j.attempt + 1, attempted_at = now(), attempted_by = %s,
        claim_token = nextval('django_relay_job_claim_token_seq')
    FROM next WHERE j.id = next.id
    -- Timestamps clamped to what Python holds: one row written with '-infinity'
    -- would fail loading the whole batch (which reconcile then gave back, for ever).
    RETURNING j.id, j.worker, j.queue, j.state, j.args::text, j.meta::text, NULL AS result,
              j.errors::text, j.attempt, j.max_attempts, j.priority,
              least(greatest(j.scheduled_at, '0001-01-02'), '9999-12-30') AS scheduled_at,
              least(greatest(j.inserted_at, '0001-01-02'), '9999-12-30') AS inserted_at,
              j.attempted_at, j.finished_at, j.signal_count, j.attempted_by,
              j.workflow_id, j.step, j.deps::text, j.ignore_cancelled, j.ignore_discarded,
              j.claim_token
)
-- RETURNING follows the join's order (a merge join on id for big batches), not the
-- claim's: sort again so a batch starts in priority order.
SELECT * FROM claimed ORDER BY priority, scheduled_at, id
"""


async def claim(conn: AsyncConnection, queue: str, limit: int, node: str) -> list[tuple]:
    """Lock and mark up to ``limit`` available jobs of ``queue`` as ours."""
    async with conn.cursor() as cur:
        await cur.execute(CLAIM, (queue, limit, node))
        return await cur.fetchall()


@dataclass(frozen=True, slots=True)
class Ack:
    """The state transition that finishes one attempt; persisted by :func:`ack`."""

    job_id: int
    attempt: int
    state: str
    result: str | None = None  # encoded JSON, for completed jobs
    error: str | None = None  # encoded JSON object appended to ``errors``
    delay: float | None = None  # seconds until ``scheduled_at``
    attempt_delta: int = 0  # -1 gives back the attempt (snooze)
    meta: str | None = None  # encoded JSON object merged into ``meta``
    signals_seen: int | None = None  # snoozing for a signal: how many it had seen
    #: The claim's token (``Job.claim_token``): the fence. The attempt number cannot
    #: be one, since a snooze, a release or a reconcile gives it back.
    token: int = field(kw_only=True)


ACK = f"""
UPDATE django_relay_job AS j SET
    -- A job snoozing to wait for a signal that arrived meanwhile runs again at once.
    state = CASE WHEN a.signals_seen IS NOT NULL AND j.signal_count > a.signals_seen
                 THEN 'available' ELSE a.state END,
    result = a.result::jsonb,
    errors = CASE WHEN a.error IS NULL THEN j.errors
             ELSE j.errors || jsonb_build_array(a.error::jsonb || jsonb_build_object('at', now()))
             END,
    attempt = j.attempt + a.attempt_delta,
    -- Capped at 10 years (least() also maps NaN and Infinity to the cap): a delay
    -- past the interval or timestamp range would fail the statement, and with it
    -- every ack of the batch.
    scheduled_at = CASE WHEN a.delay IS NULL THEN j.scheduled_at
                   ELSE now() + least(a.delay, 315576000) * interval '1 second' END,
    finished_at = CASE WHEN a.state IN {TERMINAL} THEN now() END,
    meta = CASE WHEN a.meta IS NULL THEN j.meta ELSE j.meta || a.meta::jsonb END
FROM unnest(%s::bigint[], %s::int[], %s::text[], %s::text[], %s::text[], %s::float8[],
            %s::int[], %s::text[], %s::int[], %s::bigint[])
     AS a(id, attempt, state, result, error, delay, attempt_delta, meta, signals_seen, token)
WHERE j.id = a.id AND j.id = ANY(%s::bigint[])
  AND j.state = 'executing' AND j.attempted_by = %s AND j.claim_token = a.token
RETURNING j.claim_token
"""


async def ack(conn: AsyncConnection, node: str, acks: Sequence[Ack]) -> set[int]:
    """Persist ``acks`` in one statement; return the tokens of those that were still ours.

    An ack is fenced by (state executing, owner node, claim token): one from an
    attempt that was rescued, given back or cancelled meanwhile matches nothing,
    even once the job is claimed again (a new claim draws a new token).
    """
    async with conn.cursor() as cur:
        # Never prepared: a generic plan cannot see how long the arrays are, guesses
        # a handful of rows and joins them in a nested loop, quadratic in the batch.
        await cur.execute(ACK, ack_params(node, acks), prepare=False)
        return {row[0] for row in await cur.fetchall()}


def ack_params(node: str, acks: Sequence[Ack]) -> tuple[Any, ...]:
    """The parameters of :data:`ACK` for ``acks``."""
    columns = [
        [a.job_id for a in acks],
        [a.attempt for a in acks],
        [a.state for a in acks],
        [a.result for a in acks],
        [a.error for a in acks],
        [a.delay for a in acks],
        [a.attempt_delta for a in acks],
        [a.meta for a in acks],
        [a.signals_seen for a in acks],
        [a.token for a in acks],
    ]
    # The ids twice: "j.id = ANY(ids)" keeps even a generic (prepared) plan on the
    # primary key, whatever the batch size.
    return (*columns, columns[0], node)


RELEASE = """
UPDATE django_relay_job AS j SET
    -- Given back uncounted once per attempt number: interrupted at that number
    -- again, the attempt counts, so a job that always outlives the grace period
    -- (or stops its own runner) cannot loop for ever.
    state = CASE WHEN a.again AND j.attempt >= j.max_attempts THEN 'discarded'
                 ELSE 'available' END,
    attempt = CASE WHEN a.again THEN j.attempt ELSE j.attempt - 1 END,
    finished_at = CASE WHEN a.again AND j.attempt >= j.max_attempts THEN now() END,
    errors = CASE WHEN NOT a.again THEN j.errors
             ELSE j.errors || jsonb_build_array(jsonb_build_object(
                 'attempt', j.attempt, 'at', now(), 'kind', 'released',
                 'error', 'interrupted by a runner stopping, again at this attempt: it counts'))
             END,
    meta = j.meta || jsonb_build_object('released_attempt', j.attempt)
FROM django_relay_job AS o
CROSS JOIN LATERAL (
    SELECT coalesce(o.meta ->> 'released_attempt' = o.attempt::text, false) AS again
) AS a
WHERE j.id = o.id AND o.claim_token = ANY(%s::bigint[]) AND o.state = 'executing'
  AND o.attempted_by = %s
"""


async def release(conn: AsyncConnection, node: str, tokens: Sequence[int]) -> int:
    """Give unfinished jobs back on shutdown; the interrupted attempt is not counted.

    ``tokens`` are the claims' tokens: a job claimed again since is left alone.
    An attempt number is given back once (``meta["released_attempt"]`` remembers
    it); interrupted again at the same number, the attempt counts (the job is
    discarded if it was its last).
    """
    async with conn.cursor() as cur:
        await cur.execute(RELEASE, (list(tokens), node))
        return cur.rowcount


# -- the runner's maintenance -------------------------------------------------

#: Advisory locks of the duties one runner at a time performs: (namespace, duty).
DUTY_LOCK_NAMESPACE = 0x72656C79  # "rely"
DUTY_LOCKS = {"stage": 1, "rescue": 2, "prune": 3}

# Holding a session lock already: true, without taking it again (a second
# pg_try_advisory_lock would stack). CASE evaluates in order.
HOLD_DUTY_LOCK = """
SELECT CASE
    WHEN EXISTS (
        SELECT 1 FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
          AND classid = %(namespace)s::oid AND objid = %(duty)s::oid AND objsubid = 2
    ) THEN true
    ELSE pg_try_advisory_lock(%(namespace)s, %(duty)s)
END
"""


async def hold_duty_lock(conn: AsyncConnection, duty: str) -> bool:
    """Take (or keep) ``duty``'s advisory lock on ``conn``; false if another session holds it."""
    cursor = await conn.execute(
        HOLD_DUTY_LOCK, {"namespace": DUTY_LOCK_NAMESPACE, "duty": DUTY_LOCKS[duty]}
    )
    row = await cursor.fetchone()
    return bool(row and row[0])


STAGE = """
UPDATE django_relay_job SET state = 'available'
WHERE id IN (
    SELECT id FROM django_relay_job
    WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= now()
    ORDER BY scheduled_at LIMIT %s
    FOR UPDATE SKIP LOCKED
)
"""


async def stage(conn: AsyncConnection, limit: int = 5000) -> int:
    """Make due scheduled and retryable jobs available (their trigger wakes runners)."""
    async with conn.cursor() as cur:
        await cur.execute(STAGE, (limit,))
        return cur.rowcount


HEARTBEAT = """
INSERT INTO django_relay_node (id, hostname, pid, queues, started_at, heartbeat_at)
VALUES (%s, %s, %s, %s::jsonb, now(), now())
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
"""


async def heartbeat(conn: AsyncConnection, node: str, hostname: str, pid: int, queues: str) -> None:
    """Record that ``node`` is alive (database clock), creating its row if needed."""
    await conn.execute(HEARTBEAT, (node, hostname, pid, queues))


RESCUE = """
WITH orphans AS (
    SELECT j.id FROM django_relay_job AS j
    WHERE j.state = 'executing' AND NOT EXISTS (
        SELECT 1 FROM django_relay_node AS n
        WHERE n.id = j.attempted_by AND n.heartbeat_at > now() - %s * interval '1 second'
    )
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE django_relay_job AS j SET
    state = CASE WHEN j.attempt >= j.max_attempts THEN 'discarded' ELSE 'available' END,
    finished_at = CASE WHEN j.attempt >= j.max_attempts THEN now() END,
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'attempt', j.attempt, 'at', now(), 'kind', 'rescued',
        'error', 'rescued: runner ' || coalesce(j.attempted_by, '?') || ' stopped heartbeating',
        'node', j.attempted_by, 'started', j.attempted_at))
FROM orphans WHERE j.id = orphans.id
RETURNING j.id, j.state
"""

FORGET_NODES = """
DELETE FROM django_relay_node WHERE heartbeat_at < now() - %s * interval '1 second'
"""


async def rescue(conn: AsyncConnection, after: float) -> list[tuple[int, str]]:
    """Requeue (or discard, attempts spent) jobs whose runner stopped heartbeating."""
    async with conn.cursor() as cur:
        await cur.execute(RESCUE, (after,))
        rows = await cur.fetchall()
        await cur.execute(FORGET_NODES, (after,))
        return rows


async def forget_node(conn: AsyncConnection, node: str) -> None:
    """Remove a node that stopped cleanly."""
    await conn.execute("DELETE FROM django_relay_node WHERE id = %s", (node,))


PRUNE = f"""
WITH doomed AS (
    SELECT j.id FROM django_relay_job AS j
    WHERE j.state IN {TERMINAL} AND j.finished_at < now() - %s * interval '1 second'
      -- a step stays while its workflow runs: its dependents read its result
      AND (j.workflow_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM django_relay_job AS u
          WHERE u.workflow_id = j.workflow_id AND u.state NOT IN {TERMINAL}))
    LIMIT %s
), deleted AS (
    DELETE FROM django_relay_job WHERE id IN (SELECT id FROM doomed)
    RETURNING workflow_id
), runs AS (
    DELETE FROM django_relay_workflowrun AS w
    WHERE w.id IN (SELECT workflow_id FROM deleted)
      AND NOT EXISTS (SELECT 1 FROM django_relay_job AS j
                      WHERE j.workflow_id = w.id AND j.id NOT IN (SELECT id FROM doomed))
)
SELECT count(*) FROM deleted
"""


async def prune(conn: AsyncConnection, older_than: float, limit: int = 10_000) -> int:
    """Delete finished jobs older than ``older_than`` seconds."""
    async with conn.cursor() as cur:
        await cur.execute(PRUNE, (older_than, limit))
        row = await cur.fetchone()
        return int(row[0]) if row else 0


# -- relay: reading outcomes ----------------------------------------------------

OUTCOMES = """
SELECT id, state, result::text, errors -> -1 ->> 'error', meta -> 'result_too_large'
FROM django_relay_job WHERE id = ANY(%s::bigint[])
"""


async def fetch_outcomes(conn: AsyncConnection, job_ids: Sequence[int]) -> list[tuple]:
    """``(id, state, result_json, last_error, too_large)`` for each existing job."""
    async with conn.cursor() as cur:
        await cur.execute(OUTCOMES, (list(job_ids),))
        return await cur.fetchall()


RECONCILE = """
UPDATE django_relay_job AS j SET
    -- A lost attempt counts: it ran, so giving it back uncounted could loop for ever.
    state = CASE WHEN NOT l.lost THEN 'available'
                 WHEN j.attempt >= j.max_attempts THEN 'discarded' ELSE 'retryable' END,
    attempt = CASE WHEN l.lost THEN j.attempt ELSE j.attempt - 1 END,
    finished_at = CASE WHEN l.lost AND j.attempt >= j.max_attempts THEN now() END,
    errors = CASE WHEN NOT l.lost THEN j.errors
             ELSE j.errors || jsonb_build_array(jsonb_build_object(
                 'attempt', j.attempt, 'at', now(), 'kind', 'lost',
                 'error', 'the outcome of this attempt could not be recorded')) END
FROM django_relay_job AS o
CROSS JOIN LATERAL (SELECT coalesce(o.claim_token = ANY(%(lost)s::bigint[]), false) AS lost) AS l
WHERE j.id = o.id AND o.state = 'executing' AND o.attempted_by = %(node)s
  AND NOT coalesce(o.claim_token = ANY(%(running)s::bigint[]), false)
RETURNING j.id, j.state
"""


async def reconcile(
    conn: AsyncConnection, node: str, running: Sequence[int], lost: Sequence[int] = ()
) -> list[tuple[int, str]]:
    """Give back jobs marked as ours that we are not running: ``(id, new state)`` each.

    ``running`` and ``lost`` are claim tokens. A claim whose reply was lost with its
    connection leaves rows behind that never started: they go back to
    ``available`` with the attempt not counted. An attempt that ran but whose
    outcome could not be written (``lost``) counts: ``retryable``, or
    ``discarded`` when its attempts are spent.
    """
    async with conn.cursor() as cur:
        await cur.execute(RECONCILE, {"node": node, "running": list(running), "lost": list(lost)})
        return [(row[0], row[1]) for row in await cur.fetchall()]


CANCEL_UNSTARTED = """
UPDATE django_relay_job SET state = 'cancelled', finished_at = now(),
    errors = errors || jsonb_build_array(jsonb_build_object(
        'attempt', attempt, 'at', now(), 'kind', 'cancel', 'error', %s::text))
WHERE id = ANY(%s::bigint[]) AND attempted_at IS NULL
  AND state IN ('available', 'scheduled', 'suspended')
RETURNING id
"""


async def cancel_unstarted(conn: AsyncConnection, job_ids: Sequence[int], reason: str) -> list[int]:
    """Cancel the jobs that never started; return their ids."""
    async with conn.cursor() as cur:
        await cur.execute(CANCEL_UNSTARTED, (reason, list(job_ids)))
        return [row[0] for row in await cur.fetchall()]


STAGE_QUEUE_NOW = """
UPDATE django_relay_job SET state = 'available'
WHERE state IN ('scheduled', 'retryable') AND (%s::text IS NULL OR queue = %s)
  AND (%s OR scheduled_at <= now())
"""

QUEUES_WITH_WORK = """
SELECT DISTINCT queue FROM django_relay_job
WHERE state = 'available' AND (%s::text IS NULL OR queue = %s)
"""


# -- signals ----------------------------------------------------------------------

# Lock the unfinished targets first (in id order, so senders to many jobs cannot
# deadlock): a sender blocked behind another reads the committed row once it gets
# the lock, so ``seq`` is the next number in commit order. Then insert, skipping a
# repeated key (ON CONFLICT also sees a committed duplicate that this statement's
# snapshot does not), and bump the counter only for the signals actually inserted:
# a duplicate changes nothing and wakes nobody.
SEND_SIGNAL = f"""
WITH targets AS (
    SELECT j.id, j.worker, j.signal_count FROM django_relay_job AS j
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state NOT IN {TERMINAL}
    ORDER BY j.id
    FOR UPDATE
), sent AS (
    INSERT INTO django_relay_jobsignal (job_id, seq, payload, sender, key, inserted_at)
    SELECT id, signal_count + 1, %(payload)s::jsonb, %(sender)s, %(key)s, now() FROM targets
    ON CONFLICT (job_id, key) WHERE key IS NOT NULL DO NOTHING
    RETURNING job_id, seq
), counted AS (
    UPDATE django_relay_job AS j SET signal_count = sent.seq
    FROM sent WHERE j.id = sent.job_id
    RETURNING j.id, j.worker
)
SELECT id, worker FROM counted ORDER BY id
"""


def send_signal(
    cursor: Any, job_ids: Sequence[int], payload: str, sender: str, key: str | None
) -> list[tuple[int, str]]:
    """Deliver one payload to the unfinished jobs among ``job_ids``: ``(id, worker)`` each.

    Each job row is locked first, so concurrent senders to one job queue up and
    each signal's ``seq`` follows commit order; a job that already has a signal
    with ``key`` receives nothing, and its counter is left alone.
    """
    cursor.execute(
        SEND_SIGNAL, {"ids": list(job_ids), "payload": payload, "sender": sender, "key": key}
    )
    return list(cursor.fetchall())


NTH_SIGNAL = """
SELECT now(), j.signal_count, s.id, s.payload::text FROM django_relay_job AS j
LEFT JOIN LATERAL (
    SELECT id, payload FROM django_relay_jobsignal WHERE job_id = %s
    ORDER BY seq OFFSET %s LIMIT 1
) AS s ON true
WHERE j.id = %s
"""

CONSUME_SIGNAL = """
WITH ours AS (  -- only the current attempt of the job consumes (its claim token)
    SELECT id FROM django_relay_job
    WHERE id = %(job)s AND state = 'executing' AND claim_token = %(token)s
), consumed AS (
    UPDATE django_relay_jobsignal SET consumed_at = now(), consumed_attempt = %(attempt)s
    WHERE id = %(signal)s AND consumed_at IS NULL AND EXISTS (SELECT 1 FROM ours)
)
UPDATE django_relay_job SET meta = meta - 'signal_wait'
WHERE id IN (SELECT id FROM ours)
  AND meta ? 'signal_wait' AND (meta -> 'signal_wait' ->> 'n')::int = %(n)s
"""


def nth_signal(
    cursor: Any, job_id: int, n: int, attempt: int, token: int | None
) -> tuple[Any, int, int | None, str | None]:
    """``(db_now, signal_count, signal_id, payload_json)`` for the ``n``-th signal to a job.

    ``n`` is 1-based; ``signal_id`` is None when there is no such signal yet. A found
    signal is marked consumed by ``attempt`` (the first time only), and the job's
    ``signal_wait`` for wait ``n`` is cleared, if the claim ``token`` is still the
    job's (a stale attempt reads its signals but changes nothing).
    """
    cursor.execute(NTH_SIGNAL, (job_id, n - 1, job_id))
    now, count, signal_id, payload = cursor.fetchone()
    if signal_id is not None:
        cursor.execute(
            CONSUME_SIGNAL,
            {"job": job_id, "token": token, "attempt": attempt, "signal": signal_id, "n": n},
        )
    return now, count, signal_id, payload


# -- operations on existing jobs (admin, public API) -------------------------------

CANCEL_JOBS = f"""
UPDATE django_relay_job SET state = 'cancelled', finished_at = now(),
    errors = errors || jsonb_build_array(jsonb_build_object(
        'attempt', attempt, 'at', now(), 'kind', 'cancel', 'error', %s::text))
WHERE id = ANY(%s::bigint[]) AND state NOT IN {TERMINAL}
RETURNING id
"""

# Retrying steps of workflows: lock the steps of their runs first, so that a dep
# finishing meanwhile either commits before RETRY_JOBS reads it or finds the
# retried step already held again (its trigger then releases it). Held steps are
# not finishing, and are what that trigger locks: leaving them out means the two
# never wait for each other.
LOCK_RETRIED_RUNS = """
SELECT 1 FROM django_relay_job
WHERE workflow_id IN (SELECT workflow_id FROM django_relay_job
                      WHERE id = ANY(%s::bigint[]) AND workflow_id IS NOT NULL)
  AND state <> 'suspended'
ORDER BY id FOR SHARE
"""

# The retried jobs, plus the steps a cascade cancelled because one of them failed
# (transitively: they would have run had it completed). A step runs now only if
# each of its deps completed (or ended in a way it ignores) and is not itself
# going again; otherwise it is held (``suspended``) until its deps finish.
RETRY_JOBS = """
WITH RECURSIVE asked AS (
    SELECT id, workflow_id, step FROM django_relay_job
    WHERE id = ANY(%s::bigint[])
      AND state IN ('retryable', 'discarded', 'cancelled', 'scheduled')
), revived AS (
    SELECT d.id, d.workflow_id, d.step FROM asked AS a
    JOIN django_relay_job AS d ON d.workflow_id = a.workflow_id AND d.deps ? a.step
    WHERE d.state = 'cancelled' AND d.errors -> -1 ? 'cause'
    UNION
    SELECT d.id, d.workflow_id, d.step FROM revived AS r
    JOIN django_relay_job AS d ON d.workflow_id = r.workflow_id AND d.deps ? r.step
    WHERE d.state = 'cancelled' AND d.errors -> -1 ? 'cause'
), going AS (
    SELECT id FROM asked UNION SELECT id FROM revived
), next AS (
    SELECT c.id,
           CASE WHEN bool_and(p.id IS NULL
                              OR p.id NOT IN (SELECT id FROM going)
                                 AND (p.state = 'completed'
                                      OR p.state = 'cancelled' AND c.ignore_cancelled
                                      OR p.state = 'discarded' AND c.ignore_discarded))
                THEN 'available' ELSE 'suspended' END AS state
    FROM django_relay_job AS c
    LEFT JOIN LATERAL jsonb_array_elements_text(c.deps) AS dep(name) ON true
    LEFT JOIN django_relay_job AS p ON p.workflow_id = c.workflow_id AND p.step = dep.name
    WHERE c.id IN (SELECT id FROM going)
    GROUP BY c.id
)
UPDATE django_relay_job AS j SET state = next.state, scheduled_at = now(), finished_at = NULL,
    max_attempts = greatest(j.max_attempts, j.attempt + 1)
FROM next WHERE j.id = next.id
RETURNING j.id
"""


# The steps a workflow's trigger cancelled because these jobs ended without
# completing, transitively: each cancelled step's last error names its cause.
CASCADE_CANCELLED = """
WITH RECURSIVE cascade AS (
    SELECT id, workflow_id, step FROM django_relay_job
    WHERE id = ANY(%(ids)s::bigint[]) AND workflow_id IS NOT NULL
    UNION
    SELECT d.id, d.workflow_id, d.step FROM cascade AS c
    JOIN django_relay_job AS d ON d.workflow_id = c.workflow_id AND d.deps ? c.step
    WHERE d.state = 'cancelled' AND d.errors -> -1 -> 'cause' = to_jsonb(c.id)
)
SELECT id FROM cascade WHERE id <> ALL(%(ids)s::bigint[]) ORDER BY id
"""


def cascade_cancelled(cursor: Any, job_ids: Sequence[int]) -> list[int]:
    """Ids of the workflow steps cancelled because ``job_ids`` were cancelled or discarded."""
    cursor.execute(CASCADE_CANCELLED, {"ids": list(job_ids)})
    return [row[0] for row in cursor.fetchall()]


def cancel_jobs(cursor: Any, job_ids: Sequence[int], reason: str) -> list[int]:
    """Cancel every unfinished job among ``job_ids``, running ones included."""
    cursor.execute(CANCEL_JOBS, (reason, list(job_ids)))
    return [row[0] for row in cursor.fetchall()]


def retry_jobs(cursor: Any, job_ids: Sequence[int]) -> list[int]:
    """Make failed, cancelled or scheduled jobs available now, with an attempt to spare.

    A workflow step whose deps are not all done is held (``suspended``) instead,
    and the steps a cascade cancelled because of a retried one are held again.
    Run inside a transaction (the lock taken first lasts until it ends).
    """
    cursor.execute(LOCK_RETRIED_RUNS, (list(job_ids),))
    cursor.execute(RETRY_JOBS, (list(job_ids),))
    return [row[0] for row in cursor.fetchall()]


# -- observability: cheap reads (health checks, metrics) ---------------------------

RUNNER_HEARTBEATS = """
SELECT id, extract(epoch FROM now() - heartbeat_at)::float8 FROM django_relay_node
WHERE id = %s OR starts_with(id, %s || ':')
ORDER BY heartbeat_at DESC
"""


def runner_heartbeats(cursor: Any, node: str) -> list[tuple[str, float]]:
    """``(node_id, seconds_since_heartbeat)`` of the runners ``node`` names, freshest first.

    ``node`` is a node id (``host:pid:suffix``) or a leading part of one ending at a
    colon (``host`` or ``host:pid``); ages come from the database's clock.
    """
    cursor.execute(RUNNER_HEARTBEATS, (node, node))
    return [(row[0], float(row[1])) for row in cursor.fetchall()]


# One statement, each arm on a partial index (fetch, executing, stage): its cost
# follows the unfinished jobs, never the finished ones, however many are kept.
UNFINISHED_COUNTS = """
SELECT queue, 'available', count(*) FROM django_relay_job
WHERE state = 'available' GROUP BY queue
UNION ALL
SELECT queue, 'executing', count(*) FROM django_relay_job
WHERE state = 'executing' GROUP BY queue
UNION ALL
SELECT queue, CASE WHEN state = 'scheduled' AND meta ? 'signal_wait'
                   THEN 'waiting_for_signal' ELSE state END, count(*)
FROM django_relay_job WHERE state IN ('scheduled', 'retryable') GROUP BY 1, 2
UNION ALL
SELECT NULL, 'runners', count(*) FROM django_relay_node
WHERE heartbeat_at > now() - %s * interval '1 second'
"""


def unfinished_counts(cursor: Any, fresh_within: float) -> list[tuple[str | None, str, int]]:
    """``(queue, what, count)`` of unfinished jobs, and the runners that are alive.

    ``what`` is ``available``, ``executing``, ``scheduled``, ``retryable`` or
    ``waiting_for_signal`` (scheduled jobs waiting in ``await_signal``, not counted
    as ``scheduled``); one more row, ``(None, "runners", n)``, counts the runners
    that heartbeat within ``fresh_within`` seconds.
    """
    cursor.execute(UNFINISHED_COUNTS, (fresh_within,))
    return [(row[0], row[1], int(row[2])) for row in cursor.fetchall()]


# The most recent finished jobs, newest first on the prune index (finished_at, for
# terminal states), at most ``cap`` of them: the cost is bounded whatever the table
# size or the throughput. One scan feeds three groupings: the chart's buckets, the
# workers, and a total that says whether the cap cut the window short.
FINISHED_RECENT = f"""
WITH recent AS (
    SELECT finished_at, attempted_at, queue, state, worker FROM django_relay_job
    WHERE state IN {TERMINAL} AND finished_at > now() - %(window)s * interval '1 second'
    ORDER BY finished_at DESC LIMIT %(cap)s
)
SELECT CASE WHEN GROUPING(worker) = 0 THEN 'worker'
            WHEN GROUPING(bucket) = 0 THEN 'bucket' ELSE 'total' END,
       bucket, queue, state, worker, count(*), count(*) FILTER (WHERE state = 'discarded'),
       avg(extract(epoch FROM finished_at - attempted_at))::float8,
       max(extract(epoch FROM finished_at - attempted_at))::float8,
       extract(epoch FROM min(finished_at))::float8
FROM (SELECT *, floor(extract(epoch FROM finished_at) / %(bucket)s)::bigint * %(bucket)s
                AS bucket FROM recent) AS r
GROUP BY GROUPING SETS ((bucket, queue, state), (worker), ())
"""

RETRYABLE_BY_WORKER = """
SELECT worker, count(*) FROM django_relay_job WHERE state = 'retryable' GROUP BY worker
"""

RUNNERS = """
SELECT n.id, n.hostname, n.queues::text, n.started_at,
       extract(epoch FROM now() - n.heartbeat_at)::float8,
       (SELECT count(*) FROM django_relay_job AS j
        WHERE j.state = 'executing' AND j.attempted_by = n.id)
FROM django_relay_node AS n ORDER BY n.started_at, n.id
"""


def finished_recent(cursor: Any, window: float, bucket: int, cap: int) -> list[tuple]:
    """Up to ``cap`` jobs finished in the last ``window`` seconds, grouped three ways.

    Rows are ``(kind, bucket, queue, state, worker, count, discarded, avg_s, max_s,
    oldest)``: ``kind`` ``"bucket"`` (per ``bucket``-second interval, queue and
    state), ``"worker"`` (with durations from attempt to finish), or ``"total"``
    (``oldest`` is the epoch of the oldest job read; ``count == cap`` means capped).
    """
    cursor.execute(FINISHED_RECENT, {"window": window, "bucket": bucket, "cap": cap})
    return list(cursor.fetchall())


def retryable_by_worker(cursor: Any) -> list[tuple[str, int]]:
    """``(worker, count)`` of the jobs waiting to be retried."""
    cursor.execute(RETRYABLE_BY_WORKER)
    return [(row[0], int(row[1])) for row in cursor.fetchall()]


def runners(cursor: Any) -> list[tuple]:
    """``(id, hostname, queues_json, started_at, heartbeat_age_s, executing)`` per runner."""
    cursor.execute(RUNNERS)
    return list(cursor.fetchall())
