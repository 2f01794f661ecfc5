"""Mutated workflows never raise anything but WorkflowError, and ``comfyc check`` never crashes.

* Hypothesis properties over the corpus' API prompts and UI workflows (the converter and the
  validator);
* a seeded mutation loop over every corpus file (UI and API JSON: values replaced by values of
  another shape, keys renamed or dropped, lists turned into objects) and over the DSL examples
  (text cut, repeated, spliced with stray tokens), run through ``comfyc check``'s own
  ``check_file`` in-process: each gives exit 0, 1 or 2, never an exception (issue #19, item 5);
* a sample of the same mutations through the real ``comfyc check`` processes (exit codes, no
  traceback), and ``comfyc check /dev/zero`` under a memory limit.
"""

from __future__ import annotations

import copy
import json
import random
import resource
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.errors import WorkflowError
from comfyc.compiler.passes.validate import validate_graph
from comfyc.frontends.comfy_json.api import graph_from_api, graph_to_api
from comfyc.frontends.comfy_json.ui import ui_to_api
from tests.conftest import CORPUS, REPO

API = [json.loads(p.read_text()) for p in sorted(CORPUS.glob("*.api.json"))]
UI = [json.loads(p.read_text()) for p in sorted(CORPUS.glob("*.ui.json"))]
ODD_VALUES = st.one_of(
    st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=5), st.booleans(),
    st.none(), st.just([]), st.just(["1", 0]), st.just(["999", 0]), st.just([4, 0]),
    st.just({"__value__": [1, 2]}), st.just({"a": 1}), st.just(["3", 99]),
)


def _mutate_api(data: dict[str, Any], draw: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    ids = list(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop_input", "retype", "rewire", "delete", "class"]))
        node = data.get(draw(st.sampled_from(ids)))
        if not isinstance(node, dict):
            continue
        inputs = node.get("inputs", {})
        names = list(inputs)
        if op == "drop_input" and names:
            inputs.pop(draw(st.sampled_from(names)))
        elif op == "retype" and names:
            inputs[draw(st.sampled_from(names))] = draw(ODD_VALUES)
        elif op == "rewire" and names:
            inputs[draw(st.sampled_from(names))] = [draw(st.sampled_from(ids)),
                                                    draw(st.integers(-1, 3))]
        elif op == "delete":
            data.pop(draw(st.sampled_from(ids)), None)
        elif op == "class":
            node["class_type"] = draw(st.sampled_from(
                ["KSampler", "VAEDecode", "Nope", "", 5, "SaveImage", "LatentUpscale"]))
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_mutated_api_prompts_give_workflow_errors_only(data: st.DataObject) -> None:
    """Dropped inputs, retyped values, rewired links and deleted nodes are reported, not crashes."""
    prompt = _mutate_api(data.draw(st.sampled_from(API)), data.draw)
    catalog = default_catalog()
    try:
        graph = graph_from_api(prompt, catalog, "fuzz.json")
        validate_graph(graph, catalog)
        graph_to_api(graph)
    except WorkflowError as exc:
        assert exc.render()


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_mutated_ui_workflows_give_workflow_errors_only(data: st.DataObject) -> None:
    """Mutated UI workflows (links, widgets, modes, nodes) are reported, not crashes."""
    ui = copy.deepcopy(data.draw(st.sampled_from(UI)))
    nodes = ui["nodes"]
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["widgets", "mode", "delete", "link", "droplink"]))
        if not nodes:
            break
        node = data.draw(st.sampled_from(nodes))
        if op == "widgets":
            node["widgets_values"] = data.draw(st.one_of(
                st.none(), st.lists(ODD_VALUES, max_size=8), st.just({"seed": 1})))
        elif op == "mode":
            node["mode"] = data.draw(st.sampled_from([0, 2, 4, 7, "x"]))
        elif op == "delete":
            nodes.remove(node)
        elif op == "link" and node.get("inputs"):
            node["inputs"][0]["link"] = data.draw(st.integers(-5, 80))
        elif op == "droplink" and ui.get("links"):
            ui["links"].pop(data.draw(st.integers(0, len(ui["links"]) - 1)))
    catalog = default_catalog()
    try:
        graph = graph_from_api(ui_to_api(ui, catalog, "fuzz.ui.json"), catalog, "fuzz.ui.json")
        validate_graph(graph, catalog)
    except WorkflowError as exc:
        assert exc.render()


