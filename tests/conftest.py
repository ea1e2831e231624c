"""Fixtures shared by the suite: real relayworker processes and waiting with deadlines."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Fast timings for runner subprocesses, so rescues and retries happen within a test.
FAST = {
    "HEARTBEAT_INTERVAL": 0.5,
    "RESCUE_AFTER": 2.0,
    "STAGE_INTERVAL": 0.2,
    "FETCH_INTERVAL": 0.5,
    "GRACE_PERIOD": 5.0,
}


#: Default deadlines. Generous: only a failing test ever reaches one, and the suite runs in
#: several processes at once (./dev test) on machines of 2 cores, where starting a runner
#: subprocess (Python, Django, its connections) can take many seconds.
WAIT_TIMEOUT = 30.0
STARTUP_TIMEOUT = 60.0


def wait_for(
    condition: Callable[[], Any],
    timeout: float = WAIT_TIMEOUT,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Return ``condition()``'s first truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


async def await_for(
    condition: Callable[[], Any],
    timeout: float = WAIT_TIMEOUT,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """The async twin of :func:`wait_for`, for async tests (``condition`` may be async)."""
    import asyncio
    import inspect

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def param_id(value: Any, limit: int = 80) -> str:
    """A parametrized test's id from ``repr(value)``, without memory addresses.

    pytest-xdist workers must collect the same ids: ``<object object at 0x7f...>`` differs
    from one process to the next.
    """
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))[:limit]


class RunnerProcess:
    """A ``manage.py relayworker`` subprocess whose log lines we can wait for.

    ``command`` runs another command instead (``name`` says which in failures).
    """

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        command: list[str] | None = None,
        name: str = "relayworker",
    ) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "django", "relayworker", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = STARTUP_TIMEOUT) -> str:
        def found() -> str | None:
            if self.proc.poll() is not None and not any(text in ln for ln in self.lines):
                pytest.fail(f"{self.name} exited ({self.proc.returncode}):\n{self.output}")
            return next((ln for ln in self.lines if text in ln), None)

        return wait_for(found, timeout, message=f"{text!r} in {self.name} output")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 15.0, signum: int | None = None) -> int:
        """Stop it with ``signum`` (default SIGTERM), killing it after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if signum is None else signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture(scope="session", autouse=True)
def _stop_listener_before_database_teardown(django_db_setup: None) -> Iterator[None]:
    # The test process's listener holds connections to the test database, which
    # could not be dropped while they are open.
    yield
    from django_relay.listener.notifier import stop_notifier

    stop_notifier()
    # Async tests reach the ORM through asgiref's single thread-sensitive executor,
    # whose thread keeps its own Django connection open.
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(10)


def subprocess_env(**relay_settings: Any) -> dict[str, str]:
    """The environment of a subprocess on the test database (a runner, a web server)."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "RELAY_TEST_DB_NAME": connection.settings_dict["NAME"],
        "RELAY_TEST_SETTINGS": json.dumps({**FAST, **relay_settings}),
        "PYTHONPATH": os.pathsep.join(
            [
                str(REPO_ROOT),
                str(REPO_ROOT / "example_project"),
                os.environ.get("PYTHONPATH", ""),
            ]
        ),
    }


@pytest.fixture
def start_runner(transactional_db: None) -> Iterator[Callable[..., RunnerProcess]]:
    """Start real ``relayworker`` processes on the test database; all stopped at teardown.

    ``start_runner(queues="default=10", **relay_settings)`` returns once the runner
    logged its ready line.
    """
    started: list[RunnerProcess] = []

    def start(
        queues: str = "default=10", *, extra_args: list[str] | None = None, **relay_settings: Any
    ) -> RunnerProcess:
        env = subprocess_env(**relay_settings)
        runner = RunnerProcess(["--queues", queues, *(extra_args or [])], env)
        started.append(runner)
        runner.wait_for_line("ready")
        return runner

    yield start
    for runner in started:
        runner.stop()


def server_url(dbname: str) -> str:
    """A ``DATABASE_URL`` for database ``dbname`` on the server the suite is using."""
    from urllib.parse import quote, urlencode

    db = connection.settings_dict
    userinfo = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        userinfo += ":" + quote(db["PASSWORD"], safe="")
    query = {"host": db["HOST"], "port": db["PORT"], **db.get("OPTIONS", {})}
    query = {key: value for key, value in query.items() if value}
    return f"postgres://{userinfo}@/{dbname}?{urlencode(query)}"


def drop_database(dbname: str) -> None:
    """Drop ``dbname`` (and its connections) on the suite's server, if it exists."""
    from psycopg import sql

    with connection._nodb_cursor() as cursor:
        cursor.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
