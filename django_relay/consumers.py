"""A websocket consumer that streams job events (see :mod:`django_relay.listener.events`)."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from django_relay.conf import settings
from django_relay.listener import events


class JobEventsConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Sends ``{"id", "state", "attempt"}`` each time a job finishes an attempt.

    Route it with a ``job_id`` URL kwarg to follow one job, or without to follow
    all jobs. By default only staff users may connect; override
    :meth:`has_permission` to let users follow their own jobs.
    """

    @property
    def channel_layer_alias(self) -> str:
        # The layer the listener publishes to, not Channels' "default".
        return str(settings.CHANNEL_LAYER)

    @channel_layer_alias.setter
    def channel_layer_alias(self, value: str) -> None:
        pass  # fixed by RELAY["CHANNEL_LAYER"]

    async def connect(self) -> None:
        job_id = self.scope.get("url_route", {}).get("kwargs", {}).get("job_id")
        self.job_id = None if job_id is None else int(job_id)
        if not await self.has_permission(self.job_id):
            await self.close(code=4403)
            return
        if not await events.ensure_publishing():
            await self.close(code=4503)
            return
        self.group = events.ALL_JOBS_GROUP if self.job_id is None else events.job_group(self.job_id)
        # With a shared layer every publishing process sends each event: drop repeats.
        self._last: dict[int, tuple[str, int]] = {}
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def has_permission(self, job_id: int | None) -> bool:
        """Whether the connecting user may follow ``job_id`` (None: all jobs)."""
        user = self.scope.get("user")
        return bool(user is not None and user.is_active and user.is_staff)

    async def relay_job(self, event: dict[str, Any]) -> None:
        seen = (event["state"], event["attempt"])
        if self._last.get(event["id"]) == seen:
            return
        if len(self._last) > 10_000:
            self._last.clear()
        self._last[event["id"]] = seen
        await self.send_json({k: event[k] for k in ("id", "state", "attempt")})
