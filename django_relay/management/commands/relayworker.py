"""``manage.py relayworker``: run jobs until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import signal
import threading
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_relay import signal_handlers
from django_relay.conf import settings
from django_relay.engine.runner import Runner
from django_relay.listener import probe
from django_relay.listener.notifier import get_notifier
from django_relay.registry import validate_queue

_DIGITS = re.compile(r"[0-9]+")


def parse_queues(text: str) -> dict[str, int]:
    """``"default=10,priority=5"`` -> ``{"default": 10, "priority": 5}``.

    Raises:
        ValueError: a clear message for a malformed entry.
    """
    queues: dict[str, int] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, sep, limit = entry.partition("=")
        name = validate_queue(name.strip())
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
        if not sep or not _DIGITS.fullmatch(limit.strip()) or int(limit) < 1:
            raise ValueError(f"{entry!r}: write queue=concurrency with a concurrency >= 1")
        if name in queues:
            raise ValueError(f"queue {name!r} is given twice")
        queues[name] = int(limit)
    if not queues:
        raise ValueError("no queues given")
    return queues


def _settings_queues(queues: object) -> dict[str, int]:
    # call_command() skips the system checks (E006), so validate here too: int("3")
    # or a concurrency of 0 would otherwise start a runner that never runs a job.
    if not isinstance(queues, dict) or not queues:
        raise ValueError("must be a non-empty dict of name -> concurrency")
    for name, limit in queues.items():
        validate_queue(name)
        if type(limit) is not int or limit < 1:
            raise ValueError(f"queue {name!r}: concurrency must be an int >= 1, not {limit!r}")
    return dict(queues)


class Command(BaseCommand):
    help = "Run django_relay jobs until SIGTERM/SIGINT (a second SIGINT exits at once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queues",
            help="name=concurrency pairs, e.g. default=10,priority=5 (default: RELAY['QUEUES'])",
        )
        parser.add_argument(
            "--log-level",
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            default=None,
            help="level of the django_relay logger (default: as LOGGING sets it); WARNING "
            "drops the per-job INFO lines, which cost throughput at thousands of jobs/s; "
            "DEBUG adds a line per enqueued and started job",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="serve Prometheus metrics on this port at /metrics (needs the prometheus "
            "extra; 0 picks a free port, printed in the log)",
        )
        parser.add_argument(
            "--metrics-host",
            default="0.0.0.0",
            help="address the metrics server listens on (default: all, 0.0.0.0)",
        )
        parser.add_argument(
            "--grace-period",
            type=float,
            default=None,
            help="seconds running jobs get to finish on shutdown (default: RELAY['GRACE_PERIOD'])",
        )

    def run_from_argv(self, argv: list[str]) -> None:
        # A process of its own (not call_command() inside another program): what it
        # loaded to start (Django, the apps, the workers' modules) lives as long as
        # it does, so keep it out of the garbage collector's sight. Otherwise every
        # full collection, which the jobs' own objects set off, walks all of it.
        gc.collect()
        gc.freeze()
        super().run_from_argv(argv)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["log_level"]:
            logging.getLogger("django_relay").setLevel(options["log_level"])
            signal_handlers.connect()  # DEBUG lines need their receivers
        try:
            if options["queues"]:
                queues = parse_queues(options["queues"])
            else:
                queues = _settings_queues(settings.QUEUES)
        except ValueError as exc:
            where = "--queues" if options["queues"] else "RELAY['QUEUES']"
            raise CommandError(f"{where}: {exc}") from exc
        if options["metrics_port"] is not None:
            self._serve_metrics(options["metrics_host"], options["metrics_port"])
        runner = Runner(queues)
        # --skip-checks (and call_command(), which skips checks) skips the probe too.
        asyncio.run(
            self._serve(
                runner, options["grace_period"], probe_listen=not options.get("skip_checks")
            )
        )
        # Idle job threads leave as soon as their pool shuts down, just after the loop
        # ends: give them a moment, so only a thread still running a job counts.
        deadline = time.monotonic() + 1.0
        for thread in threading.enumerate():
            if thread.name.startswith("relay-job"):
                thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.name.startswith("relay-job") and t.is_alive() for t in threading.enumerate()):
            # A sync job that ignored the grace period still holds a thread; its job
            # was given back, so leave without waiting for it.
            logging.shutdown()
            os._exit(1 if runner.failed else 0)
        if runner.failed:
            raise CommandError("the runner stopped after an internal error (see the log)")

    def _serve_metrics(self, host: str, port: int) -> None:
        try:
            from django_relay import metrics
        except ImportError as exc:
            raise CommandError(
                f"--metrics-port needs prometheus-client ({exc}): "
                "pip install 'django-relay[prometheus]'"
            ) from exc
        try:
            server = metrics.serve(port, host)
        except OSError as exc:
            raise CommandError(f"--metrics-port: cannot listen on {host}:{port}: {exc}") from exc
        metrics.connect()
        line = f"metrics on http://{host}:{server.server_port}/metrics"
        logging.getLogger("django_relay").info("%s", line)
        if not logging.getLogger("django_relay").isEnabledFor(logging.INFO):
            self.stdout.write(line)

    async def _serve(
        self, runner: Runner, grace: float | None, *, probe_listen: bool = True
    ) -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if stopping.is_set() and signum == signal.SIGINT:
                os._exit(1)  # a second Ctrl-C: leave now; the lifeline rescues our jobs
            stopping.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)

        def on_ready() -> None:
            # The ready line goes to the log at INFO; say it here when the log won't.
            if not logging.getLogger("django_relay").isEnabledFor(logging.INFO):
                self.stdout.write(runner.ready_line())
                self.stdout.flush()

        if probe_listen:
            await _probe_listen()
        await runner.run(stopping, grace=grace, on_ready=on_ready)


async def _probe_listen() -> None:
    """Refuse to start when LISTEN cannot receive (the check django_relay.E012 says why).

    ``relayworker --skip-checks`` starts anyway: its listener logs an ERROR and the
    runner claims every ``FETCH_INTERVAL`` (a deliberate polling-only set-up).

    A runner whose listener hears nothing claims only every ``FETCH_INTERVAL``,
    and its relays wait for their backup poll: slow, silently. A database that
    cannot be reached yet is not refused: the runner waits for it as usual, and
    its listener probes once connected (an ERROR in the log if LISTEN fails).
    """
    try:
        await probe.probe()
    except probe.ListenBroken as exc:
        raise CommandError(f"{exc} (django_relay.E012)") from None
    except Exception as exc:
        logging.getLogger("django_relay").warning(
            "the LISTEN probe could not run (%s); the listener probes once connected", exc
        )
    else:
        get_notifier().probe_ok.set()
