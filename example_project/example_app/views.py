"""Async views that relay jobs and await their results."""

from __future__ import annotations

import asyncio
from decimal import Decimal, InvalidOperation

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from django_relay import RelayError, RelayTimeout

from .workers import CalculatorWorker, FraudCheckWorker, InventoryWorker, ShippingWorker

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
