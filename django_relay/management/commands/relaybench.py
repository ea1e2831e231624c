"""``manage.py relaybench``: relay latency and throughput, as ratios to a raw floor.

Every figure is measured in the same run as what it is compared with (the raw
psycopg floor, plain-job throughput, pgqueuer), and reported as the median of
``--runs`` runs with their spread. The floor does the minimal SQL of a round trip
on the same table and triggers, with no framework: insert a job, a LISTENing
worker connection is woken and claims it, completes it, and the LISTENing client
is woken and reads the result.

The floor is raw SQL on purpose, the one state-changing SQL outside
``django_relay.queries``: it measures what PostgreSQL alone costs, so it must
not go through the statements (or the code) whose overhead it is the yardstick
for. It and the benchmark's cleanup touch only the benchmark's own queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_relay import pg, queries
from django_relay.enqueue import enqueue_many
from django_relay.management.commands._benchworkers import (
    AddWorker as _AddWorker,
    NoopWorker as _NoopWorker,
    SyncNoopWorker as _SyncNoopWorker,
)
from django_relay.models import Job, WorkflowRun
from django_relay.workflow import Workflow

QUEUE = "relaybench"
#: libpq's application_name of the bench's own connections (counted during the
#: many-relays phase); the runner it starts gets another.
APPLICATION = f"relaybench-{os.getpid()}"
PGQ_SCHEMA = "relaybench_pgq"
_PGQ_CONSUMER = (sys.executable, "-m", "django_relay.management.commands._benchpgq")
_PYSPY = ("py-spy", "record", "--nonblocking", "--pid")
# @worker adds new/relay/... at run time, which type checkers cannot see.
AddWorker: Any = _AddWorker
NoopWorker: Any = _NoopWorker
SyncNoopWorker: Any = _SyncNoopWorker

#: What each figure means (printed with the table; README "Performance").
FIGURES = {
    "floor_idle_p50_ms": "raw floor round trip from idle (random gap before each), median",
    "floor_idle_p99_ms": "raw floor round trip from idle, p99",
    "relay_idle_p50_ms": "relay() round trip from idle (same gaps), median",
    "relay_idle_p99_ms": "relay() round trip from idle, p99",
    "relay_idle_vs_floor": "relay_idle_p50 / floor_idle_p50 (bar: <= 1.4)",
    "relay_idle_p99_vs_floor_p99": "relay_idle_p99 / floor_idle_p99 (bar: <= 2)",
    "floor_b2b_p50_ms": "raw floor round trip back to back, median",
    "relay_b2b_p50_ms": "relay() back to back, median",
    "relay_b2b_vs_floor": "relay_b2b_p50 / floor_b2b_p50",
    "concurrent_relays_per_s": "relays/s, --concurrent relays gathered in one process",
    "many_relays_per_s": "relays/s, --many-concurrent relays gathered (one LISTEN connection)",
    "rss_growth_mb": "peak RSS growth of the bench process during --many-concurrent relays",
    "rss_per_waiter_kb": "rss_growth_mb per waiter",
    "many_relays_connections": "peak connections of the bench process during --many-concurrent "
    "relays (one LISTEN, one for relay inserts, one for result reads, Django's)",
    "concurrent_relays_vs_async": "concurrent_relays_per_s / async no-op jobs/s at the highest "
    "concurrency (the runner serves relays at that concurrency)",
    "enqueue_many_per_s": "jobs/s inserted by one enqueue_many() of --enqueue built jobs",
    "workflow_steps_per_s": "steps/s of a fan-out/fan-in workflow of --workflow steps",
    "workflow_vs_plain": "workflow_steps_per_s / async no-op jobs/s at the highest concurrency",
}


#: The sections of a run, in the order they run (``--only``).
SECTIONS = ("relay", "concurrent", "throughput", "enqueue", "workflow")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _rss_kb() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


class Command(BaseCommand):
    help = "Measure relay latency and throughput against a raw floor (and pgqueuer)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--runs", type=int, default=3)
        parser.add_argument("--relays", type=int, default=200, help="sequential relays per run")
        parser.add_argument(
            "--gap",
            default="10,60",
            help="min,max ms of the random pause before each idle round trip",
        )
        parser.add_argument("--concurrent", type=int, default=1000)
        parser.add_argument("--many-concurrent", type=int, default=10_000, help="0 skips the phase")
        parser.add_argument(
            "--noop", type=int, default=5000, help="pre-enqueued no-op jobs per throughput figure"
        )
        parser.add_argument(
            "--concurrency",
            default="50,200",
            help="runner concurrencies for the no-op throughput (comma-separated)",
        )
        parser.add_argument("--sync-concurrency", type=int, default=50)
        parser.add_argument("--enqueue", type=int, default=5000, help="jobs per enqueue_many")
        parser.add_argument("--workflow", type=int, default=1000, help="steps; 0 skips")
        parser.add_argument(
            "--pgqueuer",
            choices=["auto", "yes", "no"],
            default="auto",
            help="run pgqueuer side by side (auto: when the bench extra is installed)",
        )
        parser.add_argument(
            "--pgqueuer-batch",
            default="10,25,100",
            help="pgqueuer batch sizes to try; each figure keeps the best",
        )
        parser.add_argument(
            "--only",
            default=",".join(SECTIONS),
            help=f"sections to run, comma-separated, among {', '.join(SECTIONS)} "
            "(workflow_vs_plain needs throughput too)",
        )
        parser.add_argument("--json", action="store_true", help="print JSON only")
        parser.add_argument(
            "--profile",
            metavar="DIR",
            help="write cProfile files of the bench and of its runner (and a py-spy "
            "flame graph of the runner if py-spy is installed) into DIR",
        )
        parser.add_argument(
            "--runner-log-level",
            default="WARNING",
            help="the bench runner's --log-level (INFO logs every job)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.options = options
        self.concurrencies = _ints(options["concurrency"])
        self.sections = {part.strip() for part in options["only"].split(",") if part.strip()}
        if unknown := self.sections - set(SECTIONS):
            raise CommandError(f"--only: no section {', '.join(sorted(unknown))}")
        self.profile_dir = Path(options["profile"]) if options["profile"] else None
        if self.profile_dir:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
        self.pgqueuer = self._pgqueuer_wanted(options["pgqueuer"])
        # Names this process's connections opened from now on (unless DATABASES sets
        # an application_name of its own), apart from its runner's: the many-relays
        # phase counts them.
        os.environ["PGAPPNAME"] = APPLICATION
        Job.objects.filter(queue__startswith=QUEUE).delete()
        runner = self._start_runner()
        profiler = cProfile.Profile() if self.profile_dir else None
        try:
            runs = []
            for _ in range(options["runs"]):
                if profiler:
                    profiler.enable()
                runs.append(asyncio.run(self._run()))
                if profiler:
                    profiler.disable()
            if self.pgqueuer and "throughput" in self.sections:
                for run, pgq in zip(runs, asyncio.run(self._pgqueuer_runs()), strict=True):
                    run.update(pgq)
                    for c in self.concurrencies:
                        if f"pgqueuer_c{c}_per_s" in pgq:
                            run[f"async_vs_pgqueuer_c{c}"] = (
                                run[f"async_c{c}_per_s"] / pgq[f"pgqueuer_c{c}_per_s"]
                            )
        finally:
            self._stop(runner)
            Job.objects.filter(queue__startswith=QUEUE).delete()
            WorkflowRun.objects.filter(name=QUEUE).delete()
        if profiler and self.profile_dir:
            profiler.dump_stats(self.profile_dir / "bench.prof")
        summary = {
            key: {
                "median": statistics.median(run[key] for run in runs),
                "min": min(run[key] for run in runs),
                "max": max(run[key] for run in runs),
            }
            for key in runs[0]
        }
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {"runs": options["runs"], "load_average": os.getloadavg(), **summary},
                    indent=2,
                )
            )
            return
        self.stdout.write(
            f"medians of {options['runs']} runs (min..max); load average "
            + " ".join(f"{x:.2f}" for x in os.getloadavg())
        )
        for key, value in summary.items():
            self.stdout.write(
                f"  {key:30} {value['median']:11.2f}   "
                f"({value['min']:.2f}..{value['max']:.2f})  {self._meaning(key)}"
            )

    def _meaning(self, key: str) -> str:
        if key in FIGURES:
            return FIGURES[key]
        if key.startswith("pgqueuer_batch"):
            return "pgqueuer's best batch size at that concurrency"
        if key.startswith("pgqueuer"):
            return "pgqueuer no-op jobs/s at that concurrency, best batch, first-to-last"
        if key.startswith("async_vs_pgqueuer"):
            return "async no-op jobs/s / pgqueuer's, same concurrency (bar: >= 1)"
        if key.startswith("sync_vs_async"):
            return "sync no-op jobs/s / async no-op jobs/s, same concurrency, same run"
        if key.startswith("sync"):
            return "sync `def process` no-op jobs/s, first-to-last (bar: >= 5,000)"
        return "async no-op jobs/s at that concurrency, --noop pre-enqueued, first-to-last"

    # -- the runner under test ------------------------------------------------

    def _start_runner(self) -> subprocess.Popen[str]:
        queues = [f"{QUEUE}={max(self.concurrencies)}", f"{QUEUE}_wf={max(self.concurrencies)}"]
        queues += [f"{QUEUE}_c{c}={c}" for c in self.concurrencies]
        queues.append(f"{QUEUE}_sync={self.options['sync_concurrency']}")
        command = [sys.executable]
        if self.profile_dir:
            command += ["-m", "cProfile", "-o", str(self.profile_dir / "runner.prof")]
        command += ["-m", "django", "relayworker", "--queues", ",".join(queues)]
        command += ["--log-level", self.options["runner_log_level"]]
        # The runner imports what this process imports (settings, the bench workers).
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, sys.path)),
            "PGAPPNAME": "relaybench-runner",
        }
        runner = _spawn(command, env)
        if self.profile_dir and shutil.which("py-spy"):
            self.pyspy: subprocess.Popen[bytes] | None = subprocess.Popen(
                [*_PYSPY, str(runner.pid), "-o", str(self.profile_dir / "runner-pyspy.svg")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        else:
            self.pyspy = None
        return runner

    def _stop(self, runner: subprocess.Popen[str]) -> None:
        runner.terminate()
        runner.wait(60)
        if self.pyspy is not None:
            self.pyspy.wait(30)  # it writes its flame graph once the runner is gone

    # -- one run ----------------------------------------------------------------

    async def _run(self) -> dict[str, float]:
        options = self.options
        # Each run starts from a vacuumed, analysed table (what autovacuum leaves on a
        # drained queue): the previous run's dead rows would slow every index scan.
        async with await pg.connect() as conn:
            await conn.execute("VACUUM ANALYZE django_relay_job")
        result: dict[str, float] = {}
        if "relay" in self.sections:
            result.update(await self._round_trips())
        if "concurrent" in self.sections:
            result["concurrent_relays_per_s"] = await _concurrent_relays(options["concurrent"])
            if options["many_concurrent"]:
                before = _rss_kb()
                peak = _PeakRss()
                async with _ConnectionCount() as connections:
                    many = await _concurrent_relays(options["many_concurrent"])
                result["many_relays_per_s"] = many
                growth_kb = max(0, peak.stop() - before)
                result["rss_growth_mb"] = growth_kb / 1024
                result["rss_per_waiter_kb"] = growth_kb / options["many_concurrent"]
                result["many_relays_connections"] = connections.peak
        if "throughput" in self.sections:
            for c in self.concurrencies:
                result[f"async_c{c}_per_s"] = await _throughput(
                    [NoopWorker.new(queue=f"{QUEUE}_c{c}") for _ in range(options["noop"])]
                )
            sync_c = options["sync_concurrency"]
            result[f"sync_c{sync_c}_per_s"] = await _throughput(
                [SyncNoopWorker.new(queue=f"{QUEUE}_sync") for _ in range(options["noop"])]
            )
            if sync_c in self.concurrencies:
                result[f"sync_vs_async_c{sync_c}"] = (
                    result[f"sync_c{sync_c}_per_s"] / result[f"async_c{sync_c}_per_s"]
                )
            if "concurrent_relays_per_s" in result:
                result["concurrent_relays_vs_async"] = (
                    result["concurrent_relays_per_s"]
                    / result[f"async_c{max(self.concurrencies)}_per_s"]
                )
        if "enqueue" in self.sections:
            result["enqueue_many_per_s"] = await _enqueue_rate(options["enqueue"])
        if "workflow" in self.sections and options["workflow"]:
            result["workflow_steps_per_s"] = await _workflow_rate(options["workflow"])
            plain = result.get(f"async_c{max(self.concurrencies)}_per_s")
            if plain:
                result["workflow_vs_plain"] = result["workflow_steps_per_s"] / plain
        return result

    async def _round_trips(self) -> dict[str, float]:
        low, high = (float(part) / 1000 for part in self.options["gap"].split(","))
        n = self.options["relays"]

        def gap() -> float:
            return random.uniform(low, high)

        floor_idle = await _raw_floor(n, gap)
        relay_idle = await _relays(n, gap)
        floor_b2b = await _raw_floor(n, None)
        relay_b2b = await _relays(n, None)
        result = {
            "floor_idle_p50_ms": statistics.median(floor_idle),
            "floor_idle_p99_ms": _quantile(floor_idle, 0.99),
            "relay_idle_p50_ms": statistics.median(relay_idle),
            "relay_idle_p99_ms": _quantile(relay_idle, 0.99),
            "floor_b2b_p50_ms": statistics.median(floor_b2b),
            "relay_b2b_p50_ms": statistics.median(relay_b2b),
        }
        result["relay_idle_vs_floor"] = result["relay_idle_p50_ms"] / result["floor_idle_p50_ms"]
        result["relay_idle_p99_vs_floor_p99"] = (
            result["relay_idle_p99_ms"] / result["floor_idle_p99_ms"]
        )
        result["relay_b2b_vs_floor"] = result["relay_b2b_p50_ms"] / result["floor_b2b_p50_ms"]
        return result

    # -- pgqueuer side by side --------------------------------------------------

    def _pgqueuer_wanted(self, choice: str) -> bool:
        if choice == "no":
            return False
        try:
            import pgqueuer  # noqa: F401
        except ImportError:
            if choice == "yes":
                raise
            self.stderr.write("pgqueuer not installed (pip install django-relay[bench]): skipped")
            return False
        return True

    async def _pgqueuer_runs(self) -> list[dict[str, float]]:
        """Per run: pgqueuer's no-op jobs/s at each concurrency, at its best batch size.

        pgqueuer lives in a schema of its own on the same database, installed here
        and dropped afterwards; its consumer is a process of its own, like ours.
        """
        os.environ["PGQUEUER_SCHEMA"] = PGQ_SCHEMA
        from pgqueuer import Queries

        dsn = _url(pg.connect_kwargs())
        conn = await pg.connect()
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {PGQ_SCHEMA} CASCADE")
            pgq = Queries.from_psycopg_connection(conn)
            await pgq.install()
            runs: list[dict[str, float]] = [{} for _ in range(self.options["runs"])]
            for c in self.concurrencies:
                for batch in _ints(self.options["pgqueuer_batch"]):
                    if 2 * batch > c:  # pgqueuer refuses a cap below twice its batch
                        continue
                    consumer = _spawn(
                        [*_PGQ_CONSUMER, dsn, str(batch), str(c)],
                        {**os.environ, "PGQUEUER_SCHEMA": PGQ_SCHEMA},
                    )
                    try:
                        await asyncio.sleep(1)  # let it reach its first dequeue
                        for run in runs:
                            rate = await _pgq_throughput(conn, pgq, self.options["noop"])
                            if rate > run.get(f"pgqueuer_c{c}_per_s", 0):
                                run[f"pgqueuer_c{c}_per_s"] = rate
                                run[f"pgqueuer_batch_c{c}"] = batch
                    finally:
                        consumer.terminate()
                        consumer.wait(30)
            return runs
        finally:
            await conn.execute(f"DROP SCHEMA IF EXISTS {PGQ_SCHEMA} CASCADE")
            await conn.close()


def _url(params: dict[str, Any]) -> str:
    """A postgresql:// URL (what asyncpg takes) from psycopg's connection keywords."""
    user = quote(str(params.get("user") or ""), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    host = params.get("host") or "localhost"
    port = params.get("port") or 5432
    return f"postgresql://{auth}@{host}:{port}/{quote(str(params['dbname']), safe='')}"


class _PeakRss:
    """Samples this process's RSS on a thread until stopped; the peak in kB."""

    def __init__(self) -> None:
        self.peak = _rss_kb()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, _rss_kb())

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return max(self.peak, _rss_kb())