# ------------------------------------------------------------------ seeded loop over the corpus
#: Values of every shape, swapped in for whatever a field held.
_SHAPES: list[Any] = [
    [1], {}, 5, -1, None, "", "x", 1e308, -1e308, True, False, [[]], [None], {"a": {}},
    [1, 2, 3, 4, 5, 6], ["1", 0], 2**70, 0.5, "1", [{}], {"id": 1}, "a" * 300,
]
_KEYS = ["", "0", "1", "x:y", "9999", " ", "links", "nodes"]
_TOKENS = ["(", ")", "=", '"', "\\", "{", "}", ":", "#", "\n", ",", "[", "]", "0x1", "1e999",
           "nan", "-", "param", "output", "x", "9" * 30, "\t", "\u00e9", "\x00", ".", "@", "'",
           "->", "KSampler", "seed", "steps=", "true", "None", '"""']
#: Mutated files per form in the in-process loop (seeded: every run checks the same files).
LOOP_CASES = 1000


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, prefix + (index,))
    return out


def mutate_json(data: Any, rng: random.Random) -> Any:
    """1-3 structural mutations at random places of a JSON document."""
    data = copy.deepcopy(data)
    for _ in range(rng.randint(1, 3)):
        places = [p for p in _paths(data) if p]
        if not places:
            break
        place = rng.choice(places)
        parent: Any = data
        for key in place[:-1]:
            parent = parent[key]
        key = place[-1]
        roll = rng.random()
        if roll < 0.15 and isinstance(parent, dict):
            parent[rng.choice(_KEYS)] = parent.pop(key)
        elif roll < 0.6:
            parent[key] = copy.deepcopy(rng.choice(_SHAPES))
        elif roll < 0.8:
            del parent[key]
        else:
            value = parent[key]
            if isinstance(value, list):
                parent[key] = {str(i): v for i, v in enumerate(value)}
            elif isinstance(value, dict):
                parent[key] = list(value.values())
            else:
                parent[key] = [value]
    return data


