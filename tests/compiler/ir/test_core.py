"""The IR: use lists, mutation through Graph methods, stable topological order, verifier."""

from __future__ import annotations

import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.ir import CycleError, Graph, Param, SourceLoc
from comfyc.compiler.ir.verify import VerifyError, verify_graph


def _graph() -> Graph:
    cat = default_catalog()
    g = Graph()
    ckpt = g.add_node("CheckpointLoaderSimple", cat.get("CheckpointLoaderSimple").output_types(),
                      id="4", inputs={"ckpt_name": "m.safetensors"})
    pos = g.add_node("CLIPTextEncode", cat.get("CLIPTextEncode").output_types(), id="6",
                     inputs={"text": "a", "clip": ckpt.output("CLIP")})
    neg = g.add_node("CLIPTextEncode", cat.get("CLIPTextEncode").output_types(), id="7",
                     inputs={"text": "", "clip": ckpt.output(1)})
    assert pos.output(0) is pos.outputs[0] and neg.loc.node_id == "7"
    return g


def test_use_lists_follow_mutation() -> None:
    """set_input / replace_all_uses_with / remove keep use lists right."""
    g = _graph()
    ckpt, pos, neg = g.node("4"), g.node("6"), g.node("7")
    clip = ckpt.output("CLIP")
    assert [u.node.id for u in clip.uses()] == ["6", "7"]
    g.set_input(neg, "clip", pos.outputs[0])  # Wrong type on purpose: use lists only.
    assert [u.node.id for u in clip.uses()] == ["6"]
    g.replace_all_uses_with(pos.outputs[0], clip)
    assert [u.node.id for u in clip.uses()] == ["6", "7"]
    with pytest.raises(ValueError, match="feeds"):
        g.remove(ckpt)
    g.remove(neg)
    assert [u.node.id for u in clip.uses()] == ["6"] and g.find("7") is None
    verify_graph(g, default_catalog())


def test_params_have_uses() -> None:
    """A param used by an input knows its use; an unused one can be removed."""
    g = _graph()
    p = g.add_param(Param("prompt", "STRING", "a digit", loc=SourceLoc("t.cfy", 1, 1)))
    g.set_input(g.node("6"), "text", p)
    assert [u.input_name for u in p.uses()] == ["text"]
    with pytest.raises(ValueError):
        g.remove_param("prompt")
    g.set_input(g.node("6"), "text", "literal")
    g.remove_param("prompt")
    with pytest.raises(ValueError, match="twice"):
        g.add_param(Param("x", "INT"))
        g.add_param(Param("x", "INT"))


def test_sort_is_stable_and_detects_cycles() -> None:
    """sort() keeps ties in their current order and names the nodes on a cycle."""
    g = _graph()
    g.nodes.reverse()
    g.sort()
    assert [n.id for n in g.nodes] == ["4", "7", "6"]
    g.sort()
    assert [n.id for n in g.nodes] == ["4", "7", "6"]
    g.set_input(g.node("4"), "x", g.node("6").outputs[0])
    with pytest.raises(CycleError) as info:
        g.sort()
    assert {n.id for n in info.value.nodes} >= {"4", "6"}


def test_verifier_catches_broken_invariants() -> None:
    """Out-of-order nodes and undeclared params are reported."""
    g = _graph()
    g.nodes.reverse()
    with pytest.raises(VerifyError, match="not topological"):
        verify_graph(g)
    g = _graph()
    p = Param("ghost", "STRING", "x")
    g.set_input(g.node("6"), "text", p)
    with pytest.raises(VerifyError, match="not declared"):
        verify_graph(g)


def test_new_ids_are_deterministic() -> None:
    """Fresh ids are one past the largest numeric id."""
    g = _graph()
    assert g.new_id() == "8"


def test_source_loc_formats() -> None:
    """DSL locations print file:line:col; JSON ones name the node and input."""
    assert str(SourceLoc("a.cfy", 3, 7)) == "a.cfy:3:7"
    assert str(SourceLoc("w.json", node_id="3", title="KS", input_name="seed")) == \
        "w.json: node #3 'KS', input 'seed'"
