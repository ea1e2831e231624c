"""What the demo shows, written once: the demo page's JSON views and ``relaydemo --check``
call these same coroutines, so the page and the headless check exercise the same code.

Each returns a JSON-ready dict; timings are the server-side round trips in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from django.urls import reverse

from django_relay import RelayCancelled, Workflow, acancel_jobs, await_result
from django_relay.models import Job, WorkflowRun
from django_relay.workflow import run_state

from .workers import (
    CalculatorWorker,
    ChargeWorker,
    FlakyWorker,
    FraudCheckWorker,
    InventoryWorker,
    OrderApprovalWorker,
    ShippingWorker,
    SlowWorker,
)


class ScenarioError(RuntimeError):
    """A scenario did not end as it should (the check reports it and fails)."""


async def timed(awaitable: Awaitable[Any]) -> tuple[Any, float]:
    """``(result, milliseconds)`` of one awaited relay."""
    started = time.perf_counter()
    result = await awaitable
    return result, round((time.perf_counter() - started) * 1000, 1)


async def calculate(a: float, b: float) -> dict[str, Any]:
    """Relay the calculator job and time the round trip."""
    result, ms = await timed(CalculatorWorker.relay({"a": a, "b": b}, timeout=5.0))
    return {"a": a, "b": b, "result": result["result"], "ms": ms}


async def order_checks() -> dict[str, Any]:
    """The order example: inventory, fraud and shipping relayed at once, each timed."""
    started = time.perf_counter()
    relays = {
        "inventory": InventoryWorker.relay({"sku": "A1"}, timeout=5.0),
        "fraud": FraudCheckWorker.relay({"user_id": 7}, timeout=5.0),
        "shipping": ShippingWorker.relay({"address": "1 Main St"}, timeout=5.0),
    }
    done = await asyncio.gather(*(timed(relay) for relay in relays.values()))
    return {
        "checks": [
            {"name": name, "result": result, "ms": ms}
            for name, (result, ms) in zip(relays, done, strict=True)
        ],
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }


async def retried(succeed_on: int = 3) -> dict[str, Any]:
    """A job that fails, is retried, and completes on attempt ``succeed_on``."""
    job = await FlakyWorker.aenqueue({"succeed_on": succeed_on}, max_attempts=succeed_on + 2)
    result, ms = await timed(await_result(job, timeout=30.0, with_retries=True))
    row = await Job.objects.aget(pk=job.pk)
    return {
        "job": job.pk,
        "result": result,
        "attempts": row.attempt,
        "errors": [str(error.get("error")) for error in row.errors],
        "ms": ms,
    }


async def cancelled(seconds: float = 3.0) -> dict[str, Any]:
    """Start a slow job, cancel it while it runs: its waiters get ``RelayCancelled``."""
    job = await SlowWorker.aenqueue({"seconds": seconds})
    deadline = time.monotonic() + 15.0
    while (await Job.objects.aget(pk=job.pk)).state != "executing":
        if time.monotonic() > deadline:
            raise ScenarioError(f"job {job.pk} was not picked up by a runner")
        await asyncio.sleep(0.05)
    started = time.perf_counter()
    await acancel_jobs([job], reason="cancelled from the demo")
    try:
        await await_result(job, timeout=5.0)
    except RelayCancelled as exc:
        return {
            "job": job.pk,
            "state": "cancelled",
            "error": str(exc),
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
    raise ScenarioError(f"job {job.pk} was not cancelled")


# -- the order approval workflow: approval -> charge ------------------------------------


async def place_order(item: str, amount: str) -> Workflow:
    """Enqueue an order's workflow: ``approval`` waits for a decision, then ``charge``."""
    order = uuid.uuid4().hex[:12]
    args = {"order": order, "item": item, "amount": amount}
    workflow = (
        Workflow(name=f"order-{order}")
        .add("approval", OrderApprovalWorker.new(args))
        .add("charge", ChargeWorker.new(args), deps=["approval"])
    )
    await workflow.aenqueue()
    return workflow


