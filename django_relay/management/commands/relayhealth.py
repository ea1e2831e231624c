"""``manage.py relayhealth``: exit 0 when healthy, for liveness and readiness probes."""

from __future__ import annotations

import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_relay.health import check_health


class Command(BaseCommand):
    help = (
        "Exit 0 when the database answers, migrations are applied and (with --node or "
        "--local) that runner's heartbeat is fresh; otherwise print why and exit 1."
    )
    # The probe checks the migrations itself, and should not pay for the system checks.
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group()
        which.add_argument(
            "--node",
            help="a runner's node id, or its leading part: host name, or host:pid",
        )
        which.add_argument(
            "--local",
            action="store_true",
            help="a runner on this host (the node id starts with this host's name)",
        )
        parser.add_argument(
            "--max-age",
            type=float,
            default=None,
            help="seconds a heartbeat stays fresh (default: 3 x RELAY['HEARTBEAT_INTERVAL'], "
            "at most RELAY['RESCUE_AFTER'])",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        node = socket.gethostname() if options["local"] else options["node"]
        try:
            health = check_health(node, max_age=options["max_age"])
        except ValueError as exc:
            raise CommandError(f"--max-age: {exc}") from exc
        if not health.ok:
            raise CommandError(health.line())
        self.stdout.write(health.line())
