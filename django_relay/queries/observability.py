"""Cheap reads for health checks, metrics and the dashboard: bounded whatever the table size."""

from __future__ import annotations

from typing import Any

from django_relay.queries.channels import TERMINAL

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
