"""Periodic jobs: ``RELAY["PERIODIC"]`` entries, each enqueued once per cron tick.

Every runner runs the scheduler (there is no leader to lose). A tick is taken
by an upsert on the entry's ``PeriodicEntry`` row that only moves ``last_tick``
forward: of any number of runners, exactly one wins each tick and enqueues its
job in the same transaction. A runner considers only the latest tick at or
before its clock's "now", so one that was down (or every one of them) catches
up the last missed tick only, never a backlog; an entry that never ran does not
catch up ticks from before the runner started.

Cron expressions are parsed by ``cronsim`` (5 fields, or 6 with seconds first),
in the entry's time zone (default ``TIME_ZONE``), so daylight saving time moves
ticks as a wall clock does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.db import connections, transaction

from django_relay import queries
from django_relay.conf import settings
from django_relay.enqueue import enqueue_many, new
from django_relay.models import Job
from django_relay.registry import resolve

#: The options an entry may give, as ``new()`` takes them.
OPTIONS = frozenset({"queue", "priority", "max_attempts", "meta", "unique"})


@dataclass(frozen=True, slots=True)
class Entry:
    """One periodic job: run ``worker`` with ``args`` at every tick of ``cron``."""

    name: str
    cron: str
    worker: str
    args: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    timezone: str = "UTC"

    def _iter(self, moment: dt.datetime, reverse: bool) -> Any:
        from cronsim import CronSim

        return CronSim(self.cron, moment.astimezone(ZoneInfo(self.timezone)), reverse=reverse)

    def last_tick(self, now: dt.datetime) -> dt.datetime:
        """The latest tick at or before ``now``."""
        # cronsim's reverse iteration starts strictly before a whole second.
        start = now + dt.timedelta(microseconds=1) if now.microsecond == 0 else now
        return next(self._iter(start, reverse=True)).astimezone(dt.UTC)

    def next_tick(self, now: dt.datetime) -> dt.datetime:
        """The first tick after ``now``."""
        return next(self._iter(now, reverse=False)).astimezone(dt.UTC)

    def new_job(self, **meta: Any) -> Job:
        """An unsaved job for this entry; ``meta`` says which tick (or "run now")."""
        options = dict(self.options)
        options["meta"] = {**options.get("meta", {}), "periodic": self.name, **meta}
        return new(resolve(self.worker), self.args, **options)


def parse(raw: object) -> list[Entry]:
    """The entries of ``RELAY["PERIODIC"]``, checked (the system check reports the errors).

    Raises:
        ValueError: what is wrong, naming the entry and the option.
    """
    if not isinstance(raw, list | tuple):
        raise ValueError("RELAY['PERIODIC'] must be a list of dicts")
    entries, names = [], set()
    for index, item in enumerate(raw):
        where = f"RELAY['PERIODIC'][{index}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be a dict with 'cron' and 'worker'")
        unknown = set(item) - {"name", "cron", "worker", "args", "options", "timezone"}
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}")
        cron, worker = item.get("cron"), item.get("worker")
        if not isinstance(worker, str):
            raise ValueError(f"{where}['worker'] must be a dotted path to a @worker class")
        name = item.get("name", worker)
        if not isinstance(name, str) or not 0 < len(name) <= 255:
            raise ValueError(f"{where}['name'] must be a string of 1-255 characters")
        if name in names:
            raise ValueError(f"{where}: the name {name!r} is used twice; give each a 'name'")
        names.add(name)
        zone = item.get("timezone") or django_settings.TIME_ZONE or "UTC"
        try:
            ZoneInfo(zone)
        except Exception:
            raise ValueError(f"{where}['timezone']: unknown time zone {zone!r}") from None
        options = item.get("options") or {}
        if not isinstance(options, Mapping) or set(options) - OPTIONS:
            raise ValueError(f"{where}['options'] may only have {sorted(OPTIONS)}")
        _check_cron(cron, where)
        entry = Entry(name, str(cron), worker, item.get("args") or {}, options, zone)
        try:
            entry.new_job(tick="check")  # the worker exists; args and options are valid
        except Exception as exc:
            raise ValueError(f"{where}: {exc}") from None
        entries.append(entry)
    return entries


def _check_cron(cron: object, where: str) -> None:
    try:
        from cronsim import CronSim, CronSimError
    except ImportError:
        raise ValueError(
            "periodic jobs need the cronsim package: pip install 'django-relay[periodic]'"
        ) from None
    if not isinstance(cron, str):
        raise ValueError(f"{where}['cron'] must be a cron expression string")
    try:
        CronSim(cron, dt.datetime.now(dt.UTC))
    except CronSimError as exc:
        raise ValueError(
            f"{where}['cron'] {cron!r} is not a valid cron expression: {exc}"
        ) from None


def entries() -> list[Entry]:
    """The configured entries (see :func:`parse`)."""
    return parse(settings.PERIODIC)


def due(
    entry: Entry, now: dt.datetime, since: dt.datetime, last: dt.datetime | None
) -> dt.datetime | None:
    """The tick to enqueue at ``now``, if any (a pure decision).

    Args:
        entry: The entry.
        now: The scheduler's clock.
        since: When this scheduler started.
        last: The entry's last enqueued tick, None if it never ran.
    """
    tick = entry.last_tick(now)
    if last is not None and tick <= last:
        return None
    if last is None and tick < since:
        return None  # never ran: no catch-up from before we started
    return tick


def enqueue_due(
    now: dt.datetime, since: dt.datetime, found: Sequence[Entry] | None = None
) -> list[Job]:
    """Enqueue the jobs of the ticks due at ``now``; return those this caller won.

    Safe to call from any number of processes at once: each tick is enqueued once.
    """
    entries_ = list(entries() if found is None else found)
    if not entries_:
        return []
    alias = settings.DATABASE_ALIAS
    with connections[alias].cursor() as cursor:
        last = dict(queries.periodic_ticks(cursor, [e.name for e in entries_]))
    won = []
    for entry in entries_:
        tick = due(entry, now, since, last.get(entry.name))
        if tick is None:
            continue
        job = entry.new_job(tick=tick.isoformat())
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            if not queries.take_tick(cursor, entry.name, tick):
                continue  # another runner took it
            enqueue_many([job])
            queries.record_tick_job(cursor, entry.name, job.pk)
        won.append(job)
    return won


async def aenqueue_due(
    now: dt.datetime, since: dt.datetime, found: Sequence[Entry] | None = None
) -> list[Job]:
    """See enqueue_due()."""
    return await sync_to_async(enqueue_due)(now, since, found)


def run_now(name: str) -> Job:
    """Enqueue entry ``name``'s job now, outside its schedule (the admin's "run now").

    Raises:
        KeyError: no entry has that name.
    """
    for entry in entries():
        if entry.name == name:
            [job] = enqueue_many([entry.new_job(manual=True)])
            return job
    raise KeyError(f"no periodic entry is named {name!r}")
