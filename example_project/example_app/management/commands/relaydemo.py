"""``manage.py relaydemo``: the demo web page, or (``--check``) its scenarios headless.

It migrates, creates the demo admin login, starts ``relayworker`` runners and (unless
``--check``) an ASGI server with websockets and static files, then prints the page's URL.
Ctrl-C stops everything: the runners and the server get SIGTERM and are waited for.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from django_relay.listener.notifier import stop_notifier

from ... import scenarios

#: The demo's admin login, printed at start-up (a local demo: never deploy it).
DEMO_USER = DEMO_PASSWORD = "demo"

EXAMPLE_DIR = Path(__file__).resolve().parents[3]


class Command(BaseCommand):
    help = (
        "Serve the demo page (relays, an approval workflow, retries, cancellation, live job "
        "events) with its own runners; --check runs the same scenarios without a browser."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help="Run every scenario headless, print each outcome, exit non-zero if one fails.",
        )
        parser.add_argument("--host", default="127.0.0.1", help="Interface to serve on.")
        parser.add_argument("--port", type=int, default=8000, help="Port to serve on.")
        parser.add_argument(
            "--runners", type=int, default=2, help="relayworker processes to start (default 2)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.children: list[subprocess.Popen[str]] = []
        self.served = False
        # Ctrl-C reaches only this process (the children have their own session): it
        # stops them in order. SIGTERM does the same. (SIGINT too is set: a shell starts
        # a background job with it ignored.)
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            self._run(options)
        except KeyboardInterrupt:
            self.stdout.write("\nStopping…")
        finally:
            self._stop_children()
            # This process's listener, before the embedded server (if any) stops at exit.
            stop_notifier()

    def _run(self, options: dict[str, Any]) -> None:
        if not options["check"]:
            _ensure_port_free(options["host"], options["port"])
        db = connection.settings_dict
        self.stdout.write(f"Database: {db['NAME']!r} on {db['HOST'] or 'localhost'}")
        call_command("migrate", verbosity=0)
        self.stdout.write("Migrated.")
        for number in range(1, options["runners"] + 1):
            self._start_runner(number)
        if options["check"]:
            failed = asyncio.run(self._check())
            if failed:
                raise CommandError(f"{failed} scenario(s) failed.")
            self.stdout.write(self.style.SUCCESS("All scenarios passed."))
            return
        self._create_demo_user()
        self._serve(options["host"], options["port"])

    # -- processes ------------------------------------------------------------------

    def _spawn(self, args: list[str]) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, *args],
            cwd=EXAMPLE_DIR,
            # DATABASE_URL is in the environment (settings put the embedded server's there),
            # so every child reaches the same server.
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE,
                "PYTHONPATH": os.pathsep.join(
                    filter(
                        None, [str(EXAMPLE_DIR.parent), str(EXAMPLE_DIR), os.getenv("PYTHONPATH")]
                    )
                ),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.children.append(child)
        return child

    def _start_runner(self, number: int) -> None:
        runner = self._spawn(
            ["-m", "django", "relayworker", "--queues", "default=20", "--log-level", "WARNING"]
        )
        assert runner.stdout is not None
        for line in runner.stdout:
            self.stdout.write(f"runner {number}: {line.rstrip()}")
            if "ready" in line:
                break
        else:
            code = runner.wait()
            raise CommandError(f"relayworker {number} exited ({code}) before it was ready.")
        _forward(runner, f"runner {number}: ", self.stdout.write)

    def _serve(self, host: str, port: int) -> None:
        server = self._spawn(
            [
                "-m",
                "uvicorn",
                "example_project.asgi:application",
                "--host",
                host,
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
        )
        self.served = True
        _forward(server, "server: ", self.stdout.write)
        deadline = time.monotonic() + 30
        while not _answers(host, port):
            if server.poll() is not None:
                raise CommandError(
                    f"The ASGI server exited ({server.returncode}); is the demo extra "
                    "installed? pip install -e '.[demo]'"
                )
            if time.monotonic() > deadline:
                raise CommandError(f"The ASGI server did not listen on {host}:{port} in 30 s.")
            time.sleep(0.1)
        url = f"http://{host}:{port}/"
        self.stdout.write(
            self.style.SUCCESS(f"\nThe demo is at {url}")
            + f"\nAdmin login: {DEMO_USER} / {DEMO_PASSWORD} ({url}admin/)"
            + "\nCtrl-C stops the server and the runners.\n"
        )
        while True:
            for child in self.children:
                if child.poll() is not None:
                    raise CommandError(f"{child.args[2]} exited ({child.returncode}).")
            time.sleep(0.5)

    def _stop_children(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        if self.children:
            self.stdout.write(
                "Stopped the runners and the server." if self.served else "Stopped the runners."
            )

    def _create_demo_user(self) -> None:
        user, _ = get_user_model().objects.get_or_create(username=DEMO_USER)
        user.is_staff = user.is_superuser = True
        user.set_password(DEMO_PASSWORD)
        user.save()

    # -- --check ------------------------------------------------------------------------

    async def _check(self) -> int:
        checks: list[tuple[str, Callable[[], Awaitable[Any]], Callable[[Any], str | None]]] = [
            ("relay a calculation", lambda: scenarios.calculate(10, 32), _calculated),
            ("three relays at once", scenarios.order_checks, _checked),
            ("an order, approved", lambda: scenarios.approval_flow("approved"), _approved),
            ("an order, declined", lambda: scenarios.approval_flow("declined"), _declined),
            ("a job that fails and is retried", scenarios.retried, _retried),
            ("a running job, cancelled", scenarios.cancelled, _cancelled),
        ]
        failed = 0
        for name, scenario, describe in checks:
            try:
                outcome = await scenario()
                summary = describe(outcome)
                ok = summary is not None
                summary = summary or f"unexpected outcome {outcome!r}"
            except Exception as exc:
                ok, summary = False, f"{type(exc).__name__}: {exc}"
            failed += not ok
            status = self.style.SUCCESS("ok  ") if ok else self.style.ERROR("FAIL")
            self.stdout.write(f"{status} {name}: {summary}")
        return failed


# Each says what a scenario's outcome shows, or None if it is not what it should be.


def _calculated(r: dict[str, Any]) -> str | None:
    return f"10 + 32 = {r['result']} in {r['ms']} ms" if r["result"] == 42 else None


def _checked(r: dict[str, Any]) -> str | None:
    names = [c["name"] for c in r["checks"]]
    timings = ", ".join(f"{c['name']} {c['ms']} ms" for c in r["checks"])
    ok = names == ["inventory", "fraud", "shipping"]
    return f"{timings}; all three in {r['ms']} ms" if ok else None


def _approved(r: dict[str, Any]) -> str | None:
    ok = r["state"] == "completed" and r["charge"]["charged"] == "12.50"
    return f"approved, then charged {r['charge']['charged']} in {r['ms']} ms" if ok else None


def _declined(r: dict[str, Any]) -> str | None:
    states = [step["state"] for step in r["steps"]]
    ok = r["state"] == "failed" and states == ["cancelled", "cancelled"]
    return f"{r['reason']}; approval and charge cancelled" if ok else None


def _retried(r: dict[str, Any]) -> str | None:
    ok = r["attempts"] == 3 and len(r["errors"]) == 2
    return f"failed twice, completed on attempt {r['attempts']} in {r['ms']} ms" if ok else None


def _cancelled(r: dict[str, Any]) -> str | None:
    return f"{r['error']}; the waiter knew in {r['ms']} ms" if r["state"] == "cancelled" else None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _forward(child: subprocess.Popen[str], prefix: str, write: Callable[[str], Any]) -> None:
    # Keep reading a child's output, so that it never blocks on a full pipe.
    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            write(prefix + line.rstrip())

    threading.Thread(target=read, daemon=True).start()


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _ensure_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        # As uvicorn binds: a port whose last connections linger in TIME_WAIT (the demo
        # was stopped a moment ago) is free to listen on.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CommandError(f"Cannot serve on {host}:{port} ({exc}); pass --port.") from None
