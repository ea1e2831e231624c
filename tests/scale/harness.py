"""The scale test's cluster: one PostgreSQL, one PgBouncer, runner hosts and a web host.

Layout (all on this machine)::

    root namespace:  bridge rst-br0 (GATEWAY, e.g. 10.77.0.1)
                     a throwaway PostgreSQL listening on 127.0.0.1 and GATEWAY
                     PgBouncer (transaction mode) on GATEWAY -> 127.0.0.1
    namespace h1..h3 ("runner hosts"): relayworker processes
    namespace web:   caller processes (tests/scale/caller.py)

Every process in a namespace uses ``DATABASES`` through PgBouncer, with Django's
OPTIONS as the test settings make them (no ``prepare_threshold``), and
``RELAY["LISTEN_DSN"]`` straight to PostgreSQL on the bridge. :meth:`Cluster.close`
stops and removes everything it started, in reverse order, whatever failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests import pgbouncer
from tests.conftest import REPO_ROOT, RunnerProcess, wait_for
from tests.pgserver import Server
from tests.scale.net import Host, Network, unavailable as network_unavailable
from tests.throwaway_pg import unavailable as server_unavailable

#: RELAY settings of every process: short heartbeat and rescue windows (so a cut host's
#: jobs are rescued within the test), short deadlines on a dead link; FETCH_INTERVAL
#: and STAGE_INTERVAL stay at their defaults, so empty claims are those of a real setup.
RELAY = {
    "QUEUES": {"default": 10},
    "HEARTBEAT_INTERVAL": 0.5,
    "RESCUE_AFTER": 3.0,
    "FETCH_INTERVAL": 1.0,
    "STAGE_INTERVAL": 1.0,
    "GRACE_PERIOD": 5.0,
    "STATEMENT_TIMEOUT": 5.0,
    "TCP_KEEPALIVE": 2.0,
    "CONNECT_TIMEOUT": 5.0,
}
STATS = re.compile(r"relay stats: (\{.*\})")
_COMPLAINT = re.compile(r"^(WARNING|ERROR|CRITICAL) |^Traceback")


def unavailable() -> str | None:
    """Why the cluster cannot be built here, or None."""
    return network_unavailable() or server_unavailable() or pgbouncer.unavailable()


class Caller:
    """A caller process in the web namespace, driven by JSON commands (see caller.py)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self.replies: dict[int, dict[str, Any]] = {}
        self._ids = iter(range(1, 1 << 30))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(lambda: self._alive() and "ready" in self.output, 120, message=f"{name} ready")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if "id" in message:
                        self.replies[message["id"]] = message

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.output}")
        return True

    def send(self, op: str, **fields: Any) -> int:
        """Send a command; returns its id, for :meth:`reply`."""
        command_id = next(self._ids)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": command_id, "op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        return command_id

    def reply(self, command_id: int, timeout: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not (self._alive() and (message := self.replies.get(command_id))):
            if time.monotonic() > deadline:
                # What it is stuck on: its threads' stacks (faulthandler, see caller.py).
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
                pytest.fail(
                    f"{self.name} did not answer command {command_id} within {timeout}s:\n"
                    f"{self.output[-6000:]}"
                )
            time.sleep(0.02)
        if "error" in message:
            raise AssertionError(f"{self.name}: {message['error']}\n{self.output[-3000:]}")
        return message

    def call(self, op: str, timeout: float = 180.0, **fields: Any) -> dict[str, Any]:
        return self.reply(self.send(op, **fields), timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send("quit")
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


class Cluster:
    """Builds the whole layout; use as a context manager."""

    def __init__(self, hosts: int = 3, pool_size: int = 20) -> None:
        self.callers: list[Caller] = []
        self.runners: list[RunnerProcess] = []
        self.server: Server | None = None
        self._bouncer: pgbouncer.PgBouncer | None = None
        self.network = Network()
        try:
            self.hosts = [self.network.add(f"h{i}") for i in range(1, hosts + 1)]
            self.web = self.network.add("web")
            gateway = self.network.gateway
            self.server = Server(max_connections=300)
            with (self.server.data / "postgresql.conf").open("a") as f:
                f.write(f"listen_addresses = '127.0.0.1,{gateway}'\n")
            with (self.server.data / "pg_hba.conf").open("a") as f:
                f.write(f"host all all {gateway}/24 trust\n")
            self.server.start()
            self.server.create_database(self.server.dbname)
            self.server.migrate()
            self._bouncer = pgbouncer.PgBouncer(
                "127.0.0.1", self.server.port, "postgres", pool_size=pool_size, listen_addr=gateway
            )
            self._bouncer.start()
            self.bouncer = (self._bouncer.host, self._bouncer.port)
        except BaseException:
            self.close()
            raise

    # -- processes --------------------------------------------------------------

    def env(self, *, listen_direct: bool = True) -> dict[str, str]:
        """A namespaced process's environment: through PgBouncer, LISTEN direct.

        ``listen_direct=False``: no ``LISTEN_DSN``, so LISTEN goes through PgBouncer too.
        """
        assert self.server is not None
        host, port = self.bouncer
        env = self.server.env()
        env["DJANGO_SETTINGS_MODULE"] = "tests.scale.settings"
        env["DATABASE_URL"] = f"postgres://postgres@{host}:{port}/{self.server.dbname}"
        relay = dict(RELAY)
        if listen_direct:
            relay["LISTEN_DSN"] = (
                f"host={self.network.gateway} port={self.server.port} "
                f"dbname={self.server.dbname} user=postgres"
            )
        env["RELAY_TEST_SETTINGS"] = json.dumps(relay)
        return env

    def start_runners(
        self,
        hosts: Iterable[Host],
        per_host: int = 1,
        queues: str = "default=10",
        *,
        listen_direct: bool = True,
        refusable: bool = False,
    ) -> list[RunnerProcess]:
        """``per_host`` relayworkers in each of ``hosts``; returns once all are ready.

        ``refusable``: a runner that exits instead is no failure; it is returned
        too, exited (its output says why).
        """
        started = []
        for host in hosts:
            for _ in range(per_host):
                command = host.command(
                    sys.executable, "-m", "django", "relayworker", "--queues", queues
                )
                env = self.env(listen_direct=listen_direct)
                runner = RunnerProcess([], env, command=command, name=host.name)
                started.append(runner)
                self.runners.append(runner)
        for runner in started:
            if refusable:
                wait_for(
                    lambda r=runner: r.proc.poll() is not None or "ready" in r.output,
                    180,
                    message=f"{runner.name}'s runner ready or refusing",
                )
            else:
                runner.wait_for_line("ready", timeout=180)
        return started

    @staticmethod
    def complaints(processes: Iterable[RunnerProcess | Caller], most: int = 5) -> dict[str, int]:
        """The kinds of warnings and errors the processes logged (digits as N), by count."""
        kinds: dict[str, int] = {}
        for process in processes:
            for line in process.lines:
                if _COMPLAINT.search(line):
                    kind = re.sub(r"[0-9]+", "N", line.strip())[:160]
                    kinds[kind] = kinds.get(kind, 0) + 1
        return dict(sorted(kinds.items(), key=lambda item: -item[1])[:most])

    def stop_runners(self, runners: Iterable[RunnerProcess]) -> list[dict[str, Any]]:
        """SIGTERM each and wait; returns each one's ``relay stats`` (an empty dict if none)."""
        runners = list(runners)
        for runner in runners:
            if runner.proc.poll() is None:
                runner.signal(15)
        found = []
        for runner in runners:
            runner.stop(timeout=60)
            if runner in self.runners:
                self.runners.remove(runner)
            match = next((STATS.search(ln) for ln in runner.lines if STATS.search(ln)), None)
            found.append(json.loads(match.group(1)) if match else {})
        return found

    def start_callers(self, count: int, *, listen_direct: bool = True) -> list[Caller]:
        command = self.web.command(sys.executable, "-m", "tests.scale.caller")
        env = self.env(listen_direct=listen_direct)
        callers = [Caller(f"caller{i}", command, env) for i in range(count)]
        self.callers.extend(callers)
        return callers

    # -- measures ---------------------------------------------------------------

    def server_cpu(self) -> float:
        """CPU seconds used by PostgreSQL so far (its live processes and the ended ones)."""
        assert self.server is not None
        return sum(_cpu(pid, children=index == 0) for index, pid in enumerate(self.server.pids()))

    def bouncer_cpu(self) -> float:
        proc = self._bouncer.proc
        return _cpu(proc.pid) if proc else 0.0

    # -- teardown ---------------------------------------------------------------

    def close(self) -> None:
        for caller in self.callers:
            with contextlib.suppress(Exception):
                caller.close()
        for runner in self.runners:
            with contextlib.suppress(Exception):
                runner.stop(timeout=20)
        if self._bouncer is not None:
            with contextlib.suppress(Exception):
                self._bouncer.close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.close()
        self.network.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of ``pid`` (with its reaped children's, if asked)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # After the command name: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / _TICKS
