"""A throwaway PostgreSQL server for tests that restart or break the database.

The shared server is never stopped, restarted or reconfigured by a test: a test
that needs to do that to a server starts one of these (``initdb`` + ``pg_ctl`` as
the ``postgres`` user when run as root, in a temp dir, on a free port) and always
stops it. The server's programs are looked for in ``RELAY_TEST_PG_BIN`` (default
``/usr/lib/postgresql/15/bin``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

from tests.ports import free_port

PG_BIN = Path(os.environ.get("RELAY_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def unavailable() -> str | None:
    """Why no throwaway server can be started here, or None if one can."""
    if not (PG_BIN / "initdb").exists():
        return f"no PostgreSQL server programs in {PG_BIN} (set RELAY_TEST_PG_BIN)"
    return None


class ThrowawayPostgres:
    """One private PostgreSQL server: start, stop, restart, kill connections, remove.

    Use it as a context manager (or call :meth:`close` in a ``finally``): the server
    is stopped and its directory removed even when the test fails.
    """

    def __init__(self, *, max_connections: int = 300) -> None:
        # PostgreSQL refuses to run as root: root runs it as the postgres user.
        self._as_root = os.geteuid() == 0
        self.user = "postgres" if self._as_root else pwd.getpwuid(os.geteuid()).pw_name
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="relay-throwaway-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.max_connections = max_connections
        if self._as_root:
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._as_postgres("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust",
                          "--no-sync", "-E", "UTF8", "--locale", "C.UTF-8")  # fmt: skip
        conf = {
            "port": self.port,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": max_connections,
            # Safe to skip here: the server is restarted, never the machine. Not
            # synchronous_commit, whose lost commits an immediate stop would show.
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "'64MB'",
        }
        with (self.data / "postgresql.conf").open("a") as f:
            f.writelines(f"{key} = {value}\n" for key, value in conf.items())

    # -- process control ------------------------------------------------------

    def _as_postgres(self, program: str, *args: str, timeout: float = 120.0) -> str:
        command = [str(PG_BIN / program), *args]
        if self._as_root:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}\n{self.server_log()}"
            )
        return done.stdout

    def server_log(self, tail: int = 40) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-tail:])
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        """Start the server and return once it accepts connections."""
        self._as_postgres("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                          "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clean) or ``immediate`` (as a crash; recovery on start)."""
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast", down: float = 0.0) -> None:
        """Stop (``mode``), stay down ``down`` seconds, start again."""
        self.stop(mode)
        if down:
            time.sleep(down)
        self.start()

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        """Stop the server (if running) and delete its files."""
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connecting -----------------------------------------------------------

    def url(self, dbname: str, **params: str) -> str:
        """A ``postgres://`` URL (for ``DATABASE_URL``) of database ``dbname``."""
        query = "&".join(f"{key}={value}" for key, value in params.items())
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{dbname}" + (
            f"?{query}" if query else ""
        )

    def conninfo(self, dbname: str = "postgres", **params: Any) -> str:
        """A libpq conninfo string for ``dbname``."""
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=self.port, user=self.user, dbname=dbname, **params
        )

    @contextlib.contextmanager
    def connect(self, dbname: str = "postgres") -> Iterator[psycopg.Connection]:
        """An autocommit superuser connection, closed on exit."""
        with psycopg.connect(
            self.conninfo(dbname, application_name="relay-test-admin", connect_timeout=10),
            autocommit=True,
        ) as conn:
            yield conn

    def execute(self, sql: str, params: Sequence[Any] | None = None, *, dbname: str = "postgres"):
        """Run one statement; return its rows (``[]`` when it returns none)."""
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str, template: str | None = None) -> None:
        """``CREATE DATABASE name`` (a copy of ``template`` if given)."""
        sql = psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name))
        if template:
            sql += psycopg.sql.SQL(" TEMPLATE {}").format(psycopg.sql.Identifier(template))
        with self.connect() as conn:
            conn.execute(sql)

    def terminate(self, dbname: str, where: str = "true", params: Sequence[Any] = ()) -> int:
        """``pg_terminate_backend`` every client of ``dbname`` matching ``where``.

        ``where`` is SQL over ``pg_stat_activity`` (e.g. ``"query LIKE 'LISTEN%%'"``);
        this harness's own connections are never matched. Returns how many were ended.
        """
        rows = self.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid() "
            "AND application_name NOT IN ('relay-test-admin', 'relay-ledger') "
            f"AND ({where})",
            [dbname, *params],
        )
        return int(rows[0][0])
