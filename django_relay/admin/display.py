"""How the admin shows a job to an operator: relative times, state badges, what a decision is for.

Pure formatting on a loaded ``Job`` (no queries), so a changelist page costs what it did.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext as _

from django_relay import codec
from django_relay.admin.filters import short_name
from django_relay.models import Job, JobState
from django_relay.registry import lookup

logger = logging.getLogger(__name__)

#: Longest worker summary or args text shown on the confirmation page.
SUMMARY_CHARS = 500


def duration(seconds: float) -> str:
    """A short human duration: ``"1.2 s"``, ``"40 s"``, ``"3 min"``, ``"23 h"``, ``"4 days"``."""
    seconds = abs(seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _when(value: Any) -> dt.datetime | None:
    # signal_wait keeps ISO strings (JSON); the columns are datetimes.
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    return value if isinstance(value, dt.datetime) else None


def _ago(value: Any, now: dt.datetime) -> str:
    when = _when(value)
    return duration((now - when).total_seconds()) if when else "?"


def _until(value: Any, now: dt.datetime) -> str:
    when = _when(value)
    if when is None:
        return "?"
    seconds = (when - now).total_seconds()
    if seconds < 0:
        return _("%s ago") % duration(seconds)
    return _("in %s") % duration(seconds)


def wait_text(wait: dict[str, Any], now: dt.datetime) -> str:
    """``"waiting 3 min, deadline in 23 h"`` for a job's ``signal_wait``."""
    deadline = wait.get("deadline")
    if deadline is None:
        return _("waiting %s, no deadline") % _ago(wait.get("since"), now)
    return _("waiting %(since)s, deadline %(deadline)s") % {
        "since": _ago(wait.get("since"), now),
        "deadline": _until(deadline, now),
    }


def state_text(job: Job, now: dt.datetime | None = None) -> str:
    """What the job is doing, relative to ``now``: ``"retry in 40 s"``, ``"ran 1.2 s"``."""
    now = now or timezone.now()
    wait = job.signal_wait
    if wait is not None:
        return wait_text(wait, now)
    state = job.state
    if state == JobState.SCHEDULED:
        return _("scheduled, runs %s") % _until(job.scheduled_at, now)
    if state == JobState.RETRYABLE:
        return _("retry %s") % _until(job.scheduled_at, now)
    if state == JobState.AVAILABLE:
        return _("available for %s") % _ago(job.scheduled_at, now)
    if state == JobState.EXECUTING:
        return _("running for %s") % _ago(job.attempted_at, now)
    if job.attempted_at and job.finished_at:
        ran = duration((job.finished_at - job.attempted_at).total_seconds())
        return _("%(state)s, ran %(ran)s") % {"state": job.get_state_display(), "ran": ran}
    return str(job.get_state_display())


def badge_state(job: Job) -> str:
    """The badge's CSS state: the job's state, or ``waiting`` while it awaits a signal."""
    return "waiting" if job.signal_wait is not None else str(job.state)


def state_badge(job: Job, now: dt.datetime | None = None) -> str:
    """The changelist's state cell: a coloured badge naming the state, then its times.

    The badge carries the state as text (colour is never the only cue) and the
    full timestamps stay in the title attribute for whoever needs them.
    """
    wait = job.signal_wait
    label = _("waiting for a signal") if wait else job.get_state_display()
    if wait:
        exact = _("since %(since)s, deadline %(deadline)s") % {
            "since": wait.get("since"),
            "deadline": wait.get("deadline") or _("none"),
        }
    else:
        exact = _("scheduled at %(at)s") % {"at": job.scheduled_at.isoformat()}
    return format_html(
        '<span class="relay-badge relay-{}">{}</span> <span title="{}">{}</span>',
        badge_state(job),
        label,
        exact,
        state_text(job, now),
    )


def summary(job: Job) -> str:
    """What a decision is about: the worker's ``summary(job)``, else the job's args as JSON.

    Only a worker class already registered in this process is asked (nothing is
    imported on behalf of a page view); a summary that raises falls back to the args.
    """
    klass = lookup(job.worker)
    describe = getattr(klass, "summary", None) if klass is not None else None
    if describe is not None:
        try:
            return str(describe(klass(), job))[:SUMMARY_CHARS]  # type: ignore[misc]
        except Exception:
            logger.exception("summary() of %s failed for job %s", job.worker, job.pk)
    try:
        text = json.dumps(codec.to_json(job.args), ensure_ascii=False, sort_keys=True)
    except Exception:
        text = repr(job.args)
    if len(text) > SUMMARY_CHARS:
        text = text[: SUMMARY_CHARS - 1] + "…"
    return text


def decisions(jobs: list[Job], now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """The confirmation page's rows: each job with what it is about and its wait."""
    now = now or timezone.now()
    rows = []
    for job in jobs:
        wait = job.signal_wait or {}
        rows.append(
            {
                "job": job,
                "worker": short_name(job.worker),
                "summary": summary(job),
                "wait": wait_text(wait, now),
                "since": wait.get("since"),
                "deadline": wait.get("deadline"),
            }
        )
    return rows


def replay_warning(replaying: dict[int, list[Any]]) -> str:
    """The message after retrying jobs whose recorded signals their next run reads at once."""
    parts = []
    for job_id, signals in replaying.items():
        last = json.dumps(codec.to_json(signals[-1].payload), ensure_ascii=False)
        if len(last) > 200:
            last = last[:199] + "…"
        parts.append(
            _("job %(id)s (%(count)d, last: %(last)s)")
            % {"id": job_id, "count": len(signals), "last": last}
        )
    return _(
        "These retried jobs already received signals, which their next run reads again at "
        "once instead of waiting for a new decision: %(jobs)s. To ask for a new decision, "
        "enqueue a new job."
    ) % {"jobs": "; ".join(parts)}
