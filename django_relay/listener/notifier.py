"""The process's one LISTEN connection, served on a :class:`~.loop.LoopHost`.

Handlers run on the host's loop and hand results to their own loop with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import psycopg

from django_relay import pg, queries, stats
from django_relay.conf import settings
from django_relay.listener import probe
from django_relay.listener.loop import LoopHost
from django_relay.queries import (
    AVAILABLE_CHANNEL,
    EVENTS_CHANNEL,
    QUEUE_CHANNEL,
    SIGNAL_CHANNEL,
)

logger = logging.getLogger("django_relay")

Handler = Callable[[str], None]
#: How long the pump waits for notifications before looking after its channels.
_TICK = 0.05
CHANNELS = (AVAILABLE_CHANNEL, EVENTS_CHANNEL, SIGNAL_CHANNEL, QUEUE_CHANNEL)


class Notifier(LoopHost):
    """Dispatches NOTIFY payloads by channel to handlers, reconnecting as needed."""

    thread_name = "relay-notifier"

    def __init__(self) -> None:
        super().__init__()
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._reconnect_handlers: list[Callable[[], None]] = []
        self._conn: psycopg.AsyncConnection | None = None
        #: Set while the LISTEN connection is live; cleared while reconnecting.
        self.connected = threading.Event()
        #: Incremented on each (re)connection; a waiter compares it to spot gaps.
        self.epoch = 0
        #: Set once the LISTEN probe passed (``listener.probe``); a runner that
        #: probed before starting sets it, so the notifier does not probe again.
        self.probe_ok = threading.Event()
        self._probing: asyncio.Task[None] | None = None
        self._live: dict[str, threading.Event] = {}
        #: Where the jobs this process waits for announce their outcomes: a channel
        #: of its own, recorded in each waited job's ``waiters`` (kept across reconnects).
        self.finished_channel = queries.finished_channel(uuid.uuid4().hex[:16])

    # -- any thread -----------------------------------------------------------

    def listen(self, channel: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(payload)`` on the notifier thread for each NOTIFY on ``channel``.

        The first handler of a channel makes the notifier ``LISTEN`` to it (within
        one pump tick); :meth:`live` tells when that is done. A process thus receives
        only the notifications it has a use for: a runner that relays nothing never
        reads the stream of finished jobs. Returns a function that removes the handler.
        """
        if channel not in CHANNELS and channel != self.finished_channel:
            raise ValueError(f"the notifier does not LISTEN to {channel!r}")
        self.start()
        with self._lock:
            self._handlers[channel].append(handler)
            self._live.setdefault(channel, threading.Event())

        def unlisten() -> None:
            with self._lock:
                self._handlers[channel].remove(handler)

        return unlisten

    def live(self, channel: str) -> threading.Event:
        """Set while ``LISTEN channel`` is in effect on the current connection."""
        with self._lock:
            return self._live.setdefault(channel, threading.Event())

    def on_reconnect(self, handler: Callable[[], None]) -> None:
        """Call ``handler()`` on the notifier thread after every reconnection."""
        with self._lock:
            self._reconnect_handlers.append(handler)

    # -- the notifier's loop --------------------------------------------------

    async def _close(self) -> None:
        self.connected.clear()
        if self._probing is not None:
            self._probing.cancel()
        if self._conn is not None:
            await _close_quietly(self._conn)

    async def _serve(self) -> None:
        delay = 0.05
        while True:
            try:
                self._conn = await pg.connect(listen=True)
                await self._listen_wanted(self._conn)
                self.epoch += 1
                self.connected.set()
                delay = 0.05
                if not self.probe_ok.is_set() and self._probing is None:
                    self._probing = asyncio.get_running_loop().create_task(self._probe())
                with self._lock:
                    reconnect_handlers = list(self._reconnect_handlers)
                for handler in reconnect_handlers:
                    try:
                        handler()
                    except Exception:
                        logger.exception("a listener reconnect handler failed")
                await self._pump(self._conn)
            except Exception as exc:
                # Whatever broke, the process's relays depend on this loop going on:
                # log it, drop the connection, and start over.
                self.connected.clear()
                with self._lock:
                    for event in self._live.values():
                        event.clear()
                if pg.lost(exc, self._conn):
                    logger.warning(
                        "listener connection lost (%s); reconnecting in %.2fs",
                        exc or "no answer within its deadline",
                        delay,
                    )
                else:
                    logger.exception("listener failed; reconnecting in %.2fs", delay)
                if self._conn is not None:
                    await _close_quietly(self._conn)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _probe(self) -> None:
        # Once per process, beside the pump: a LISTEN that cannot receive (a pooler
        # in transaction mode) leaves every wait to its backup poll. Say so loudly.
        try:
            await probe.probe()
        except probe.ListenBroken as exc:
            logger.error("%s Until then, results and wake-ups arrive by polling only.", exc)
        except Exception as exc:
            logger.warning("the LISTEN probe could not run (%s); it runs on reconnection", exc)
            self._probing = None
            return
        else:
            self.probe_ok.set()

    async def _listen(self, conn: psycopg.AsyncConnection, channel: str) -> None:
        await pg.within_deadline(queries.listen(conn, channel))

    async def _listen_wanted(self, conn: psycopg.AsyncConnection) -> None:
        with self._lock:
            pending = [(c, e) for c, e in self._live.items() if not e.is_set()]
        for channel, event in pending:
            await self._listen(conn, channel)
            event.set()

    async def _pump(self, conn: psycopg.AsyncConnection) -> None:
        # notifies() holds the connection for as long as it runs: return every
        # tick to LISTEN to newly wanted channels and to ping now and then.
        ping_every = settings.LISTENER_PING_INTERVAL
        next_ping = time.monotonic() + ping_every
        while True:
            async for note in conn.notifies(timeout=_TICK):
                self._dispatch(note.channel, note.payload)
            await self._listen_wanted(conn)
            if time.monotonic() >= next_ping:
                # Health ping: a dead socket raises here, and a server that stopped
                # answering (a half-open socket) misses the deadline.
                await asyncio.wait_for(queries.ping(conn), settings.LISTENER_PING_TIMEOUT)
                next_ping = time.monotonic() + ping_every

    def _dispatch(self, channel: str, payload: str) -> None:
        stats.notifications[channel] += 1
        with self._lock:
            handlers = list(self._handlers.get(channel, ()))
        for handler in handlers:
            try:
                handler(payload)
            except Exception:
                logger.exception("NOTIFY handler for %s failed", channel)


async def _close_quietly(conn: psycopg.AsyncConnection) -> None:
    with contextlib.suppress(psycopg.Error):
        await conn.close()


_notifier: Notifier | None = None
_notifier_lock = threading.Lock()


def get_notifier() -> Notifier:
    """The process's notifier (created on first use; a forked child makes its own)."""
    global _notifier
    with _notifier_lock:
        if _notifier is None or _notifier_pid != os.getpid():
            _set(Notifier())
        assert _notifier is not None
        return _notifier


_notifier_pid = 0


def stop_notifier() -> None:
    """Stop this process's notifier, if it started; the next use starts a new one."""
    global _notifier
    with _notifier_lock:
        notifier, _notifier = _notifier, None
    if notifier is not None:
        notifier.stop()


def _set(notifier: Notifier) -> None:
    global _notifier, _notifier_pid
    _notifier, _notifier_pid = notifier, os.getpid()
