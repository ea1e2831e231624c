"""Workers of the scale test (imported by dotted path in its runners)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from django_relay import worker
from tests.workers import record


@worker(queue="default")
class NoopWorker:
    """Returns its ``value``: the cost of a job is django_relay's own."""

    async def process(self, job: Any) -> Any:
        return {"value": job.args.get("value")}


@worker(queue="default", max_attempts=5)
class HeldWorker:
    """Says it started (a file ``<started>/<job id>.<pid>``), waits until the file ``gate``
    exists, appends ``{"job", "pid", "attempt"}`` to ``ledger``, returns its value and pid."""

    async def process(self, job: Any) -> Any:
        pid = os.getpid()
        Path(job.args["started"], f"{job.id}.{pid}").touch()
        gate = Path(job.args["gate"])
        while not gate.exists():
            await asyncio.sleep(0.05)
        record(job.args["ledger"], job=job.id, pid=pid, attempt=job.attempt)
        return {"value": job.args.get("value"), "pid": pid, "job": job.id}


#: What a :class:`WorkWorker` job waits, in seconds.
WORK_SECONDS = 0.02


@worker(queue="default")
class WorkWorker:
    """Waits :data:`WORK_SECONDS` without using the CPU (as a job calling an API does),
    then returns its ``value``: a host serves at most its slots / that many jobs a second,
    so adding hosts adds capacity even when every "host" shares one machine's cores."""

    async def process(self, job: Any) -> Any:
        await asyncio.sleep(WORK_SECONDS)
        return {"value": job.args.get("value")}
