"""The live dashboard: an admin page under Jobs, and the JSON it refreshes from.

Every number comes from the database, so any web process can serve it, in a few
cheap statements (see ``queries``): unfinished jobs per queue and state on the
partial indexes, the most recent finished jobs (at most ``FINISHED_CAP``) on the
prune index, retryable jobs per worker, the runners with their executing jobs,
and the first jobs waiting for a signal. The page updates when the job-event
websocket (``consumers.JobEventsConsumer``) says a job moved, and every few
seconds besides (the only updates where no channel layer is configured).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import django
from django.core.exceptions import PermissionDenied
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.translation import gettext as _

from django_relay import queries
from django_relay.conf import settings
from django_relay.health import default_max_age
from django_relay.models import Job

#: Seconds of history in the chart and the worker tables, and the chart's bar width.
WINDOW = 15 * 60
BUCKET = 30
#: At most this many finished jobs are read per refresh: past it, the page says
#: since when it counts instead of covering the whole window.
FINISHED_CAP = 10_000
#: Where the page looks for the job-event websocket (the route the README suggests).
EVENTS_PATH = "/ws/jobs/"
#: Jobs waiting for a signal listed on the page (the count covers all of them).
WAITING_SHOWN = 20
#: Django 6 marks the admin's breadcrumbs up as a list (``<ol>``), 5.2 as a ``<div>``.
OL_BREADCRUMBS = django.VERSION >= (6, 0)
_UNFINISHED = ("available", "executing", "scheduled", "retryable", "waiting_for_signal")
_FINISHED = ("completed", "discarded", "cancelled")


def snapshot() -> dict[str, Any]:
    """Everything the dashboard shows, JSON-ready."""
    with connections[settings.DATABASE_ALIAS].cursor() as cursor:
        counts = queries.unfinished_counts(cursor, default_max_age())
        finished = queries.finished_recent(cursor, WINDOW, BUCKET, FINISHED_CAP)
        retryable = queries.retryable_by_worker(cursor)
        runners = queries.runners(cursor)
    configured = settings.QUEUES if isinstance(settings.QUEUES, dict) else {}
    # Configured queues show even when empty.
    queues = {queue: dict.fromkeys(_UNFINISHED + _FINISHED, 0) for queue in configured}
    alive = 0
    for queue, what, n in counts:
        if queue is None:
            alive = n
        else:
            queues.setdefault(queue, dict.fromkeys(_UNFINISHED + _FINISHED, 0))[what] = n
    series: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_FINISHED, 0))
    read, oldest = 0, None
    for row in finished:  # see queries.finished_recent() for the columns
        if row[0] == "bucket":
            start, queue, state, n = row[1], row[2], row[3], row[5]
            queues.setdefault(queue, dict.fromkeys(_UNFINISHED + _FINISHED, 0))[state] += n
            series[start][state] += n
        elif row[0] == "total":
            read, oldest = row[5], row[9]
    return {
        "window": WINDOW,
        "bucket": BUCKET,
        # Capped: the finished counts cover only the jobs since ``since`` (epoch seconds).
        "since": oldest if read >= FINISHED_CAP else None,
        "queues": [{"queue": q, **c} for q, c in sorted(queues.items())],
        "series": [{"t": t, **series[t]} for t in sorted(series)],
        "runners_alive": alive,
        "runners": [_runner(row) for row in runners],
        **_workers(finished, retryable),
        **_waiting(),
    }


def _runner(row: tuple) -> dict[str, Any]:
    node, hostname, queues, started_at, age, executing = row
    slots = json.loads(queues)
    return {
        "id": node,
        "hostname": hostname,
        "queues": slots,
        "slots": sum(v for v in slots.values() if isinstance(v, int)),
        "executing": executing,
        "started_at": started_at.isoformat(),
        "heartbeat_age": round(age, 1),
        "fresh": age <= default_max_age(),
    }


def _workers(finished: list[tuple], retryable: list[tuple[str, int]]) -> dict[str, Any]:
    stats: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"finished": 0, "discarded": 0, "avg": None, "max": None, "retryable": 0}
    )
    for row in finished:
        if row[0] == "worker":
            worker, n, discarded, avg, longest = row[4:9]
            entry = stats[worker]
            entry["finished"], entry["discarded"] = n, discarded
            if avg is not None:  # None for jobs cancelled before they ever ran
                entry["avg"], entry["max"] = round(avg, 3), round(longest, 3)
    for worker, n in retryable:
        stats[worker]["retryable"] = n
    listed = [{"worker": w, **s} for w, s in stats.items()]
    slowest = sorted(
        (w for w in listed if w["avg"] is not None), key=lambda w: (-w["avg"], w["worker"])
    )
    failing = sorted(
        (w for w in listed if w["discarded"] or w["retryable"]),
        key=lambda w: (-(w["discarded"] + w["retryable"]), -w["discarded"], w["worker"]),
    )
    return {"slowest": slowest[:5], "failing": failing[:5]}


def _waiting() -> dict[str, Any]:
    waiting = Job.objects.waiting_for_signal()
    shown = list(waiting.order_by("scheduled_at", "id")[:WAITING_SHOWN])
    return {
        "waiting_total": waiting.count() if len(shown) == WAITING_SHOWN else len(shown),
        "waiting": [
            {
                "id": job.pk,
                "worker": job.worker,
                "queue": job.queue,
                "since": (job.signal_wait or {}).get("since"),
                "deadline": (job.signal_wait or {}).get("deadline"),
                "url": reverse("admin:django_relay_job_change", args=[job.pk]),
            }
            for job in shown
        ],
    }


def _check(model_admin: Any, request: HttpRequest) -> None:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied


def page(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """The dashboard page (staff with the view permission on jobs)."""
    _check(model_admin, request)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Relay dashboard"),
        "opts": Job._meta,
        "snapshot": snapshot(),
        "events_path": EVENTS_PATH,
        "data_url": reverse("admin:django_relay_dashboard_data"),
        "changelist_url": reverse("admin:django_relay_job_changelist"),
        "can_signal": model_admin.has_signal_permission(request),
        "ol_breadcrumbs": OL_BREADCRUMBS,
        "window_minutes": WINDOW // 60,
    }
    return TemplateResponse(request, "admin/django_relay/dashboard.html", context)


def data(model_admin: Any, request: HttpRequest) -> JsonResponse:
    """The dashboard's numbers as JSON, for its refreshes."""
    _check(model_admin, request)
    return JsonResponse(snapshot())


def urls(model_admin: Any) -> list[URLPattern]:
    """The dashboard's URLs, to add to the job admin's (``.../job/dashboard/``)."""
    site = model_admin.admin_site
    return [
        path(
            "dashboard/",
            site.admin_view(lambda request: page(model_admin, request)),
            name="django_relay_dashboard",
        ),
        path(
            "dashboard/data/",
            site.admin_view(lambda request: data(model_admin, request)),
            name="django_relay_dashboard_data",
        ),
    ]
