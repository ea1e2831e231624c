"""The runner's periodic duties: duty locks, staging, heartbeat, rescue, pruning."""

from __future__ import annotations

from psycopg import AsyncConnection

from django_relay.queries.channels import TERMINAL

# -- the runner's maintenance -------------------------------------------------

#: Advisory locks of the duties one runner at a time performs: (namespace, duty).
DUTY_LOCK_NAMESPACE = 0x72656C79  # "rely"
DUTY_LOCKS = {"stage": 1, "rescue": 2, "prune": 3}

# For the caller's transaction only: nothing stays held between runs. A holder
# frozen inside it (a stopped process) is cut off by the server after the timeout.
TAKE_DUTY_LOCK = "SELECT pg_try_advisory_xact_lock(%s, %s)"
IDLE_TIMEOUT = "SELECT set_config('idle_in_transaction_session_timeout', %s, true)"


async def take_duty_lock(conn: AsyncConnection, duty: str, frozen_after: float) -> bool:
    """In ``conn``'s transaction: take ``duty``'s lock; false if another runner has it."""
    await conn.execute(IDLE_TIMEOUT, (f"{max(int(frozen_after * 1000), 1)}ms",))
    cursor = await conn.execute(TAKE_DUTY_LOCK, (DUTY_LOCK_NAMESPACE, DUTY_LOCKS[duty]))
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


LIVE_NODES = """
SELECT id, queues FROM django_relay_node WHERE heartbeat_at > now() - %s * interval '1 second'
"""


async def live_nodes(conn: AsyncConnection, within: float) -> list[tuple[str, dict]]:
    """``(node, queues)`` of the runners that heartbeat within ``within`` seconds."""
    async with conn.cursor() as cur:
        await cur.execute(LIVE_NODES, (within,))
        return await cur.fetchall()


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
