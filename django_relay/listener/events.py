"""Job events on the Channels layer, for websocket consumers that follow jobs live.

Once a consumer connects, the process's listener LISTENs to ``relay_events`` (the
jobs each statement finished, sent beside the ``relay_finished_*`` notifications
that wake relays) and forwards each job in it to the channel layer: to the group
of that job and to the group of all jobs. Results
never travel this way (see README, "Why results do not go through Channels"):
an event says which job changed state; a consumer reads the row if it needs more.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from concurrent.futures import Future
from typing import Any

from django_relay.conf import settings
from django_relay.listener.notifier import Notifier, get_notifier
from django_relay.queries import EVENTS_CHANNEL, finished_payload

logger = logging.getLogger("django_relay")

#: The group every job event goes to.
ALL_JOBS_GROUP = "relay.jobs"
#: The type of the messages sent to the groups (handled by ``relay_job`` methods).
EVENT_TYPE = "relay.job"


def job_group(job_id: int) -> str:
    """The group that receives the events of one job."""
    return f"relay.job.{int(job_id)}"


def _layer() -> Any:
    from channels.layers import get_channel_layer

    return get_channel_layer(settings.CHANNEL_LAYER)


#: The publisher of each notifier (a notifier stopped and replaced gets its own: keyed
#: by the object, never by its ``id()``, which a new object may reuse).
_publishers: weakref.WeakKeyDictionary[Notifier, _Publisher] = weakref.WeakKeyDictionary()
_publishing_lock = threading.Lock()


async def ensure_publishing(timeout: float | None = None) -> bool:
    """Forward this process's job events to the channel layer (idempotent).

    Call it from the event loop that serves the consumers (the ASGI server's):
    each ``group_send`` runs on that loop, since channel layers are bound to the
    loop they are used from. Returns once the listener ``LISTEN`` s to the events
    channel, so that a job finishing right after a socket opened is reported; or
    after ``timeout`` seconds (default ``LISTENER_PING_TIMEOUT``) when it cannot yet
    (database unreachable: events flow once it reconnects). Returns False when events
    are off or no channel layer is configured.
    """
    layer = _layer()
    if not settings.PUBLISH_EVENTS or layer is None:
        return False
    loop = asyncio.get_running_loop()
    notifier = get_notifier()
    with _publishing_lock:
        publisher = _publishers.get(notifier)
        if publisher is None:
            publisher = _publishers[notifier] = _Publisher(layer, loop)
            notifier.listen(EVENTS_CHANNEL, publisher)
        publisher.layer, publisher.loop = layer, loop
    live = notifier.live(EVENTS_CHANNEL)
    if not live.is_set():
        wait = settings.LISTENER_PING_TIMEOUT if timeout is None else timeout
        await asyncio.to_thread(live.wait, wait)
    return True


class _Publisher:
    """Called on the notifier's thread; sends on the consumers' loop."""

    def __init__(self, layer: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.layer = layer
        self.loop = loop

    def __call__(self, payload: str) -> None:
        events = finished_payload(payload)
        if events is None or self.loop.is_closed():
            return
        for job_id, state, attempt in events:
            message = {"type": EVENT_TYPE, "id": job_id, "state": state, "attempt": attempt}
            for group in (job_group(job_id), ALL_JOBS_GROUP):
                future = asyncio.run_coroutine_threadsafe(
                    self.layer.group_send(group, message), self.loop
                )
                future.add_done_callback(_log_failure)


def _log_failure(future: Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("publishing a job event failed: %s", future.exception())
