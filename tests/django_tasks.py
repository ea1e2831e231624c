"""Django ``@task`` functions for the RelayBackend tests (Django 6+ only).

Runners import them by module path, as they would a project's tasks. Tasks that
must block until a test says so wait for a *gate* file, as in ``tests.workers``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

from django.tasks import TaskContext, task

from django_relay import await_signal, await_signal_sync
from tests.workers import record


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def echo(value: Any) -> Any:
    return value


@task
async def async_echo(value: Any) -> Any:
    await asyncio.sleep(0)  # a real suspension: it runs on an event loop
    return {"async": value}


@task(max_attempts=1)
def fail(message: str) -> None:
    raise ValueError(message)


@task(max_attempts=1)
def exit_task() -> None:
    raise SystemExit("This task failed due to SystemExit")


@task(max_attempts=1)
def returns_datetime() -> Any:
    return dt.datetime.now()


@task(max_attempts=1)
def returns_tuple() -> Any:
    return ("a", 1)


@task
def big(size: int) -> str:
    return "x" * size


@task(takes_context=True, backend="fast_retries")
def flaky(context: TaskContext, succeed_on: int) -> int:
    if context.attempt < succeed_on:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return context.attempt


@task(takes_context=True)
def context_info(context: TaskContext) -> dict[str, Any]:
    result = context.task_result
    return {
        "id": result.id,
        "attempt": context.attempt,
        "status": result.status,
        "worker_ids": result.worker_ids,
    }


@task
def record_start(log: str, label: str) -> str:
    """Appends ``label`` to the file ``log``: the ledger of start order."""
    record(log, label=label)
    return label


@task(takes_context=True)
def crash_once(context: TaskContext, started: str) -> int:
    """The first attempt blocks (for a runner to be killed under it); later ones return."""
    if context.attempt == 1:
        Path(started).touch()
        time.sleep(600)
    return context.attempt


@task
def approval(order: int) -> dict[str, Any]:
    """A sync task that snoozes at once until a decision arrives."""
    decision = await_signal_sync(wait_timeout=0)
    return {"order": order, "decision": decision["decision"]}


@task
async def async_approval(order: int) -> dict[str, Any]:
    decision = await await_signal(wait_timeout=30)
    return {"order": order, "decision": decision["decision"]}


def _not_bound() -> None:
    return None


#: A Task whose module path names the plain function, not this Task: a runner
#: could never find it, so enqueueing it is refused.
misnamed = task(_not_bound)


@task(backend="immediate")
def immediate_add(a: int, b: int) -> int:
    return a + b
