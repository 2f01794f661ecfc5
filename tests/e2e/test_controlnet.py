"""ControlNet in workflows on tiny seeded models (a tiny SD1 checkpoint and a ControlNet of
the same widths, made by seeded scripts):

* diffusers' StableDiffusionControlNetPipeline (an oracle we did not write) on the same weights
  and initial noise: within 1/255 for ControlNetApplyAdvanced (strength, step window) and for
  two ControlNets chained (diffusers' MultiControlNetModel);
* ComfyUI's own ControlNet example (UI and API forms, from the shared corpus, its files saved
  under the example's names) checks, compiles (ControlNet and UNet as ONNX stages) and equals
  the torch path within 2/255;
* the strength is a runtime param of the artifact: changing it needs no recompile, and 0
  gives the image without ControlNet.

ComfyUI's semantics of the stage (hint, residuals, timestep range, chaining) are checked
against ComfyUI's own code in tests/compiler/models/test_controlnet_comfyui_reference.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
from comfyc.compiler.passes.base import PassContext, PassOptions
from comfyc.compiler.pipeline import run_pipeline
from comfyc.frontends.dsl import parse_dsl
from comfyc.frontends.load import load_workflow
from comfyc.runtime import load
from comfyc.runtime.artifact import read_manifest
from tests.conftest import REPO

CORPUS_NAME = "controlnet__controlnet_example"
CKPT, VAE, CONTROL = "Anything-V3.0.ckpt", "vae-ft-mse-840000-ema-pruned.safetensors", \
    "control_scribble.safetensors"
CONTROL_2 = "control_depth.safetensors"
HINT, HINT_2 = "input_scribble_example.png", "depth.png"
SIZE, STEPS = 64, 10
PROMPT = "a drawing of a house"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """checkpoints/Anything-V3.0.ckpt (pickled, as published), vae/vae-ft-mse-… (the
    checkpoint's VAE), controlnet/control_scribble.safetensors and control_depth (tiny SD1
    ControlNets, ComfyUI layout), input/ hint images, and diffusers folders of all three."""
    import shutil

    import torch
    from PIL import Image
    from safetensors.torch import load_file

    from comfyc.compiler.models.controlnet_synthetic import write_controlnet
    from comfyc.compiler.models.synthetic import write_checkpoint

    root = tmp_path_factory.mktemp("controlnet-models")
    for sub in ("checkpoints", "vae", "controlnet", "input"):
        (root / sub).mkdir()
    single = write_checkpoint(root / "sd1.safetensors", "sd15", "tiny", seed=5,
                              dtype=torch.float32, jitter=0.02,
                              diffusers_dir=root / "diffusers" / "sd1")
    torch.save({"state_dict": load_file(str(single))}, str(root / "checkpoints" / CKPT))
    shutil.copy(single, root / "vae" / VAE)
    single.unlink()
    for name, seed in ((CONTROL, 6), (CONTROL_2, 7)):
        write_controlnet(root / "controlnet" / name, "sd1", "tiny", seed=seed, layout="comfy",
                         dtype=torch.float32, jitter=0.02)
        write_controlnet(root / "diffusers" / name.removesuffix(".safetensors"), "sd1", "tiny",
                         seed=seed, layout="folder", dtype=torch.float32, jitter=0.02)
    rng = np.random.default_rng(8)
    for name in (HINT, HINT_2):
        pixels = (rng.random((SIZE, SIZE)) > 0.8).astype(np.uint8) * 255
        Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(root / "input" / name)
    return root


@pytest.fixture(scope="module")
def cache(models: Path) -> TorchModelCache:
    return TorchModelCache(str(models))


def _workflow(seed: int, cfg: float, strength: str, window: tuple[float, float] = (0.0, 1.0),
              second: bool = False) -> str:
    """ControlNetApplyAdvanced on both prompts (and a second ControlNet chained on top)."""
    start, end = window
    more = textwrap.dedent(f"""
        cn2 = ControlNetLoader(control_net_name="{CONTROL_2}")
        hint2 = LoadImage(image="{HINT_2}")
        pos, neg = ControlNetApplyAdvanced(positive=pos1, negative=neg1, control_net=cn2,
            image=hint2.IMAGE, strength=0.6, start_percent=0.0, end_percent=1.0)
    """) if second else ""
    first = "pos1, neg1" if second else "pos, neg"
    return textwrap.dedent(f"""
        param strength: FLOAT = {strength}
        ckpt = CheckpointLoaderSimple(ckpt_name="{CKPT}")
        cn = ControlNetLoader(control_net_name="{CONTROL}")
        hint = LoadImage(image="{HINT}")
        p = CLIPTextEncode(text="{PROMPT}", clip=ckpt.CLIP)
        n = CLIPTextEncode(text="", clip=ckpt.CLIP)
        {first} = ControlNetApplyAdvanced(positive=p, negative=n, control_net=cn,
            image=hint.IMAGE, strength=strength, start_percent={start}, end_percent={end})
    """) + more + textwrap.dedent(f"""
        latent = EmptyLatentImage(width={SIZE}, height={SIZE}, batch_size=1)
        s = KSampler(model=ckpt.MODEL, seed={seed}, steps={STEPS}, cfg={cfg},
            sampler_name="euler", scheduler="normal", positive=pos, negative=neg,
            latent_image=latent, denoise=1.0)
        image = VAEDecode(samples=s, vae=ckpt.VAE)
        output image
    """)


def _ours(text: str, models: Path, cache: TorchModelCache, params=None) -> np.ndarray:  # type: ignore[no-untyped-def]
    graph = parse_dsl(text, "controlnet.cfy", default_catalog())
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(models)), models=cache))
    program = lower_to_program(graph, cache=cache)
    return program.run(params or {}, input_dir=models / "input", save=False).images["image"]


def _theirs(models: Path, seed: int, cfg: float, scales: list[float], nets: list[str],
            window: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    import torch
    from diffusers import (
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionControlNetPipeline,
    )
    from PIL import Image

    from comfyc.runtime.noise import prepare_noise

    controls = [ControlNetModel.from_pretrained(str(models / "diffusers" / n)) for n in nets]
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        str(models / "diffusers" / "sd1"), controlnet=controls if len(controls) > 1
        else controls[0], safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                        timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    sigma_max = float(pipe.scheduler.sigmas.max())
    noise = torch.from_numpy(prepare_noise((1, 4, SIZE // 8, SIZE // 8), seed))
    latents = noise * ((1 + sigma_max**2) ** 0.5 / sigma_max)
    hints = [Image.open(models / "input" / h).convert("RGB") for h in (HINT, HINT_2)[:len(nets)]]
    out = pipe(PROMPT, negative_prompt="", num_inference_steps=STEPS, guidance_scale=cfg,
               height=SIZE, width=SIZE, latents=latents, output_type="np",
               image=hints if len(hints) > 1 else hints[0],
               controlnet_conditioning_scale=scales if len(scales) > 1 else scales[0],
               control_guidance_start=window[0], control_guidance_end=window[1])
    return np.asarray(out.images, dtype=np.float32)


def _close(name: str, ours: np.ndarray, theirs: np.ndarray, limit: float = 1 / 255) -> None:
    assert ours.shape == theirs.shape == (1, SIZE, SIZE, 3)
    diff = float(np.abs(ours - theirs).max())
    assert diff <= limit, f"{name}: max pixel difference {diff * 255:.2f}/255"


@pytest.mark.parametrize("seed,cfg,strength", [(0, 5.0, 0.9), (3, 1.0, 1.4)])
def test_controlnet_matches_diffusers(models: Path, cache: TorchModelCache, seed: int,
                                      cfg: float, strength: float) -> None:
    theirs = _theirs(models, seed, cfg, [strength], ["control_scribble"])
    _close("torch path", _ours(_workflow(seed, cfg, str(strength)), models, cache), theirs)
    # The control matters: without it the image differs clearly.
    plain = _ours(_workflow(seed, cfg, "0.0"), models, cache)
    assert float(np.abs(plain - theirs).max()) > 10 / 255


def test_two_controlnets_chained_match_multicontrolnet(models: Path,
                                                       cache: TorchModelCache) -> None:
    theirs = _theirs(models, 1, 5.0, [0.8, 0.6], ["control_scribble", "control_depth"])
    _close("chain", _ours(_workflow(1, 5.0, "0.8", second=True), models, cache), theirs)


def test_controlnet_step_window(models: Path, cache: TorchModelCache) -> None:
    """start/end percent: active for the steps whose sigma is inside ComfyUI's window; on
    this schedule that is diffusers' control_guidance_start/end window."""
    window = (0.0, 0.5)
    theirs = _theirs(models, 2, 5.0, [1.0], ["control_scribble"], window)
    _close("window", _ours(_workflow(2, 5.0, "1.0", window), models, cache), theirs)


