"""A UNet's sampler-step graph gives the numpy samplers' bits in one call per step (issue #22).

The step graph (``compiler/lowering/step_graph.py``) moves the input scaling, the CFG mix and
the Euler / DPM++ 2M updates into the UNet's onnxruntime call. These tests run whole images
and whole sampling loops both ways, on the same weights, and require identical float32
results; the other cases must fall back to the plain graph, still exact.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.compiler.lowering.step_graph import write_step_graph
from comfyc.frontends.dsl import parse_dsl
from comfyc.runtime.artifact import load, read_manifest
from comfyc.runtime.backends.base import BackendError
from comfyc.runtime.backends.ort import OrtSession, OrtUNet
from comfyc.runtime.backends.step_graph import StepGraphUNet
from comfyc.runtime.cfg import make_denoiser
from comfyc.runtime.model_sampling import model_sampling_discrete, model_sampling_sd3
from comfyc.runtime.samplers import sample
from comfyc.runtime.schedules import ksampler_sigmas

REPO = Path(__file__).resolve().parents[3]


def workflow(sampler: str = "euler", scheduler: str = "normal", cfg: float = 5.0,
             batch: int = 1, steps: int = 6) -> str:
    text = (REPO / "examples" / "txt2img.cfy").read_text()
    text = re.sub(r"steps=\d+", f"steps={steps}", text)
    text = re.sub(r'sampler_name="[^"]+"', f'sampler_name="{sampler}"', text)
    text = re.sub(r'scheduler="[^"]+"', f'scheduler="{scheduler}"', text)
    text = re.sub(r"cfg=[0-9.]+", f"cfg={cfg}", text)
    return re.sub(r"batch_size=\d+", f"batch_size={batch}", text)


#: The sampling setups run through the step graph and back: (sampler, scheduler, cfg, batch).
CASES = {"euler": ("euler", "normal", 5.0, 1), "dpmpp_2m": ("dpmpp_2m", "karras", 7.5, 1),
         "batch2": ("dpmpp_2m", "normal", 5.0, 2),
         "ancestral": ("euler_ancestral", "normal", 5.0, 1),
         "ancestral2": ("euler_ancestral", "exponential", 5.0, 2),
         "sde": ("dpmpp_2m_sde", "karras", 6.0, 1),
         "sde_heun": ("dpmpp_2m_sde_heun", "exponential", 5.0, 2),
         "cfg1": ("euler", "normal", 1.0, 1)}


def param_workflow() -> str:
    """The tiny txt2img workflow with the sampler, scheduler, cfg and batch size as runtime
    params (default: heun, which never steps through a step graph)."""
    text = workflow("heun")
    text = text.replace('sampler_name="heun"', "sampler_name=sampler_choice")
    text = text.replace('scheduler="normal"', "scheduler=scheduler_choice")
    text = re.sub(r"cfg=[0-9.]+", "cfg=cfg_value", text)
    text = re.sub(r"batch_size=\d+", "batch_size=batch", text)
    return text.replace("param prompt:", 'param sampler_choice: STRING = "heun"\n'
                        'param scheduler_choice: STRING = "normal"\n'
                        "param cfg_value: FLOAT = 5.0\n"
                        "param batch: INT = 1 [min=1, max=4]\n"
                        "param prompt:")


def params_of(case: str) -> dict[str, object]:
    sampler, scheduler, cfg, batch = CASES[case]
    return {"sampler_choice": sampler, "scheduler_choice": scheduler, "cfg_value": cfg,
            "batch": batch}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three compiles of the tiny txt2img workflow (6 steps): Euler and heun as constants
    (the compiler decides from the constant whether a step graph is written), and one with
    the sampling setup as runtime params, which runs every case of :data:`CASES`."""
    root = tmp_path_factory.mktemp("step-graph")
    texts = {"euler": workflow(), "heun": workflow("heun"), "params": param_workflow()}
    out = {}
    for name, text in texts.items():
        out[name] = root / f"{name}.comfyc"
        compile_graph(parse_dsl(text, "txt2img.cfy", default_catalog()), out[name],
                      CompileOptions())
    return out


