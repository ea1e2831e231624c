"""A client process for the battery: relays jobs (or sends signals) and reports in JSON.

Run as ``python -m tests.relay_client '<spec json>'`` with the same environment as a
runner (``DJANGO_SETTINGS_MODULE``, ``DATABASE_URL`` or ``RELAY_TEST_DB_NAME``,
``RELAY_TEST_SETTINGS``), so that it can use a database the test process is not
connected to (a throwaway server), and its listener is a real one of its own.

Spec keys: ``mode`` (``relay`` or ``signal``). For ``relay``: ``worker`` (dotted
path), ``args`` (each job's args; ``value`` is set to the relay's index),
``rounds`` (list of relay counts, run one after the other), ``concurrency``,
``timeout``, ``with_retries``. Each round reports ``[job id, token]`` of every
relay that returned, for the test to compare with the stored results. For
``signal``: ``jobs`` (ids) and ``payload``.

Prints one JSON object per line: ``{"progress": n}`` as relays return, ``{"round":
...}`` after each round (relays ok and failed, errors, RSS, waiters still
registered), and ``{"done": true}`` last.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any


def rss_kb() -> int:
    """This process's resident set size, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def relay_round(klass: Any, spec: dict[str, Any], count: int, offset: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(spec.get("concurrency", count) or count)
    done = 0
    errors: Counter[str] = Counter()
    results: list[Any] = []
    every = max(count // 20, 1)

    async def one(index: int) -> None:
        nonlocal done
        async with gate:
            try:
                result = await klass.relay(
                    {**spec.get("args", {}), "value": offset + index},
                    timeout=spec.get("timeout", 60.0),
                    with_retries=spec.get("with_retries", True),
                )
            except Exception as exc:
                errors[f"{type(exc).__name__}: {str(exc)[:160]}"] += 1
            else:
                if result.get("value") != offset + index:
                    errors[f"wrong result {result!r} for relay {offset + index}"] += 1
                else:
                    results.append([result["job"], result["token"]])
            done += 1
            if done % every == 0:
                emit(progress=offset + done)

    began = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.monotonic() - began
    from django_relay.listener.waiters import get_registry  # private: the only view of the waiters

    # Removals are handed to the listener's loop: let them land before counting.
    await asyncio.sleep(0.5)
    return {
        "relays": count,
        "ok": len(results),
        "failed": sum(errors.values()),
        "errors": dict(errors.most_common(10)),
        "seconds": round(elapsed, 2),
        "rss_kb": rss_kb(),
        "waiters_left": sum(len(w) for w in get_registry().waiters.values()),
        "results": results,
    }


async def relay(spec: dict[str, Any]) -> None:
    from django.utils.module_loading import import_string

    klass = import_string(spec["worker"])
    offset = 0
    emit(started=True, rss_kb=rss_kb())
    for count in spec["rounds"]:
        emit(round=await relay_round(klass, spec, count, offset))
        offset += count


def main() -> None:
    import django

    django.setup()
    spec = json.loads(sys.argv[1])
    if spec["mode"] == "relay":
        asyncio.run(relay(spec))
    elif spec["mode"] == "signal":
        from django_relay import signal_sync

        emit(signalled=signal_sync(spec["jobs"], spec["payload"]))
    from django_relay.listener.notifier import stop_notifier

    stop_notifier()
    emit(done=True)


if __name__ == "__main__":
    main()