class _ConnectionCount:
    """Samples how many connections this process holds until exit: those carrying the
    application_name of its own (``APPLICATION``, or what ``DATABASES`` sets)."""

    def __init__(self) -> None:
        self.peak = 0

    async def __aenter__(self) -> _ConnectionCount:
        self._conn = await pg.connect()
        self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            cur = await self._conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND application_name = current_setting('application_name')"
            )
            row = await cur.fetchone()
            self.peak = max(self.peak, row[0] if row else 0)
            await asyncio.sleep(0.05)

    async def __aexit__(self, *exc_info: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._conn.close()


def _spawn(command: list[str], env: Any) -> subprocess.Popen[str]:
    """Start a consumer process and wait for its ready line; keep draining its output."""
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "ready" in line:
            break
    else:
        raise RuntimeError(f"{command[0:4]} did not start:\n{''.join(lines[-20:])}")
    stdout = proc.stdout
    threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()
    return proc


async def _relays(n: int, gap: Callable[[], float] | None) -> list[float]:
    timings = []
    for i in range(n):
        if gap is not None:
            await asyncio.sleep(gap())
        started = time.perf_counter()
        assert await AddWorker.relay({"a": i, "b": 1}, timeout=10) == i + 1
        timings.append((time.perf_counter() - started) * 1000)
    return timings


async def _concurrent_relays(n: int) -> float:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(AddWorker.relay({"a": i, "b": 1}, timeout=120) for i in range(n))
    )
    elapsed = time.perf_counter() - started
    assert results == [i + 1 for i in range(n)]
    return n / elapsed


