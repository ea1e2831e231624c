"""A throwaway PgBouncer in transaction mode, in front of a PostgreSQL server, for tests.

Started in a temp dir on a free port (as the ``postgres`` user when run as root, or as
the owner of the server's Unix socket directory, which only its owner may enter:
PgBouncer refuses to run as root), with ``auth_type = trust`` and a small pool,
so that server connections are shared between clients as they are in production;
always stopped by :meth:`PgBouncer.close` (or the context manager). The program
is looked for on PATH and in ``/usr/sbin`` (Debian's ``pgbouncer`` package).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.ports import free_port


def program() -> str | None:
    """The pgbouncer executable, or None."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")


def unavailable() -> str | None:
    """Why no PgBouncer can be started here, or None if one can."""
    if program() is None:
        return "pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)"
    return None


class PgBouncer:
    """PgBouncer in ``pool_mode = transaction`` forwarding every database to one server.

    Args:
        host: the server's host (an address or a Unix socket directory).
        port: the server's port.
        user: the user clients connect as (trusted, no password).
        pool_size: server connections per database and user (``default_pool_size``).
        listen_addr: the address PgBouncer listens on (a bridge's, for clients in
            network namespaces); its port is a free one on 127.0.0.1.
    """

    def __init__(
        self, host: str, port: int, user: str, *, pool_size: int = 4, listen_addr: str = "127.0.0.1"
    ) -> None:
        self.user = user
        self.host = listen_addr
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="relay-pgbouncer-"))
        self.log = self.root / "pgbouncer.log"
        (self.root / "users.txt").write_text(f'"{user}" ""\n')
        conf = {
            "listen_addr": listen_addr,
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": self.root / "users.txt",
            "admin_users": user,  # SHOW POOLS/SERVERS, for the tests that count
            "pool_mode": "transaction",
            "default_pool_size": pool_size,
            "min_pool_size": 0,
            "reserve_pool_size": 0,
            "max_client_conn": 2000,
            "logfile": self.log,
            "pidfile": self.root / "pgbouncer.pid",
            # Startup parameters PgBouncer refuses unless told to ignore them (django_relay
            # sends none; a DATABASES OPTIONS "options" or another driver might).
            "ignore_startup_parameters": "extra_float_digits,options,statement_timeout",
        }
        lines = ["[databases]", f"* = host={host} port={port}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in conf.items()]
        self._as_root = os.geteuid() == 0
        if self._as_root:  # pgbouncer refuses root: it switches to this user itself
            # The embedded server listens on a socket directory of its own user's.
            pw = pwd.getpwuid(os.stat(host).st_uid) if os.path.isdir(host) else None
            if pw is None or pw.pw_uid == 0:
                pw = pwd.getpwnam("postgres")
            lines.append(f"user = {pw.pw_name}")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chown(self.root / "users.txt", pw.pw_uid, pw.pw_gid)
        (self.root / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start PgBouncer and return once it accepts connections."""
        exe = program()
        assert exe is not None, unavailable()
        self.proc = subprocess.Popen(
            [exe, str(self.root / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.conninfo("pgbouncer"), autocommit=True):
                    return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start:\n{self.server_log()}") from None
                time.sleep(0.05)

    def server_log(self, tail: int = 40) -> str:
        """The last lines of PgBouncer's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-tail:])
        except FileNotFoundError:
            return ""

    def conninfo(self, dbname: str, **params: Any) -> str:
        """A libpq conninfo string for ``dbname`` through PgBouncer."""
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, user=self.user, dbname=dbname, **params
        )

    def url(self, dbname: str) -> str:
        """A ``postgres://`` URL (for ``DATABASE_URL``) of ``dbname`` through PgBouncer."""
        return f"postgres://{self.user}@{self.host}:{self.port}/{dbname}"

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW what`` on the admin console (``pools``, ``servers``, ``clients``...)."""
        with (
            psycopg.connect(self.conninfo("pgbouncer"), autocommit=True) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(f"SHOW {what}", prepare=False)
            names = [column.name for column in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        """Stop PgBouncer (if running) and delete its files."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)  # immediate shutdown: no waiting for clients
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
