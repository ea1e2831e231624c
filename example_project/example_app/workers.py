"""Example workers, autodiscovered by django_relay at start-up."""

from __future__ import annotations

import asyncio
from typing import Any

from django_relay import worker


@worker(queue="default")
class CalculatorWorker:
    """Adds two numbers: the smallest round trip to relay."""

    async def process(self, job: Any) -> dict[str, Any]:
        return {"result": job.args["a"] + job.args["b"]}


@worker(queue="default")
class SlowWorker:
    """Sleeps for ``seconds`` (default 1): handy for timeouts and graceful shutdown."""

    async def process(self, job: Any) -> dict[str, Any]:
        seconds = job.args.get("seconds", 1)
        await asyncio.sleep(seconds)
        return {"slept": seconds}


@worker(queue="default")
class FlakyWorker:
    """Fails until attempt ``succeed_on`` (default 2), retrying almost at once."""

    async def process(self, job: Any) -> dict[str, Any]:
        succeed_on = job.args.get("succeed_on", 2)
        if job.attempt < succeed_on:
            raise RuntimeError(f"Flaky failure on attempt {job.attempt} (succeeds on {succeed_on})")
        return {"attempt": job.attempt}

    def backoff(self, job: Any) -> float:
        return 0.1


@worker(queue="default")
class SyncEmailWorker:
    """A plain ``def process``: django_relay runs it in a thread."""

    def process(self, job: Any) -> dict[str, Any]:
        # A real worker would call send_mail() here.
        return {"sent_to": job.args["to"]}


# The order example: three independent checks an order view relays concurrently.


@worker(queue="default")
class InventoryWorker:
    async def process(self, job: Any) -> dict[str, Any]:
        return {"available": True}


@worker(queue="default")
class FraudCheckWorker:
    async def process(self, job: Any) -> dict[str, Any]:
        return {"risk_score": 0.1}


@worker(queue="default")
class ShippingWorker:
    async def process(self, job: Any) -> dict[str, Any]:
        return {"cost": 5}
