"""Queue control at run time: pause, resume, scale and limit a queue on every runner.

Each call updates the queue's ``Queue`` row (inside the caller's transaction, if
one is open); a trigger sends a NOTIFY and every runner applies the change at
once, without a restart. A paused queue keeps accepting jobs; its running jobs
finish; resuming it drains what waited.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections, transaction

from django_relay import queries
from django_relay.conf import settings
from django_relay.registry import is_seconds, validate_queue

__all__ = [
    "apause_queue",
    "aresume_queue",
    "ascale_queue",
    "limit_queue",
    "pause_queue",
    "resume_queue",
    "scale_queue",
    "validate_limits",
]


def _change(statement: str, **params: Any) -> None:
    params["name"] = validate_queue(params["name"])
    node = params.get("node")
    if node is not None and (not isinstance(node, str) or not node or len(node) > 128):
        raise ValueError(f"node must be a node id or a host name, not {node!r}")
    alias = settings.DATABASE_ALIAS
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        queries.change_queue(cursor, statement, params)


def pause_queue(name: str, *, node: str | None = None) -> None:
    """Stop starting jobs of queue ``name``, on every runner or on ``node`` only.

    ``node`` is a runner's node id or a host name (every runner on that host).
    Jobs keep being accepted; running ones finish.

    Raises:
        ValueError: a bad queue name or node.
    """
    _change(queries.PAUSE_QUEUE, name=name, node=node, paused=True)


def resume_queue(name: str, *, node: str | None = None) -> None:
    """Start jobs of queue ``name`` again (everywhere, or lift a pause of ``node``).

    Raises:
        ValueError: a bad queue name or node.
    """
    _change(queries.PAUSE_QUEUE, name=name, node=node, paused=False)


def scale_queue(name: str, limit: int, *, node: str | None = None) -> None:
    """Run up to ``limit`` jobs of queue ``name`` at once per runner (or on ``node``).

    Without ``node`` it applies to every runner and replaces per-node values.

    Raises:
        ValueError: a bad queue name, node, or a limit that is not an int >= 1.
    """
    if type(limit) is not int or limit < 1:
        raise ValueError(f"limit must be an int >= 1, not {limit!r}")
    _change(queries.SCALE_QUEUE, name=name, node=node, limit=limit)


def validate_limits(
    *,
    global_limit: object = None,
    rate_limit: object = None,
    rate_period: object = None,
    partition: object = "",
) -> queries.QueueLimits:
    """The limits, checked.

    Raises:
        ValueError: naming the option that is wrong.
    """
    for option, value in (("global_limit", global_limit), ("rate_limit", rate_limit)):
        if value is not None and (type(value) is not int or value < 1):
            raise ValueError(f"{option} must be an int >= 1 or None, not {value!r}")
    if (rate_limit is None) != (rate_period is None):
        raise ValueError("rate_limit and rate_period go together: give both or neither")
    if rate_period is not None and (not is_seconds(rate_period) or float(rate_period) <= 0):  # type: ignore[arg-type]
        raise ValueError(f"rate_period must be a positive number of seconds, not {rate_period!r}")
    partition = partition or ""
    if not isinstance(partition, str) or not (
        partition in ("", "worker") or (partition.startswith("args:") and len(partition) > 5)
    ):
        raise ValueError(f"partition must be '', 'worker' or 'args:KEY', not {partition!r}")
    if len(partition) > 128:
        raise ValueError("partition is longer than 128 characters")
    return queries.QueueLimits(
        global_limit,  # type: ignore[arg-type]
        rate_limit,  # type: ignore[arg-type]
        float(rate_period) if rate_period is not None else None,  # type: ignore[arg-type]
        partition,
    )


def limit_queue(
    name: str,
    *,
    global_limit: int | None = None,
    rate_limit: int | None = None,
    rate_period: float | None = None,
    partition: str = "",
) -> None:
    """Set queue ``name``'s limits across every runner (an option left out is cleared).

    Args:
        global_limit: At most this many of its jobs executing at once, on all runners.
        rate_limit: At most this many of its jobs started per ``rate_period`` seconds
            (a sliding window), on all runners.
        rate_period: The rate limit's window, in seconds.
        partition: Count separately per ``"worker"``, or per value of an args key
            (``"args:account_id"``); ``""``: the whole queue.

    Raises:
        ValueError: naming the option that is wrong; nothing is stored.
    """
    limits = validate_limits(
        global_limit=global_limit,
        rate_limit=rate_limit,
        rate_period=rate_period,
        partition=partition,
    )
    _change(
        queries.LIMIT_QUEUE,
        name=name,
        global_limit=limits.global_limit,
        rate_limit=limits.rate_limit,
        rate_period=limits.rate_period,
        partition=limits.partition,
    )


async def apause_queue(name: str, *, node: str | None = None) -> None:
    """See pause_queue()."""
    await sync_to_async(pause_queue)(name, node=node)


async def aresume_queue(name: str, *, node: str | None = None) -> None:
    """See resume_queue()."""
    await sync_to_async(resume_queue)(name, node=node)


async def ascale_queue(name: str, limit: int, *, node: str | None = None) -> None:
    """See scale_queue()."""
    await sync_to_async(scale_queue)(name, limit, node=node)
