"""User mistakes and missing software get a message and an exit code, never a traceback or a
"bug in comfyc" (issue #18 item 3), through a real subprocess: a missing checkpoint, a node
comfyc cannot run, a folder that is neither workflow nor artifact, a backend this machine
cannot run, and the lean install's missing extras. Also what an artifact's files and images
are: readable by others (the umask's mode) and carrying the workflow that made them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA, REPO

EXAMPLES = REPO / "examples"
TINY = REPO / "runtime" / "models" / "tiny-digits.safetensors"
BASE = json.loads((DATA / "comfy" / "txt2img.api.json").read_text())


def _run(*args: str, cwd: Path | None = None, umask: int | None = None,
         block: tuple[str, ...] = (), timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`comfyc ARGS` in a subprocess; ``block`` makes importing those modules fail there, as
    in a lean install."""
    code = ("import sys\n"
            f"for name in {block!r}:\n    sys.modules[name] = None\n"
            "from comfyc.cli.main import main\n"
            f"sys.exit(main({list(args)!r}))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("COMFYC_MODELS", None)

    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env, preexec_fn=set_umask)


def _clean(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "bug in comfyc" not in result.stderr, result.stderr
    return result.stderr


def _workflow(tmp_path: Path, edit: dict[str, dict[str, object]]) -> Path:
    data = json.loads(json.dumps(BASE))
    for node_id, entry in edit.items():
        data.setdefault(node_id, {}).update(entry)
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("command", ["compile", "inspect"])
def test_missing_checkpoint_is_a_workflow_error(tmp_path: Path, command: str) -> None:
    """A checkpoint that is not there stops compile and inspect with value_not_in_list at
    the input (as `run` and `check --models-dir` say), not a failed pass."""
    path = _workflow(tmp_path, {"4": {"inputs": {"ckpt_name": "nope.safetensors"}}})
    args = [command, str(path)] + (["-o", str(tmp_path / "x.comfyc")] if command == "compile"
                                   else [])
    err = _clean(_run(*args, cwd=tmp_path), 1)
    assert "node #4, input 'ckpt_name': error[value_not_in_list]" in err
    assert "'nope.safetensors' not found; no models folder is set" in err
    assert not (tmp_path / "x.comfyc").exists()


def test_node_comfyc_cannot_run_stops_compile_before_any_work(tmp_path: Path) -> None:
    """A node without an implementation (here one an --object-info file defines) is named
    with the catalogue's reason, at validation, before any model is loaded."""
    path = _workflow(tmp_path, {"30": {"class_type": "ModelMergeSimple", "inputs": {
        "model1": ["4", 0], "model2": ["4", 0], "ratio": 0.5}},
        "3": {"inputs": {**BASE["3"]["inputs"], "model": ["30", 0]}}})
    err = _clean(_run("compile", str(path), "-o", str(tmp_path / "x.comfyc"), "--object-info",
                      str(DATA / "comfy" / "object_info_extra.json")), 1)
    assert "node #30: error[unsupported_node]: #30 (ModelMergeSimple) cannot run: comfyc " \
           "has no implementation of ModelMergeSimple" in err
    assert "[compile] lowering" not in err


def test_folders_that_are_not_artifacts(tmp_path: Path) -> None:
    """`run` and `check` on a folder of workflows: exit 2, saying what is in it."""
    err = _clean(_run("run", str(EXAMPLES), "-q"), 2)
    assert "not a compiled artifact" in err and "area.cfy" in err
    err = _clean(_run("check", str(EXAMPLES)), 2)
    assert "is a folder, not a workflow file; it holds area.cfy" in err
    assert f"help: check the files in it: comfyc check {EXAMPLES}/*" in err


def test_missing_tensorrt_at_compile_names_a_backend_that_runs_here(tmp_path: Path) -> None:
    """compile --backend trt without TensorRT: exit 2 (as run and build-engines: this machine
    lacks it, like an extra), and the help names ort-cpu."""
    pytest.importorskip("onnxruntime")
    if subprocess.run([sys.executable, "-c", "import tensorrt"]).returncode == 0:
        pytest.skip("TensorRT is installed here")
    err = _clean(_run("compile", str(EXAMPLES / "txt2img.cfy"), "--backend", "trt", "-o",
                      str(tmp_path / "x.comfyc")), 2)
    assert "needs NVIDIA TensorRT" in err and "--backend ort-cpu" in err


@pytest.mark.parametrize("command,extra", [
    (["compile", "examples/txt2img.cfy", "-o", "x.comfyc"], "compiler"),
    (["demo", "-o", "demo-out"], "compiler"),
    (["inspect", "examples/txt2img.cfy"], "compiler"),
    (["run", "examples/txt2img.cfy"], "compiler"),
    (["check", "examples/txt2img.cfy"], "dsl"),
    (["convert", "examples/txt2img.cfy", "--to", "api"], "dsl"),
    (["fmt", "--check", "examples/txt2img.cfy"], "dsl"),
    (["viz", "examples/txt2img.cfy", "-o", "g.html"], "dsl"),
    (["init", "-t", "sdxl", "-o", "sdxl.cfy"], "dsl"),
])
def test_lean_install_names_the_extra(tmp_path: Path, command: list[str], extra: str) -> None:
    """Without the compiler's packages (a comfyc[cpu] install) each command says which extra
    to install, exit 2, as `serve` does."""
    blocked = ("torch", "diffusers", "transformers", "onnx", "onnxscript", "lark")
    args = [str(REPO / a) if a.startswith("examples/") else a for a in command]
    err = _clean(_run(*args, cwd=tmp_path, block=blocked), 2)
    assert f"needs comfyc's {extra} extra" in err and f"pip install 'comfyc[{extra}]'" in err
    assert "from a wheel pip install 'dist/comfyc-" in err


# ----------------------------------------------------------------- one compiled artifact
@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/txt2img.cfy compiled for onnxruntime by `comfyc compile`, umask 002."""
    if not TINY.is_file():
        pytest.skip("the tiny model is not built yet")
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("artifact") / "txt2img.comfyc"
    _clean(_run("compile", str(EXAMPLES / "txt2img.cfy"), "-o", str(path), "-q",
                umask=0o002), 0)
    return path


def test_artifact_files_have_the_umask_mode(artifact: Path) -> None:
    """Every file and folder of the artifact has the mode the umask gives (002: group may
    write), none the owner-only 0600 some writers use (safetensors)."""
    modes = {p.relative_to(artifact).as_posix() or ".": stat.S_IMODE(p.stat().st_mode)
             for p in [artifact, *artifact.rglob("*")]}
    assert "constants.safetensors" in modes and any(k.endswith(".onnx") for k in modes)
    wrong = {k: oct(m) for k, m in modes.items()
             if m != (0o775 if (artifact / k).is_dir() else 0o664)}
    assert not wrong, wrong


def test_manifest_names_no_temporary_folder(artifact: Path) -> None:
    """The manifest records stage files relative to the artifact: neither the temporary
    folder it was built in (``.NAME.comfyc.tmp-PID``) nor any absolute path of this machine."""
    text = (artifact / "manifest.json").read_text(encoding="utf-8")
    assert ".tmp-" not in text and str(artifact.parent) not in text
    stages = json.loads(text)["stages"]
    paths = [entry["facts"]["path"] for entry in stages.values()
             if "path" in entry.get("facts", {})]
    assert paths and all(path.startswith("stages/") and (artifact / path).is_file()
                         for path in paths), paths


def test_missing_tensorrt_at_run_and_build_engines(artifact: Path) -> None:
    """run --backend trt and build-engines without TensorRT: exit 2, a backend that runs."""
    if subprocess.run([sys.executable, "-c", "import tensorrt"]).returncode == 0:
        pytest.skip("TensorRT is installed here")
    err = _clean(_run("run", str(artifact), "--backend", "trt", "-q"), 2)
    assert "On this machine the stages run with --backend ort-cpu" in err
    assert "ort-cuda" not in err or "CUDAExecutionProvider" in err
    err = _clean(_run("build-engines", str(artifact)), 2)
    assert "comfyc run ARTIFACT --backend ort-cpu" in err


def test_check_verifies_an_artifact(artifact: Path, tmp_path: Path) -> None:
    """`check ARTIFACT` reads the manifest and every file's hash; a damaged file is exit 2."""
    assert "ok (artifact" in _run("check", str(artifact)).stdout
    import shutil

    damaged = tmp_path / "damaged.comfyc"
    shutil.copytree(artifact, damaged)
    with open(damaged / "constants.safetensors", "ab") as fh:
        fh.write(b"x")
    err = _clean(_run("check", str(damaged)), 2)
    assert "does not match its recorded hash" in err


def test_artifact_png_carries_the_workflow_and_reruns(artifact: Path, tmp_path: Path) -> None:
    """`comfyc run ARTIFACT` → PNG with the user's prompt (seed and text substituted) →
    `comfyc check PNG` ok → `comfyc run PNG` (PyTorch) within the 2/255 backends agree on."""
    _clean(_run("run", str(artifact), "--param", "seed=5", "--param",
                "prompt=a handwritten digit one", "-o", str(tmp_path / "a"), "-q"), 0)
    [first] = (tmp_path / "a").glob("*.png")
    prompt = json.loads(Image.open(first).text["prompt"])
    sampler = next(v for v in prompt.values() if v["class_type"] == "KSampler")
    assert sampler["inputs"]["seed"] == 5
    texts = sorted(v["inputs"]["text"] for v in prompt.values()
                   if v["class_type"] == "CLIPTextEncode")
    assert texts == ["", "a handwritten digit one"]
    assert "FoldedConditioning" not in json.dumps(prompt) and '"dsl"' not in json.dumps(prompt)
    assert "ok (png" in _clean(_run("check", str(first)), 0) + _run("check", str(first)).stdout
    _clean(_run("run", str(first), "-o", str(tmp_path / "b"), "-q"), 0)
    [again] = (tmp_path / "b").glob("*.png")
    a, b = (np.asarray(Image.open(p), dtype=np.int16) for p in (first, again))
    assert np.abs(a - b).max() <= 2


def test_tune_says_what_it_tries(artifact: Path) -> None:
    """tune names the backends it measures per stage and why the others are left out."""
    from comfyc.cli.commands.tune import describe_candidates
    from comfyc.runtime.artifact import read_manifest

    lines = describe_candidates(read_manifest(artifact), None)
    assert any(line.endswith(": trying ort-cpu") or ": trying ort-cpu," in line
               for line in lines), lines
    assert "not tried: torch and torch-compile: the artifact stores no PyTorch weights " \
           "(compile with --store-torch or --backend auto to try them)" in lines


def test_bench_first_run_shows_its_steps(capsys: pytest.CaptureFixture[str]) -> None:
    """A bench row's first run (minutes under torch.compile) prints its sampling steps, at
    most one line every 5 s after the first."""
    from comfyc.cli.commands.bench import _step_progress

    progress = _step_progress({"label": "torch-compile", "progress": True})
    for step in range(1, 21):
        progress("KSampler", step, 20)
    err = capsys.readouterr().err
    assert err == "[bench] torch-compile: KSampler: step 1/20\n"


def test_threads_flag_as_a_user_passes_it(artifact: Path, tmp_path: Path) -> None:
    """`--threads 1` runs the artifact on one thread (issue #18 item 6: the fast setting on a
    busy 2-core box); a count that is not one is a usage error (exit 2) saying what to give."""
    _clean(_run("run", str(artifact), "--threads", "1", "-o", str(tmp_path / "one"), "-q"), 0)
    assert list((tmp_path / "one").glob("*.png"))
    for bad in ("-2", "two"):
        err = _clean(_run("run", str(artifact), "--threads", bad, "-o", str(tmp_path / "x")), 2)
        assert f"argument --threads: '{bad}' is not a thread count" in err
        assert "1 or more" in err
    assert not (tmp_path / "x").exists()


def test_missing_embedding_is_ignored_and_a_broken_one_refused(tmp_path: Path) -> None:
    """`embedding:NAME` (issue #19 item 3): a name with no file is ignored with a warning, as
    ComfyUI ignores it; a file that cannot be read stops compile and run with a clear error at
    the prompt (no traceback) and nothing is written."""
    path = _workflow(tmp_path, {"6": {"inputs": {
        "text": "(embedding:EasyNegative:1.2), a handwritten digit seven", "clip": ["4", 1]}}})
    models = tmp_path / "models"
    (models / "embeddings").mkdir(parents=True)
    done = _run("compile", str(path), "-o", str(tmp_path / "ok.comfyc"), "--models-dir",
                str(models), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "embedding:EasyNegative does not exist; ignoring it" in done.stderr, done.stderr
    (models / "embeddings" / "EasyNegative.safetensors").write_bytes(b"not safetensors")
    err = _clean(_run("compile", str(path), "-o", str(tmp_path / "x.comfyc"), "--models-dir",
                      str(models), cwd=tmp_path), 1)
    assert "cannot read embedding" in err and "EasyNegative" in err, err
    assert not (tmp_path / "x.comfyc").exists()
    err = _clean(_run("run", str(path), "-o", str(tmp_path / "out"), "-q", "--models-dir",
                      str(models), cwd=tmp_path), 1)
    assert "cannot read embedding" in err, err
    assert not (tmp_path / "out").exists()
