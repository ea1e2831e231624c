"""Async views that relay jobs and await their results, and an order approval flow."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from django_relay import RelayError, RelayTimeout, Workflow
from django_relay.models import WorkflowRun
from django_relay.workflow import run_state

from .workers import (
    CalculatorWorker,
    ChargeWorker,
    FraudCheckWorker,
    InventoryWorker,
    OrderApprovalWorker,
    ShippingWorker,
)

MAX_FRAUD_RISK = 0.5


class BadRequest(ValueError):
    """A query parameter is missing or malformed."""


def _number(request: HttpRequest, name: str, default: str | None = None) -> Decimal:
    raw = request.GET.get(name, default)
    if raw is None:
        raise BadRequest(f"Missing query parameter {name!r}.")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise BadRequest(f"Query parameter {name!r} must be a number, got {raw!r}.") from None
    if not value.is_finite():
        raise BadRequest(f"Query parameter {name!r} must be a finite number, got {raw!r}.")
    return value


def _plain(value: Decimal) -> int | float:
    # JSON numbers for the worker, so /calculate/?a=1&b=2 answers 3, not 3.0 or "3".
    return int(value) if value == value.to_integral_value() else float(value)


def _error(message: str, status: int, **extra: object) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def _relay_error(exc: RelayError) -> JsonResponse:
    if isinstance(exc, RelayTimeout):
        # The job keeps running; the client may poll for it later.
        return _error("The job did not finish in time.", 504, job_id=exc.job_id)
    return _error(f"The job failed: {exc}", 502)


@require_GET
async def calculate(request: HttpRequest) -> JsonResponse:
    """``/calculate/?a=1&b=2`` → ``{"result": 3}``, computed by whichever runner is free."""
    try:
        a = _number(request, "a")
        b = _number(request, "b")
    except BadRequest as exc:
        return _error(str(exc), 400)
    args = {"a": _plain(a), "b": _plain(b)}
    try:
        result = await CalculatorWorker.relay(args, timeout=5.0)
    except RelayError as exc:
        return _relay_error(exc)
    return JsonResponse(result)


@require_GET
async def order(request: HttpRequest) -> JsonResponse:
    """``/order/?price=19.99&quantity=2``: three checks relayed at once, then the total."""
    try:
        price = _number(request, "price")
        quantity = _number(request, "quantity", default="1")
        if price < 0:
            raise BadRequest("Query parameter 'price' must not be negative.")
        if quantity < 1 or quantity != quantity.to_integral_value():
            raise BadRequest("Query parameter 'quantity' must be a whole number of at least 1.")
    except BadRequest as exc:
        return _error(str(exc), 400)

    args = {"price": str(price), "quantity": int(quantity)}
    try:
        inventory, fraud, shipping = await asyncio.gather(
            InventoryWorker.relay(args, timeout=5.0),
            FraudCheckWorker.relay(args, timeout=5.0),
            ShippingWorker.relay(args, timeout=5.0),
        )
    except RelayError as exc:
        return _relay_error(exc)

    if not inventory["available"]:
        return _error("Out of stock.", 409)
    if fraud["risk_score"] > MAX_FRAUD_RISK:
        return _error("Order refused by the fraud check.", 403, risk_score=fraud["risk_score"])
    shipping_cost = Decimal(str(shipping["cost"]))
    total = price * quantity + shipping_cost
    return JsonResponse(
        {
            "subtotal": str(price * quantity),
            "shipping": str(shipping_cost),
            "risk_score": fraud["risk_score"],
            "total": str(total),
        }
    )


# -- the approval flow: /orders/new/ -> POST /orders/ -> /orders/<run_id>/ ------------


class OrderForm(forms.Form):
    item = forms.CharField(max_length=100)
    amount = forms.DecimalField(min_value=Decimal("0.01"), max_digits=10, decimal_places=2)


@require_GET
def new_order(request: HttpRequest) -> HttpResponse:
    """A plain form (with its CSRF token) that posts to ``/orders/``."""
    return render(request, "example_app/order_new.html", {"form": OrderForm()})


@require_POST
async def create_order(request: HttpRequest) -> HttpResponse:
    """Enqueue the order's workflow, approval -> charge, and show its status page."""
    form = OrderForm(request.POST)
    if not form.is_valid():
        return render(request, "example_app/order_new.html", {"form": form}, status=400)
    order = uuid.uuid4().hex[:12]
    args = {
        "order": order,
        "item": form.cleaned_data["item"],
        "amount": str(form.cleaned_data["amount"]),
    }
    workflow = (
        Workflow(name=f"order-{order}")
        .add("approval", OrderApprovalWorker.new(args))
        .add("charge", ChargeWorker.new(args), deps=["approval"])
    )
    await workflow.aenqueue()
    assert workflow.run is not None
    return redirect("example_app:order_status", run_id=workflow.run.pk)


@require_GET
async def order_status(request: HttpRequest, run_id: int) -> HttpResponse:
    """Each step's state, the outcome once the workflow is done, links to decide it."""
    try:
        workflow = await Workflow.aload(run_id)
    except WorkflowRun.DoesNotExist:
        raise Http404("No such order.") from None
    if not (workflow.name or "").startswith("order-") or set(workflow.steps) != {
        "approval",
        "charge",
    }:
        raise Http404("No such order.")  # some other workflow: not ours to show
    # The state from the steps just loaded, not a second read: a step finishing in
    # between would show "completed" beside a charge step loaded before its result.
    state = run_state(step.job.state for step in workflow.steps.values())
    approval, charge = workflow.steps["approval"].job, workflow.steps["charge"].job
    return render(
        request,
        "example_app/order_status.html",
        {
            "order": approval.args,
            "state": state,
            "steps": [_step(name, step.job) for name, step in workflow.steps.items()],
            "charge": charge.result if state == "completed" else None,
            "reason": _failure(approval, charge) if state == "failed" else None,
            "workflow_admin_url": reverse("admin:django_relay_workflowrun_change", args=[run_id]),
        },
    )


def _step(name: str, job: Any) -> dict[str, Any]:
    waiting = job.signal_wait is not None
    return {
        "name": name,
        "state": "waiting for a signal" if waiting else job.state,
        "admin_url": reverse("admin:django_relay_job_change", args=[job.pk]),
        # The job list narrowed to this job: tick it, then "Approve" or "Decline".
        "decide_url": reverse("admin:django_relay_job_changelist")
        + f"?waiting=yes&id__exact={job.pk}"
        if waiting
        else None,
    }


def _failure(*jobs: Any) -> str:
    # The first step that did not complete says why (a decline, a timeout, an error).
    for job in jobs:
        if job.state != "completed" and job.errors:
            return str(job.errors[-1].get("error"))
    return "unknown"
