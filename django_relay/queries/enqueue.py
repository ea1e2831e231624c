"""Inserting jobs: on Django's connection inside the caller's transaction, or relay()'s batches."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

# -- enqueue (Django's connection, inside the caller's transaction) -----------

_INSERT_JOBS = """
INSERT INTO django_relay_job ({id_column}worker, queue, state, args, meta, result, errors, attempt,
                              max_attempts, priority, scheduled_at, inserted_at, signal_count,
                              workflow_id, step, deps, ignore_cancelled, ignore_discarded,
                              unique_key, unique_states)
SELECT {id_value}r.worker, r.queue,
       coalesce(r.state, CASE WHEN r.scheduled_at > now() THEN 'scheduled' ELSE 'available' END),
       r.args::jsonb, r.meta::jsonb, NULL, '[]'::jsonb, 0,
       r.max_attempts, r.priority, coalesce(r.scheduled_at, now()), now(), 0,
       r.workflow_id, r.step, coalesce(r.deps::jsonb, '[]'::jsonb),
       coalesce(r.ignore_cancelled, false), coalesce(r.ignore_discarded, false),
       r.unique_key, r.unique_states::jsonb
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::int[],
            %s::timestamptz[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::bool[],
            %s::bool[], %s::text[], %s::text[], %s::bigint[])
     WITH ORDINALITY AS r(worker, queue, args, meta, max_attempts, priority, scheduled_at,
                          state, workflow_id, step, deps, ignore_cancelled, ignore_discarded,
                          unique_key, unique_states, id, ord)
ORDER BY r.ord
{on_conflict}
RETURNING id, state, scheduled_at, inserted_at, false AS conflict
"""
INSERT_JOBS = _INSERT_JOBS.format(id_column="", id_value="", on_conflict="")
#: relay()'s insert: ids reserved beforehand (RESERVE_JOB_IDS), so a try sent again
#: after a lost reply finds the row that landed instead of inserting it twice.
#: The first parameter is the relaying process's ``relay_finished`` channel (``waiters``).
INSERT_RESERVED_JOBS = _INSERT_JOBS.format(
    id_column="id, waiters, ",
    id_value="r.id, ARRAY[%s::varchar], ",
    on_conflict="ON CONFLICT (id) DO NOTHING",
)

RESERVE_JOB_IDS = """
SELECT nextval(pg_get_serial_sequence('django_relay_job', 'id')) FROM generate_series(1, %s)
"""

#: The rows of reserved ids that an earlier try of the insert already landed.
RESERVED_JOBS = """
SELECT id, state, scheduled_at, inserted_at, false FROM django_relay_job
WHERE id = ANY(%s::bigint[])
"""

# One unique job: inserted, or (on a conflict) the existing job it duplicates. The
# fallback SELECT runs on the statement's snapshot, so it misses a duplicate that
# committed while the INSERT waited for it: then nothing is returned and the caller
# runs the statement again (a new snapshot). The key also comes back empty when
# the duplicate left its unique states meanwhile: then the insert succeeds. With a
# reserved id (relay), a row with that id is this job's own earlier try: not a
# conflict, and preferred over the key's row.
_INSERT_UNIQUE = """
WITH ins AS ({insert})
SELECT * FROM ins
UNION ALL
(SELECT id, state, scheduled_at, inserted_at, id IS DISTINCT FROM %s::bigint
 FROM django_relay_job
 WHERE (unique_key = %s OR id = %s::bigint) AND NOT EXISTS (SELECT 1 FROM ins)
 ORDER BY id = %s::bigint DESC
 LIMIT 1)
