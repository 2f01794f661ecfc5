"""The drawings: layout sanity, well-formed SVG per view, a self-contained page, DOT text."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from comfyc.cli.commands.viz import build_view
from comfyc.compiler.viz import GraphView, render
from comfyc.compiler.viz.layout import layout_view
from tests.compiler.viz.manifests import write_artifact
from tests.conftest import REPO

EXAMPLES = REPO / "examples"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module", params=["txt2img", "hires_lora", "area", "img2img"])
def view(request: pytest.FixtureRequest) -> GraphView:
    """The view of one example workflow."""
    return build_view(EXAMPLES / f"{request.param}.cfy")


def test_layout_goes_left_to_right_without_overlaps(view: GraphView) -> None:
    """Every edge runs rightwards; no two node boxes overlap; frames hold their nodes."""
    layout = layout_view(view)
    boxes = {k: b for k, b in layout.boxes.items() if not b.dummy}
    assert set(boxes) == set(view.nodes)
    for edge in view.edges:
        assert boxes[edge.src].x + boxes[edge.src].w < boxes[edge.dst].x, edge
    items = list(boxes.values())
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            apart = (a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or
                     b.y + b.h <= a.y)
            assert apart, (a.id, b.id)
    for key, stage in view.stages.items():
        x, y, w, h = layout.stages[key]
        for member in stage.members[:1]:
            box = boxes[member]
            assert x <= box.x and box.x + box.w <= x + w and y <= box.y and box.y + box.h <= y + h
    assert all(b.x >= 0 and b.x + b.w <= layout.width for b in items)


def _svg_root(text: str) -> ET.Element:
    return ET.fromstring(text.split("?>", 1)[1] if text.startswith("<?xml") else text)


@pytest.mark.parametrize("mode", ["after", "before"])
def test_standalone_svg_draws_one_view(view: GraphView, mode: str) -> None:
    """A well-formed SVG with every node of its view and only that view's edges."""
    root = _svg_root(render(view, "svg", mode=mode))
    groups = [g for g in root.iter(f"{SVG}g") if "node" in g.get("class", "").split()]
    expected = [n for n in view.nodes.values() if n.in_before or mode == "after"]
    assert [g.get("data-id") for g in groups] == [n.id for n in expected]
    edges = [p for p in root.iter(f"{SVG}path") if "edge" in p.get("class", "").split()]
    assert len(edges) == len(view.edges_in(mode))
    stage_labels = {t.text for t in root.iter(f"{SVG}text") if t.get("class") == "stage-label"}
    assert stage_labels == ({s.label for s in view.stages.values()} if mode == "after" else set())
    classes = {c for e in root.iter() for c in e.get("class", "").split()}
    assert not classes & {"only-before", "only-after"}


def test_page_is_self_contained(view: GraphView) -> None:
    """No external resource: no src/href URLs, no link tags, inline script and style."""
    page = render(view, "html")
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert page.count("<script>") == 1 and "<script src" not in page
    svg = page[page.index("<svg"):page.index("</svg>") + 6]
    root = _svg_root(svg)  # Well-formed, with both views classed for the toggle.
    assert root.get("class") == "comfyc-graph view-after"
    assert 'id="show-before"' in page and 'id="show-after"' in page
    for node in view.nodes.values():
        assert "<title>" in page and node.title.replace("&", "&amp;") in page


def test_toggle_marks_each_views_elements() -> None:
    """An edge removed by folding is before-only; stage frames are after-only."""
    page = render(build_view(EXAMPLES / "txt2img.cfy"), "html")
    assert re.search(r'class="edge only-before"[^>]*>.*#1 → #3\.clip', page)
    assert '<g class="stages only-after">' in page


def test_dot_has_clusters_and_typed_edges(tmp_path: Path) -> None:
    """Graphviz text: a cluster per stage labelled like the page, edges coloured by type."""
    text = render(build_view(write_artifact(tmp_path)), "dot")
    assert text.count("{") == text.count("}")
    assert 'label="unet · ort-cuda · 12.3 ms\\nunet_abc";' in text
    assert '"1" -> "5" [color="#B39DDB"' in text  # MODEL
    assert re.search(r'"3" \[label="CLIP Text Encode \(Prompt\).*\[folded\]', text)
    before = render(build_view(EXAMPLES / "txt2img.cfy"), "dot", mode="before")
    assert "cluster" not in before and '"1" -> "3"' in before


def test_unknown_format_is_refused() -> None:
    """A format that does not exist is a ValueError naming the choices."""
    with pytest.raises(ValueError, match="html, svg, dot"):
        render(build_view(EXAMPLES / "txt2img.cfy"), "png")