def unet_of(program: object) -> object:
    (unet,) = [s for s in program.stages.values()  # type: ignore[attr-defined]
               if getattr(s, "kind", None) == "unet"]
    return unet


@pytest.mark.parametrize("case", ["euler", "dpmpp_2m", "batch2", "ancestral", "ancestral2",
                                  "sde", "sde_heun"])
def test_step_graph_gives_the_same_image(artifacts: dict[str, Path], case: str) -> None:
    """Euler, DPM++ 2M (karras, batch 2), ancestral Euler and DPM++ 2M SDE (midpoint and
    heun; their noise drawn as the numpy samplers draw it) through the step graph: every
    step in one call, the plain graph never opened, and the image equal to the numpy path's
    bit for bit."""
    fused, plain = load(artifacts["params"]), load(artifacts["params"], step_graph=False)
    params = {"prompt": "a handwritten digit three", **params_of(case)}
    a = fused.run(params)
    b = plain.run(params)
    unet = unet_of(fused)
    assert isinstance(unet, StepGraphUNet)
    assert unet.step_calls == 6
    assert unet._plain is None  # the plain graph's session was never made
    assert not isinstance(unet_of(plain), StepGraphUNet)
    assert a.images.keys() == b.images.keys()
    for key, image in a.images.items():
        assert np.asarray(image).shape[0] == (2 if case in ("batch2", "ancestral2", "sde_heun")
                                              else 1)
        np.testing.assert_array_equal(image, b.images[key])


@pytest.mark.parametrize("case", ["heun", "cfg1"])
def test_other_runs_use_the_plain_graph(artifacts: dict[str, Path], case: str) -> None:
    """cfg 1 (one row) opens the plain graph on first use; a workflow whose samplers never
    step through a step graph (heun) gets none, so no session holds its weights twice."""
    artifact = artifacts["heun" if case == "heun" else "params"]
    params = {} if case == "heun" else params_of(case)
    fused, plain = load(artifact), load(artifact, step_graph=False)
    a, b = fused.run(params), plain.run(params)
    unet = unet_of(fused)
    if case == "heun":
        assert not isinstance(unet, StepGraphUNet)
        assert not any(e.variants for e in read_manifest(artifact).stages.values())
    else:
        assert isinstance(unet, StepGraphUNet)
        assert unet.step_calls == 0 and unet._plain is not None
    for image_a, image_b in zip(a.images.values(), b.images.values(), strict=True):
        np.testing.assert_array_equal(image_a, image_b)


def conds(rng: np.random.Generator, width: int) -> tuple[list, list]:
    def one() -> list[dict[str, np.ndarray]]:
        return [{"cond": rng.standard_normal((1, 77, width)).astype(np.float32)}]

    return one(), one()


@pytest.mark.parametrize("sampling,graph", [
    ("eps", "eps"), ("v_prediction", "v_prediction"), ("const", "eps")])
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral", "dpmpp_2m_sde"])
def test_step_heads_match_numpy_for_each_prediction(
        artifacts: dict[str, Path], tmp_path: Path, sampling: str, graph: str,
        sampler: str) -> None:
    """The x0 formula of each prediction type (v: ``x / (s^2+1) - out * s / sqrt(s^2+1)``;
    flow models' const: no input scaling) and both sampler heads, on the tiny UNet's weights
    with a whole sampling loop, equal the numpy samplers' float32 results."""
    root = artifacts["euler"]
    entry = next(e for e in read_manifest(root).stages.values() if e.kind == "unet")
    stages = tmp_path / "stages"
    shutil.copytree(root / "stages", stages)
    plain_file = stages / Path(str(entry.file)).name
    step_file = write_step_graph(plain_file, graph, step_path=stages / "v.step.onnx")
    plain = OrtUNet("unet", plain_file, intra_op_threads=1)
    fused = StepGraphUNet("unet", OrtSession(step_file, intra_op_threads=1), lambda: plain)
    ms = model_sampling_sd3(3.0) if sampling == "const" else model_sampling_discrete(sampling)
    rng = np.random.default_rng(5)
    positive, negative = conds(rng, int(plain.session.inputs["encoder_hidden_states"][1][2]))
    latent = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    noise = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    sigmas = ksampler_sigmas("karras" if sampler == "dpmpp_2m" else "normal", 5, sampler, 1.0,
                             schedule=ms)
    outs = []
    for unet in (fused, plain):
        denoiser = make_denoiser(unet, positive, negative, 6.5, latent.shape, model_sampling=ms)
        seen: list[np.ndarray] = []
        out = sample(denoiser, latent, noise, sigmas, sampler, 3, None,
                     lambda i, x0, x, n, seen=seen: seen.append(x0), model_sampling=ms)
        outs.append((out, seen))
    # Flow models' ancestral Euler (ComfyUI's _RF form) steps in numpy.
    assert fused.step_calls == (0 if (sampling, sampler) == ("const", "euler_ancestral") else 5)
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1], strict=True):  # the reported x0 of each step
        np.testing.assert_array_equal(a, b)


