"""Workers for the flow-control tests: unique jobs, queues, limits, periodic jobs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from django_relay import worker
from tests.workers import record


@worker(queue="default", unique=True)
class UniqueWorker:
    """Waits for the file ``gate`` (if given), then returns ``value``."""

    async def process(self, job: Any) -> Any:
        if job.args.get("gate"):
            gate = Path(job.args["gate"])
            while not gate.exists():
                await asyncio.sleep(0.02)
        return job.args.get("value")


@worker(queue="default", unique={"keys": ["account"], "period": 3600})
class AccountWorker:
    async def process(self, job: Any) -> Any:
        return job.args["account"]


@worker(queue="limited")
class LedgerWorker:
    """Records its start and finish (wall clock) in the file ``log``; works ``pause`` seconds."""

    async def process(self, job: Any) -> Any:
        record(job.args["log"], job=job.id, event="start", at=time.time(), key=job.args.get("key"))
        await asyncio.sleep(job.args.get("pause", 0))
        record(job.args["log"], job=job.id, event="finish", at=time.time(), key=job.args.get("key"))
        return job.id


@worker(queue="default")
class TickWorker:
    """A periodic job: returns the args it was given."""

    async def process(self, job: Any) -> Any:
        return job.args
