"""Reading outcomes for relay's waiters, and cancelling a job whose waiter gave up."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import AsyncConnection

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


# Subscribe, then check, in one statement: the row RETURNING gives is the one our
# UPDATE wrote, so an ack that committed first is seen, and one that commits after
# sees our channel in ``waiters``.
SUBSCRIBE = """
UPDATE django_relay_job
SET waiters = CASE WHEN %s = ANY(waiters) THEN waiters
                   ELSE array_append(coalesce(waiters, '{}'), %s::varchar) END
WHERE id = ANY(%s::bigint[])
RETURNING id, state, result::text, errors -> -1 ->> 'error', meta -> 'result_too_large'
"""


async def subscribe(conn: AsyncConnection, job_ids: Sequence[int], channel: str) -> list[tuple]:
    """Add ``channel`` to the jobs' waiters; return their outcomes as :func:`fetch_outcomes`."""
    async with conn.cursor() as cur:
        await cur.execute(SUBSCRIBE, (channel, channel, list(job_ids)))
        return await cur.fetchall()


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
