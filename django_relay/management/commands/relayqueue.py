"""``manage.py relayqueue``: pause, resume, scale, limit or list queues while runners run."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_relay import queues
from django_relay.models import Job, JobState, Queue


class Command(BaseCommand):
    help = (
        "Control queues on every running relayworker (or one node) without a restart: "
        "pause NAME, resume NAME, scale NAME N, limit NAME [--global N] [--rate N --per S] "
        "[--partition worker|args:KEY], list."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["pause", "resume", "scale", "limit", "list"])
        parser.add_argument("name", nargs="?", help="the queue")
        parser.add_argument("limit", nargs="?", type=int, help="scale: jobs at once per runner")
        parser.add_argument(
            "--node", help="pause/resume/scale one runner only: its node id or its host name"
        )
        parser.add_argument("--global", dest="global_limit", type=int, default=None)
        parser.add_argument("--rate", dest="rate_limit", type=int, default=None)
        parser.add_argument("--per", dest="rate_period", type=float, default=None)
        parser.add_argument("--partition", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        action, name = options["action"], options["name"]
        if action == "list":
            self._list()
            return
        if not name:
            raise CommandError(f"relayqueue {action} needs a queue name")
        try:
            if action == "pause":
                queues.pause_queue(name, node=options["node"])
            elif action == "resume":
                queues.resume_queue(name, node=options["node"])
            elif action == "scale":
                if options["limit"] is None:
                    raise CommandError("relayqueue scale NAME N: give N")
                queues.scale_queue(name, options["limit"], node=options["node"])
            else:
                queues.limit_queue(
                    name,
                    global_limit=options["global_limit"],
                    rate_limit=options["rate_limit"],
                    rate_period=options["rate_period"],
                    partition=options["partition"],
                )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        where = f" on {options['node']}" if options["node"] else ""
        self.stdout.write(f"queue {name}: {action} done{where}")

    def _list(self) -> None:
        for queue in Queue.objects.order_by("name"):
            jobs = Job.objects.filter(queue=queue.name)
            available = jobs.filter(state=JobState.AVAILABLE).count()
            executing = jobs.filter(state=JobState.EXECUTING).count()
            state = "paused" if queue.paused else "running"
            if queue.paused_nodes:
                state += f" (paused on {', '.join(queue.paused_nodes)})"
            rate = f"{queue.rate_limit}/{queue.rate_period:g}s" if queue.rate_limit else "-"
            self.stdout.write(
                f"{queue.name}: {state}; local {queue.local_limit or 'as started'}"
                f", global {queue.global_limit or '-'}"
                f", rate {rate}"
                f"{f', by {queue.partition}' if queue.partition else ''}"
                f"; {available} available, {executing} executing"
            )