"""
INSERT_UNIQUE = _INSERT_UNIQUE.format(
    insert=_INSERT_JOBS.format(
        id_column="",
        id_value="",
        on_conflict="ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING",
    )
)
# Either conflict (the id, the key) means "do not insert": no arbiter named.
INSERT_RESERVED_UNIQUE = _INSERT_UNIQUE.format(
    insert=_INSERT_JOBS.format(
        id_column="id, waiters, ",
        id_value="r.id, ARRAY[%s::varchar], ",
        on_conflict="ON CONFLICT DO NOTHING",
    )
)
_UNIQUE_TRIES = 20


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
    unique_key: str | None = None
    unique_states: str | None = None  # encoded JSON list
    #: Reserved beforehand (relay's inserts); None: the next id of the sequence.
    id: int | None = None


def _insert_params(jobs: Sequence[NewJob]) -> list[list[Any]]:
    return [[getattr(job, name) for job in jobs] for name in NewJob.__dataclass_fields__]


def _inserting(
    jobs: Sequence[NewJob], unique: str, first: Sequence[Any] = ()
) -> Generator[tuple[str, list[Any]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    # Unique jobs go one per statement, in order, so that a duplicate inside the
    # batch finds the job inserted before it; each statement is sent back what it
    # returned (one body for the sync and the async driver).
    rows: list[tuple[Any, ...]] = []
    for job in jobs:
        params = [*first, *_insert_params([job]), job.id, job.unique_key, job.id, job.id]
        for _ in range(_UNIQUE_TRIES):
            returned = yield unique, params
            if returned:
                break
        else:
            raise RuntimeError(f"could not insert or find the unique job {job.unique_key}")
        rows.extend(returned)
    return rows


def insert_jobs(cursor: Any, jobs: Sequence[NewJob]) -> list[tuple[Any, ...]]:
    """Insert ``jobs``; return ``(id, state, scheduled_at, inserted_at, conflict)`` of each.

    A unique job whose duplicate exists is not inserted: its row is the existing
    job's, with ``conflict`` true. Jobs that are not unique go in one statement.
    """
    if not any(job.unique_key for job in jobs):
        cursor.execute(INSERT_JOBS, _insert_params(jobs))
        return list(cursor.fetchall())
    steps, returned = _inserting(jobs, INSERT_UNIQUE), None
    try:
        while True:
            statement, params = steps.send(returned)  # type: ignore[arg-type]
            cursor.execute(statement, params)
            returned = list(cursor.fetchall())
    except StopIteration as done:
        return done.value


async def reserve_job_ids(conn: AsyncConnection, count: int) -> list[int]:
    """Take ``count`` job ids from the table's sequence, for :func:`ainsert_reserved_jobs`."""
    async with conn.cursor() as cur:
        await cur.execute(RESERVE_JOB_IDS, (count,))
        return [row[0] for row in await cur.fetchall()]


async def ainsert_reserved_jobs(
    conn: AsyncConnection, jobs: Sequence[NewJob], waiter: str
) -> list[tuple[Any, ...]]:
    """Insert ``jobs``, each with a reserved ``id``, in autocommit (relay's own inserts).

    ``waiter`` is the relaying process's ``relay_finished`` channel, the jobs' first
    waiter. A unique job's duplicate is not subscribed here: the caller does that.

    Safe to repeat: a job whose id is already in the table (an earlier try landed
    and its reply was lost) is not inserted again, and the row returned for it is
    the one that landed. Rows come back in the order of ``jobs``; a unique job's
    duplicate is returned as for :func:`insert_jobs`.
    """
    async with conn.cursor() as cur:
        if any(job.unique_key for job in jobs):
            steps, returned = _inserting(jobs, INSERT_RESERVED_UNIQUE, [waiter]), None
            try:
                while True:
                    statement, params = steps.send(returned)  # type: ignore[arg-type]
                    await cur.execute(statement, params)
                    returned = await cur.fetchall()
            except StopIteration as done:
                return done.value
        await cur.execute(INSERT_RESERVED_JOBS, [waiter, *_insert_params(jobs)])
        rows = await cur.fetchall()
        if len(rows) < len(jobs):
            # A new statement, so a new snapshot: it sees the rows that conflicted.
            inserted = {row[0] for row in rows}
            await cur.execute(RESERVED_JOBS, ([j.id for j in jobs if j.id not in inserted],))
            rows += await cur.fetchall()
    by_id = {row[0]: row for row in rows}
    return [by_id[job.id] for job in jobs]
