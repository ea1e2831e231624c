"""Example workers, autodiscovered by django_relay at start-up."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from django_relay import Cancel, SignalTimeout, adep_results, await_signal, worker


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


# The approval flow: a workflow of two steps, approval -> charge. The approval step
# waits (for up to a day) for a human to approve or decline it in the admin.


@worker(queue="default")
class OrderApprovalWorker:
    """Waits for ``{"decision": "approved" | "declined", "by": ...}``, e.g. from the admin."""

    async def process(self, job: Any) -> Any:
        try:
            # Blocks a few seconds in place, then snoozes: no slot or connection is
            # held while the order waits for someone to look at it.
            decision = await await_signal(wait_for=timedelta(days=1))
        except SignalTimeout:
            return Cancel("no decision within a day")
        if decision.get("decision") != "approved":
            return Cancel(f"declined by {decision.get('by') or 'someone'}")
        return {"order": job.args["order"], "approved_by": decision.get("by")}


@worker(queue="default")
class ChargeWorker:
    """Charges an approved order; runs only once its ``approval`` step completed."""

    async def process(self, job: Any) -> dict[str, Any]:
        approval = (await adep_results(job))["approval"]
        # A real worker would call the payment provider here, with the order id as
        # its idempotency key: a retried charge must not charge twice.
        return {
            "order": job.args["order"],
            "charged": job.args["amount"],
            "approved_by": approval["approved_by"],
        }
