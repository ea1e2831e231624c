"""Applies the queues' run-time settings (``Queue`` rows) to this runner's producers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

from django_relay import queries
from django_relay.engine.producer import Producer
from django_relay.pg import Link

logger = logging.getLogger("django_relay")

#: Rows are read again this often even without a NOTIFY (one may have been missed).
REFRESH_INTERVAL = 30.0


@dataclass(frozen=True, slots=True)
class Setting:
    """What one runner does with one queue."""

    paused: bool
    limit: int
    limits: queries.QueueLimits | None


def setting_for(row: queries.QueueRow | None, node: str, configured: int) -> Setting:
    """The queue's setting on ``node`` (a value for this node id or host wins)."""
    if row is None:
        return Setting(False, configured, None)
    names = (node, node.split(":", 1)[0])
    paused = row.paused or any(name in row.paused_nodes for name in names)
    limit = next(
        (row.node_limits[name] for name in names if name in row.node_limits),
        row.local_limit or configured,
    )
    limited = row.global_limit is not None or row.rate_limit is not None
    limits = (
        queries.QueueLimits(row.global_limit, row.rate_limit, row.rate_period, row.partition)
        if limited
        else None
    )
    return Setting(paused, int(limit), limits)


class QueueControl:
    """Reads the ``Queue`` rows at start, on each NOTIFY, and every so often."""

    def __init__(
        self, node: str, producers: dict[str, Producer], configured: dict[str, int], link: Link
    ) -> None:
        self.node = node
        self.hostname = socket.gethostname()
        self._producers = producers
        self._configured = configured
        self._link = link  # the runner's upkeep link, shared with its periodic duties
        self._changed = asyncio.Event()

    def changed(self) -> None:
        """A queue's row changed (its NOTIFY came), or we may have missed one."""
        self._changed.set()

    async def refresh(self) -> None:
        rows = await self._link.run(lambda conn: queries.queue_rows(conn, list(self._producers)))
        by_name = {row.name: row for row in rows}
        for name, producer in self._producers.items():
            setting = setting_for(by_name.get(name), self.node, self._configured[name])
            current = Setting(producer.paused, producer.limit, producer.limits)
            if setting != current:
                logger.info(
                    "queue %s: %s, %s at once here%s",
                    name,
                    "paused" if setting.paused else "running",
                    setting.limit,
                    f", limits {setting.limits}" if setting.limits else "",
                )
                producer.apply(setting.paused, setting.limit, setting.limits)

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), REFRESH_INTERVAL)
            self._changed.clear()
            if stopping.is_set():
                return
            try:
                await self.refresh()
            except Exception:
                logger.exception("reading the queues' settings failed; trying again later")
