"""Counters of this process's claims and received notifications, for the scale test.

Plain integers, incremented where they happen (no locks: a count off by one under
a race is fine for what they measure, the herd). A runner logs them at shutdown in
one INFO line, ``relay stats: {json}``; any process can read :func:`snapshot`.
"""

from __future__ import annotations

import json
from collections import defaultdict

#: Claims run by this process's producers, and those that returned no job; of
#: those, the backup poll's (FETCH_INTERVAL without a wake-up), which find a drained
#: queue empty by design: the herd shows in the other claims.
claims = 0
empty_claims = 0
poll_claims = 0
empty_poll_claims = 0
#: NOTIFY payloads received by this process's listener, by channel.
notifications: defaultdict[str, int] = defaultdict(int)


def count_claim(rows: int, *, poll: bool = False) -> None:
    """One claim that returned ``rows`` jobs (``poll``: the backup poll's)."""
    global claims, empty_claims, poll_claims, empty_poll_claims
    claims += 1
    empty_claims += rows == 0
    if poll:
        poll_claims += 1
        empty_poll_claims += rows == 0


def snapshot() -> dict[str, object]:
    """The counters as a JSON-ready dict."""
    return {
        "claims": claims,
        "empty_claims": empty_claims,
        "poll_claims": poll_claims,
        "empty_poll_claims": empty_poll_claims,
        "notifications": dict(notifications),
    }


def line() -> str:
    """``relay stats: {json}``, the line a runner logs at shutdown."""
    return f"relay stats: {json.dumps(snapshot(), sort_keys=True)}"
