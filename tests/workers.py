"""Workers used by the test suite (imported by dotted path in runner subprocesses).

Jobs that must block until a test says so wait for a *gate*: a file whose path is
in their args. A test opens the gate by creating the file, so nothing depends on a
sleep being long enough.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from django_relay import Cancel, Snooze, worker
from django_relay.models import Job


def record(path: str, **fields: Any) -> None:
    """Append one JSON line to ``path`` (short ``O_APPEND`` writes do not interleave)."""
    line = json.dumps(fields) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The lines written by :func:`record`, in order."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line]


@worker(queue="default")
class EchoWorker:
    async def process(self, job: Any) -> Any:
        return job.args.get("value")


@worker(queue="default", max_attempts=3)
class GateWorker:
    """Touches ``started`` (if given), waits until the file ``gate`` exists, returns ``value``."""

    async def process(self, job: Any) -> Any:
        if job.args.get("started"):
            Path(job.args["started"]).touch()
        gate = Path(job.args["gate"])
        while not gate.exists():
            await asyncio.sleep(0.02)
        return job.args.get("value")

    def backoff(self, job: Any) -> float:
        return 0.1


@worker(queue="default", max_attempts=3)
class SyncGateWorker:
    """GateWorker with a plain ``def process`` (it blocks its thread)."""

    def process(self, job: Any) -> Any:
        if job.args.get("started"):
            Path(job.args["started"]).touch()
        gate = Path(job.args["gate"])
        while not gate.exists():
            time.sleep(0.02)
        return job.args.get("value")


@worker(queue="default")
class RecordWorker:
    """Appends ``{"job", "pid", "priority"}`` to the file ``log``; ``pause`` seconds of work."""

    async def process(self, job: Any) -> Any:
        record(job.args["log"], job=job.id, pid=os.getpid(), priority=job.priority)
        if job.args.get("pause"):
            await asyncio.sleep(job.args["pause"])  # simulated work, to spread jobs over runners
        return {"pid": os.getpid(), "value": job.args.get("value")}


@worker(queue="default")
class CancelWorker:
    async def process(self, job: Any) -> Any:
        return Cancel(job.args.get("reason"))


@worker(queue="default")
class SnoozeWorker:
    """Snoozes ``seconds`` on its first run; then returns the attempt seen on each run."""

    async def process(self, job: Any) -> Any:
        log = job.args["log"]
        record(log, attempt=job.attempt, at=time.time())
        runs = read_records(log)
        if len(runs) == 1:
            return Snooze(job.args.get("seconds", 0.3))
        return {"attempts": [run["attempt"] for run in runs], "runs": runs}


@worker(queue="default", timeout=0.5, max_attempts=3)
class TimeoutWorker:
    """Would wait for its gate, but its attempts time out after 0.5s."""

    async def process(self, job: Any) -> Any:
        gate = Path(job.args["gate"])
        while not gate.exists():
            await asyncio.sleep(0.02)
        return "too late"

    def backoff(self, job: Any) -> float:
        return 3600.0  # stays retryable for the test to look at


@worker(queue="default")
class SyncOrmWorker:
    """A plain ``def process`` that reads its own row through the ORM."""

    def process(self, job: Any) -> Any:
        row = Job.objects.get(pk=job.id)
        return {
            "state": row.state,
            "attempt": row.attempt,
            "thread": threading.current_thread().name,
            "value": job.args.get("value"),
        }


@worker(queue="default")
class PayloadWorker:
    """Returns a string of ``size`` characters."""

    async def process(self, job: Any) -> Any:
        return "x" * job.args["size"]


class NotAWorker:
    """Has a ``process`` method but is not registered: a runner must never run it."""

    def process(self, job: Any) -> Any:
        Path(job.args["marker"]).touch()
        return "ran"


@worker(queue="default", max_attempts=3)
class SyncOrmRetryingWorker(SyncOrmWorker):
    """:class:`SyncOrmWorker`, retried at once when its attempt fails."""

    def backoff(self, job: Any) -> float:
        return 0.1


@worker(queue="default", max_attempts=3)
class AsyncOrmWorker:
    """An ``async def process`` that reads its own row through the ORM (asgiref's thread)."""

    async def process(self, job: Any) -> Any:
        row = await Job.objects.aget(pk=job.id)
        return {"state": row.state, "attempt": row.attempt}

    def backoff(self, job: Any) -> float:
        return 0.1


@worker(queue="default", max_attempts=3)
class LoopBlockingWorker:
    """An ``async def process`` that blocks its event loop (``time.sleep``): a bug users make."""

    async def process(self, job: Any) -> Any:
        record(job.args["log"], job=job.id, attempt=job.attempt, pid=os.getpid())
        time.sleep(job.args["seconds"])
        return "done"


@worker(queue="default")
class TracedSyncWorker:
    """A plain ``def process`` that makes a span of its own, in the runner's thread pool."""

    def process(self, job: Any) -> Any:
        from opentelemetry import trace

        with trace.get_tracer("tests").start_as_current_span("sync work"):
            return job.args.get("value")
