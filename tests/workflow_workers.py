"""Workers for workflow tests (imported by dotted path in runner subprocesses)."""

from __future__ import annotations

import asyncio
from typing import Any

from django_relay import adep_results, worker


@worker(queue="default")
class StepWorker:
    """Returns its step name and its deps' results; sleeps ``pause`` seconds first."""

    async def process(self, job: Any) -> Any:
        await asyncio.sleep(job.args.get("pause", 0))
        if job.args.get("flat"):
            return {"step": job.step}
        return {"step": job.step, "deps": await adep_results(job)}


@worker(queue="default")
class ChargeWorker:
    async def process(self, job: Any) -> Any:
        deps = await adep_results(job)
        return {"charged": job.args["user_id"], "approval": deps.get("approval")}


@worker(queue="default", max_attempts=1)
class BrokenWorker:
    async def process(self, job: Any) -> Any:
        raise RuntimeError("always broken")
