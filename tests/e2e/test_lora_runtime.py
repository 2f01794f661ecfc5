"""Runtime-mode LoRA: any strength without a recompile.

A LoRA whose strength is a param (or every LoRA with ``--lora-runtime``) is not folded: the
artifact stores its factors and the runtime merges them into the stage's weights when it makes
the session. The images at each strength equal those of artifacts compiled with that strength
folded in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
from comfyc.compiler.passes.base import PassContext, PassManager
from comfyc.compiler.passes.runtime_params import RuntimeParamsPass
from comfyc.compiler.passes.validate import ValidatePass
from comfyc.frontends.dsl import parse_dsl
from comfyc.runtime.artifact import load
from comfyc.runtime.backends.base import BackendError, Stage
from comfyc.runtime.lora import LoraSlot, LoraTarget, RuntimeLoraStage

STRENGTHS = (0.3, 0.9)

WORKFLOW = """
param strength: FLOAT = 0.5
ckpt = CheckpointLoaderSimple(ckpt_name="random-sd1.safetensors")
lora = LoraLoader(model=ckpt.MODEL, clip=ckpt.CLIP, lora_name="random-lora.safetensors",
                  strength_model=strength, strength_clip=strength)
pos = CLIPTextEncode(text="a handwritten digit three", clip=lora.CLIP)
neg = CLIPTextEncode(text="", clip=lora.CLIP)
latent = EmptyLatentImage(width=64, height=64, batch_size=1)
s = KSampler(model=lora.MODEL, seed=7, steps=4, cfg=4.0, sampler_name="euler",
             scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
image = VAEDecode(samples=s, vae=ckpt.VAE)
SaveImage(images=image, filename_prefix="lora")
"""


def _folded(strength: float) -> str:
    """The workflow with the strength written as a literal."""
    return WORKFLOW.replace("param strength: FLOAT = 0.5\n", "").replace(
        "strength_model=strength, strength_clip=strength",
        f"strength_model={strength}, strength_clip={strength}")


def _graph(text: str):  # type: ignore[no-untyped-def]
    return parse_dsl(textwrap.dedent(text), "wf.cfy", default_catalog())


def _image(program, params: dict) -> np.ndarray:  # type: ignore[no-untyped-def]
    (image,) = program.run(params, save=False).images.values()
    return image


@pytest.fixture(scope="module")
def runtime_artifact(random_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workflow with a param strength, compiled once for the module."""
    out = tmp_path_factory.mktemp("lora") / "runtime.comfyc"
    compile_graph(_graph(WORKFLOW), out, CompileOptions(models_dir=str(random_models)))
    return out


@pytest.fixture(scope="module")
def folded_images(random_models: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[float, np.ndarray]:
    """Per strength: the image of an artifact compiled with that strength folded in."""
    images = {}
    for strength in STRENGTHS:
        out = tmp_path_factory.mktemp("lora") / f"folded-{strength}.comfyc"
        compile_graph(_graph(_folded(strength)), out, CompileOptions(
            models_dir=str(random_models)))
        manifest = json.loads((out / "manifest.json").read_text())
        assert not any(f.startswith("lora/") for f in manifest["files"])  # Really folded.
        images[strength] = _image(load(out), {})
    return images


def test_param_strength_equals_folded_artifacts(runtime_artifact: Path,
                                                folded_images: dict[float, np.ndarray]) -> None:
    """One artifact, two strengths: each image equals the folded artifact's within 1e-5."""
    manifest = json.loads((runtime_artifact / "manifest.json").read_text())
    assert any(f.startswith("lora/") for f in manifest["files"])
    unets = [e for e in manifest["stages"].values() if e["kind"] == "unet" and "lora" in e]
    assert len(unets) == 1 and unets[0]["optimized"] is False
    assert unets[0]["lora"]["slots"][0]["name"] == "random-lora.safetensors"
    # The param clip strength keeps a text encoder (with LoRA slots): prompts are not folded.
    layers = [sub for e in manifest["stages"].values() if e["kind"] == "text_encoder_layers"
              for sub in e["layers"].values()]
    assert len(layers) == 1 and "lora" in layers[0]
    program = load(runtime_artifact)
    images = {s: _image(program, {"strength": s}) for s in STRENGTHS}
    for strength in STRENGTHS:
        assert np.abs(images[strength] - folded_images[strength]).max() <= 1e-5, strength
    assert np.abs(images[0.3] - images[0.9]).max() > 0.01  # The strength matters.
    # Both sessions were made from the one artifact and are cached.
    unet = program.stages[next(n for n, e in manifest["stages"].items() if "lora" in e)]
    assert isinstance(unet, RuntimeLoraStage) and unet.cached() == [(0.3,), (0.9,)]
    assert np.array_equal(_image(program, {"strength": 0.3}), images[0.3])


def test_lean_runtime_merges_without_torch(runtime_artifact: Path, tmp_path: Path) -> None:
    """The merge needs numpy and onnxruntime only: same image with torch blocked."""
    expected = _image(load(runtime_artifact), {"strength": 0.9})
    out = tmp_path / "image.npy"
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "diffusers", "transformers", "onnx"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import comfyc.runtime
        program = comfyc.runtime.load({str(runtime_artifact)!r})
        (image,) = program.run({{"strength": 0.9}}, save=False).images.values()
        np.save({str(out)!r}, image)
    """)
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(out), expected)


def test_lora_runtime_option_and_torch_stored_stage(random_models: Path, tmp_path: Path,
                                                    folded_images: dict[float, np.ndarray]
                                                    ) -> None:
    """--lora-runtime keeps a constant-strength LoRA unfolded; a UNet stored for PyTorch
    merges the same factors at load."""
    out = tmp_path / "flag.comfyc"
    compile_graph(_graph(_folded(0.9)), out, CompileOptions(
        models_dir=str(random_models), lora_runtime=True, backend={"unet": "torch"}))
    manifest = json.loads((out / "manifest.json").read_text())
    (unet,) = [e for e in manifest["stages"].values() if e["kind"] == "unet" and "lora" in e]
    assert unet["backend"] == "torch" and "torch" in unet["lora"]["source"]
    image = _image(load(out), {})
    assert np.abs(image - folded_images[0.9]).max() <= 2 / 255
    with pytest.raises(BackendError, match="has no ONNX file"):
        load(out, backend="ort-cpu")


def _torch_program(text: str, cache: TorchModelCache):  # type: ignore[no-untyped-def]
    """Lower as `comfyc run WORKFLOW` does (validate + params, no LoRA pass, no folding)."""
    graph = _graph(text)
    context = PassContext(default_catalog())
    PassManager([ValidatePass(context), RuntimeParamsPass(context)], verify=True)(graph)
    return lower_to_program(graph, cache=cache)


def test_torch_path_param_strength(random_models: Path, tmp_path: Path) -> None:
    """`comfyc run WORKFLOW --param strength=S` equals the workflow with S written in, and a
    chain of two runtime LoRAs equals the same chain folded."""
    cache = TorchModelCache(str(random_models))
    wf = tmp_path / "wf.cfy"
    wf.write_text(textwrap.dedent(WORKFLOW))
    result = subprocess.run(
        [sys.executable, "-m", "comfyc.cli.main", "run", str(wf), "--models-dir",
         str(random_models), "--param", "strength=0.9", "--output", str(tmp_path / "out"),
         "--quiet"], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    from PIL import Image

    (png,) = (tmp_path / "out").glob("lora_*.png")
    pixels = np.asarray(Image.open(png), dtype=np.float32) / 255
    folded = _image(_torch_program(_folded(0.9), cache), {})[0]
    assert np.abs(pixels - folded).max() <= 1 / 255 + 1e-6
    # Two runtime-mode LoRAs in a chain: the second stage has two slots.
    chain = WORKFLOW.replace("param strength", "param second: FLOAT = 0.2\nparam strength")
    chain = chain.replace("s = KSampler(model=lora.MODEL", """more = LoraLoaderModelOnly(
    model=lora.MODEL, lora_name="random-lora.safetensors", strength_model=second)
s = KSampler(model=more.MODEL""")
    folded_chain = chain.replace("param second: FLOAT = 0.2\n", "").replace(
        "strength_model=second", "strength_model=-0.5")
    folded_chain = folded_chain.replace("param strength: FLOAT = 0.5\n", "").replace(
        "strength_model=strength, strength_clip=strength",
        "strength_model=0.3, strength_clip=0.3")
    expected = _image(_torch_program(folded_chain, cache), {})
    program = _torch_program(chain, cache)
    assert np.abs(_image(program, {"strength": 0.3, "second": -0.5}) - expected).max() <= 1e-6
    unet = next(st for st in program.stages.values() if getattr(st, "slot_names", None) and
                st.kind == "unet" and len(st.slot_names) == 2)
    assert unet.cached() == [(0.3, -0.5)]


class _FakeStage(Stage):
    """Records the overrides it was made with."""

    def __init__(self, overrides: dict[str, np.ndarray]) -> None:
        super().__init__("unet", "unet")
        self.overrides = overrides


def test_runtime_lora_stage_merge_cache_and_errors() -> None:
    """W + Σ s·scale·up@down per target (conv weights reshaped); LRU of two; 0 → base."""
    rng = np.random.default_rng(0)
    base = {"lin.weight": rng.standard_normal((6, 5)).astype(np.float32),
            "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float16)}
    slots = [
        LoraSlot("a", {"lin.weight": LoraTarget(rng.standard_normal((6, 2)).astype(np.float32),
                                                rng.standard_normal((2, 5)).astype(np.float32),
                                                0.5)}),
        LoraSlot("b", {"conv.weight": LoraTarget(rng.standard_normal((4, 2)).astype(np.float32),
                                                 rng.standard_normal((2, 27)).astype(
                                                     np.float32), 2.0)}),
    ]
    made: list[dict[str, np.ndarray]] = []

    def create(overrides: dict[str, np.ndarray]) -> Stage:
        made.append(overrides)
        return _FakeStage(overrides)

    stage = RuntimeLoraStage("unet", "unet", slots, base.__getitem__, create)
    merged = stage.with_strengths((0.7, -1.0)).overrides
    lin = slots[0].targets["lin.weight"]
    np.testing.assert_allclose(merged["lin.weight"],
                               base["lin.weight"] + 0.7 * 0.5 * lin.up @ lin.down, rtol=1e-6)
    conv = slots[1].targets["conv.weight"]
    assert merged["conv.weight"].dtype == np.float16
    np.testing.assert_allclose(
        merged["conv.weight"].astype(np.float32),
        base["conv.weight"].astype(np.float32) - 2.0 * (conv.up @ conv.down).reshape(4, 3, 3, 3),
        rtol=1e-2, atol=1e-2)
    assert set(stage.with_strengths((0.7, 0.0)).overrides) == {"lin.weight"}
    assert stage.with_strengths((0.0, -0.0)).overrides == {}  # The base weights.
    assert stage.cached() == [(0.7, 0.0), (0.0, 0.0)] and len(made) == 3
    stage.with_strengths((0.0, 0.0))
    assert len(made) == 3  # Cached: no new session.
    with pytest.raises(BackendError, match="has 2 runtime LoRA"):
        stage.with_strengths((1.0,))
    with pytest.raises(BackendError, match="runs only through ApplyLoRA"):
        stage(np.zeros(1))