def test_artifact_strength_is_a_runtime_param(models: Path, cache: TorchModelCache,
                                              tmp_path: Path) -> None:
    artifact = tmp_path / "cn.comfyc"
    text = _workflow(0, 5.0, "0.9")
    compile_graph(parse_dsl(text, "cn.cfy", default_catalog()), artifact,
                  CompileOptions(models_dir=str(models), input_dir=str(models / "input"),
                                 store_torch=True))
    manifest = read_manifest(artifact, verify=False)
    kinds = {e.kind: e for e in manifest.stage_entries().values()}
    assert kinds["controlnet"].file.endswith(".onnx") and not kinds["controlnet"].fallback
    assert not kinds["unet"].fallback
    assert kinds["controlnet"].torch  # Stored for the torch backend too (comfyc bench).
    program, on_torch = load(artifact), load(artifact, backend="torch")
    for strength in (0.9, 0.3, 0.0):
        want = _ours(text, models, cache, {"strength": strength})
        for name, runner in (("ort", program), ("stored torch", on_torch)):
            ours = runner.run({"strength": strength}, input_dir=models / "input",
                              save=False).images["image"]
            _close(f"{name}, strength {strength}", ours, want, 2 / 255)


@pytest.mark.parametrize("form", ["ui", "api"])
def test_comfyui_controlnet_example_checks(corpus: Path, models: Path, form: str) -> None:
    result = subprocess.run([sys.executable, "-m", "comfyc.cli.main", "check",
                             str(corpus / f"{CORPUS_NAME}.{form}.json"), "--models-dir",
                             str(models)],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr


def test_comfyui_controlnet_example_compiles_and_runs(corpus: Path, models: Path,
                                                      cache: TorchModelCache,
                                                      tmp_path: Path) -> None:
    def small(graph):  # type: ignore[no-untyped-def]
        for node in graph.nodes:
            if node.class_type == "EmptyLatentImage":
                graph.set_input(node, "width", SIZE)
                graph.set_input(node, "height", SIZE)
            if node.class_type == "KSampler":
                graph.set_input(node, "steps", 4)
        return graph

    artifact = tmp_path / "example.comfyc"
    compile_graph(small(load_workflow(corpus / f"{CORPUS_NAME}.ui.json")), artifact,
                  CompileOptions(models_dir=str(models), input_dir=str(models / "input")))
    (ours,) = load(artifact).run({}, input_dir=models / "input", save=False).images.values()
    graph = small(load_workflow(corpus / f"{CORPUS_NAME}.api.json"))
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(models)), models=cache))
    (want,) = lower_to_program(graph, cache=cache).run({}, input_dir=models / "input",
                                                       save=False).images.values()
    assert ours.shape == want.shape == (1, SIZE, SIZE, 3) and ours.std() > 0.01
    assert float(np.abs(ours - want).max()) <= 2 / 255


