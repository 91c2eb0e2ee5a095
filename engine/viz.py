"""Graph pictures as in the article: a record node per tensor and an op node feeding it."""

from __future__ import annotations

import graphviz
import numpy as np

from engine.tensor import Tensor, _summary


def _escape(text: str) -> str:
    """Escape a string for a graphviz record label: no text can open a field or break the
    SVG (graphviz itself writes `<`, `>`, `&` and quotes as XML entities)."""
    text = text.replace("\\", "\\\\")
    for ch in '{}|<>"':
        text = text.replace(ch, "\\" + ch)
    return " ".join(text.split())


def _trace(root: Tensor) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
    nodes: list[Tensor] = []
    edges: list[tuple[Tensor, Tensor]] = []
    seen = {id(root)}
    stack = [root]
    while stack:
        node = stack.pop()
        nodes.append(node)
        for parent in node._prev:
            edges.append((parent, node))
            if id(parent) not in seen:
                seen.add(id(parent))
                stack.append(parent)
    return nodes, edges


def draw_dot(root: Tensor, rankdir: str = "LR") -> graphviz.Digraph:
    """The graph that produced `root`, as a `graphviz.Digraph` (`.pipe(format="svg")`)."""
    dot = graphviz.Digraph(format="svg", graph_attr={"rankdir": rankdir})
    nodes, edges = _trace(root)
    for n in nodes:
        uid = str(id(n))
        grad = _summary(n._grad) if n._grad is not None else "None"
        fields = [
            n.label or "",
            f"{n.data.shape} {n.data.dtype}",
            f"data {_summary(np.asarray(n.data))}",
            f"grad {grad}",
        ]
        label = "{ " + " | ".join(_escape(f) for f in fields) + " }"
        dot.node(name=uid, label=label, shape="record")
        if n._op:
            dot.node(name=uid + "op", label=_escape(n._op))
            dot.edge(uid + "op", uid)
    for parent, child in edges:
        dot.edge(str(id(parent)), str(id(child)) + "op")
    return dot
