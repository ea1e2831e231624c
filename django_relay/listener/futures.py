"""Handing a value or an error to a caller's future, on the caller's loop."""

from __future__ import annotations

import asyncio
from typing import Any


def resolve(future: asyncio.Future[Any], value: Any) -> None:
    """Set ``value``, unless the caller gave up meanwhile (then drop the late news)."""
    if not future.done():
        future.set_result(value)


def fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    """Set ``exc``, unless the caller gave up meanwhile."""
    if not future.done():
        future.set_exception(exc)
