"""Workers used by the test suite (imported by dotted path in runner subprocesses)."""

from __future__ import annotations

from typing import Any

from django_relay import worker


@worker(queue="default")
class EchoWorker:
    async def process(self, job: Any) -> Any:
        return job.args.get("value")
