"""Messages to jobs: sending, reading and consuming ``JobSignal`` rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django_relay.queries.channels import TERMINAL

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
