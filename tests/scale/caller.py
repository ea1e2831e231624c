"""A web-side process of the scale test: relays and enqueues on command, reports in JSON.

Run as ``python -m tests.scale.caller`` with ``DJANGO_SETTINGS_MODULE`` and
``DATABASE_URL`` set (through PgBouncer) and ``RELAY_TEST_SETTINGS`` (its
``LISTEN_DSN`` direct). It reads one JSON command per line on stdin and answers each
with one JSON line ``{"id": ..., ...}`` on stdout, carrying this process's counters
(``django_relay.stats``: the notifications its listener received, and the
jobs the ``relay_finished`` ones named). Commands run concurrently, so the test can
act while a relay waits:

- ``{"id", "op": "relay", "count", "concurrency", "worker", "args", "timeout",
  "stop_on_error"}``: ``count`` relays (``args`` with ``value`` set to the relay's
  index; after a failure the rest are skipped, if asked), answered with ``ok``,
  ``failed``, ``errors`` (message -> count), ``seconds``, ``median_ms`` (of the relays
  that returned) and ``results``;
- ``{"id", "op": "jobs", "count", "worker"}``: enqueue ``count`` jobs in one
  statement and wait until none is unfinished; answered with ``seconds`` (enqueue
  to all finished) and ``states`` (state -> count);
- ``{"id", "op": "stats"}``; ``{"id", "op": "quit"}`` (answered, then it exits).
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import re
import signal
import statistics
import sys
import time
from collections import Counter
from typing import Any

#: Jobs named by the ``relay_finished`` NOTIFYs this process received (a payload that
#: is a JSON array names each of its entries): with batched payloads, what a herd
#: costs a web process shows here, not in the count of NOTIFYs.
finished_jobs = 0


def count_finished_jobs() -> None:
    """Wrap the listener's dispatch to count :data:`finished_jobs` (this script only)."""
    from django_relay.listener.notifier import Notifier

    dispatch = Notifier._dispatch

    def counting(self: Notifier, channel: str, payload: str) -> None:
        global finished_jobs
        if channel.startswith("relay_finished"):
            try:
                named = json.loads(payload)
            except ValueError:
                named = None
            finished_jobs += len(named) if isinstance(named, list) else 1
        dispatch(self, channel, payload)

    Notifier._dispatch = counting  # type: ignore[method-assign]


def reply(command: dict[str, Any], **fields: Any) -> None:
    from django_relay import stats

    # The names every version of the stats module has (the runners log the same three).
    counters = {
        "claims": stats.claims,
        "empty_claims": stats.empty_claims,
        "notifications": dict(stats.notifications),
        "finished_jobs": finished_jobs,
    }
    print(json.dumps({"id": command["id"], **fields, "stats": counters}), flush=True)


async def relay(command: dict[str, Any]) -> dict[str, Any]:
    from django.utils.module_loading import import_string

    klass = import_string(command["worker"])
    count = command["count"]
    gate = asyncio.Semaphore(command.get("concurrency") or count)
    errors: Counter[str] = Counter()
    results: list[Any] = []
    durations: list[float] = []

    async def one(index: int) -> None:
        async with gate:
            if errors and command.get("stop_on_error"):
                return  # one after another: one failure says it, the rest would wait too
            began = time.monotonic()
            try:
                result = await klass.relay(
                    {**command.get("args", {}), "value": index},
                    timeout=command.get("timeout", 30.0),
                )
            except Exception as exc:
                # Digits as N: one entry per kind of error, not per job.
                errors[re.sub(r"[0-9]+", "N", f"{type(exc).__name__}: {str(exc)[:200]}")] += 1
                return
            if result.get("value") != index:
                errors[f"wrong result {result!r} for relay {index}"] += 1
            else:
                results.append(result)
                durations.append(time.monotonic() - began)

    began = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    return {
        "ok": len(results),
        "failed": sum(errors.values()),
        "errors": dict(errors.most_common(10)),
        "seconds": time.monotonic() - began,
        "median_ms": statistics.median(durations) * 1000 if durations else None,
        "results": results,
    }


async def jobs(command: dict[str, Any]) -> dict[str, Any]:
    from django.utils.module_loading import import_string

    from django_relay import aenqueue_many
    from django_relay.models import Job, JobState

    klass = import_string(command["worker"])
    began = time.monotonic()
    saved = await aenqueue_many([klass.new({"value": i}) for i in range(command["count"])])
    ids = [job.id for job in saved]
    # The batch's ids are one range (one statement's sequence values, nobody else
    # inserts meanwhile): a range scan, read every 50 ms, costs the runners little
    # of the machine they share with this process.
    unfinished = Job.objects.filter(id__gte=min(ids), id__lte=max(ids)).exclude(
        state__in=[JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED]
    )
    deadline = began + command.get("timeout", 120.0)
    while await unfinished.aexists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    seconds = time.monotonic() - began
    states: Counter[str] = Counter()
    async for state in Job.objects.filter(id__in=ids).values_list("state", flat=True):
        states[state] += 1
    return {"count": len(ids), "seconds": seconds, "states": dict(states)}


async def serve() -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def run(command: dict[str, Any]) -> None:
        try:
            match command["op"]:
                case "relay":
                    reply(command, relay=await relay(command))
                case "jobs":
                    reply(command, jobs=await jobs(command))
                case _:
                    reply(command)
        except Exception as exc:  # answered, so the test fails saying why
            reply(command, error=f"{type(exc).__name__}: {exc}")

    print(json.dumps({"ready": True}), flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        if command["op"] == "quit":
            await asyncio.gather(*tasks, return_exceptions=True)
            reply(command)
            return
        task = asyncio.create_task(run(command))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def main() -> None:
    import django

    # SIGUSR1 dumps every thread's stack: the harness asks when an answer is late.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    django.setup()
    count_finished_jobs()
    asyncio.run(serve())
    from django_relay.listener.notifier import stop_notifier

    stop_notifier()


if __name__ == "__main__":
    main()
