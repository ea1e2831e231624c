"""Operations on existing jobs (admin, public API): cancel, retry, the cascade they cause."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django_relay.queries.channels import TERMINAL

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
# going again; otherwise it is held (``suspended``) until its deps finish, and
# the workflow trigger counts its deps afresh at the next one's finish.
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
    max_attempts = greatest(j.max_attempts, j.attempt + 1),
    deps_pending = NULL  -- a held step counts its deps at the next one's finish
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
