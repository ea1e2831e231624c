"""psycopg connections of our own, for the runner and the listener.

Django's connections are synchronous and per-thread; the runner's hot path and
the LISTEN connection need asyncio connections that outlive requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from django.db import connections
from psycopg.conninfo import conninfo_to_dict

from django_relay.conf import settings

logger = logging.getLogger("django_relay")
R = TypeVar("R")

# Django sets these for its own cursors; ours use psycopg's, and RELAY's threshold.
_DJANGO_ONLY = ("cursor_factory", "context", "prepare_threshold")


#: What a failed connection raises: psycopg's error, or our deadline passing.
#: Not every such error is a lost connection: see :func:`lost`.
CONNECTION_ERRORS = (psycopg.OperationalError, TimeoutError)


class ConnectionLost(Exception):
    """A connection of ours failed, or a statement missed its deadline (see ``__cause__``)."""


def lost(exc: BaseException, conn: psycopg.AsyncConnection | None) -> bool:
    """Whether ``exc``, raised by a statement on ``conn``, means the connection is gone.

    Our deadline passing leaves the connection in an unknown state, and a
    psycopg error with no SQLSTATE comes from the client (the socket closed, the
    server stopped answering). An error the server sent on a connection that is
    still open is an answer, not a failure, even in OperationalError's classes
    (a cancelled query, a lock not available, or ``08P01``: a pooler that bound
    one client's prepared statement to another's parameters).
    """
    if isinstance(exc, TimeoutError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    return exc.sqlstate is None or conn is None or conn.closed


def connect_kwargs() -> dict[str, Any]:
    """psycopg keyword arguments for the jobs' database, from ``DATABASES``.

    No server-side prepared statements unless ``RELAY["PREPARE_THRESHOLD"]`` asks
    for them: behind a pooler in transaction mode, a statement one client prepared
    is found (or missed) by another on the same server connection.
    """
    wrapper = connections[settings.DATABASE_ALIAS]
    params = wrapper.get_connection_params()
    for key in _DJANGO_ONLY:
        params.pop(key, None)
    params["prepare_threshold"] = settings.PREPARE_THRESHOLD
    return params


def deadline_params() -> dict[str, Any]:
    """libpq parameters that bound a connection's waits (``RELAY`` settings).

    All client-side, so they also pass through a pooler: a connect timeout, and
    TCP keepalives with a user timeout, so a peer that vanished (a half-open socket
    after a failover or a network cut) is detected by the kernel instead of waited
    on for ever.
    """
    idle = settings.TCP_KEEPALIVE
    return {
        "connect_timeout": max(int(settings.CONNECT_TIMEOUT + 0.5), 2),  # libpq: >= 2
        "keepalives": 1,
        "keepalives_idle": max(int(idle), 1),
        "keepalives_interval": max(int(idle / 3), 1),
        "keepalives_count": 3,
        "tcp_user_timeout": int(idle * 2 * 1000),
    }


async def connect(*, listen: bool = False) -> psycopg.AsyncConnection:
    """Open an autocommit connection (for LISTEN, ``RELAY["LISTEN_DSN"]`` if set).

    Parameters the DSN or ``DATABASES`` set themselves win over our deadlines.
    """
    if listen and settings.LISTEN_DSN:
        dsn = settings.LISTEN_DSN
        given = {"prepare_threshold": settings.PREPARE_THRESHOLD, **conninfo_to_dict(dsn)}
    else:
        dsn, given = "", connect_kwargs()
    params = {**deadline_params(), **given}
    return await psycopg.AsyncConnection.connect(dsn, **params, autocommit=True)


async def within_deadline[T](awaitable: Awaitable[T]) -> T:
    """``await awaitable``, or raise ``TimeoutError`` after ``RELAY["STATEMENT_TIMEOUT"]``.

    On its own connections django_relay bounds each statement on the client: a
    server-side ``statement_timeout`` cannot fire when the server (or the route to
    it) stopped answering, and poolers refuse it as a startup parameter.
    """
    # A timeout scope, not wait_for(): that would wrap every statement in a task.
    async with asyncio.timeout(settings.STATEMENT_TIMEOUT):
        return await awaitable


class Link:
    """One long-lived connection that is reopened after it fails.

    ``run(fn)`` calls ``fn(conn)``; on a connection error it logs, reconnects with
    backoff and calls ``fn`` again. Callers make ``fn`` safe to repeat.
    """

    def __init__(self, name: str, *, max_backoff: float = 5.0) -> None:
        self.name = name
        self.max_backoff = max_backoff
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()

    async def run(
        self, fn: Callable[[psycopg.AsyncConnection], Awaitable[R]], *, retry: bool = True
    ) -> R:
        """``fn(conn)``; with ``retry=False`` a lost connection raises ``ConnectionLost``.

        An error the server answered with (not a lost connection) is raised as is.
        """
        delay = 0.05
        while True:
            try:
                async with self._lock:
                    if self._conn is None or self._conn.closed:
                        self._conn = await connect()
                    return await within_deadline(fn(self._conn))
            except psycopg.errors.TransactionRollback as exc:
                # A deadlock or serialization failure rolled the statement back;
                # the connection is fine: run it again.
                logger.info("%s: %s; retrying", self.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
            except CONNECTION_ERRORS as exc:
                if not lost(exc, self._conn):
                    raise  # the server answered with an error: the connection is fine
                # Past the deadline the connection is in an unknown state: replace it.
                await self._discard()
                if not retry:
                    raise ConnectionLost(str(exc)) from exc
                logger.warning(
                    "%s connection failed (%s); retrying in %.2fs",
                    self.name,
                    exc or "no answer within RELAY['STATEMENT_TIMEOUT']",
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # already broken: nothing to close
                await conn.close()

    async def close(self) -> None:
        await self._discard()
