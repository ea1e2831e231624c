"""The battery's harness: databases to break, runner fleets, client processes, figures.

A *target* is the database a case runs against: the suite's test database on the
shared server (for cases that kill processes), or a fresh database on a
throwaway server (for cases that restart the server or end its connections).
Runners and clients are real processes with the target in their environment;
the test process only reads the target through :mod:`tests.ledger`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import ledger
from tests.conftest import FAST, REPO_ROOT, RunnerProcess, wait_for
from tests.throwaway_pg import ThrowawayPostgres

_READY = re.compile(r"relayworker (\S+) ready")
_case_names = itertools.count(1)


@dataclass
class Target:
    """A database for one case: how subprocesses reach it, and how the test reads it."""

    dbname: str
    conninfo: str
    #: Environment overrides that point ``tests.settings`` at this database.
    env: dict[str, str]
    server: ThrowawayPostgres | None = None

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.conninfo, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def ledger_rows(self, kind: str) -> list[tuple[Any, ...]]:
        """``(job_id, attempt, node, pid, token)`` of every ledger row of ``kind``."""
        return self.execute(
            "SELECT job_id, attempt, node, pid, token::text FROM battery_ledger "
            "WHERE kind = %s ORDER BY at",
            [kind],
        )

    def wait_quiet(self, timeout: float) -> None:
        """Wait until every job is finished."""
        wait_for(
            lambda: ledger.non_terminal(self.conninfo) == 0,
            timeout=timeout,
            interval=0.2,
            message="every job to finish",
        )


class ThrowawayServer:
    """A throwaway server with a migrated template; one fresh database per case."""

    TEMPLATE = "relay_template"

    def __init__(self) -> None:
        self.pg = ThrowawayPostgres()
        try:
            self.pg.start()
            self.pg.create_database(self.TEMPLATE)
            env = subprocess_env({"DATABASE_URL": self.pg.url(self.TEMPLATE)})
            done = subprocess.run(
                [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            ledger.install(self.pg.conninfo(self.TEMPLATE))
        except BaseException:
            self.pg.close()
            raise

    def new_target(self) -> Target:
        name = f"relay_case_{next(_case_names)}"
        self.pg.create_database(name, template=self.TEMPLATE)
        return Target(
            dbname=name,
            conninfo=self.pg.conninfo(name, application_name="relay-test-admin"),
            env={"DATABASE_URL": self.pg.url(name)},
            server=self.pg,
        )

    def close(self) -> None:
        self.pg.close()


def subprocess_env(target_env: dict[str, str], **relay_settings: Any) -> dict[str, str]:
    """The environment of a runner or client on a target, with fast timings."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "RELAY_TEST_SETTINGS": json.dumps({**FAST, **relay_settings}),
        "PYTHONPATH": os.pathsep.join(
            [str(REPO_ROOT), str(REPO_ROOT / "example_project"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    env.pop("RELAY_TEST_DB_NAME", None)
    env.update(target_env)
    return env


class ClientProcess:
    """A ``python -m tests.relay_client`` process; its JSON lines, as they come."""

    def __init__(self, spec: dict[str, Any], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.relay_client", json.dumps(spec)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith("{"):
                with contextlib.suppress(ValueError):  # a log line that looks like JSON
                    self.events.append(json.loads(line))

    @property
    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def progress(self) -> int:
        return max((e["progress"] for e in self.events if "progress" in e), default=0)

    def wait_progress(self, count: int, timeout: float = 60.0) -> None:
        def reached() -> bool:
            if self.proc.poll() is not None and self.progress() < count:
                pytest.fail(f"the client exited ({self.proc.returncode}):\n{self.output}")
            return self.progress() >= count

        wait_for(reached, timeout=timeout, interval=0.05, message=f"{count} relays to return")

    def finish(self, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Wait for the client to exit; the figures of its rounds."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f"the client did not finish within {timeout}s:\n{self.output}")
        self._reader.join(5)
        if self.proc.returncode != 0 or not any(e.get("done") for e in self.events):
            pytest.fail(f"the client failed ({self.proc.returncode}):\n{self.output}")
        return [e["round"] for e in self.events if "round" in e]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Fleet:
    """The runners (and clients) of one case, on one target; all stopped at teardown."""

    target: Target
    settings: dict[str, Any] = field(default_factory=dict)
    #: Extra ``relayworker`` arguments of every runner started.
    args: list[str] = field(default_factory=list)
    runners: list[RunnerProcess] = field(default_factory=list)
    clients: list[ClientProcess] = field(default_factory=list)
    #: Runners this harness killed or stopped on purpose.
    ended: set[int] = field(default_factory=set)
    began: float = field(default_factory=time.monotonic)

    def env(self, **relay_settings: Any) -> dict[str, str]:
        return subprocess_env(self.target.env, **{**self.settings, **relay_settings})

    def start(self, queues: str = "default=10", *, wait: bool = True) -> RunnerProcess:
        args = ["--queues", queues, "--log-level", "WARNING", *self.args]
        runner = RunnerProcess(args, self.env())
        self.runners.append(runner)
        if wait:
            self.ready(runner)
        return runner

    def start_many(self, count: int, queues: str = "default=10") -> list[RunnerProcess]:
        """Start ``count`` runners side by side; return once all are ready."""
        runners = [self.start(queues, wait=False) for _ in range(count)]
        for runner in runners:
            self.ready(runner)
        return runners

    def ready(self, runner: RunnerProcess, timeout: float = 60.0) -> str:
        """Wait for ``runner``'s ready line; its node id."""
        match = _READY.search(runner.wait_for_line("ready", timeout=timeout))
        assert match is not None
        return match.group(1)

    def kill(self, runner: RunnerProcess, signum: int = signal.SIGKILL) -> float:
        """Send ``signum`` (SIGKILL by default); the wall-clock time it was sent."""
        self.ended.add(id(runner))
        at = time.time()
        runner.signal(signum)
        return at

    def alive(self) -> list[RunnerProcess]:
        return [r for r in self.runners if r.proc.poll() is None]

    def crashed(self) -> list[str]:
        """Runners that exited without being told to: each with the end of its output."""
        return [
            f"pid {r.proc.pid} exited {r.proc.returncode}: {r.output[-1500:]}"
            for r in self.runners
            if r.proc.poll() is not None and id(r) not in self.ended
        ]

    def client(self, spec: dict[str, Any]) -> ClientProcess:
        """Start a client process (see :mod:`tests.relay_client` for ``spec``)."""
        client = ClientProcess(spec, self.env())
        self.clients.append(client)
        return client

    def relay(self, worker: str, rounds: list[int], **spec: Any) -> ClientProcess:
        """Start a client relaying ``rounds`` of jobs of ``tests.ledger.<worker>``.

        Defaults: 120 s timeout, ``with_retries``; ``spec`` overrides them.
        """
        spec = {"timeout": 120, "with_retries": True, **spec}
        return self.client(
            {"mode": "relay", "worker": f"tests.ledger.{worker}", "rounds": rounds, **spec}
        )

    def settle(self, timeout: float = 60.0, **options: Any) -> ledger.Audit:
        """Wait until every job is finished; audit them against the ledger."""
        self.target.wait_quiet(timeout)
        return ledger.audit(self.target.conninfo, **options)

    def report(
        self,
        case: str,
        scale: str,
        audit: ledger.Audit,
        rounds: Sequence[dict[str, Any]] = (),
        **figures: Any,
    ) -> None:
        """Print the case's one JSON line of figures (``-s`` shows it).

        With ``RELAY_BATTERY_FIGURES`` set, the line is appended to that file too.
        """
        line: dict[str, Any] = {"case": case, "scale": scale}
        if rounds:
            errors: Counter[str] = Counter()
            for figures_of_round in rounds:
                errors.update(figures_of_round["errors"])
            line["relays_ok"] = sum(r["ok"] for r in rounds)
            line["relays_failed"] = sum(r["failed"] for r in rounds)
            line["relay_errors"] = dict(errors.most_common(5))
        line.update(figures)
        line.update(audit.figures())
        line.pop("results", None)
        line["seconds"] = round(time.monotonic() - self.began, 1)
        print(f"\nBATTERY {json.dumps(line)}", flush=True)
        path = os.environ.get("RELAY_BATTERY_FIGURES")
        if path:
            with Path(path).open("a") as f:
                f.write(json.dumps(line) + "\n")

    def close(self) -> None:
        for client in self.clients:
            client.stop()
        for runner in self.runners:
            self.ended.add(id(runner))
            runner.stop()


def every(period: float, action: Callable[[], object]) -> Callable[[], list[Exception]]:
    """Run ``action`` every ``period`` seconds on a thread.

    Returns a function that stops it and returns the exceptions ``action`` raised.
    """
    stop = threading.Event()
    failures: list[Exception] = []

    def loop() -> None:
        while not stop.wait(period):
            try:
                action()
            except Exception as exc:
                failures.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def halt() -> list[Exception]:
        stop.set()
        thread.join(10)
        return failures

    return halt