async def _raw_floor(n: int, gap: Callable[[], float] | None) -> list[float]:
    """Round trips of the minimal SQL, one connection per role, on the real table."""
    client, worker = await pg.connect(), await pg.connect()
    # The client's own relay_finished channel, named in the jobs it inserts, as relay() does.
    channel = queries.finished_channel("floor")
    await client.execute(f"LISTEN {channel}")
    await worker.execute(f"LISTEN {queries.AVAILABLE_CHANNEL}")
    # Park the bench runner's wake-ups: the floor uses a queue nobody else serves.
    queue = "relaybench_floor"
    timings = []
    try:
        for i in range(n):
            if gap is not None:
                await asyncio.sleep(gap())
            started = time.perf_counter()
            cur = await client.execute(
                "INSERT INTO django_relay_job (worker, queue, state, args, meta, errors, attempt, "
                "max_attempts, priority, scheduled_at, inserted_at, waiters) VALUES "
                "('raw', %s, 'available', %s::jsonb, '{}', '[]', 0, 1, 0, now(), now(), "
                "ARRAY[%s::varchar]) RETURNING id",
                (queue, json.dumps({"a": i, "b": 1}), channel),
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
            # Until our job's completion: a runner's rescuer may have moved the job
            # (the floor's claim names no node), which notifies too.
            async for note in client.notifies():
                if [job_id, "completed", 1] in json.loads(note.payload):
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


async def _until_done(count_sql: str, params: tuple[Any, ...]) -> None:
    async with await pg.connect() as conn:
        while True:
            cur = await conn.execute(count_sql, params)
            row = await cur.fetchone()
            if row is not None and row[0] == 0:
                return
            await asyncio.sleep(0.005)


async def _throughput(jobs: list[Job]) -> float:
    """Jobs per second from the moment ``jobs`` are committed until all finish."""
    await sync_to_async(enqueue_many)(jobs)
    return await _drained(jobs[0].queue, len(jobs))


async def _drained(queue: str, count: int) -> float:
    """``count`` / seconds from now until every job of ``queue`` completed; then empty it."""
    started = time.perf_counter()
    await _until_done(
        "SELECT count(*) FROM django_relay_job WHERE queue = %s AND state <> 'completed'",
        (queue,),
    )
    elapsed = time.perf_counter() - started
    await _delete_queue(queue)
    return count / elapsed


async def _delete_queue(queue: str) -> None:
    async with await pg.connect() as conn:
        await conn.execute("DELETE FROM django_relay_job WHERE queue = %s", (queue,))


async def _enqueue_rate(n: int) -> float:
    """Jobs per second of one ``enqueue_many`` of ``n`` built jobs (no runner serves them)."""
    queue = f"{QUEUE}_parked"
    jobs = [NoopWorker.new({"n": i}, queue=queue) for i in range(n)]
    started = time.perf_counter()
    await sync_to_async(enqueue_many)(jobs)
    elapsed = time.perf_counter() - started
    await _delete_queue(queue)
    return n / elapsed


async def _workflow_rate(steps: int) -> float:
    """Steps per second of a workflow: one root, ``steps - 2`` in parallel, one sink."""
    queue = f"{QUEUE}_wf"
    workflow = Workflow(name=QUEUE).add("root", NoopWorker.new(queue=queue))
    middle = [f"s{i}" for i in range(steps - 2)]
    for name in middle:
        workflow.add(name, NoopWorker.new(queue=queue), deps=["root"])
    workflow.add("sink", NoopWorker.new(queue=queue), deps=middle)
    await sync_to_async(workflow.enqueue)()
    return await _drained(queue, steps)


async def _pgq_throughput(conn: Any, pgq: Any, n: int) -> float:
    await pgq.enqueue(["noop"] * n, [None] * n, [0] * n)
    started = time.perf_counter()
    await _until_done(f"SELECT count(*) FROM {PGQ_SCHEMA}.pgqueuer", ())
    elapsed = time.perf_counter() - started
    await conn.execute(f"TRUNCATE {PGQ_SCHEMA}.pgqueuer_log")
    return n / elapsed
