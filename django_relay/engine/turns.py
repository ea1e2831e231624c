"""Runners take turns on ``relay_available``: only as many claim as there are jobs.

Each notification says how many jobs of a queue became available (``count``) and
carries a number (``seq``). The runners serving the queue, in the order of their
node ids (every runner reads the same list from the heartbeat table), take the
``min(count, n)`` turns that start at ``seq mod n``; each claims its share of
``count``. A runner whose share exceeds its free slots hands the rest to the
runner after it with a NOTIFY of its own (:func:`pass_on`), at most ``n - 1`` hops.
A runner that is not in the list yet (it just started) claims on every notification,
as all did before; the backup poll (``FETCH_INTERVAL``) bounds any wake-up lost
while the runners' lists disagree (a runner joined or died moments ago).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django_relay.queries import Available


def members_by_queue(nodes: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, list[str]]:
    """Queue -> the ids of the live nodes serving it, sorted: every runner's same list."""
    members: dict[str, list[str]] = {}
    for node, queues in nodes:
        for queue in queues or ():
            members.setdefault(queue, []).append(node)
    return {queue: sorted(nodes) for queue, nodes in members.items()}


def share(node: str, members: Sequence[str], note: Available) -> int:
    """How many of ``note.count`` jobs ``node`` claims: 0 when it is not its turn."""
    if node not in members:
        return note.count
    n = len(members)
    offset = (members.index(node) - note.seq) % n
    if note.hops:  # handed on: all of it for the one runner named
        return note.count if offset == 0 else 0
    if offset >= min(note.count, n):
        return 0
    return note.count // n + (offset < note.count % n)


def pass_on(
    node: str, members: Sequence[str], queue: str, count: int, hops: int
) -> Available | None:
    """The notification that hands ``count`` jobs to the next runner; None past the last hop."""
    if node not in members or hops >= len(members) - 1:
        return None
    return Available(queue, count, members.index(node) + 1, hops + 1)
