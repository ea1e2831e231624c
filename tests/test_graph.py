"""The workflow graph's layout and SVG: pure functions, no database."""

from __future__ import annotations

import re

from django_relay.admin.graph import depths, layout, render_svg


def columns(steps: dict[str, list[str]]) -> dict[str, int]:
    return {name: column for name, (column, _) in layout(steps).items()}


def test_a_chain_takes_one_column_per_step():
    steps = {"a": [], "b": ["a"], "c": ["b"], "d": ["c"]}
    assert layout(steps) == {"a": (0, 0), "b": (1, 0), "c": (2, 0), "d": (3, 0)}


def test_a_diamond_puts_the_branches_side_by_side():
    steps = {"start": [], "left": ["start"], "right": ["start"], "end": ["left", "right"]}
    assert layout(steps) == {
        "start": (0, 0),
        "left": (1, 0),
        "right": (1, 1),
        "end": (2, 0),
    }


def test_depth_is_the_longest_path_from_a_root():
    # "end" depends on a root directly and on the end of a chain: it goes after the chain.
    steps = {"a": [], "b": ["a"], "c": ["b"], "end": ["a", "c"]}
    assert depths(steps) == {"a": 0, "b": 1, "c": 2, "end": 3}


def test_fan_in_and_fan_out():
    fan_in = {f"dep{i}": [] for i in range(10)} | {"join": [f"dep{i}" for i in range(10)]}
    positions = layout(fan_in)
    assert [positions[f"dep{i}"] for i in range(10)] == [(0, i) for i in range(10)]
    assert positions["join"] == (1, 0)

    fan_out = {"root": []} | {f"leaf{i}": ["root"] for i in range(5)}
    assert columns(fan_out) == {"root": 0} | {f"leaf{i}": 1 for i in range(5)}


def test_rows_follow_their_deps_to_limit_crossings():
    # "y" was added first but waits for the second root: it is drawn level with it.
    steps = {"r1": [], "r2": [], "y": ["r2"], "x": ["r1"]}
    assert layout(steps) == {"r1": (0, 0), "r2": (0, 1), "x": (1, 0), "y": (1, 1)}


def test_layout_is_deterministic_and_independent_of_the_deps_order():
    steps = {"a": [], "b": [], "c": ["a", "b"], "d": ["b"], "e": ["c", "d"]}
    flipped = {name: list(reversed(deps)) for name, deps in steps.items()}
    assert layout(steps) == layout(dict(steps)) == layout(flipped)
    assert render_svg(steps, {"a": "completed"}) == render_svg(steps, {"a": "completed"})


def test_unknown_deps_and_cycles_do_not_break_the_drawing():
    assert depths({"a": ["pruned"], "b": ["a"]}) == {"a": 0, "b": 1}
    assert set(depths({"a": ["b"], "b": ["a"]})) == {"a", "b"}


def test_a_long_chain_needs_no_recursion():
    steps = {"s0": []} | {f"s{i}": [f"s{i - 1}"] for i in range(1, 5000)}
    assert depths(steps)["s4999"] == 4999


def test_svg_has_a_box_per_step_an_arrow_per_dep_and_state_colours():
    steps = {"approval": [], "charge": ["approval"], "ship": ["charge"]}
    svg = render_svg(
        steps,
        {"approval": "waiting", "charge": "suspended", "ship": "suspended"},
        labels={"approval": "waiting for a signal"},
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count('class="relay-step"') == 3
    assert svg.count('class="relay-edge"') == 2
    assert 'data-step="approval" data-state="waiting"' in svg
    assert "waiting for a signal" in svg and "#fde68a" in svg
    assert 'width="650"' in svg  # three columns of 170, two gaps of 60, two margins of 10


def test_svg_escapes_names_and_labels():
    name = '<script>alert("x")</script>'
    svg = render_svg({name: [], "b": [name]}, {name: "completed"}, labels={"b": "<b>"})
    assert "<script>" not in svg and "<b>" not in svg
    assert "&lt;script&gt;" in svg
    assert not re.search(r'data-step="[^"]*"[^ >]', svg)  # no attribute breaks out


def test_long_names_are_shortened_in_the_box_but_kept_in_the_tooltip():
    name = "a-step-with-a-rather-long-descriptive-name"
    svg = render_svg({name: []})
    assert f"<title>{name}: </title>" in svg
    assert f">{name}</text>" not in svg and "…</text>" in svg


def test_an_empty_graph_is_an_empty_svg():
    assert render_svg({}).startswith('<svg xmlns="http://www.w3.org/2000/svg" class="relay-graph"')
