"""Inserting jobs: on Django's connection inside the caller's transaction, or relay()'s batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

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
