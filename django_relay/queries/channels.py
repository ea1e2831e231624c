"""Names the statements share with the triggers (channels, terminal states); the listener's SQL."""

from __future__ import annotations

import json

from psycopg import AsyncConnection, sql

TERMINAL = "('completed', 'discarded', 'cancelled')"

#: NOTIFY channel (sent by a trigger on ``Job``): payload is a queue with available work.
AVAILABLE_CHANNEL = "relay_available"
#: NOTIFY channel: payload is ``{"id", "state", "attempt"}`` of a job that finished an
#: attempt (left ``executing``) or reached a terminal state.
FINISHED_CHANNEL = "relay_finished"


def finished_payload(payload: str) -> tuple[int, str, int] | None:
    """``(job_id, state, attempt)`` from a ``FINISHED_CHANNEL`` payload; None if malformed."""
    try:
        event = json.loads(payload)
        return int(event["id"]), str(event["state"]), int(event["attempt"])
    except (ValueError, KeyError, TypeError):
        return None


#: NOTIFY channel (sent by a trigger on ``JobSignal``): payload is the signalled job's id.
SIGNAL_CHANNEL = "relay_signal"
#: NOTIFY channel (sent by a trigger on ``Queue``): payload is a queue whose settings changed.
QUEUE_CHANNEL = "relay_queue"

# -- the listener (its own connection) ------------------------------------------


async def listen(conn: AsyncConnection, channel: str) -> None:
    """``LISTEN channel`` on ``conn``."""
    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


NOTIFY = "SELECT pg_notify(%s, %s)"


async def notify(conn: AsyncConnection, channel: str, payload: str) -> None:
    """Send ``payload`` on ``channel`` (the LISTEN probe, from its second connection)."""
    await conn.execute(NOTIFY, (channel, payload))


PING = "SELECT 1"


async def ping(conn: AsyncConnection) -> None:
    """A round trip: raises if the connection is dead."""
    await conn.execute(PING)
