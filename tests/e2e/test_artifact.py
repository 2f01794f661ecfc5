"""Compiled artifacts: parity with the torch path, folding, lean runtime, bad artifacts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
from comfyc.compiler.passes.base import PassContext
from comfyc.compiler.pipeline import run_pipeline
from comfyc.frontends.dsl import parse_dsl
from comfyc.runtime.artifact import ArtifactError, file_sha256, load, manifest_hash
from comfyc.runtime.backends.base import BackendError
from comfyc.runtime.program import ParamError

WORKFLOW = """
param seed: INT = 7 [min=0, max=18446744073709551615]
param prompt: STRING = "a handwritten digit three"
ckpt = CheckpointLoaderSimple(ckpt_name="random-sd1.safetensors")
other = CheckpointLoaderSimple(ckpt_name="unused.safetensors")
unused = CLIPTextEncode(text="never", clip=other.CLIP)
pos = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)
neg = CLIPTextEncode(text="", clip=ckpt.CLIP)
latent = EmptyLatentImage(width=64, height=64, batch_size=1)
s = KSampler(model=ckpt.MODEL, seed=seed, steps=4, cfg=4.0, sampler_name=SAMPLER,
             scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
image = VAEDecode(samples=s, vae=ckpt.VAE)
SaveImage(images=image, filename_prefix="t")
"""


def _graph(text: str):  # type: ignore[no-untyped-def]
    return parse_dsl(textwrap.dedent(text), "wf.cfy", default_catalog())


def _workflow(sampler: str = "euler", constant_prompt: bool = False) -> str:
    text = WORKFLOW.replace("SAMPLER", f'"{sampler}"')
    if constant_prompt:
        text = text.replace("text=prompt", 'text="a handwritten digit three"')
        text = text.replace('param prompt: STRING = "a handwritten digit three"\n', "")
    return text


def _torch_images(text: str, models: Path, params: dict) -> np.ndarray:
    graph = _graph(text)
    cache = TorchModelCache(str(models))
    run_pipeline(graph, PassContext(models=cache), verify=True)
    program = lower_to_program(graph, cache=cache)
    (image,) = program.run(params, save=False).images.values()
    return image


@pytest.fixture(scope="module")
def artifact(random_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """txt2img with a param prompt, compiled once for the module."""
    out = tmp_path_factory.mktemp("art") / "t2i.comfyc"
    compile_graph(_graph(_workflow()), out, CompileOptions(models_dir=str(random_models)))
    return out


def test_artifact_layout_and_manifest(artifact: Path) -> None:
    """The manifest records params, stages with shapes, and hashes of every file."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["format"] == "comfyc-artifact" and manifest["format_version"] == 2
    assert [p["name"] for p in manifest["params"]] == ["seed", "prompt"]
    kinds = sorted(e["kind"] for e in manifest["stages"].values() if not e.get("unused"))
    assert kinds == ["text_encoder_layers", "unet", "vae_decoder"]
    files = set(manifest["files"])
    assert any(f.startswith("stages/unet_") for f in files)
    assert "constants.safetensors" in files and any(f.startswith("tokenizer/") for f in files)
    # The unused checkpoint and encode were eliminated: nothing refers to them.
    assert "unused.safetensors" not in json.dumps(manifest["program"])


def test_param_prompt_changes_the_image_and_matches_torch(artifact: Path,
                                                          random_models: Path) -> None:
    """ONNX artifact == torch path within 2/255; a different prompt gives another image."""
    program = load(artifact)
    a = program.run({"seed": 3}, save=False).images["9"]
    b = program.run({"seed": 3, "prompt": "the number 8"}, save=False).images["9"]
    assert not np.allclose(a, b)
    reference = _torch_images(_workflow(), random_models, {"seed": 3})
    assert np.abs(a - reference).max() <= 2 / 255


def test_constant_prompts_ship_no_text_encoder(random_models: Path, tmp_path: Path) -> None:
    """With constant prompts the artifact has no text encoder and never tokenizes."""
    out = tmp_path / "const.comfyc"
    compile_graph(_graph(_workflow(constant_prompt=True)), out,
                  CompileOptions(models_dir=str(random_models)))
    manifest = json.loads((out / "manifest.json").read_text())
    layers = [e for e in manifest["stages"].values() if e["kind"] == "text_encoder_layers"]
    assert all(not e["layers"] for e in layers)
    assert not any(f.startswith("tokenizer/") for f in manifest["files"])
    code = textwrap.dedent(f"""
        import sys
        import comfyc.runtime.artifact as a
        p = a.load({str(out)!r})
        p.run({{"seed": 1}}, save=False)
        assert "comfyc.runtime.tokenizer" not in sys.modules, "tokenized at run time"
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_lean_runtime_runs_without_torch(artifact: Path, tmp_path: Path) -> None:
    """In a process where importing torch/diffusers/transformers fails, the artifact runs."""
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "diffusers", "transformers"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import comfyc.runtime
        program = comfyc.runtime.load({str(artifact)!r})
        result = program.run({{"seed": 5}}, output_dir={str(tmp_path / "out")!r})
        print(result.files)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "t_00001_.png").is_file()


def _damaged(artifact: Path, tmp_path: Path, how: str) -> Path:
    copy = tmp_path / "bad.comfyc"
    shutil.copytree(artifact, copy)
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    unet = next(f for f in manifest["files"] if f.startswith("stages/unet_"))
    if how == "truncated":
        data = (copy / unet).read_bytes()
        (copy / unet).write_bytes(data[: len(data) // 2])
    elif how == "edited":
        manifest["params"][0]["default"] = 99
        manifest_path.write_text(json.dumps(manifest))
    elif how == "missing":
        (copy / unet).unlink()
    elif how == "version":
        manifest["format_version"] = 99
        manifest_path.write_text(json.dumps(manifest))
    elif how == "no_hash":  # An edit that also deletes the hash must not turn the check off.
        manifest["params"][0]["default"] = 99
        del manifest["manifest_hash"]
        manifest_path.write_text(json.dumps(manifest))
    elif how in ("outside", "absolute", "unhashed", "no_program", "torch_class"):
        if how == "no_program":
            del manifest["program"]
        else:
            entry = next(e for e in manifest["stages"].values() if e.get("file"))
            entry["file"] = {"outside": "../../etc/passwd", "absolute": "/etc/passwd",
                             "unhashed": "stages/other.onnx",
                             "torch_class": entry["file"]}[how]
            if how == "torch_class":
                folder = copy / "torch" / "x"
                folder.mkdir(parents=True)
                (folder / "config.json").write_text(json.dumps(
                    {"class": "StableDiffusionPipeline", "config": {}}))
                entry["torch"] = "torch/x"
                manifest["files"]["torch/x/config.json"] = file_sha256(folder / "config.json")
                manifest["plan"] = {k: "torch" for k in manifest["plan"]}
        manifest["manifest_hash"] = manifest_hash(manifest)  # A consistent, hostile manifest.
        manifest_path.write_text(json.dumps(manifest))
    elif how == "deep":
        manifest_path.write_text("[" * 200_000 + "]" * 200_000)
    return copy


@pytest.mark.parametrize("how,message", [
    ("truncated", "does not match its recorded hash"),
    ("edited", "was edited after compilation"),
    ("missing", "is missing"),
    ("version", "format version 99 is not supported"),
    ("no_hash", "has no manifest_hash"),
    ("outside", "points outside the artifact"),
    ("absolute", "points outside the artifact"),
    ("unhashed", "not in its hashed file list"),
    ("no_program", "program is missing"),
    ("deep", "nested too deeply"),
])
def test_bad_artifacts_are_clear_errors(artifact: Path, tmp_path: Path, how: str,
                                        message: str) -> None:
    """Damaged artifacts fail on load with a clear message (library and CLI)."""
    bad = _damaged(artifact, tmp_path, how)
    with pytest.raises(ArtifactError, match=message):
        load(bad)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "comfyc.cli.main", "run", str(bad),
                             "--output", str(out)], capture_output=True, text=True)
    # NOTE: exit 2: a damaged artifact is an unreadable input (README: Exit codes).
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_torch_stage_class_comes_from_an_allow_list(artifact: Path, tmp_path: Path) -> None:
    """A stored torch stage's config.json cannot choose an arbitrary class to instantiate."""
    bad = _damaged(artifact, tmp_path, "torch_class")
    with pytest.raises(BackendError, match="not a stage class comfyc stores"):
        load(bad)


def test_bad_params_are_rejected_before_running(artifact: Path, tmp_path: Path) -> None:
    """Unknown or ill-typed params: a clear error and nothing written."""
    program = load(artifact)
    with pytest.raises(ParamError, match="unknown param 'sede'"):
        program.run({"sede": 1}, output_dir=tmp_path / "o")
    with pytest.raises(ParamError, match="'seven' is not a valid INT"):
        program.run({"seed": "seven"}, output_dir=tmp_path / "o")
    with pytest.raises(ParamError, match="below its minimum 0"):
        program.run({"seed": -1}, output_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_forced_torch_stage_matches_onnx(random_models: Path, tmp_path: Path) -> None:
    """--backend vae_decoder=torch stores that stage for PyTorch; images agree."""
    out = tmp_path / "mixed.comfyc"
    compile_graph(_graph(_workflow()), out, CompileOptions(
        models_dir=str(random_models), backend={"vae_decoder": "torch"}))
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["plan"].values()) == {"ort-cpu", "torch"}
    mixed = load(out).run({"seed": 2}, save=False).images["9"]
    with pytest.raises(BackendError, match="has no ONNX file"):
        load(out, backend="ort-cpu")  # That stage was stored for PyTorch only.
    reference = _torch_images(_workflow(), random_models, {"seed": 2})
    assert np.abs(mixed - reference).max() <= 2 / 255
    # Without torch, the error says what to install.
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        import comfyc.runtime
        comfyc.runtime.load({str(out)!r})
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "pip install 'comfyc[compiler,cpu]'" in result.stderr


def test_interrupted_compile_leaves_no_artifact(random_models: Path, tmp_path: Path) -> None:
    """Killing a compile midway leaves nothing at the target path."""
    wf = tmp_path / "wf.cfy"
    wf.write_text(_workflow())
    target = tmp_path / "killed.comfyc"
    proc = subprocess.Popen([sys.executable, "-m", "comfyc.cli.main", "compile", str(wf),
                             "-o", str(target), "--models-dir", str(random_models)],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # Wait until export has started, then kill it.
        if "exporting" in line:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.1)
    assert not target.exists()
