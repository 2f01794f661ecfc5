"""`comfyc check` on bad inputs: each problem gets its own message and exit code, never a
traceback (table-driven, through a real subprocess)."""

from __future__ import annotations

import copy
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CORPUS, DATA

BASE = json.loads((DATA / "comfy" / "txt2img.api.json").read_text())


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "comfyc.cli.main", *args],
                          capture_output=True, text=True, timeout=60)


def _edit(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    fn(data)
    return data


def _png(chunks: list[tuple[bytes, bytes]] = ()) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00\x00")
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    for kind, body in chunks:
        out += chunk(kind, body)
    return out + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# (name, workflow edit, expected exit code, substrings expected in stderr)
JSON_CASES = [
    ("required_input_missing", lambda d: d["3"]["inputs"].pop("model"), 1,
     ["node #3 'My sampler', input 'model'", "error[required_input_missing]",
      "required input 'model' (MODEL)", "help: connect a MODEL output to 'model'"]),
    ("bad_linked_input_dangling", lambda d: d["8"]["inputs"].update(vae=["99", 2]), 1,
     ["input 'vae'", "error[bad_linked_input]", "links to node #99, which is not in the workflow"]),
    ("bad_linked_input_index", lambda d: d["8"]["inputs"].update(vae=["4", 7]), 1,
     ["error[bad_linked_input]", "links to output 7 of #4 (CheckpointLoaderSimple), which has "
      "3 outputs (0: MODEL, 1: CLIP, 2: VAE)"]),
    ("bad_linked_input_int_id", lambda d: d["8"]["inputs"].update(vae=[4, 2]), 1,
     ["error[bad_linked_input]", "is a number", 'help: write the link as ["4", 2]']),
    ("bad_linked_input_shape", lambda d: d["8"]["inputs"].update(vae=["4", 2, 1]), 1,
     ["error[bad_linked_input]", "found an array of 3 items"]),
    ("return_type_mismatch", lambda d: d["3"]["inputs"].update(model=["4", 1]), 1,
     ["error[return_type_mismatch]", "input 'model' expects MODEL, but is linked to output 1 "
      "(CLIP) of #4 (CheckpointLoaderSimple)", "has a matching output 0 (MODEL)"]),
    ("value_smaller_than_min", lambda d: d["3"]["inputs"].update(steps=0), 1,
     ["error[value_smaller_than_min]", "steps 0 is smaller than the minimum 1"]),
    ("value_bigger_than_max", lambda d: d["3"]["inputs"].update(cfg=1000), 1,
     ["error[value_bigger_than_max]", "cfg 1000 is bigger than the maximum 100.0"]),
    ("value_not_in_list", lambda d: d["3"]["inputs"].update(sampler_name="eulr"), 1,
     ["error[value_not_in_list]", "sampler_name 'eulr' is not one of the allowed values",
      "did you mean 'euler'"]),
    ("invalid_input_type", lambda d: d["3"]["inputs"].update(steps="twenty"), 1,
     ["error[invalid_input_type]", "input 'steps' expects INT, found STRING 'twenty'"]),
    ("literal_for_link", lambda d: d["8"]["inputs"].update(vae=5), 1,
     ["error[bad_linked_input]", "input 'vae' needs a link to a VAE output; found the literal 5"]),
    ("cycle", lambda d: d["5"]["inputs"].update(batch_size=["3", 0]) or d["5"].update(
        class_type="RepeatLatentBatch", inputs={"samples": ["3", 0], "amount": 1}), 1,
     ["error[dependency_cycle]", "the workflow has a cycle"]),
    ("unknown_node", lambda d: d["8"].update(class_type="VAEDecod"), 1,
     ["unknown node type 'VAEDecod'", "did you mean 'VAEDecode'", "--object-info"]),
    ("no_outputs", lambda d: d.pop("9"), 1, ["error[prompt_no_outputs]", "SaveImage"]),
    # What `run` would refuse, found at check time (issue #18 item 4).
    ("model_leaves_its_folder", lambda d: d["4"]["inputs"].update(ckpt_name="../../etc/passwd"),
     1, ["node #4, input 'ckpt_name': error[value_not_in_list]", "contains '..'",
         "may not leave it"]),
    ("model_absolute_path", lambda d: d["4"]["inputs"].update(ckpt_name="/etc/passwd"), 1,
     ["error[value_not_in_list]", "is an absolute path"]),
    ("required_widget_missing", lambda d: d["3"]["inputs"].pop("cfg"), 1,
     ["error[required_input_missing]", "required input 'cfg' (FLOAT)",
      "help: set cfg=8.0 (the default)"]),
    ("misspelt_input_key", lambda d: d["3"]["inputs"].update(stpes=d["3"]["inputs"].pop("steps")),
     1, ["input 'stpes': error[unknown_input]", "has no input 'stpes'; ComfyUI ignores it",
         "did you mean 'steps'?", "error[required_input_missing]: required input 'steps'"]),
    ("missing_class_type", lambda d: d["8"].pop("class_type"), 1,
     ["node #8", "missing the class_type property"]),
]


@pytest.mark.parametrize("name,edit,code,expected", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_bad_workflow(tmp_path: Path, name: str, edit: Callable, code: int,
                      expected: list[str]) -> None:
    """Each kind of problem gets its specific message and exit code."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(_edit(edit)))
    result = _run("check", str(path))
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, f"{text!r} not in:\n{result.stderr}"


def test_all_problems_are_reported_in_one_run(tmp_path: Path) -> None:
    """Validation lists every problem, not just the first."""
    data = _edit(lambda d: (d["3"]["inputs"].update(steps=0, sampler_name="nope"),
                            d["5"]["inputs"].update(width=8)))
    path = tmp_path / "many.json"
    path.write_text(json.dumps(data))
    result = _run("check", str(path))
    assert result.returncode == 1
    for kind in ("value_smaller_than_min", "value_not_in_list"):
        assert kind in result.stderr
    assert "width 8 is smaller than the minimum 16" in result.stderr
    assert "3 errors" in result.stderr


FILE_CASES: list[tuple[str, bytes, list[str]]] = [
    ("malformed.json", b'{\n  "3": {\n    "class_type": "KSampler",,\n  }\n}\n',
     ["malformed.json:3:30: error: malformed JSON: Expecting property name"]),
    ("empty.json", b"", ["empty.json: error[unreadable_file]: file is empty"]),
    ("blank.cfy", b"  \n\n", ["file is empty"]),
    ("nometa.png", _png(), ["PNG has no ComfyUI workflow"]),
    ("truncated.png", _png([(b"tEXt", b"prompt\0{}")])[:40], ["unreadable PNG", "truncated"]),
    ("latin1.json", '{"3": "caf\xe9"}'.encode("latin-1"),
     ["not UTF-8 text (byte 0xe9 at offset 10)"]),
    ("list.json", b"[1, 2]", ["JSON list is not a workflow"]),
]


@pytest.mark.parametrize("name,content,expected", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_unreadable_file(tmp_path: Path, name: str, content: bytes, expected: list[str]) -> None:
    """Unreadable inputs exit 2 with a specific message."""
    path = tmp_path / name
    path.write_bytes(content)
    result = _run("check", str(path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, f"{text!r} not in:\n{result.stderr}"


def test_fifty_megabyte_file_is_refused(tmp_path: Path) -> None:
    """A 50 MB file is refused by size before it is read."""
    path = tmp_path / "huge.json"
    with open(path, "wb") as fh:
        fh.write(b"{" + b" " * (50 * 1024 * 1024) + b"}")
    result = _run("check", str(path))
    assert result.returncode == 2
    assert "50.0 MiB, larger than the 32 MiB limit" in result.stderr


def test_missing_file_and_directory(tmp_path: Path) -> None:
    """A missing path and a directory are unreadable (exit 2)."""
    assert _run("check", str(tmp_path / "nope.json")).returncode == 2
    result = _run("check", str(tmp_path))
    assert result.returncode == 2 and "is a folder, not a workflow file" in result.stderr


def test_png_with_prompt_chunk_checks_and_converts(tmp_path: Path) -> None:
    """A PNG carrying a prompt (tEXt) and a workflow (compressed iTXt) is read by content."""
    prompt = json.dumps(BASE).encode()
    workflow = (CORPUS / "lora__lora.ui.json").read_bytes()
    itxt = b"workflow\0\x01\x00\0\0" + zlib.compress(workflow)
    path = tmp_path / "image.bin"  # Extension says nothing: content decides.
    path.write_bytes(_png([(b"tEXt", b"prompt\0" + prompt), (b"iTXt", itxt)]))
    assert _run("check", str(path)).returncode == 0
    result = _run("convert", str(path), "--to", "api")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == BASE


def test_png_with_only_a_workflow_converts_it(tmp_path: Path) -> None:
    """Without a prompt chunk, the PNG's UI workflow is converted."""
    ui = (CORPUS / "lora__lora.ui.json").read_bytes()
    path = tmp_path / "w.png"
    path.write_bytes(_png([(b"zTXt", b"workflow\0\x00" + zlib.compress(ui))]))
    result = _run("convert", str(path), "--to", "api")
    assert result.returncode == 0, result.stderr
    expected = json.loads((CORPUS / "lora__lora.api.json").read_text())
    got = json.loads(result.stdout)
    assert {k: v["inputs"] for k, v in got.items()} == {k: v["inputs"] for k, v in expected.items()}


def test_check_json_report_has_comfyui_node_errors(tmp_path: Path) -> None:
    """--json gives ComfyUI's node_errors shape."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_edit(lambda d: d["3"]["inputs"].update(steps=0))))
    result = _run("check", "--json", str(path))
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["valid"] is False
    error = report["node_errors"]["3"]["errors"][0]
    assert error["type"] == "value_smaller_than_min"
    assert error["extra_info"]["input_name"] == "steps"
    assert report["node_errors"]["3"]["class_type"] == "KSampler"


def test_object_info_extends_the_catalogue(corpus: Path) -> None:
    """--object-info makes workflows with other nodes check (as ComfyUI would: --comfyui;
    comfyc cannot run them, and says so) and convert."""
    gligen = str(corpus / "gligen__gligen_textbox_example.ui.json")
    assert _run("check", gligen).returncode == 1
    extra = str(DATA / "comfy" / "object_info_extra.json")
    result = _run("check", "--object-info", extra, gligen)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error[unsupported_node]" in result.stderr and "GLIGENLoader" in result.stderr
    assert "comfyc has no implementation of GLIGENLoader" in result.stderr
    assert _run("check", "--object-info", extra, "--comfyui", gligen).returncode == 0
    result = _run("convert", gligen, "--to", "api", "--object-info", extra)
    assert result.returncode == 0
    expected = json.loads((corpus / "gligen__gligen_textbox_example.api.json").read_text())
    assert {k: v["inputs"] for k, v in json.loads(result.stdout).items()} == {
        k: v["inputs"] for k, v in expected.items()}


def test_convert_writes_output_file(tmp_path: Path, corpus: Path) -> None:
    """convert -o writes the file (atomically) and prints nothing."""
    out = tmp_path / "sub" / "out.json"
    result = _run("convert", str(corpus / "lora__lora.ui.json"), "--to", "api", "-o", str(out))
    assert result.returncode == 0 and result.stdout == ""
    assert json.loads(out.read_text())["3"]["class_type"] == "KSampler"


def test_check_does_not_import_torch(corpus: Path) -> None:
    """`comfyc check` stays light: torch is never imported."""
    code = (
        "import sys; from comfyc.cli.main import main; "
        f"rc = main(['check', '-q', {str(corpus / 'lora__lora.ui.json')!r}]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """`comfyc --help` lists every subcommand; each has its own complete help."""
    from comfyc.cli.main import SUBCOMMANDS, main

    result = _run("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: comfyc {name}" in out and len(out.splitlines()) > 4
        # An example of the command's use, and one spelling per common flag.
        assert re.search(rf"\n +comfyc {name} ", out), f"comfyc {name} --help shows no example"
        for wrong in ("--out ", "--no-progress", "--output-dir"):
            assert wrong not in out, f"comfyc {name} --help spells a flag {wrong.strip()}"


def test_examples_are_package_data() -> None:
    """The examples ship as `comfyc.examples` package data: the files of examples/ (one copy)
    that `comfyc demo` and `comfyc init` read through importlib.resources."""
    from comfyc import examples

    folder = DATA.parents[1] / "examples"
    assert examples.names() == sorted(p.name for p in folder.glob("*.cfy"))
    assert examples.read_text("txt2img.cfy") == (folder / "txt2img.cfy").read_text()
    assert examples.read_bytes("input/digit.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_files_are_looked_for_when_a_models_folder_is_known(tmp_path: Path) -> None:
    """--models-dir (or $COMFYC_MODELS): a missing file is value_not_in_list naming what is
    there; a present one passes. Without a folder the check says what it did not look for."""
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(_edit(lambda d: d["4"]["inputs"].update(
        ckpt_name="sd15/model.safetensors"))))
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    result = _run("check", str(path), "--models-dir", str(models))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error[value_not_in_list]: ckpt_name 'sd15/model.safetensors'" in result.stderr
    assert "not found; put the file at" in result.stderr
    (models / "checkpoints" / "sd15").mkdir()
    (models / "checkpoints" / "sd15" / "model.safetensors").write_bytes(b"")
    assert _run("check", str(path), "--models-dir", str(models)).returncode == 0
    result = subprocess.run([sys.executable, "-m", "comfyc.cli.main", "check", str(path)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COMFYC_MODELS": str(models)})
    assert result.returncode == 0, result.stderr
    env = {k: v for k, v in os.environ.items() if k != "COMFYC_MODELS"}
    result = subprocess.run([sys.executable, "-m", "comfyc.cli.main", "check", str(path)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0
    assert "warning[models_not_checked]" not in result.stderr  # comfyc's own kind: no tag
    assert "warning: model files not looked for (checkpoints: 'sd15/model.safetensors')" in (
        result.stderr)


def test_comfyui_mode_checks_as_comfyui_would(tmp_path: Path) -> None:
    """--comfyui: a misspelt key is ignored (as ComfyUI does), a missing input is not."""
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(_edit(lambda d: d["3"]["inputs"].update(
        stpes=d["3"]["inputs"].pop("steps")))))
    result = _run("check", "--comfyui", str(path))
    assert result.returncode == 1 and "unknown_input" not in result.stderr
    assert "required input 'steps'" in result.stderr
    path.write_text(json.dumps(_edit(lambda d: d["3"]["inputs"].update(extra_key=1))))
    assert _run("check", "--comfyui", str(path)).returncode == 0
    assert _run("check", str(path)).returncode == 1


def test_dsl_reports_every_error_of_the_file(tmp_path: Path) -> None:
    """Name errors and validation errors together, in file order; a node that lost an input
    to an earlier error is not reported again for it."""
    path = tmp_path / "multi.cfy"
    path.write_text(
        'ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")\n'
        'positive = CLIPTextEncode(txt="a digit", clip=ckpt.CLIP)\n'
        'negative = CLIPTextEncod(text="", clip=ckpt.CLIP)\n'
        "latent = EmptyLatentImage(width=64, height=64, batch_size=0)\n"
        "sampler = KSampler(model=ckpt.MODEL, seed=1, steps=0, sampler_name=\"eulr\",\n"
        "    scheduler=\"normal\", positive=positive, negative=negative, denoise=1.0)\n"
        "image = VAEDecode(samples=sampler, vae=ckpt.VAE)\n"
        'SaveImage(images=image, filename_prefix="x")\n')
    result = _run("check", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    heads = [line for line in result.stderr.splitlines() if line.startswith(str(path))]
    assert [h.split(": ", 2)[1] for h in heads] == [
        "error", "error", "error[value_smaller_than_min]", "error[required_input_missing]",
        "error[value_smaller_than_min]", "error[value_not_in_list]"], heads
    assert "unknown input 'txt'" in heads[0] and "unknown node type 'CLIPTextEncod'" in heads[1]
    assert "required input 'latent_image' (LATENT)" in heads[3]
    assert "'text'" not in result.stderr.split("\n\n", 1)[1]  # Lost to 'txt': not repeated.
    assert "'cfg'" not in result.stderr  # A widget left out takes its default (a warning).
    assert "6 errors" in result.stderr


def test_dsl_widget_left_out_takes_its_default(tmp_path: Path) -> None:
    """A DSL statement without a widget gets the default ComfyUI's frontend gives a new
    node's widget, and check says so; the same widget missing from an API prompt is
    required_input_missing (see JSON_CASES)."""
    path = tmp_path / "short.cfy"
    text = (DATA.parents[1] / "examples" / "txt2img.cfy").read_text()
    path.write_text(text.replace("    cfg=5.0,\n", ""))
    result = _run("check", str(path))
    assert result.returncode == 0, result.stderr
    assert "warning[default_filled]: widget 'cfg' of #5 (KSampler) is not set; it takes its " \
           "default 8.0" in result.stderr


def test_ui_widgets_filled_as_comfyui_frontend_fills_them(tmp_path: Path) -> None:
    """A UI workflow saved before a node had some widgets: they take their defaults (as
    ComfyUI's frontend does) and check names each one in a warning."""
    from tests.frontends.comfy_json.test_ui_features import _base, _by_id

    data = _base()
    _by_id(data, 3)["widgets_values"] = [7, "fixed", 10, 5.0, "euler"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    result = _run("check", str(path))
    assert result.returncode == 0, result.stderr
    assert "node #3 'Sampler A', input 'scheduler': warning[default_filled]: widget " \
           "'scheduler' of #3 (KSampler) is missing from the saved workflow; it takes its " \
           "default 'simple'" in result.stderr
    assert "input 'denoise': warning[default_filled]" in result.stderr


def test_node_comfyc_cannot_run_is_an_error(tmp_path: Path) -> None:
    """A node the catalogue defines (here from --object-info) but comfyc cannot run is
    unsupported_node with the reason; --comfyui accepts it, as ComfyUI would."""
    path = tmp_path / "merge.json"
    path.write_text(json.dumps(_edit(lambda d: d.update({
        "20": {"class_type": "ModelMergeSimple",
               "inputs": {"model1": ["4", 0], "model2": ["4", 0], "ratio": 0.5}},
        "3": {**d["3"], "inputs": {**d["3"]["inputs"], "model": ["20", 0]}}}))))
    extra = str(DATA / "comfy" / "object_info_extra.json")
    result = _run("check", "--object-info", extra, str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "node #20: error[unsupported_node]: #20 (ModelMergeSimple) cannot run: comfyc has " \
           "no implementation of ModelMergeSimple" in result.stderr
    assert "--comfyui" in result.stderr
    assert _run("check", "--object-info", extra, "--comfyui", str(path)).returncode == 0


def test_what_run_would_refuse_is_found_all_at_once(tmp_path: Path) -> None:
    """Issue #18 item 4 in one `comfyc check`: a model name leaving its folder, a model file
    missing from the models folder, a node comfyc cannot run, a missing required input and a
    misspelt key are all reported, each at its node, exit 1, no traceback."""
    def edit(d: dict[str, Any]) -> None:
        d["10"] = {"class_type": "VAELoader", "inputs": {"vae_name": "../../etc/passwd"}}
        d["11"] = {"class_type": "LoraLoader", "inputs": {
            "lora_name": "missing-lora.safetensors", "strength_model": 1.0,
            "strength_clip": 1.0, "model": ["4", 0], "clip": ["4", 1]}}
        d["20"] = {"class_type": "ModelMergeSimple",
                   "inputs": {"model1": ["11", 0], "model2": ["4", 0], "ratio": 0.5}}
        d["3"]["inputs"].update(model=["20", 0])
        d["3"]["inputs"].pop("cfg")
        d["3"]["inputs"]["stpes"] = d["3"]["inputs"].pop("steps")
        d["8"]["inputs"].update(vae=["10", 0])

    path = tmp_path / "many.json"
    path.write_text(json.dumps(_edit(edit)))
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "loras").mkdir()
    (models / "checkpoints" / "tiny-digits.safetensors").write_bytes(b"")
    result = _run("check", "--object-info", str(DATA / "comfy" / "object_info_extra.json"),
                  "--models-dir", str(models), str(path))
    err = result.stderr
    assert result.returncode == 1 and "Traceback" not in err and "bug in comfyc" not in err
    for text in ("node #10, input 'vae_name': error[value_not_in_list]",
                 "may not leave it",
                 "node #11, input 'lora_name': error[value_not_in_list]",
                 "'missing-lora.safetensors' not found",
                 "node #20: error[unsupported_node]",
                 "error[required_input_missing]: required input 'cfg' (FLOAT)",
                 "input 'stpes': error[unknown_input]", "did you mean 'steps'?"):
        assert text in err, f"{text!r} not in:\n{err}"
    assert "6 errors" in err, err