def mutate_text(text: str, rng: random.Random) -> str:
    """1-4 text edits: a span cut, a stray token, a span repeated, two lines swapped."""
    for _ in range(rng.randint(1, 4)):
        roll, size = rng.random(), len(text)
        start = rng.randrange(size + 1)
        end = min(size, start + rng.randint(1, 20))
        if roll < 0.3:
            text = text[:start] + text[end:]
        elif roll < 0.6:
            text = text[:start] + rng.choice(_TOKENS) + text[start:]
        elif roll < 0.8:
            text = text[:start] + text[start:end] + text[start:]
        else:
            lines = text.split("\n")
            a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
    return text


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """1-4 byte edits: flipped bytes, a cut, a repeated span, a chunk length made huge."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        roll, size = rng.random(), len(buffer)
        start = rng.randrange(size)
        end = min(size, start + rng.randint(1, 64))
        if roll < 0.4:
            buffer[start] ^= 1 << rng.randrange(8)
        elif roll < 0.6:
            del buffer[start:end]
        elif roll < 0.8:
            buffer[start:start] = buffer[start:end]
        else:
            buffer[start:start + 4] = rng.choice([b"\xff\xff\xff\xff", b"\0\0\0\0",
                                                  b"\x7f\xff\xff\xf0"])
    return bytes(buffer)


def _png_with_workflow(api: Path) -> bytes:
    """A PNG as ComfyUI saves it: the API prompt and the UI workflow in tEXt chunks."""
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("prompt", api.read_text())
    ui = api.with_name(api.name.replace(".api.json", ".ui.json"))
    if ui.is_file():
        info.add_text("workflow", ui.read_text(), zip=True)
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _mutated_files(kind: str, count: int, folder: Path, seed: int) -> list[Path]:
    """``count`` mutated files of one form (``ui``, ``api``, ``dsl`` or ``png``) in folder."""
    rng = random.Random(f"{kind}-{seed}")
    if kind == "png":
        pictures = [_png_with_workflow(p) for p in sorted(CORPUS.glob("*.api.json"))[:6]]
        files = []
        for index in range(count):
            path = folder / f"png-{index}.png"
            path.write_bytes(mutate_bytes(rng.choice(pictures), rng))
            files.append(path)
        return files
    if kind == "dsl":
        sources = sorted((REPO / "examples").glob("*.cfy"))
        assert sources, "no DSL examples"
    else:
        sources = sorted(CORPUS.glob(f"*.{kind}.json"))
        assert sources, f"no {kind} files in the corpus"
    files = []
    for index in range(count):
        source = rng.choice(sources)
        path = folder / f"{kind}-{index}{'.cfy' if kind == 'dsl' else '.json'}"
        if kind == "dsl":
            path.write_text(mutate_text(source.read_text(), rng))
        else:
            path.write_text(json.dumps(mutate_json(json.loads(source.read_text()), rng)))
        files.append(path)
    return files


@pytest.mark.parametrize("kind", ["ui", "api", "dsl", "png"])
def test_check_survives_seeded_mutations(kind: str, tmp_path: Path) -> None:
    """check_file (what `comfyc check` runs per file) gives 0/1/2 for every mutated file."""
    from comfyc.cli.commands.check import check_file

    catalog = default_catalog()
    crashes: dict[str, str] = {}
    codes: dict[int, int] = {}
    for path in _mutated_files(kind, LOOP_CASES, tmp_path, seed=19):
        try:
            code, report = check_file(str(path), catalog)
        except Exception as exc:  # noqa: BLE001 - every crash is collected and reported
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
            crashes.setdefault(where, f"{path.name}: {exc}")
            continue
        assert code in (0, 1, 2), (path.name, code)
        if code:
            assert report["errors"], path.name
        codes[code] = codes.get(code, 0) + 1
    assert not crashes, crashes
    assert codes.get(0, 0) + codes.get(1, 0) + codes.get(2, 0) == LOOP_CASES
    # The mutations do break workflows (a flipped PNG byte often leaves the text intact).
    assert codes.get(1, 0) + codes.get(2, 0) > LOOP_CASES // 10, codes


def test_check_cli_exit_codes_on_a_sample(tmp_path: Path) -> None:
    """The real `comfyc check` on a sample of each form: 0/1/2 per file, never a traceback."""
    files = [p for kind in ("ui", "api", "dsl", "png")
             for p in _mutated_files(kind, 12, tmp_path, seed=23)]
    proc = subprocess.run(
        [sys.executable, "-m", "comfyc.cli.main", "check", "--json", *map(str, files)],
        check=False, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["file"] for r in reports] == [str(p) for p in files]
    codes = [r["exit_code"] for r in reports]
    assert set(codes) <= {0, 1, 2} and proc.returncode == max(codes)
    # One file at a time too: the process' exit status is the file's code.
    for path in files[::9]:
        one = subprocess.run([sys.executable, "-m", "comfyc.cli.main", "check", str(path)],
                             check=False, capture_output=True, text=True, timeout=120)
        assert one.returncode in (0, 1, 2) and "Traceback" not in one.stderr, one.stderr


def _limit_memory() -> None:
    limit = 1 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_check_dev_zero_is_refused_within_bounded_memory() -> None:
    """`comfyc check /dev/zero` (no size, endless data) stops at the size limit: exit 2."""
    proc = subprocess.run([sys.executable, "-m", "comfyc.cli.main", "check", "/dev/zero"],
                          check=False, capture_output=True, text=True, timeout=120,
                          preexec_fn=_limit_memory)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "limit" in proc.stderr and "Traceback" not in proc.stderr
