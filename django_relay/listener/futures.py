"""Handing work to another thread's loop: values and errors for callers' futures.

:func:`call_soon` is ``loop.call_soon_threadsafe`` for bursts: every call wakes
the loop's thread (a write to its self-pipe, then a contest for the GIL), so a
thousand relays finishing together woke their caller's loop a thousand times.
Calls queue in a mailbox per loop instead, and only the first call of a burst
wakes the loop, which then runs every call queued until it gets there. A lone
call costs what ``call_soon_threadsafe`` costs: nothing waits for company.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import Any


def resolve(future: asyncio.Future[Any], value: Any) -> None:
    """Set ``value``, unless the caller gave up meanwhile (then drop the late news)."""
    if not future.done():
        future.set_result(value)


def fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    """Set ``exc``, unless the caller gave up meanwhile."""
    if not future.done():
        future.set_exception(exc)


class _Mailbox:
    """Calls queued for one loop, and whether a drain is already on its way there."""

    __slots__ = ("calls", "lock", "scheduled")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self.scheduled = False

    def drain(self) -> None:
        # On the mailbox's loop. Calls queued from now on schedule a drain of their own.
        with self.lock:
            calls, self.calls = self.calls, []
            self.scheduled = False
        for fn, args in calls:
            try:
                fn(*args)
            except Exception as exc:  # as the loop does for a callback that raises
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"Exception in callback {fn!r}", "exception": exc}
                )


# Keyed weakly: a mailbox holds no reference to its loop, and an emptied one holds
# nothing of it either, so a finished loop (an async view's, under WSGI) goes away.
_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
    weakref.WeakKeyDictionary()
)
_mailboxes_lock = threading.Lock()


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: Any) -> None:
    """Call ``fn(*args)`` on ``loop`` from any thread, in the order of the calls.

    Dropped when ``loop`` is closed: nobody is left there to be told.
    """
    mailbox = _mailboxes.get(loop)
    if mailbox is None:
        with _mailboxes_lock:
            mailbox = _mailboxes.setdefault(loop, _Mailbox())
    with mailbox.lock:
        mailbox.calls.append((fn, args))
        if mailbox.scheduled:
            return  # a drain is on its way: it runs this call too
        mailbox.scheduled = True
    try:
        loop.call_soon_threadsafe(mailbox.drain)
    except RuntimeError:  # the loop is closed
        with mailbox.lock:
            mailbox.calls.clear()
            mailbox.scheduled = False
