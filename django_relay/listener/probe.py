"""Whether LISTEN works: a NOTIFY sent from a second connection reaches the LISTEN one.

A pooler in transaction mode (PgBouncer) accepts ``LISTEN`` but runs it on
whichever server connection the pooler lent for that statement, and hands that
connection to other clients afterwards: the listener then receives nothing, and
every wait falls back to polling. A NOTIFY a connection sends itself proves
nothing (it often lands on that very server connection), so the probe sends it
from a second connection, the pooled one django_relay uses for everything else.
"""

from __future__ import annotations

import os
import time
import uuid

from asgiref.sync import async_to_sync

from django_relay import pg, queries
from django_relay.conf import settings

#: How long the probe waits for its NOTIFY (a direct connection needs milliseconds).
PROBE_TIMEOUT = 5.0


class ListenBroken(Exception):
    """A NOTIFY from a second connection never reached the LISTEN connection."""


def _route() -> str:
    if settings.LISTEN_DSN:
        return "RELAY['LISTEN_DSN']"
    return f"DATABASES[{settings.DATABASE_ALIAS!r}] (RELAY['LISTEN_DSN'] is not set)"


def problem() -> str:
    """What is wrong when the probe fails, naming the setting to fix."""
    return (
        f"LISTEN does not work through {_route()}: a NOTIFY sent from another connection "
        f"never reached it within {PROBE_TIMEOUT:g}s (a pooler in transaction mode, such as "
        "PgBouncer, cannot LISTEN). Set RELAY['LISTEN_DSN'] to a direct connection to "
        "PostgreSQL (a libpq DSN that bypasses the pooler)."
    )


async def probe(timeout: float = PROBE_TIMEOUT) -> None:
    """LISTEN on the listener's connection, NOTIFY from the pooled one, wait for it.

    Raises:
        ListenBroken: the NOTIFY did not arrive within ``timeout`` (see :func:`problem`).
        psycopg.Error, TimeoutError: a connection could not be opened or used.
    """
    # A channel of this probe's own: no other process receives its NOTIFY.
    channel = f"relay_probe_{uuid.uuid4().hex}"
    token = str(os.getpid())
    listener = await pg.connect(listen=True)
    try:
        await pg.within_deadline(queries.listen(listener, channel))
        sender = await pg.connect()
        try:
            await pg.within_deadline(queries.notify(sender, channel, token))
        finally:
            await sender.close()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            async for note in listener.notifies(timeout=left):
                if note.channel == channel and note.payload == token:
                    return
        raise ListenBroken(problem())
    finally:
        await listener.close()


#: See probe().
probe_sync = async_to_sync(probe)
