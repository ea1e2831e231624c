"""Workers whose attempts are hard to record: a constructor that raises, results and
error texts PostgreSQL refuses, exceptions that cannot be printed (issue 8).

Each retries after 0.05s so a test sees every attempt quickly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from django_relay import Cancel, await_signal, signals, worker
from tests.workers import record


class _Fast:
    def backoff(self, job: Any) -> float:
        return 0.05


def bad_value(kind: str) -> Any:
    """A value the codec accepted before issue 8, but PostgreSQL cannot store."""
    deep: Any = "bottom"
    for _ in range(3000):
        deep = [deep]
    return {
        "nul": "a\x00b",
        "surrogate": "a\ud800b",
        "bigint": 10**5000,
        "deep": deep,
        "nul_key": {"k\x00": 1},
    }[kind]


@worker(max_attempts=2)
class InitRaisesWorker(_Fast):
    """Its constructor raises: ``process`` is never reached."""

    def __init__(self) -> None:
        raise RuntimeError("cannot build this worker")

    async def process(self, job: Any) -> Any:
        return "unreachable"


@worker(max_attempts=2)
class BadResultWorker(_Fast):
    """Returns ``bad_value(args["kind"])``."""

    async def process(self, job: Any) -> Any:
        return bad_value(job.args["kind"])


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


@worker(max_attempts=2)
class BadErrorWorker(_Fast):
    """Raises an exception whose text holds NUL, whose ``str()`` raises, or SystemExit."""

    async def process(self, job: Any) -> Any:
        if job.args["kind"] == "unprintable":
            raise Unprintable()
        if job.args["kind"] == "exit":
            raise SystemExit(3)
        raise RuntimeError("bad\x00text")


@worker(max_attempts=2)
class NulCancelWorker(_Fast):
    async def process(self, job: Any) -> Any:
        return Cancel("no\x00way")


@worker(max_attempts=2, timeout=0.5)
class ShortTimeoutSignalWorker(_Fast):
    """A live wait (``wait_timeout``) longer than the worker's timeout: it must snooze."""

    async def process(self, job: Any) -> Any:
        return await await_signal(wait_for=None, wait_timeout=30.0)


@worker(max_attempts=1, timeout=30)
class RaisesTimeoutErrorsWorker(_Fast):
    """Raises a ``TimeoutError`` of django_relay's, well within its own timeout."""

    async def process(self, job: Any) -> Any:
        if job.args["kind"] == "signal":
            return await await_signal(wait_for=0)  # its deadline is now: SignalTimeout
        from django_relay.exceptions import RelayTimeout

        raise RelayTimeout(12345, 1.5)


@worker(max_attempts=1, timeout=0.3)
class HangingSyncWorker(_Fast):
    """A plain ``def process`` that blocks its thread until its gate file exists."""

    def process(self, job: Any) -> Any:
        gate = Path(job.args["gate"])
        while not gate.exists():
            time.sleep(0.02)
        return threading.current_thread().name


@worker(max_attempts=3)
class SlowAsyncWorker(_Fast):
    async def process(self, job: Any) -> Any:
        await asyncio.sleep(job.args.get("pause", 0.0))
        return job.args.get("value")


@worker(max_attempts=1)
class HangingAsyncWorker(_Fast):
    """Touches ``started``, then waits for its gate file."""

    async def process(self, job: Any) -> Any:
        Path(job.args["started"]).touch()
        gate = Path(job.args["gate"])
        while not gate.exists():
            await asyncio.sleep(0.02)
        return "done"


# Receivers, connected wherever this module is imported (a runner imports it with
# its first job of these workers). They act only on jobs whose args ask them to.


def _args(job: Any) -> dict[str, Any]:
    return job.args if isinstance(job.args, dict) else {}


def _record_discarded(sender: Any, job: Any, **kwargs: Any) -> None:
    if _args(job).get("ledger"):
        record(_args(job)["ledger"], signal="job_discarded", job=job.id, state=job.state)


def _explode(sender: Any, job: Any, **kwargs: Any) -> None:
    if _args(job).get("explode"):
        raise RuntimeError("this receiver always fails")


signals.job_discarded.connect(_record_discarded)
for _signal in (signals.job_started, signals.job_completed, signals.job_discarded):
    _signal.connect(_explode)
