"""engine.viz.draw_dot gives a graphviz Digraph whose SVG parses, whatever the labels."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import graphviz
import numpy as np

from engine import Tensor, viz


def svg_text(root) -> tuple[ET.Element, str]:
    tree = ET.fromstring(viz.draw_dot(root).pipe(format="svg"))
    return tree, " ".join(t.text for t in tree.iter() if t.text)


def test_draw_dot_structure_and_svg():
    a = Tensor(2.0, label="a")
    b = Tensor(-3.0, label="b")
    c = (a * b).tanh()
    c.label = "out"
    c.backward()
    dot = viz.draw_dot(c, rankdir="TB")
    assert isinstance(dot, graphviz.Digraph)
    assert "rankdir=TB" in dot.source
    tree, text = svg_text(c)
    assert tree.tag.endswith("svg")
    for expected in ("a", "b", "out", "tanh", "*", "float64"):
        assert expected in text


def test_hostile_labels_are_escaped():
    x = Tensor([1.0, 2.0], label='<script>&"')
    y = x * 2
    y.label = "{a|b} \\ <tag>"
    y.sum().backward()
    tree, text = svg_text(y)
    assert '<script>&"' in text
    assert "{a|b}" in text
    assert tree.find(".//{http://www.w3.org/2000/svg}script") is None


def test_big_arrays_are_summarised():
    x = Tensor(np.zeros((300, 300)), label="big")
    y = x.sum()
    y.backward()
    src = viz.draw_dot(y).source
    assert len(src) < 2000
    assert "..." in src
