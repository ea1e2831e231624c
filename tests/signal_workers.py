"""Workers that wait for signals (imported by dotted path in runner subprocesses)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django_relay import Cancel, SignalTimeout, await_signal, await_signal_sync, worker


@worker(queue="default")
class ApprovalWorker:
    """The seed's flow: approve -> result, decline -> cancelled, no decision -> cancelled."""

    async def process(self, job: Any) -> Any:
        try:
            payload = await await_signal(
                wait_for=job.args.get("wait_for"), wait_timeout=job.args.get("wait_timeout", 5.0)
            )
        except SignalTimeout:
            return Cancel("no decision")
        if payload["decision"] != "approved":
            return Cancel(f"declined: {payload['decision']}")
        return {"charged": job.args.get("user_id"), "by": payload.get("by")}


@worker(queue="default")
class TwoSignalsWorker:
    async def process(self, job: Any) -> Any:
        first = await await_signal(wait_timeout=job.args.get("wait_timeout", 0))
        second = await await_signal(wait_timeout=job.args.get("wait_timeout", 0))
        return [first, second]


@worker(queue="default")
class SyncApprovalWorker:
    def process(self, job: Any) -> Any:
        return await_signal_sync(wait_timeout=job.args.get("wait_timeout", 0))


@worker(queue="default", max_attempts=5)
class ConsumeThenBlockWorker:
    """Takes a signal, then blocks until a flag file exists (so it can be killed)."""

    async def process(self, job: Any) -> Any:
        import asyncio

        payload = await await_signal(wait_timeout=30)
        flag = Path(job.args["flag"])
        while not flag.exists():
            await asyncio.sleep(0.05)
        return {"payload": payload, "attempt": job.attempt}
