"""The workflow drawn as inline SVG on the server, from the definition a saga runs on (no script, no asset).

Layout, in one pass per scope (the machine, or a Parallel branch, or a Map's processor): the main path (StartAt
and its Next chain) goes top to bottom in the first column; every other state gets the row after the first
state that leads to it (Catch, Choice or Next) and the next free column to the right. Parallel and Map states
are boxes holding their branches' own layouts side by side, so nested groups nest. Edges are straight lines;
a Catch edge is dashed. Pure: a definition and the saga's marks in, markup out.

Marks are keyed by a state's path, as ``Workflow.state`` reads it: ``Name`` at the top, ``Group/<branch>/Name``
inside a Parallel's branch or a Map's processor (branch 0). A name alone is not enough: the stored engine form
may hold one step's name in two groups (the sidecar's ``Step`` maps RefundUnknownPayment back to RefundPayment).
"""

from dataclasses import dataclass, field
from html import escape
from typing import Any

#: Sizes in SVG units (pixels at 100 %).
NODE_W, NODE_H, GAP_X, GAP_Y, PAD, HEADER = 176, 46, 36, 34, 10, 22


@dataclass(frozen=True)
class Mark:
    """What one saga did in a state: visited at all, how its last run ended, how many runs it took."""

    visited: bool = False
    outcome: str | None = None  # running, succeeded, failed, timed_out
    runs: int = 0
    failed: bool = False


@dataclass
class Node:
    name: str
    kind: str
    key: str = ""  # the state's path (see the module's docstring)
    row: int = 0
    col: int = 0
    x: float = 0
    y: float = 0
    w: float = NODE_W
    h: float = NODE_H
    branches: list["Scope"] = field(default_factory=list)


@dataclass
class Edge:
    source: str
    target: str
    kind: str  # next, catch, choice


@dataclass
class Scope:
    nodes: dict[str, Node]
    edges: list[Edge]
    w: float = 0
    h: float = 0


def _successors(state: Any) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if getattr(state, "Next", None):
        found.append((state.Next, "next"))
    for choice in getattr(state, "Choices", None) or []:
        if isinstance(choice, dict) and choice.get("Next"):
            found.append((choice["Next"], "choice"))
    if getattr(state, "Default", None):
        found.append((state.Default, "choice"))
    for catcher in getattr(state, "Catch", None) or []:
        found.append((catcher.Next, "catch"))
    return found


def _inner_scopes(state: Any) -> list[tuple[str, dict[str, Any]]]:
    """(StartAt, States) of each branch of a Parallel, or of a Map's processor."""
    if state.Type == "Parallel":
        return [(b.StartAt, b.States) for b in state.Branches]
    if state.Type == "Map":
        processor = state.ItemProcessor or state.Iterator
        return [(processor.StartAt, processor.States)]
    return []


def layout(start_at: str, states: dict[str, Any], prefix: str = "") -> Scope:
    """Rows, columns and coordinates of one scope's states (recursively for Parallel and Map); ``prefix`` is
    the path of the scope (empty at the top, ``Group/<branch>/`` inside a group)."""
    main: list[str] = []
    name: str | None = start_at
    while name in states and name not in main:
        main.append(name)
        state = states[name]
        name = getattr(state, "Next", None) or getattr(state, "Default", None)
    rank = {n: i for i, n in enumerate(main)}
    queue = list(main)
    edges: list[Edge] = []
    while queue:
        source = queue.pop(0)
        for target, kind in _successors(states[source]):
            if not any(e.source == source and e.target == target for e in edges):  # two Catchers, one target
                edges.append(Edge(source, target, kind))
            if target in states and target not in rank:
                rank[target] = rank[source] + 1
                queue.append(target)
    for other in states:  # unreachable states still show, at the bottom
        rank.setdefault(other, max(rank.values(), default=-1) + 1)
    nodes: dict[str, Node] = {}
    used: dict[int, int] = {}
    for n in sorted(states, key=lambda s: (s not in main, list(rank).index(s))):
        row = rank[n]
        col = 0 if n in main else max(used.get(row, 0), 1)
        used[row] = col + 1
        node = Node(n, states[n].Type, key=prefix + n, row=row, col=col)
        node.branches = [layout(s, inner, f"{prefix}{n}/{i}/") for i, (s, inner) in enumerate(_inner_scopes(states[n]))]
        if node.branches:
            node.w = max(NODE_W, sum(b.w for b in node.branches) + GAP_X * (len(node.branches) - 1) + 2 * PAD)
            node.h = HEADER + max(b.h for b in node.branches) + 2 * PAD
        nodes[n] = node
    widths: dict[int, float] = {}
    heights: dict[int, float] = {}
    for node in nodes.values():
        widths[node.col] = max(widths.get(node.col, 0), node.w)
        heights[node.row] = max(heights.get(node.row, 0), node.h)
    xs = _offsets(widths, GAP_X)
    ys = _offsets(heights, GAP_Y)
    for node in nodes.values():
        node.x, node.y = xs[node.col] + (widths[node.col] - node.w) / 2, ys[node.row]
    scope = Scope(nodes, [e for e in edges if e.target in nodes])
    scope.w = sum(widths.values()) + GAP_X * (len(widths) - 1)
    scope.h = sum(heights.values()) + GAP_Y * (len(heights) - 1)
    return scope


