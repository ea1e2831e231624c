"""A throwaway PgBouncer in transaction mode, for tests that run behind a pooler.

``start(upstream_host, upstream_port, dbname, pool_size)`` writes a config in a
temp dir, starts ``pgbouncer`` (Debian's, found on ``PATH`` or in ``/usr/sbin``) and
returns the ``(host, port)`` it listens on, once it accepts connections; ``stop()``
stops it and removes its files. One bouncer per process at a time. Clients may use
any user name (``auth_type = any``): the bouncer logs in upstream as ``user``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_state: dict[str, object] = {}


def binary() -> str | None:
    """The ``pgbouncer`` program, or None when it is not installed."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")


def unavailable() -> str | None:
    """Why no PgBouncer can be started here, or None if one can."""
    if binary() is None:
        return "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
    return None


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start(
    upstream_host: str,
    upstream_port: int,
    dbname: str,
    pool_size: int,
    *,
    listen_host: str = "127.0.0.1",
    user: str = "postgres",
    max_client_conn: int = 2000,
) -> tuple[str, int]:
    """Start PgBouncer (transaction mode) in front of ``dbname``; return ``(host, port)``.

    Args:
        upstream_host, upstream_port: the PostgreSQL server it connects to.
        dbname: the one database it serves (under the same name).
        pool_size: server connections per database/user pair.
        listen_host: the address it listens on.
        user: the role it logs in as upstream (trust auth assumed).
    """
    if _state:
        raise RuntimeError("a PgBouncer is already running in this process; stop() it first")
    program = binary()
    if program is None:
        raise RuntimeError(unavailable())
    root = Path(tempfile.mkdtemp(prefix="relay-pgbouncer-"))
    port = _free_port(listen_host)
    config = root / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"{dbname} = host={upstream_host} port={upstream_port} dbname={dbname} user={user}\n"
        "[pgbouncer]\n"
        f"listen_addr = {listen_host}\n"
        f"listen_port = {port}\n"
        f"unix_socket_dir = {root}\n"
        "auth_type = any\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        f"max_client_conn = {max_client_conn}\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {root / 'pgbouncer.log'}\n"
        f"pidfile = {root / 'pgbouncer.pid'}\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
    )
    command = [program, str(config)]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root.
        owner = pwd.getpwnam(user)
        os.chown(root, owner.pw_uid, owner.pw_gid)
        command = [program, "-u", user, str(config)]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=root
    )
    _state.update(process=process, root=root)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection((listen_host, port), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                log = log_tail()
                stop()
                raise RuntimeError(f"pgbouncer did not start:\n{log}") from None
            time.sleep(0.05)
    return listen_host, port


def pid() -> int | None:
    """The running bouncer's process id (for its CPU time), or None."""
    process = _state.get("process")
    return process.pid if isinstance(process, subprocess.Popen) else None


def log_tail(lines: int = 30) -> str:
    """The last lines of the running bouncer's log."""
    root = _state.get("root")
    if not isinstance(root, Path):
        return ""
    try:
        text = (root / "pgbouncer.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop() -> None:
    """Stop the bouncer (if running) and remove its files."""
    process = _state.pop("process", None)
    root = _state.pop("root", None)
    if isinstance(process, subprocess.Popen) and process.poll() is None:
        process.send_signal(signal.SIGINT)  # SIGINT: shut down at once
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    if isinstance(root, Path):
        shutil.rmtree(root, ignore_errors=True)
