"""The runner's hot path: claim, ack, release, reconcile; and drain()'s claim and ack."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import isfinite
from typing import Any

from psycopg import AsyncConnection

from django_relay.codec import encode_plain
from django_relay.queries.channels import TERMINAL

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
    "unique_key",
    "unique_states",
    "waiters",
    "deps_pending",
    "dependents",
    "claim_token",
)

_CLAIMED = """j.id, j.worker, j.queue, j.state, j.args::text, j.meta::text, NULL AS result,
          j.errors::text, j.attempt, j.max_attempts, j.priority,
          least(greatest(j.scheduled_at, '0001-01-02'), '9999-12-30') AS scheduled_at,
          least(greatest(j.inserted_at, '0001-01-02'), '9999-12-30') AS inserted_at,
          j.attempted_at, j.finished_at, j.signal_count, j.attempted_by,
          j.workflow_id, j.step, j.deps::text, j.ignore_cancelled, j.ignore_discarded,
          j.unique_key, NULL AS unique_states, NULL AS waiters, NULL AS deps_pending,
          NULL AS dependents, j.claim_token"""

CLAIM = f"""
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
    RETURNING {_CLAIMED}
)
-- RETURNING follows the join's order (a merge join on id for big batches), not the
-- claim's: sort again so a batch starts in priority order.
SELECT * FROM claimed ORDER BY priority, scheduled_at, id
"""


async def claim(conn: AsyncConnection, queue: str, limit: int, node: str) -> list[tuple]:
    """Lock and mark up to ``limit`` available jobs of ``queue`` as ours."""
    async with conn.cursor() as cur:
        # Never prepared: a plan cached while the queue was empty (a drained queue,
        # just analysed) is a sequential scan inside a nested loop, and a server keeps
        # it until the next ANALYZE: a burst then costs hundreds of ms per claim. An
        # unnamed statement is planned at each claim, for the table as it is now
        # (planning costs less than the measurement noise of one claim's commit).
        await cur.execute(CLAIM, (queue, limit, node), prepare=False)
        return await cur.fetchall()


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Limits a queue's claims hold across every runner (see ``Queue``)."""

    global_limit: int | None = None
    rate_limit: int | None = None
    rate_period: float | None = None
    partition: str = ""  # "", "worker" or "args:KEY"


# A limited queue's claims take turns on a transaction-level advisory lock: the
# next claim starts (and takes its snapshot) only once the previous one committed,
# so what it counts (jobs executing, starts in the window) includes every claim
# before it, on any runner. Queues without limits never take it.
LOCK_QUEUE = "SELECT pg_advisory_xact_lock(hashtextextended('django_relay.queue:' || %s, 0))"

PRUNE_STARTS = """
DELETE FROM django_relay_queuestart
WHERE queue = %s AND started_at <= clock_timestamp() - %s * interval '1 second'
"""

_PART = """coalesce(CASE WHEN %(partition)s = 'worker' THEN {t}.worker
                    WHEN %(partition)s LIKE 'args:%%' THEN {t}.args ->> substr(%(partition)s, 6)
               END, '')"""

# The jobs that fit: ranked within their partition, a job fits when what is already
# executing (global limit) or started in the window (rate limit) plus its rank is
# within the limit. Only the first ``scan`` available jobs are ranked, which bounds
# the cost; a backlog of jobs over their partition's limit beyond that many can
# hold back other partitions' jobs behind it (README, "Limits across runners").
CLAIM_LIMITED = f"""
WITH executing AS (
    SELECT {_PART.format(t="j")} AS part, count(*) AS n FROM django_relay_job AS j
    WHERE j.state = 'executing' AND j.queue = %(queue)s GROUP BY 1
), started AS (
    SELECT s.part, count(*) AS n FROM django_relay_queuestart AS s
    WHERE s.queue = %(queue)s
      AND s.started_at > clock_timestamp() - %(period)s::float8 * interval '1 second'
    GROUP BY 1
), candidates AS (
    SELECT j.id, j.priority, j.scheduled_at, {_PART.format(t="j")} AS part
    FROM django_relay_job AS j
    WHERE j.state = 'available' AND j.queue = %(queue)s
    ORDER BY j.priority, j.scheduled_at, j.id
    LIMIT %(scan)s
), ranked AS (
    SELECT c.*, row_number() OVER (PARTITION BY c.part
                                   ORDER BY c.priority, c.scheduled_at, c.id) AS rank
    FROM candidates AS c
), fitting AS (
    SELECT r.id, r.part FROM ranked AS r
    LEFT JOIN executing AS e ON e.part = r.part
    LEFT JOIN started AS s ON s.part = r.part
    WHERE (%(global_limit)s::int IS NULL OR coalesce(e.n, 0) + r.rank <= %(global_limit)s)
      AND (%(rate_limit)s::int IS NULL OR coalesce(s.n, 0) + r.rank <= %(rate_limit)s)
    ORDER BY r.priority, r.scheduled_at, r.id
    LIMIT %(limit)s
), next AS (
    SELECT j.id FROM django_relay_job AS j
    WHERE j.id IN (SELECT id FROM fitting) AND j.state = 'available'
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE django_relay_job AS j
    SET state = 'executing', attempt = j.attempt + 1, attempted_at = clock_timestamp(),
        attempted_by = %(node)s, claim_token = nextval('django_relay_job_claim_token_seq')
    FROM next WHERE j.id = next.id
    RETURNING {_CLAIMED}
), ledger AS (
    INSERT INTO django_relay_queuestart (queue, part, started_at)
    SELECT %(queue)s, f.part, c.attempted_at FROM claimed AS c JOIN fitting AS f ON f.id = c.id
    WHERE %(rate_limit)s::int IS NOT NULL
)
SELECT * FROM claimed ORDER BY priority, scheduled_at, id
"""
_LIMITED_SCAN = 1000


