"""An example Django ``@task``, run by ``relayworker`` through ``RelayBackend``.

Plain Django Tasks code: ``settings.TASKS`` makes django_relay its backend, so it is
stored durably, survives a runner crash, retries, and can be awaited::

    result = shipping_quote.enqueue(order_id=7, weight_kg=2.5)      # from any view
    quote = await django_relay.relay(shipping_quote, order_id=7, weight_kg=2.5)

Django 6+ only (``django.tasks``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.tasks import TaskContext, task


@task(takes_context=True)
async def shipping_quote(context: TaskContext, order_id: int, weight_kg: float) -> dict[str, Any]:
    """Quote a shipment: a stand-in for a call to a carrier's API."""
    await asyncio.sleep(0.05)  # the carrier's round trip
    price = round(4.5 + 1.2 * float(weight_kg), 2)
    return {"order_id": order_id, "price": price, "attempt": context.attempt}
