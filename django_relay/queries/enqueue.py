"""Inserting jobs: on Django's connection inside the caller's transaction, or relay()'s batches."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any, NamedTuple

from psycopg import AsyncConnection

from django_relay.codec import encode_plain

# -- enqueue (Django's connection, inside the caller's transaction) -----------

# The rows travel as one JSON document, an array of one array per job (see
# job_row() for the order): one parameter, so neither Django's client-side
# quoting nor psycopg's array dumping runs per value, and PostgreSQL parses it
# faster than sixteen arrays. Elements that are null take the column's default.
_INSERT_JOBS = """
INSERT INTO django_relay_job ({id_column}args, meta, worker, queue, max_attempts, priority,
                              scheduled_at, state, workflow_id, step, deps, ignore_cancelled,
                              ignore_discarded, unique_key, unique_states, deps_pending,
                              dependents, result, errors, attempt, inserted_at, signal_count)
SELECT {id_value}r->0, r->1, r->>2, r->>3, (r->>4)::int, (r->>5)::int,
       coalesce((r->>6)::timestamptz, now()),
       coalesce(r->>7, CASE WHEN (r->>6)::timestamptz > now() THEN 'scheduled'
                            ELSE 'available' END),
       (r->>8)::bigint, r->>9, coalesce(nullif(r->10, 'null'), '[]'),
       coalesce((r->>11)::bool, false), coalesce((r->>12)::bool, false),
       r->>13, nullif(r->14, 'null'), (r->>15)::int, nullif(r->16, 'null'),
       NULL, '[]', 0, now(), 0
FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS e(r, ord)
ORDER BY e.ord
{on_conflict}
RETURNING {returning}
"""
_RETURNING = "id, state, scheduled_at, inserted_at, false AS conflict"
#: enqueue_many's insert. A row's timestamps are mostly the statement's now(), and
#: Django's loader of timestamps is Python: so each row returns its scheduled_at
#: only if it differs, and one last row returns now() (its inserted_at).
INSERT_JOBS = f"""
WITH ins AS ({
    _INSERT_JOBS.format(
        id_column="",
        id_value="",
        on_conflict="",
        returning="id, state, nullif(scheduled_at, now())",
    )
})
SELECT * FROM ins
UNION ALL
SELECT NULL, NULL, now()
"""
#: relay()'s insert: ids reserved beforehand (RESERVE_JOB_IDS), so a try sent again
#: after a lost reply finds the row that landed instead of inserting it twice.
#: The first parameter is the relaying process's ``relay_finished`` channel (``waiters``).
INSERT_RESERVED_JOBS = _INSERT_JOBS.format(
    id_column="id, waiters, ",
    id_value="(r->>17)::bigint, ARRAY[%s::varchar], ",
    on_conflict="ON CONFLICT (id) DO NOTHING",
    returning=_RETURNING,
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
        returning=_RETURNING,
    )
)
# Either conflict (the id, the key) means "do not insert": no arbiter named.
INSERT_RESERVED_UNIQUE = _INSERT_UNIQUE.format(
    insert=_INSERT_JOBS.format(
        id_column="id, waiters, ",
        id_value="(r->>17)::bigint, ARRAY[%s::varchar], ",
        on_conflict="ON CONFLICT DO NOTHING",
        returning=_RETURNING,
    )
)
_UNIQUE_TRIES = 20


#: Rows per statement at most, in bytes of their JSON: a ``jsonb`` value holds
#: at most 256 MB, and a batch of large args may exceed it. More go in several
#: statements (the caller makes them one transaction: see :func:`insert_rows`).
STATEMENT_BYTES = 32 * 1024 * 1024


class Row(NamedTuple):
    """One job to insert: its JSON row (see :func:`job_row`), and what the unique path needs."""

    text: str
    unique_key: str | None = None
    #: Reserved beforehand (relay's inserts); None: the next id of the sequence.
    id: int | None = None


def job_row(
    args: str,
    meta: str,
    worker: str,
    queue: str,
    max_attempts: int,
    priority: int,
    scheduled_at: datetime | None,
    state: str | None = None,
    workflow_id: int | None = None,
    step: str | None = None,
    deps: list[str] | None = None,
    ignore_cancelled: bool = False,
    ignore_discarded: bool = False,
    unique_key: str | None = None,
    unique_states: list[str] | None = None,
    deps_pending: int | None = None,
    dependents: list[str] | None = None,
    id: int | None = None,
) -> Row:
    """The row the insert statements read for one job, in the order they read it.

    ``args`` and ``meta`` are JSON text from the codec, spliced in as they are;
    every other value is encoded here, so none can break the array's shape.
    """
    rest = encode_plain(
        (
            worker,
            queue,
            max_attempts,
            priority,
            scheduled_at,
            state,
            workflow_id,
            step,
            deps,
            ignore_cancelled,
            ignore_discarded,
            unique_key,
            unique_states,
            deps_pending,
            dependents,
            id,
        )
    )
    return Row(f"[{args},{meta},{rest[1:]}", unique_key, id)


@dataclass(slots=True)
class NewJob:
    """A job row to insert, in :func:`job_row`'s order; args and meta already encoded.

    Not frozen: relay()'s inserter sets ``id`` once it is reserved (a frozen
    dataclass costs a ``replace()`` there, and a slower ``__init__``).
    """

    args: str
    meta: str
    worker: str
    queue: str
    max_attempts: int
    priority: int
    scheduled_at: datetime | None
    state: str | None = None
    workflow_id: int | None = None
    step: str | None = None
    deps: list[str] | None = None
    ignore_cancelled: bool = False
    ignore_discarded: bool = False
    unique_key: str | None = None
    unique_states: list[str] | None = None
    deps_pending: int | None = None
    dependents: list[str] | None = None
    #: Reserved beforehand (relay's inserts); None: the next id of the sequence.
    id: int | None = None

    def row(self) -> Row:
        return job_row(*_new_job_values(self))


_new_job_values = attrgetter(*NewJob.__dataclass_fields__)


def _documents(rows: Sequence[Row]) -> list[str]:
    """The rows as JSON documents of at most :data:`STATEMENT_BYTES` each (one, mostly)."""
    documents: list[str] = []
    chunk: list[str] = []
    size = 0
    for row in rows:
        if chunk and size + len(row.text) > STATEMENT_BYTES:
            documents.append(f"[{','.join(chunk)}]")
            chunk, size = [], 0
        chunk.append(row.text)
        size += len(row.text) + 1
    documents.append(f"[{','.join(chunk)}]")
    return documents


def statements(rows: Sequence[Row]) -> int:
    """How many statements :func:`insert_rows` sends for ``rows``: more than one needs a
    transaction around it, so that a failure inserts none."""
    if any(row.unique_key for row in rows):
        return len(rows)
    size = sum(len(row.text) + 1 for row in rows) - 1  # as _documents() counts
    return 1 if size <= STATEMENT_BYTES else 2


def _inserting(
    rows: Sequence[Row], unique: str, first: Sequence[Any] = ()
) -> Generator[tuple[str, list[Any]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    # Unique jobs go one per statement, in order, so that a duplicate inside the
    # batch finds the job inserted before it; each statement is sent back what it
    # returned (one body for the sync and the async driver).
    returned_rows: list[tuple[Any, ...]] = []
    for row in rows:
        params = [*first, f"[{row.text}]", row.id, row.unique_key, row.id, row.id]
        for _ in range(_UNIQUE_TRIES):
            returned = yield unique, params
            if returned:
                break
        else:
            raise RuntimeError(f"could not insert or find the unique job {row.unique_key}")
        returned_rows.extend(returned)
    return returned_rows


def insert_rows(cursor: Any, rows: Sequence[Row]) -> list[tuple[Any, ...]]:
    """Insert ``rows``; return ``(id, state, scheduled_at, inserted_at, conflict)`` of each.

    A unique job whose duplicate exists is not inserted: its row is the existing
    job's, with ``conflict`` true. Jobs that are not unique go in one statement
    (several past :data:`STATEMENT_BYTES`: see :func:`statements`).
    """
    if not any(row.unique_key for row in rows):
        returned: list[tuple[Any, ...]] = []
        for document in _documents(rows):
            cursor.execute(INSERT_JOBS, (document,))
            *inserted, (_, _, now) = cursor.fetchall()
            returned += [
                (job_id, state, now if scheduled_at is None else scheduled_at, now, False)
                for job_id, state, scheduled_at in inserted
            ]
        return returned
    steps, one = _inserting(rows, INSERT_UNIQUE), None
    try:
        while True:
            statement, params = steps.send(one)  # type: ignore[arg-type]
            cursor.execute(statement, params)
            one = list(cursor.fetchall())
    except StopIteration as done:
        return done.value


def insert_jobs(cursor: Any, jobs: Sequence[NewJob]) -> list[tuple[Any, ...]]:
    """:func:`insert_rows` for :class:`NewJob` rows."""
    return insert_rows(cursor, [job.row() for job in jobs])


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
    rows = [job.row() for job in jobs]
    async with conn.cursor() as cur:
        if any(row.unique_key for row in rows):
            steps, one = _inserting(rows, INSERT_RESERVED_UNIQUE, [waiter]), None
            try:
                while True:
                    statement, params = steps.send(one)  # type: ignore[arg-type]
                    await cur.execute(statement, params)
                    one = await cur.fetchall()
            except StopIteration as done:
                return done.value
        await cur.execute(INSERT_RESERVED_JOBS, (waiter, f"[{','.join(row.text for row in rows)}]"))
        returned = await cur.fetchall()
        if len(returned) < len(jobs):
            # A new statement, so a new snapshot: it sees the rows that conflicted.
            inserted = {row[0] for row in returned}
            await cur.execute(RESERVED_JOBS, ([j.id for j in jobs if j.id not in inserted],))
            returned += await cur.fetchall()
    by_id = {row[0]: row for row in returned}
    return [by_id[job.id] for job in jobs]
