"""Health checks for container probes: ``manage.py relayhealth`` and the JSON view.

A check is healthy when the database answers, every migration is applied and,
when a runner is named, that runner's heartbeat is fresh. Each part reports a
one-line reason, so a failing probe says what to fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from django.db import DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor

from django_relay import queries
from django_relay.conf import settings


@dataclass(frozen=True, slots=True)
class Check:
    """One part of a health check: its name, whether it passed, and why."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Health:
    """The outcome of :func:`check_health`."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return all(check.ok for check in self.checks)

    def line(self) -> str:
        """``"ok: ..."``, or ``"unhealthy: ..."`` naming the failed checks first."""
        failed = [c for c in self.checks if not c.ok]
        shown = failed or self.checks
        return f"{'ok' if self.ok else 'unhealthy'}: " + "; ".join(
            f"{c.name}: {c.detail}" for c in shown
        )

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready ``{"status", "checks": {name: {"ok", "detail"}}}``."""
        return {
            "status": "ok" if self.ok else "unhealthy",
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks},
        }


def default_max_age() -> float:
    """Three heartbeat periods, and never more than ``RESCUE_AFTER``."""
    return float(min(3 * settings.HEARTBEAT_INTERVAL, settings.RESCUE_AFTER))


def check_health(node: str | None = None, *, max_age: float | None = None) -> Health:
    """Check the database, the migrations and, if ``node`` is given, that runner.

    Args:
        node: a runner's node id, or a leading part of one (its host name, or
            ``host:pid``); healthy when at least one runner it names has a
            heartbeat younger than ``max_age``.
        max_age: seconds; default :func:`default_max_age`.

    Returns:
        The checks, each with a reason; stops at the first that makes the rest moot.

    Raises:
        ValueError: ``max_age`` is not a positive number.
    """
    if max_age is not None and not (0 < max_age < math.inf):
        raise ValueError(f"max_age must be a positive number of seconds, not {max_age!r}")
    connection = connections[settings.DATABASE_ALIAS]
    checks: list[Check] = []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return Health([Check("database", False, _first_line(exc))])
    checks.append(Check("database", True, "answers"))
    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as exc:
        return Health([*checks, Check("migrations", False, _first_line(exc))])
    if plan:
        names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in plan[:3])
        more = f" and {len(plan) - 3} more" if len(plan) > 3 else ""
        checks.append(Check("migrations", False, f"{len(plan)} unapplied: {names}{more}"))
        return Health(checks)
    checks.append(Check("migrations", True, "applied"))
    if node is not None:
        checks.append(_check_runner(node, default_max_age() if max_age is None else max_age))
    return Health(checks)


def _check_runner(node: str, max_age: float) -> Check:
    connection = connections[settings.DATABASE_ALIAS]
    try:
        with connection.cursor() as cursor:
            runners = queries.runner_heartbeats(cursor, node)
    except DatabaseError as exc:
        return Check("runner", False, _first_line(exc))
    if not runners:
        return Check("runner", False, f"no runner named {node!r} (not started, or stopped)")
    node_id, age = runners[0]  # the freshest
    if age > max_age:
        return Check("runner", False, f"{node_id} last heartbeat {age:.1f}s ago (max {max_age:g}s)")
    return Check("runner", True, f"{node_id} heartbeat {age:.1f}s ago")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
