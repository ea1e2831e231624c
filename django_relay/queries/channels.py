"""Names the statements share with the triggers (channels, terminal states); the listener's SQL."""

from __future__ import annotations

import json
from dataclasses import dataclass

from psycopg import AsyncConnection, sql

TERMINAL = "('completed', 'discarded', 'cancelled')"

#: NOTIFY channel (sent by a statement-level trigger on ``Job``): payload
#: ``"<count>:<seq>:<hops>:<queue>"``, once per queue per statement: ``count`` jobs of
#: ``queue`` became available. ``seq`` numbers the notification (runners take turns
#: by it); ``hops`` counts how often a runner passed the jobs on (0 from the trigger).
AVAILABLE_CHANNEL = "relay_available"
#: NOTIFY channels ``relay_finished_<token>``, one per waiting process (statement-level
#: trigger on ``Job``, to the channels in a job's ``waiters``): payload is a JSON array
#: of ``[id, state, attempt]``, one per job that finished an attempt (left
#: ``executing``) or reached a terminal state in the statement, at most 100 per NOTIFY.
FINISHED_CHANNEL = "relay_finished"


#: NOTIFY channel (same trigger): the same payloads for every job, for the live event
#: feed (:mod:`django_relay.listener.events`); only processes that publish events LISTEN.
EVENTS_CHANNEL = "relay_events"


def finished_channel(token: str) -> str:
    """The ``relay_finished`` channel of the listener whose token is ``token``."""
    return f"{FINISHED_CHANNEL}_{token}"


@dataclass(frozen=True, slots=True)
class Available:
    """A ``relay_available`` notification."""

    queue: str
    count: int
    seq: int
    hops: int = 0

    def payload(self) -> str:
        return f"{self.count}:{self.seq}:{self.hops}:{self.queue}"


def available_payload(payload: str) -> Available | None:
    """The notification an ``AVAILABLE_CHANNEL`` payload stands for; None if malformed."""
    try:
        count, seq, hops, queue = payload.split(":", 3)
        return Available(queue, int(count), int(seq), int(hops))
    except ValueError:
        return None


def finished_payload(payload: str) -> list[tuple[int, str, int]] | None:
    """``[(job_id, state, attempt), ...]`` of a ``FINISHED_CHANNEL`` payload; None if malformed."""
    try:
        return [(int(i), str(state), int(attempt)) for i, state, attempt in json.loads(payload)]
    except (ValueError, TypeError):
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
