"""A workflow's graph drawn as inline SVG, server-side: no JavaScript, no CDN.

Pure functions of ``{step: deps}``, so the layout is tested without a database.
Steps are laid out in columns by depth (the longest path from a root, so every
arrow points right) and in rows within a column.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

BOX_WIDTH = 170
BOX_HEIGHT = 44
COLUMN_GAP = 60
ROW_GAP = 18
MARGIN = 10
#: Longer names are cut in the box; the full name is in its tooltip (``<title>``).
MAX_LABEL = 22

#: Fill colours by state; ``waiting`` is a step snoozed in ``await_signal``.
STATE_COLOURS = {
    "available": "#dbeafe",
    "scheduled": "#dbeafe",
    "executing": "#93c5fd",
    "retryable": "#fed7aa",
    "waiting": "#fde68a",
    "suspended": "#e5e7eb",
    "completed": "#bbf7d0",
    "discarded": "#fecaca",
    "cancelled": "#d1d5db",
}
UNKNOWN_COLOUR = "#ffffff"


def depths(steps: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Each step's column: 0 for a root, else one more than its deepest dep.

    Deps that are not steps (a pruned row) are ignored, and so is an edge that
    would close a cycle (a validated workflow has none), so any input terminates.
    """
    graph = {name: [d for d in deps if d in steps] for name, deps in steps.items()}
    found: dict[str, int] = {}
    for start in graph:
        # Iterative depth-first walk: a chain of thousands of steps must not
        # exhaust Python's recursion limit.
        stack: list[tuple[str, int]] = [(start, 0)]
        on_path: set[str] = set()
        while stack:
            name, index = stack.pop()
            if index == 0:
                if name in found:
                    continue
                on_path.add(name)
            deps = graph[name]
            if index < len(deps):
                stack.append((name, index + 1))
                dep = deps[index]
                if dep not in found and dep not in on_path:
                    stack.append((dep, 0))
                continue
            on_path.discard(name)
            found[name] = max((found[d] + 1 for d in deps if d in found), default=0)
    return found


def layout(steps: Mapping[str, Iterable[str]]) -> dict[str, tuple[int, int]]:
    """``{step: (column, row)}``: column by depth, rows ordered to limit crossings.

    Within a column, steps are sorted by the mean row of their deps (a step sits
    next to what it waits for), ties kept in the order the steps were given, so
    the same workflow is always drawn the same way.
    """
    steps = {name: list(deps) for name, deps in steps.items()}
    column_of = depths(steps)
    order = {name: i for i, name in enumerate(steps)}
    columns: dict[int, list[str]] = {}
    for name in steps:
        columns.setdefault(column_of[name], []).append(name)
    positions: dict[str, tuple[int, int]] = {}
    for column in sorted(columns):

        def key(name: str) -> tuple[float, int]:
            rows = [positions[d][1] for d in steps[name] if d in positions]
            return (sum(rows) / len(rows) if rows else -1.0, order[name])

        for row, name in enumerate(sorted(columns[column], key=key)):
            positions[name] = (column, row)
    return positions


def _label(name: str) -> str:
    return name if len(name) <= MAX_LABEL else name[: MAX_LABEL - 1] + "…"


def render_svg(
    steps: Mapping[str, Iterable[str]],
    states: Mapping[str, str] | None = None,
    *,
    labels: Mapping[str, str] | None = None,
) -> SafeString:
    """The graph as an ``<svg>`` element, safe to insert into a page as is.

    Args:
        steps: ``{step: deps}``, in the order the steps were added.
        states: ``{step: state}`` choosing each box's colour (see
            ``STATE_COLOURS``); the state is also written in the box.
        labels: ``{step: text}`` written under the name instead of the state
            (e.g. "waiting for a signal").

    Returns:
        SVG markup in which every name and label is HTML-escaped.
    """
    steps = {name: list(deps) for name, deps in steps.items()}
    states = states or {}
    labels = labels or {}
    positions = layout(steps)
    columns = max((c for c, _ in positions.values()), default=-1) + 1
    rows = max((r for _, r in positions.values()), default=-1) + 1
    width = 2 * MARGIN + columns * BOX_WIDTH + max(columns - 1, 0) * COLUMN_GAP
    height = 2 * MARGIN + rows * BOX_HEIGHT + max(rows - 1, 0) * ROW_GAP

    def corner(name: str) -> tuple[int, int]:
        column, row = positions[name]
        return (
            MARGIN + column * (BOX_WIDTH + COLUMN_GAP),
            MARGIN + row * (BOX_HEIGHT + ROW_GAP),
        )

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="relay-graph" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape("workflow graph")}" font-family="sans-serif" font-size="12">',
        '<defs><marker id="relay-arrow" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#6b7280"/></marker></defs>',
    ]
    for name, deps in steps.items():
        x, y = corner(name)
        for dep in deps:
            if dep not in positions:
                continue
            dx, dy = corner(dep)
            x1, y1 = dx + BOX_WIDTH, dy + BOX_HEIGHT // 2
            x2, y2 = x, y + BOX_HEIGHT // 2
            bend = (x2 - x1) // 2
            parts.append(
                f'<path class="relay-edge" d="M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} '
                f'{x2},{y2}" fill="none" stroke="#6b7280" stroke-width="1.5" '
                'marker-end="url(#relay-arrow)"/>'
            )
    for name in steps:
        x, y = corner(name)
        state = states.get(name, "")
        caption = labels.get(name, state)
        fill = STATE_COLOURS.get(state, UNKNOWN_COLOUR)
        parts.append(
            f'<g class="relay-step" data-step="{escape(name)}" data-state="{escape(state)}">'
            f"<title>{escape(name)}: {escape(caption)}</title>"
            f'<rect x="{x}" y="{y}" width="{BOX_WIDTH}" height="{BOX_HEIGHT}" rx="6" '
            f'fill="{fill}" stroke="#374151"/>'
            f'<text x="{x + BOX_WIDTH // 2}" y="{y + 18}" text-anchor="middle" '
            f'font-weight="bold" fill="#111827">{escape(_label(name))}</text>'
            f'<text x="{x + BOX_WIDTH // 2}" y="{y + 34}" text-anchor="middle" '
            f'fill="#374151">{escape(caption)}</text></g>'
        )
    parts.append("</svg>")
    # Every interpolated name, state and label above went through escape().
    return mark_safe("".join(parts))