def _as_version_2(step_file: Path, out: Path) -> Path:
    """The step graph as the version 2 compiler wrote it: the same graph without DPM++ 2M
    SDE's coefficients and heads (``step_coefs[12]``, five outputs), over the same weights."""
    import onnx

    model = onnx.load(str(step_file), load_external_data=False)
    graph = model.graph
    sde = {"sde_first", "sde_second", "sde_first_noise", "sde_second_noise"}
    kept = [n for n in graph.node if not n.name.startswith("step/sde")
            and not set(n.output) & sde]
    del graph.node[:]
    graph.node.extend(kept)
    outputs = [o for o in graph.output if o.name not in sde]
    del graph.output[:]
    graph.output.extend(outputs)
    (coefs,) = [i for i in graph.input if i.name == "step_coefs"]
    coefs.type.tensor_type.shape.dim[0].dim_value = 12
    (split,) = [n for n in graph.node if n.name == "step/coefs"]
    del split.output[12:]
    for attribute in split.attribute:
        if attribute.name == "num_outputs":
            attribute.i = 12
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral", "dpmpp_2m_sde"])
def test_a_version_2_step_graph_still_runs(artifacts: dict[str, Path], tmp_path: Path,
                                           sampler: str) -> None:
    """Artifacts compiled before the DPM++ 2M SDE head keep their step graph: its samplers
    step in it with the first 12 coefficients, DPM++ 2M SDE steps in numpy, all with the
    plain graph's bits; the manifest's version 2 is accepted, version 1 is not."""
    import dataclasses

    from comfyc.runtime.artifact import make_stage

    root = artifacts["euler"]
    name, entry = next((n, e) for n, e in read_manifest(root).stages.items()
                       if e.kind == "unet")
    stages = tmp_path / "stages"
    shutil.copytree(root / "stages", stages)
    old = _as_version_2(stages / Path(entry.variants["step"]).name, stages / "v2.step.onnx")
    v2 = dataclasses.replace(entry, info={**entry.info, "step_graph": 2},
                             variants={**entry.variants, "step": "stages/v2.step.onnx"})
    loaded = make_stage(tmp_path, name, v2, "ort-cpu")
    assert isinstance(loaded, StepGraphUNet) and loaded.coef_count == 12
    plain = OrtUNet("unet", stages / Path(str(entry.file)).name, intra_op_threads=1)
    # NOTE: one thread for both graphs, so that their convolutions sum in the same order.
    fused = StepGraphUNet("unet", OrtSession(old, intra_op_threads=1), lambda: plain)
    assert fused.coef_count == 12 and "sde_first" not in fused.heads and "euler" in fused.heads
    ms = model_sampling_discrete("eps")
    rng = np.random.default_rng(7)
    positive, negative = conds(rng, int(plain.session.inputs["encoder_hidden_states"][1][2]))
    latent = np.zeros((1, 4, 8, 8), np.float32)
    noise = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    sigmas = ksampler_sigmas("karras", 4, sampler, 1.0, schedule=ms)
    outs = [sample(make_denoiser(unet, positive, negative, 5.0, latent.shape,
                                 model_sampling=ms), latent, noise, sigmas, sampler, 11,
                   model_sampling=ms) for unet in (fused, plain)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert fused.step_calls == (0 if sampler == "dpmpp_2m_sde" else 4)
    with pytest.raises(BackendError, match="not a sampler-step graph"):
        StepGraphUNet("unet", OrtSession(_truncate_outputs(old, stages / "bad.step.onnx"),
                                         intra_op_threads=1), lambda: plain)
    assert not isinstance(make_stage(tmp_path, name, dataclasses.replace(
        v2, info={**v2.info, "step_graph": 1}), "ort-cpu"), StepGraphUNet)


def _truncate_outputs(step_file: Path, out: Path) -> Path:
    """A step graph with one head too few for any version."""
    import onnx

    model = onnx.load(str(step_file), load_external_data=False)
    outputs = list(model.graph.output)[:4]
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    onnx.save(model, str(out))
    return out


def test_a_graph_for_another_prediction_is_not_used(artifacts: dict[str, Path]) -> None:
    """An eps step graph under a v-prediction model sampling (a ModelSamplingDiscrete patch)
    steps in numpy."""
    fused = unet_of(load(artifacts["euler"]))
    assert fused.serves("eps") and fused.serves("const") and not fused.serves("v_prediction")
    ms = model_sampling_discrete("v_prediction")
    rng = np.random.default_rng(1)
    positive, negative = conds(rng, 64)
    denoiser = make_denoiser(fused, positive, negative, 5.0, (1, 4, 8, 8), model_sampling=ms)
    assert denoiser.stepper(np.zeros((1, 4, 8, 8), np.float32)) is None


def test_a_step_graph_of_another_version_is_left_unused(artifacts: dict[str, Path]) -> None:
    """The manifest records the step graph's interface version; a runtime that does not know
    it runs the plain graph (the same results) instead of failing to load."""
    import dataclasses

    from comfyc.runtime.artifact import make_stage

    root = artifacts["euler"]
    name, entry = next((n, e) for n, e in read_manifest(root).stages.items()
                       if e.kind == "unet")
    assert entry.info["step_graph"] == 3
    assert isinstance(make_stage(root, name, entry, "ort-cpu"), StepGraphUNet)
    older = dataclasses.replace(entry, info={**entry.info, "step_graph": 1})
    stage = make_stage(root, name, older, "ort-cpu")
    assert isinstance(stage, OrtUNet) and not isinstance(stage, StepGraphUNet)


def test_offline_optimised_stages_get_the_machines_layouts_on_the_cpu(
        artifacts: dict[str, Path]) -> None:
    """A stage optimised offline (EXTENDED, the portable level) gets onnxruntime's ALL level
    when its session is made for the CPU, so the machine's layout transformations (NCHWc
    convolutions) apply; an explicit level is kept. Both give the step graph's bits and the
    numpy path's bits alike (the tests above)."""
    import onnxruntime as ort

    entries = read_manifest(artifacts["euler"]).stages
    assert {entry.kind: entry.optimized for entry in entries.values() if entry.file} == {
        "unet": "extended", "vae_decoder": "extended"}
    levels = {}
    for level in (None, "extended"):
        program = load(artifacts["euler"], **({"optimization_level": level} if level else {}))
        program.run({"seed": 3}, save=False)
        unet = unet_of(program)
        found = {unet.step_session.session.get_session_options().graph_optimization_level}
        for stage in program.stages.values():
            session = getattr(getattr(stage, "session", None), "session", None)
            if stage is not unet and session is not None:
                found.add(session.get_session_options().graph_optimization_level)
        levels[level] = found
    assert levels[None] == {ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    assert levels["extended"] == {ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}


def test_a_sampler_param_keeps_the_step_graph(artifacts: dict[str, Path]) -> None:
    """When the sampler is a runtime param, any sampler may run: the step graph is written
    even when the default (heun) never steps through it, and a run with Euler uses it."""
    program = load(artifacts["params"])
    unet = unet_of(program)
    assert isinstance(unet, StepGraphUNet)
    program.run({}, save=False)
    assert unet.step_calls == 0
    program.run({"sampler_choice": "euler"}, save=False)
    assert unet.step_calls == 6
