"""A throwaway PostgreSQL server (see :mod:`tests.throwaway_pg`) with django_relay migrated.

Adds what the restart and deadline tests need: pausing the whole server (SIGSTOP:
its sockets stay open, nothing answers), and the environment of a Django process
or a ``relayworker`` using it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST, REPO_ROOT, RunnerProcess
from tests.throwaway_pg import ThrowawayPostgres, unavailable


class Server(ThrowawayPostgres):
    """A throwaway server holding a migrated ``relay`` database."""

    dbname = "relay"

    def dsn(self, dbname: str | None = None) -> str:
        return self.conninfo(dbname or self.dbname)

    def pids(self) -> list[int]:
        """The postmaster and every process it started."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return []
        pids = [postmaster]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Fields after the command name (which may hold spaces): state, ppid ...
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                pids.append(int(entry.name))
        return pids

    def pause(self) -> None:
        """SIGSTOP every process of the server: connections stay open, nothing answers."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        self.resume()  # a paused server cannot shut down
        super().close()

    def env(self, **relay_settings: object) -> dict[str, str]:
        """The environment of a Django process (test settings) using this server."""
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": self.url(self.dbname),
            "RELAY_TEST_SETTINGS": json.dumps({**FAST, **relay_settings}),
            "PYTHONPATH": os.pathsep.join(
                [
                    str(REPO_ROOT),
                    str(REPO_ROOT / "example_project"),
                    os.environ.get("PYTHONPATH", ""),
                ]
            ),
        }
        env.pop("RELAY_TEST_DB_NAME", None)
        return env

    def migrate(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
            cwd=REPO_ROOT,
            env=self.env(),
            check=True,
            capture_output=True,
            timeout=300,
        )

    def runner(self, queues: str = "default=4", **relay_settings: object) -> RunnerProcess:
        """A ``relayworker`` on this server; returns once it is ready."""
        runner = RunnerProcess(["--queues", queues], self.env(**relay_settings))
        runner.wait_for_line("ready", timeout=60)
        return runner


@pytest.fixture(scope="module")
def pg_server() -> Iterator[Server]:
    """A throwaway server with django_relay migrated, shared by one test module."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    server = Server(max_connections=100)
    try:
        server.start()
        server.create_database(server.dbname)
        server.migrate()
        yield server
    finally:
        server.close()
