"""Malformed UI workflows are reported as workflow errors, never as Python exceptions.

Each case is one of the crashes found by mutating the corpus (issue #19, item 5): a field of the
wrong shape (a list where an id belongs, an object where a link belongs, a number where a list
belongs) used to raise ``TypeError``/``ValueError``/``RecursionError`` from inside the
converter.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from comfyc.compiler.errors import WorkflowErrors
from comfyc.frontends.comfy_json.ui import ui_to_api
from tests.conftest import CORPUS

SOURCE = CORPUS / "img2img__img2img_workflow.ui.json"


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return apply


def _first_linked_socket(data: dict[str, Any]) -> dict[str, Any]:
    return next(s for n in data["nodes"] for s in n.get("inputs") or []
                if s.get("link") is not None)


def _self_nesting(data: dict[str, Any]) -> None:
    """A subgraph definition that contains an instance of itself."""
    sub = {"id": "loop-0000", "name": "loop", "nodes": [{"id": 1, "type": "loop-0000"}],
           "links": [], "inputs": [], "outputs": []}
    data["definitions"] = {"subgraphs": [sub]}
    data["nodes"].append({"id": 999, "type": "loop-0000", "mode": 0})


CASES: dict[str, Callable[[dict[str, Any]], None]] = {
    "node id is a list": _set(["nodes", 0, "id"], [1]),
    "node id is an object": _set(["nodes", 0, "id"], {}),
    "link id is an object": _set(["links", 0, 0], {}),
    "link origin is a list": _set(["links", 0, 1], [4]),
    "link slot is a list": _set(["links", 0, 2], [0]),
    "link slot is text": _set(["links", 0, 4], "0"),
    "links is a number": _set(["links"], 5),
    "links is an object": _set(["links"], {"1": [1, 2, 0, 3, 0, "MODEL"]}),
    "node is a number": _set(["nodes", 0], 7),
    "node inputs is a number": _set(["nodes", 1, "inputs"], 5),
    "node type is a list": _set(["nodes", 0, "type"], ["KSampler"]),
    "socket link is a list": lambda d: _first_linked_socket(d).__setitem__("link", [1]),
    "socket widget is a number": lambda d: _first_linked_socket(d).__setitem__("widget", 3),
    "extra is a list": _set(["extra"], []),
    "definitions is a list": _set(["definitions"], []),
    "subgraph contains itself": _self_nesting,
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_ui_gives_workflow_errors(case: str) -> None:
    """Each malformation gives WorkflowErrors whose messages render (or converts cleanly)."""
    data = copy.deepcopy(json.loads(SOURCE.read_text()))
    CASES[case](data)
    try:
        ui_to_api(data, file="bad.ui.json")
    except WorkflowErrors as exc:
        assert exc.errors and all(e.render() for e in exc.errors)


def test_malformed_node_id_names_the_node() -> None:
    """The message says which node and what was found."""
    data = json.loads(SOURCE.read_text())
    data["nodes"][0]["id"] = [1]
    with pytest.raises(WorkflowErrors) as info:
        ui_to_api(data, file="bad.ui.json")
    message = info.value.errors[0].render()
    assert "node id [1]" in message and "not a number or a string" in message


def test_links_not_a_list() -> None:
    """``links = 5`` says that links must be a list."""
    data = json.loads(SOURCE.read_text())
    data["links"] = 5
    with pytest.raises(WorkflowErrors) as info:
        ui_to_api(data, file="bad.ui.json")
    assert any("expected a list of links" in e.render() for e in info.value.errors)


def test_check_cli_on_malformed_ui_exits_1(tmp_path: Path) -> None:
    """``comfyc check`` prints the error and exits 1, without a traceback."""
    import subprocess
    import sys

    data = json.loads(SOURCE.read_text())
    data["links"][0][0] = {}
    path = tmp_path / "bad.ui.json"
    path.write_text(json.dumps(data))
    proc = subprocess.run([sys.executable, "-m", "comfyc.cli.main", "check", str(path)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "malformed link" in proc.stderr
