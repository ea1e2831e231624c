"""A throwaway PostgreSQL server that a test may restart, pause or kill.

Tests that break the database server never touch the shared one: they start their
own (``initdb`` + ``pg_ctl`` from the PostgreSQL 15 binaries, run as the
``postgres`` user, in a temporary directory, on a free port) and stop it after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import FAST, REPO_ROOT, RunnerProcess

BIN = Path(os.environ.get("RELAY_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(*args: str) -> list[str]:
    # initdb refuses to run as root; the server's files belong to postgres.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


class Server:
    """One PostgreSQL cluster in a temporary directory, with a ``relay`` database."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="relay-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.port = _free_port()
        self.dbname = "relay"

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.dbname}"

    def dsn(self, dbname: str | None = None, **extra: object) -> str:
        parts = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": "postgres",
            "dbname": dbname or self.dbname,
            **extra,
        }
        return " ".join(f"{key}={value}" for key, value in parts.items())

    def _run(self, *args: str) -> None:
        subprocess.run(_as_postgres(*args), check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(
            str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
        )
        self.start()
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off"
        )
        self._run(
            str(BIN / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w"),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self.resume()  # a paused server cannot shut down
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

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
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == postmaster:
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

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def env(self, **relay_settings: object) -> dict[str, str]:
        """The environment of a Django process (test settings) using this server."""
        import json

        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": self.url,
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
    if not (BIN / "initdb").exists():
        pytest.skip(f"the PostgreSQL server binaries are not in {BIN} (set RELAY_PG_BIN)")
    server = Server()
    try:
        server.init()
        server.migrate()
        yield server
    finally:
        server.destroy()
