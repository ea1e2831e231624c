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


@worker(queue="default")
class NestedRelayWorker:
    """Relays to another job from inside a job (the runner's own listener serves it)."""

    async def process(self, job: Any) -> Any:
        from tests.workers import EchoWorker

        return {"inner": await EchoWorker.relay({"value": job.args["value"]}, timeout=10)}


@worker(queue="default")
class SyncNestedRelayWorker:
    def process(self, job: Any) -> Any:
        from tests.workers import EchoWorker

        return {"inner": EchoWorker.relay_sync({"value": job.args["value"]}, timeout=10)}