async def claim_limited(
    conn: AsyncConnection, queue: str, limit: int, node: str, limits: QueueLimits
) -> list[tuple]:
    """:func:`claim` for a queue with limits: at most what they leave room for."""
    params = {
        "queue": queue,
        "limit": limit,
        "node": node,
        "scan": max(_LIMITED_SCAN, limit),
        "global_limit": limits.global_limit,
        "rate_limit": limits.rate_limit,
        "period": limits.rate_period,
        "partition": limits.partition,
    }
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(LOCK_QUEUE, (queue,))
        if limits.rate_limit is not None:
            await cur.execute(PRUNE_STARTS, (queue, limits.rate_period))
        await cur.execute(CLAIM_LIMITED, params)
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
FROM (
    SELECT (r->>0)::bigint AS id, (r->>1)::int AS attempt, r->>2 AS state, r->>3 AS result,
           r->>4 AS error, (r->>5)::float8 AS delay, (r->>6)::int AS attempt_delta,
           r->>7 AS meta, (r->>8)::int AS signals_seen, (r->>9)::bigint AS token
    FROM jsonb_array_elements(%s::jsonb) AS e(r)
) AS a
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
    """The parameters of :data:`ACK` for ``acks``.

    The acks travel as one JSON document, an array of one array per ack (their
    result, error and meta, JSON text already, as strings in it): psycopg dumps
    ten arrays element by element in Python, which cost more per ack than the rest
    of the ack's path in the runner.
    """
    rows = encode_plain(
        [
            (
                a.job_id,
                a.attempt,
                a.state,
                a.result,
                a.error,
                # JSON has no NaN or infinities; float8 reads them from text.
                a.delay if a.delay is None or isfinite(a.delay) else str(a.delay),
                a.attempt_delta,
                a.meta,
                a.signals_seen,
                a.token,
            )
            for a in acks
        ]
    )
    # The ids apart: "j.id = ANY(ids)" keeps even a generic (prepared) plan on the
    # primary key, whatever the batch size. Ints only, so their text is safe to join.
    ids = f"{{{','.join([str(int(a.job_id)) for a in acks])}}}"
    return rows, ids, node


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


# -- testing.drain(): the same claim and ack on Django's connection ---------------

STAGE_QUEUE_NOW = """
UPDATE django_relay_job SET state = 'available'
WHERE state IN ('scheduled', 'retryable') AND (%s::text IS NULL OR queue = %s)
  AND (%s OR scheduled_at <= now())
"""

QUEUES_WITH_WORK = """
SELECT DISTINCT queue FROM django_relay_job
WHERE state = 'available' AND (%s::text IS NULL OR queue = %s)
"""


def stage_for_drain(cursor: Any, queue: str | None, with_scheduled: bool) -> list[str]:
    """Make due (or, ``with_scheduled``, all) waiting jobs available; the queues with work."""
    cursor.execute(STAGE_QUEUE_NOW, (queue, queue, with_scheduled))
    cursor.execute(QUEUES_WITH_WORK, (queue, queue))
    return [row[0] for row in cursor.fetchall()]


def claim_on(cursor: Any, queue: str, limit: int, node: str) -> list[tuple]:
    """:func:`claim` on a Django cursor (inside the caller's transaction)."""
    cursor.execute(CLAIM, (queue, limit, node))
    return cursor.fetchall()


def ack_on(cursor: Any, node: str, acks: Sequence[Ack]) -> None:
    """:func:`ack` on a Django cursor (inside the caller's transaction)."""
    cursor.execute(ACK, ack_params(node, acks))
