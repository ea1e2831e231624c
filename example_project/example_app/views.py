"""Async views that relay jobs and await their results, and an order approval flow."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from decimal import Decimal, InvalidOperation
from typing import Any

from asgiref.sync import sync_to_async
from django import forms
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from django_relay import RelayError, RelayTimeout

from . import scenarios
from .workers import (
    CalculatorWorker,
    FraudCheckWorker,
    InventoryWorker,
    ShippingWorker,
)

MAX_FRAUD_RISK = 0.5


class BadRequest(ValueError):
    """A query parameter is missing or malformed."""


def _number(params: QueryDict, name: str, default: str | None = None) -> Decimal:
    raw = params.get(name, default)
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
        a = _number(request.GET, "a")
        b = _number(request.GET, "b")
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
        price = _number(request.GET, "price")
        quantity = _number(request.GET, "quantity", default="1")
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
    workflow = await scenarios.place_order(
        form.cleaned_data["item"], str(form.cleaned_data["amount"])
    )
    assert workflow.run is not None
    return redirect("example_app:order_status", run_id=workflow.run.pk)


@require_GET
async def order_status(request: HttpRequest, run_id: int) -> HttpResponse:
    """Each step's state, the outcome once the workflow is done, links to decide it."""
    summary = await scenarios.order_status(run_id)
    if summary is None:
        raise Http404("No such order.")
    return render(request, "example_app/order_status.html", summary)


# -- the demo page: / shows every scenario live; its buttons call these JSON views ----


@ensure_csrf_cookie
@require_GET
def demo(request: HttpRequest) -> HttpResponse:
    """The demo page (plain template + a little JavaScript)."""
    return render(
        request,
        "example_app/demo.html",
        {"login_url": reverse("admin:login") + "?next=" + reverse("example_app:demo")},
    )


@require_POST
async def demo_calculate(request: HttpRequest) -> JsonResponse:
    """Relay the calculator with ``a`` and ``b`` from the form."""
    try:
        a, b = _plain(_number(request.POST, "a")), _plain(_number(request.POST, "b"))
    except BadRequest as exc:
        return _error(str(exc), 400)
    return await _scenario(scenarios.calculate(a, b))


@require_POST
async def demo_checks(request: HttpRequest) -> JsonResponse:
    """The three order checks, relayed at once."""
    return await _scenario(scenarios.order_checks())


@require_POST
async def demo_retried(request: HttpRequest) -> JsonResponse:
    """A job that fails twice and completes on its third attempt."""
    return await _scenario(scenarios.retried())


@require_POST
async def demo_cancelled(request: HttpRequest) -> JsonResponse:
    """A running job, cancelled."""
    return await _scenario(scenarios.cancelled())


@require_POST
async def demo_place_order(request: HttpRequest) -> JsonResponse:
    """Place an order (the approval workflow); answers its status."""
    form = OrderForm(request.POST)
    if not form.is_valid():
        return _error(form.errors.as_text(), 400)
    workflow = await scenarios.place_order(
        form.cleaned_data["item"], str(form.cleaned_data["amount"])
    )
    return JsonResponse(await scenarios.order_summary(workflow))


@require_GET
async def demo_order(request: HttpRequest, run_id: int) -> JsonResponse:
    """An order's status, re-read when the job-event websocket says one of its jobs moved."""
    summary = await scenarios.order_status(run_id)
    if summary is None:
        return _error("No such order.", 404)
    return JsonResponse(summary)


@require_POST
async def demo_decide(request: HttpRequest, run_id: int) -> JsonResponse:
    """Approve or decline an order, as a user allowed to signal jobs (like the admin)."""
    user = await request.auser()
    if not await sync_to_async(user.has_perm)("django_relay.signal_job"):
        return _error("Log in as a user who may signal jobs.", 403)
    decision = request.POST.get("decision")
    if decision not in ("approved", "declined"):
        return _error("decision must be 'approved' or 'declined'.", 400)
    workflow = await scenarios.load_order(run_id)
    if workflow is None:
        return _error("No such order.", 404)
    sent = await scenarios.decide(workflow, decision, by=user.get_username())
    return JsonResponse({"sent": sent})


async def _scenario(scenario: Awaitable[dict[str, Any]]) -> JsonResponse:
    try:
        return JsonResponse(await scenario)
    except RelayError as exc:
        return _relay_error(exc)
    except scenarios.ScenarioError as exc:
        return _error(str(exc), 500)
