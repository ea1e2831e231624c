"""Queues' run-time settings (pause, limits) and periodic jobs' ticks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

# -- queues (their run-time settings) ------------------------------------------------

ENSURE_QUEUES = """
INSERT INTO django_relay_queue (name, paused, paused_nodes, node_limits, partition, updated_at)
SELECT unnest(%s::text[]), false, '[]', '{}', '', now()
ON CONFLICT (name) DO NOTHING
"""

QUEUE_ROWS = """
SELECT name, paused, paused_nodes, local_limit, node_limits, global_limit, rate_limit,
       rate_period, partition
FROM django_relay_queue WHERE name = ANY(%s::text[])
"""


@dataclass(frozen=True, slots=True)
class QueueRow:
    """A ``Queue`` row as the runner reads it."""

    name: str
    paused: bool = False
    paused_nodes: list[str] = field(default_factory=list)
    local_limit: int | None = None
    node_limits: dict[str, int] = field(default_factory=dict)
    global_limit: int | None = None
    rate_limit: int | None = None
    rate_period: float | None = None
    partition: str = ""


async def queue_rows(conn: AsyncConnection, names: Sequence[str]) -> list[QueueRow]:
    """The rows of queues ``names``, creating the missing ones (so the admin lists them)."""
    async with conn.cursor() as cur:
        await cur.execute(ENSURE_QUEUES, (list(names),))
        await cur.execute(QUEUE_ROWS, (list(names),))
        return [QueueRow(*row) for row in await cur.fetchall()]


# Each change creates the row if needed, then updates it: the trigger tells runners.
# A change for every runner (no node) also drops the per-node values it overrides.
PAUSE_QUEUE = """
UPDATE django_relay_queue SET
    paused = CASE WHEN %(node)s::text IS NULL THEN %(paused)s ELSE paused END,
    paused_nodes = CASE
        WHEN %(node)s::text IS NULL THEN '[]'::jsonb
        WHEN %(paused)s THEN (paused_nodes - %(node)s::text) || to_jsonb(%(node)s::text)
        ELSE paused_nodes - %(node)s::text END,
    updated_at = now()
WHERE name = %(name)s
"""

SCALE_QUEUE = """
UPDATE django_relay_queue SET
    local_limit = CASE WHEN %(node)s::text IS NULL THEN %(limit)s ELSE local_limit END,
    node_limits = CASE WHEN %(node)s::text IS NULL THEN '{}'::jsonb
                  ELSE node_limits || jsonb_build_object(%(node)s::text, %(limit)s) END,
    updated_at = now()
WHERE name = %(name)s
"""

LIMIT_QUEUE = """
UPDATE django_relay_queue SET
    global_limit = %(global_limit)s, rate_limit = %(rate_limit)s,
    rate_period = %(rate_period)s, partition = %(partition)s, updated_at = now()
WHERE name = %(name)s
"""


def change_queue(cursor: Any, statement: str, params: dict[str, Any]) -> None:
    """Run one of the queue changes above on queue ``params["name"]``."""
    cursor.execute(ENSURE_QUEUES, ([params["name"]],))
    cursor.execute(statement, params)


# -- periodic jobs -------------------------------------------------------------------

ENSURE_PERIODIC = """
INSERT INTO django_relay_periodicentry (name, updated_at) SELECT unnest(%s::text[]), now()
ON CONFLICT (name) DO NOTHING
"""

PERIODIC_TICKS = """
SELECT name, last_tick FROM django_relay_periodicentry WHERE name = ANY(%s::text[])
"""

# Moves ``last_tick`` forward only. Two runners taking the same tick: the second
# waits for the first's row lock, then re-checks the WHERE on the committed row
# (tick no longer newer) and updates nothing, so it returns no row.
TAKE_TICK = """
INSERT INTO django_relay_periodicentry AS p (name, last_tick, updated_at)
VALUES (%s, %s, now())
ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick, updated_at = now()
WHERE p.last_tick IS NULL OR p.last_tick < excluded.last_tick
RETURNING name
"""

RECORD_TICK_JOB = "UPDATE django_relay_periodicentry SET last_job_id = %s WHERE name = %s"


def periodic_ticks(cursor: Any, names: Sequence[str]) -> list[tuple[str, datetime | None]]:
    """``(name, last_tick)`` of these entries, creating the rows they lack."""
    cursor.execute(ENSURE_PERIODIC, (list(names),))
    cursor.execute(PERIODIC_TICKS, (list(names),))
    return list(cursor.fetchall())


def take_tick(cursor: Any, name: str, tick: datetime) -> bool:
    """Whether this caller takes ``tick`` of entry ``name`` (then it enqueues the job)."""
    cursor.execute(TAKE_TICK, (name, tick))
    return cursor.fetchone() is not None


def record_tick_job(cursor: Any, name: str, job_id: int) -> None:
    cursor.execute(RECORD_TICK_JOB, (job_id, name))