def _offsets(sizes: dict[int, float], gap: float) -> dict[int, float]:
    offsets, at = {}, 0.0
    for index in sorted(sizes):
        offsets[index] = at
        at += sizes[index] + gap
    return offsets


def _edge_svg(scope: Scope, edge: Edge, marks: dict[str, Mark]) -> str:
    a, b = scope.nodes[edge.source], scope.nodes[edge.target]
    if b.y > a.y:
        x1, y1, x2, y2 = a.x + a.w / 2, a.y + a.h, b.x + b.w / 2, b.y
    else:  # same row or back up (a retry loop through Choice or Wait): side to side
        left = b.x > a.x
        x1, y1 = (a.x + a.w if left else a.x), a.y + a.h / 2
        x2, y2 = (b.x if left else b.x + b.w), b.y + b.h / 2
    taken = marks.get(a.key, Mark()).visited and marks.get(b.key, Mark()).visited
    css = f"edge {edge.kind}" + (" taken" if taken else "")
    return f'<line class="{css}" x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" marker-end="url(#arrow)"/>'


def _node_svg(node: Node, marks: dict[str, Mark]) -> str:
    mark = marks.get(node.key, Mark())
    classes = ["node", node.kind.lower()]
    if mark.visited:
        classes.append("visited")
    if mark.failed:
        classes.append("failed")
    status = "failed" if mark.failed else (mark.outcome or ("visited" if mark.visited else "not-run"))
    label = escape(node.name)
    runs = f" ({mark.runs} runs)" if mark.runs > 1 else ""
    parts = [
        f'<g class="{" ".join(classes)}" data-state="{label}" data-path="{escape(node.key)}" '
        f'data-status="{status}" data-runs="{mark.runs}">',
        f"<title>{label}: {escape(node.kind)}, {escape(status)}{runs}</title>",
        f'<rect x="{node.x:.0f}" y="{node.y:.0f}" width="{node.w:.0f}" height="{node.h:.0f}" rx="6"/>',
    ]
    if node.branches:
        parts.append(f'<text x="{node.x + PAD:.0f}" y="{node.y + 15:.0f}">{label} · {escape(node.kind)}</text>')
        offset = node.x + PAD
        for branch in node.branches:
            parts.append(f'<g transform="translate({offset:.0f},{node.y + HEADER + PAD:.0f})" class="branch">')
            parts.append(f'<rect class="lane" x="-4" y="-4" width="{branch.w + 8:.0f}" height="{branch.h + 8:.0f}"/>')
            parts.append(_scope_svg(branch, marks))
            parts.append("</g>")
            offset += branch.w + GAP_X
    else:
        cx = node.x + node.w / 2
        parts.append(f'<text class="name" x="{cx:.0f}" y="{node.y + 19:.0f}">{label}</text>')
        parts.append(f'<text class="kind" x="{cx:.0f}" y="{node.y + 36:.0f}">{escape(node.kind)}</text>')
        if mark.runs > 1:
            parts.append(f'<text class="runs" x="{node.x + node.w - 6:.0f}" y="{node.y + 14:.0f}">×{mark.runs}</text>')
    parts.append("</g>")
    return "".join(parts)


def _scope_svg(scope: Scope, marks: dict[str, Mark]) -> str:
    edges = "".join(_edge_svg(scope, e, marks) for e in scope.edges)
    return edges + "".join(_node_svg(n, marks) for n in scope.nodes.values())


def render(start_at: str, states: dict[str, Any], marks: dict[str, Mark]) -> str:
    """The definition as one ``<svg>`` element; ``marks`` by state path (the module's docstring)."""
    scope = layout(start_at, states)
    w, h = scope.w + 2 * PAD, scope.h + 2 * PAD
    return (
        f'<svg class="workflow" xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" '
        f'viewBox="{-PAD} {-PAD} {w:.0f} {h:.0f}" role="img" aria-label="workflow graph">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>'
        f"{_scope_svg(scope, marks)}</svg>"
    )
