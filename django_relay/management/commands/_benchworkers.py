"""Workers for ``manage.py relaybench`` (imported by path in the runner it starts)."""

from __future__ import annotations

from typing import Any

from django_relay.decorators import worker


@worker(queue="relaybench")
class NoopWorker:
    async def process(self, job: Any) -> None:
        return None


@worker(queue="relaybench")
class SyncNoopWorker:
    def process(self, job: Any) -> None:
        return None


@worker(queue="relaybench")
class AddWorker:
    async def process(self, job: Any) -> Any:
        return job.args["a"] + job.args["b"]