@pytest.fixture(scope="module")
def example_models(models: Path) -> Path:
    """The examples' ControlNet names in a models folder (the embedded tiny model has the
    tiny SD1 architecture the fixture's ControlNets were made for)."""
    root = models / "examples-models"
    (root / "controlnet").mkdir(parents=True, exist_ok=True)
    for theirs, ours in ((CONTROL, "control_digits_scribble.safetensors"),
                         (CONTROL, "control_digits_canny.safetensors"),
                         (CONTROL_2, "control_digits_depth.safetensors")):
        target = root / "controlnet" / ours
        if not target.exists():
            os.link(models / "controlnet" / theirs, target)
    return root


@pytest.mark.parametrize("name", ["controlnet", "controlnet_mix"])
def test_controlnet_examples(example_models: Path, name: str, tmp_path: Path) -> None:
    """examples/controlnet.cfy (Canny hint) and controlnet_mix.cfy check, compile (each
    ControlNet an ONNX stage) and run on the artifact as on the torch path; the strengths
    are runtime params."""
    path = REPO / "examples" / f"{name}.cfy"
    inputs = REPO / "examples" / "input"
    result = subprocess.run([sys.executable, "-m", "comfyc.cli.main", "check", str(path),
                             "--models-dir", str(example_models)],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    artifact = tmp_path / f"{name}.comfyc"
    compile_graph(load_workflow(path), artifact,
                  CompileOptions(models_dir=str(example_models), input_dir=str(inputs)))
    stages = read_manifest(artifact, verify=False).stage_entries().values()
    controls = [e for e in stages if e.kind == "controlnet"]
    assert len(controls) == (2 if name == "controlnet_mix" else 1)
    assert all(e.file.endswith(".onnx") and not e.fallback for e in controls)
    program = load(artifact)
    strengths = [p for p in program.params if p.endswith("strength")]
    assert strengths
    cache = TorchModelCache(str(example_models))
    graph = load_workflow(path)
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(example_models)),
                                    models=cache))
    torch_program = lower_to_program(graph, cache=cache)
    images = []
    for params in ({"seed": 5}, {"seed": 5, **{p: 0.0 for p in strengths}}):
        ours = program.run(params, input_dir=inputs, save=False).images["image"]
        want = torch_program.run(params, input_dir=inputs, save=False).images["image"]
        assert ours.shape == (1, 64, 64, 3) and ours.std() > 0.01
        diff = float(np.abs(ours - want).max())
        assert diff <= 2 / 255, f"{name} {params}: {diff * 255:.2f}/255"
        images.append(ours)
    assert float(np.abs(images[0] - images[1]).max()) > 2 / 255, "the ControlNet changed nothing"