async def load_order(run_id: int) -> Workflow | None:
    """The order workflow of ``run_id``; None for a missing run or any other workflow."""
    try:
        workflow = await Workflow.aload(run_id)
    except WorkflowRun.DoesNotExist:
        return None
    if not (workflow.name or "").startswith("order-") or set(workflow.steps) != {
        "approval",
        "charge",
    }:
        return None  # some other workflow: not ours to show
    return workflow


async def order_summary(workflow: Workflow) -> dict[str, Any]:
    """An order's steps (as loaded with ``workflow``), state and outcome."""
    assert workflow.run is not None
    approval, charge = workflow.steps["approval"].job, workflow.steps["charge"].job
    # The state from the steps just loaded, not a second read: a step finishing in
    # between would show "completed" beside a charge step loaded before its result.
    state = run_state(step.job.state for step in workflow.steps.values())
    return {
        "run": workflow.run.pk,
        "order": approval.args,
        "state": state,
        "waiting": approval.signal_wait is not None,
        "steps": [_step(name, step.job) for name, step in workflow.steps.items()],
        "charge": charge.result if state == "completed" else None,
        "reason": _failure(approval, charge) if state == "failed" else None,
        "admin_url": reverse("admin:django_relay_workflowrun_change", args=[workflow.run.pk]),
    }


async def order_status(run_id: int) -> dict[str, Any] | None:
    """See order_summary(); None if ``run_id`` is not an order."""
    workflow = await load_order(run_id)
    return None if workflow is None else await order_summary(workflow)


async def decide(workflow: Workflow, decision: str, by: str) -> int:
    """Send ``approved`` or ``declined`` to the order's waiting approval; 1 if it was sent."""
    approval = workflow.steps["approval"].job
    wait = approval.signal_wait or {}
    # Once per wait, like the admin's actions: a double click sends nothing more.
    key = f"decision:{wait.get('n')}"
    return await workflow.signal("approval", {"decision": decision, "by": by}, sender=by, key=key)


def _step(name: str, job: Job) -> dict[str, Any]:
    waiting = job.signal_wait is not None
    return {
        "name": name,
        "job": job.pk,
        "state": "waiting for a signal" if waiting else job.state,
        "admin_url": reverse("admin:django_relay_job_change", args=[job.pk]),
        # The job list narrowed to this job: tick it, then "Approve" or "Decline".
        "decide_url": reverse("admin:django_relay_job_changelist")
        + f"?waiting=yes&id__exact={job.pk}"
        if waiting
        else None,
    }


def _failure(*jobs: Job) -> str:
    # The first step that did not complete says why (a decline, a timeout, an error).
    for job in jobs:
        if job.state != "completed" and job.errors:
            return str(job.errors[-1].get("error"))
    return "unknown"


async def approval_flow(decision: str, by: str = "relaydemo") -> dict[str, Any]:
    """Place an order, wait until its approval waits, decide it, wait for the outcome."""
    workflow = await place_order("teapot", "12.50")
    assert workflow.run is not None
    deadline = time.monotonic() + 20.0
    while not (summary := await _status(workflow.run.pk))["waiting"]:
        if time.monotonic() > deadline:
            raise ScenarioError(f"the approval of order run {workflow.run.pk} never waited")
        await asyncio.sleep(0.05)
    workflow = await Workflow.aload(workflow.run.pk)
    if await decide(workflow, decision, by) != 1:
        raise ScenarioError("the decision was not delivered")
    started = time.perf_counter()
    with contextlib.suppress(RelayCancelled):  # a declined order cancels its steps
        await workflow.relay(timeout=20.0)
    summary = await _status(workflow.run.pk)
    summary["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return summary


async def _status(run_id: int) -> dict[str, Any]:
    summary = await order_status(run_id)
    assert summary is not None
    return summary
