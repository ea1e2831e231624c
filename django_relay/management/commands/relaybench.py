"""``manage.py relaybench``: relay latency and throughput, as ratios to a raw floor.

Every figure is measured in the same run as the raw psycopg floor it is compared
with, and reported as the median of ``--runs`` runs. The floor does the minimal
SQL of a round trip on the same table and triggers, with no framework: insert a
job, a LISTENing worker connection is woken and claims it, completes it, and the
LISTENing client is woken and reads the result.

The floor is raw SQL on purpose, the one state-changing SQL outside
``django_relay.queries``: it measures what PostgreSQL alone costs, so it must
not go through the statements (or the code) whose overhead it is the yardstick
for. It and the benchmark's cleanup touch only the benchmark's own queues.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_relay import pg, queries
from django_relay.management.commands._benchworkers import (
    AddWorker as _AddWorker,
    NoopWorker as _NoopWorker,
)
from django_relay.models import Job

QUEUE = "relaybench"
# @worker adds new/relay/... at run time, which type checkers cannot see.
AddWorker: Any = _AddWorker
NoopWorker: Any = _NoopWorker


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Command(BaseCommand):
    help = "Measure relay latency and throughput against a raw psycopg floor."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--runs", type=int, default=3)
        parser.add_argument("--relays", type=int, default=300, help="sequential relays per run")
        parser.add_argument("--concurrent", type=int, default=1000)
        parser.add_argument("--noop", type=int, default=20_000, help="no-op jobs per run")
        parser.add_argument(
            "--concurrency",
            type=int,
            default=200,
            help="the runner's concurrency on the bench queue",
        )
        parser.add_argument("--json", action="store_true", help="print JSON only")
        parser.add_argument(
            "--runner-log-level",
            default="WARNING",
            help="the bench runner's --log-level (INFO logs every job)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        Job.objects.filter(queue=QUEUE).delete()
        self.runner_log_level = options["runner_log_level"]
        runner = self._start_runner(options["concurrency"])
        try:
            runs = [asyncio.run(self._run(options)) for _ in range(options["runs"])]
        finally:
            runner.terminate()
            runner.wait(30)
            Job.objects.filter(queue=QUEUE).delete()
        summary = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        summary["relay_vs_floor"] = summary["relay_median_ms"] / summary["floor_median_ms"]
        summary["runs"] = options["runs"]
        if options["json"]:
            self.stdout.write(json.dumps(summary, indent=2))
            return
        self.stdout.write(f"medians of {options['runs']} runs\n")
        for key, value in summary.items():
            self.stdout.write(
                f"  {key:28} {value:12.3f}"
                if isinstance(value, float)
                else f"  {key:28} {value:>12}"
            )

    def _start_runner(self, concurrency: int) -> subprocess.Popen[str]:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"]}
        proc = subprocess.Popen(
            [
                sys.executable,
                sys.argv[0],
                "relayworker",
                "--queues",
                f"{QUEUE}={concurrency}",
                "--log-level",
                self.runner_log_level,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:  # wait for the ready line
            if "ready" in line:
                break
        else:
            raise RuntimeError("relayworker did not start")
        # Keep draining its log so the pipe never fills.
        import threading

        stdout = proc.stdout
        threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()
        return proc

    async def _run(self, options: dict[str, Any]) -> dict[str, float]:
        # Each run starts from a vacuumed table: the previous run's no-op phase
        # leaves tens of thousands of dead rows that every index scan would wade through.
        async with await pg.connect() as conn:
            await conn.execute("VACUUM ANALYZE django_relay_job")
        floor = await _raw_floor(options["relays"])
        relay = []
        for i in range(options["relays"]):
            started = time.perf_counter()
            assert await AddWorker.relay({"a": i, "b": 1}, timeout=10) == i + 1
            relay.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await asyncio.gather(
            *(AddWorker.relay({"a": i, "b": 1}, timeout=60) for i in range(options["concurrent"]))
        )
        concurrent = options["concurrent"] / (time.perf_counter() - started)
        noop = await _noop_throughput(options["noop"])
        return {
            "floor_median_ms": statistics.median(floor),
            "floor_p99_ms": _quantile(floor, 0.99),
            "relay_median_ms": statistics.median(relay),
            "relay_p99_ms": _quantile(relay, 0.99),
            "concurrent_relays_per_s": concurrent,
            "noop_jobs_per_s": noop,
        }


async def _raw_floor(n: int) -> list[float]:
    """Round trips of the minimal SQL, one connection per role, on the real table."""
    client, worker = await pg.connect(), await pg.connect()
    await client.execute(f"LISTEN {queries.FINISHED_CHANNEL}")
    await worker.execute(f"LISTEN {queries.AVAILABLE_CHANNEL}")
    # Park the bench runner's wake-ups: the floor uses a queue nobody else serves.
    queue = "relaybench_floor"
    timings = []
    try:
        for i in range(n):
            started = time.perf_counter()
            cur = await client.execute(
                "INSERT INTO django_relay_job (worker, queue, state, args, meta, errors, attempt, "
                "max_attempts, priority, scheduled_at, inserted_at) VALUES "
                "('raw', %s, 'available', %s::jsonb, '{}', '[]', 0, 1, 0, now(), now()) "
                "RETURNING id",
                (queue, json.dumps({"a": i, "b": 1})),
            )
            row = await cur.fetchone()
            assert row is not None
            job_id = row[0]
            async for _ in worker.notifies(stop_after=1):
                break
            cur = await worker.execute(
                "UPDATE django_relay_job SET state = 'executing', attempt = attempt + 1, "
                "attempted_at = now() WHERE id = (SELECT id FROM django_relay_job WHERE "
                "state = 'available' AND queue = %s ORDER BY priority, scheduled_at, id "
                "LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, args",
                (queue,),
            )
            claimed = await cur.fetchone()
            assert claimed is not None
            await worker.execute(
                "UPDATE django_relay_job SET state = 'completed', finished_at = now(), "
                "result = %s::jsonb WHERE id = %s",
                (json.dumps(claimed[1]["a"] + claimed[1]["b"]), claimed[0]),
            )
            async for note in client.notifies(stop_after=1):
                assert json.loads(note.payload)["id"] == job_id
                break
            cur = await client.execute(
                "SELECT result FROM django_relay_job WHERE id = %s", (job_id,)
            )
            assert (await cur.fetchone()) == (i + 1,)
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        await client.execute("DELETE FROM django_relay_job WHERE queue = %s", (queue,))
        await client.close()
        await worker.close()
    return timings


async def _noop_throughput(n: int) -> float:
    """Jobs per second from the moment ``n`` no-op jobs are committed until all finish."""
    from asgiref.sync import sync_to_async

    from django_relay.enqueue import enqueue_many

    await sync_to_async(enqueue_many)([NoopWorker.new() for _ in range(n)])
    started = time.perf_counter()
    async with await pg.connect() as conn:
        while True:
            cur = await conn.execute(
                "SELECT count(*) FROM django_relay_job WHERE queue = %s AND state <> 'completed'",
                (QUEUE,),
            )
            row = await cur.fetchone()
            if row is not None and row[0] == 0:
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        await conn.execute("DELETE FROM django_relay_job WHERE queue = %s", (QUEUE,))
    return n / elapsed
