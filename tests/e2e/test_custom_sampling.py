"""ComfyUI's custom-sampling nodes on the embedded tiny model, through the real pipeline.

The numerics (every sampler, scheduler and sigma utility) are checked against ComfyUI's own
code in tests/runtime/test_sampler_comfyui_recording.py and
test_schedules_comfyui_recording.py. Here the nodes are wired as ComfyUI wires them and run on
a real UNet; the oracles are identities ComfyUI's implementation guarantees:

* ``SamplerCustomAdvanced(RandomNoise(s), CFGGuider(cfg), KSamplerSelect(x),
  BasicScheduler(y))`` is ``KSampler(seed=s, cfg, x, y)`` bit for bit (the same noise, schedule
  and CFG code; ``comfy/samplers.py`` runs both through ``CFGGuider.sample``);
* ``SamplerCustom(add_noise=False)`` is ``KSamplerAdvanced(add_noise="disable")``;
* ``BasicGuider`` is ``CFGGuider`` at cfg 1 (which skips the negative);
* ``DualCFGGuider`` with ``cond2 = negative`` is ``CFGGuider(cfg_conds)``, and its prediction is
  ComfyUI's formula over three separately computed predictions;
* sampling ``SplitSigmas``' high half with noise and then the low half without is one run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
from comfyc.compiler.passes.base import PassContext
from comfyc.compiler.pipeline import run_pipeline
from comfyc.frontends.load import load_text
from tests.conftest import REPO

TINY = REPO / "runtime" / "models" / "tiny-digits.safetensors"
pytestmark = pytest.mark.skipif(not TINY.is_file(), reason="the tiny model is not built yet")

STEPS = 6

HEAD = """
param seed: INT = 7
ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")
positive = CLIPTextEncode(text="a handwritten digit three", clip=ckpt.CLIP)
negative = CLIPTextEncode(text="a handwritten digit eight", clip=ckpt.CLIP)
latent = EmptyLatentImage(width=64, height=64, batch_size=2)
"""


@pytest.fixture(scope="module")
def cache() -> TorchModelCache:
    return TorchModelCache()


def _graph(body: str):  # type: ignore[no-untyped-def]
    return load_text(HEAD + body + "\noutput result\n", "custom.cfy")


def _latent(body: str, cache: TorchModelCache, params: dict | None = None) -> np.ndarray:
    graph = _graph(body)
    run_pipeline(graph, PassContext(models=cache))
    program = lower_to_program(graph, default_catalog(), cache=cache)
    result = program.run(params or {}, save=False)
    return np.asarray(result.images["result"])


def _ksampler(sampler: str, scheduler: str, cfg: float = 5.0) -> str:
    return f"""
result = KSampler(model=ckpt.MODEL, seed=seed, steps={STEPS}, cfg={cfg},
    sampler_name="{sampler}", scheduler="{scheduler}", positive=positive, negative=negative,
    latent_image=latent, denoise=1.0)
"""


def _advanced(sampler: str, scheduler: str, guider: str, noise: str = "RandomNoise(noise_seed=seed)"
              ) -> str:
    return f"""
noise = {noise}
guider = {guider}
sampler = KSamplerSelect(sampler_name="{sampler}")
sigmas = BasicScheduler(model=ckpt.MODEL, scheduler="{scheduler}", steps={STEPS}, denoise=1.0)
result, denoised = SamplerCustomAdvanced(noise=noise, guider=guider, sampler=sampler,
    sigmas=sigmas, latent_image=latent)
"""


CFG = "CFGGuider(model=ckpt.MODEL, positive=positive, negative=negative, cfg=5.0)"


@pytest.mark.parametrize("sampler,scheduler", [
    ("euler", "normal"), ("dpmpp_2m", "karras"), ("euler_ancestral", "simple"),
    ("dpmpp_2m_sde", "exponential"), ("res_multistep", "beta")])
def test_advanced_equals_ksampler(cache: TorchModelCache, sampler: str, scheduler: str) -> None:
    reference = _latent(_ksampler(sampler, scheduler), cache)
    custom = _latent(_advanced(sampler, scheduler, CFG), cache)
    assert reference.shape == (2, 4, 8, 8)
    np.testing.assert_array_equal(custom, reference)


def test_sampler_custom_equals_ksampler_and_the_seed_is_a_param(cache: TorchModelCache) -> None:
    body = f"""
sampler = KSamplerSelect(sampler_name="euler_ancestral")
sigmas = BasicScheduler(model=ckpt.MODEL, scheduler="karras", steps={STEPS}, denoise=1.0)
result, denoised = SamplerCustom(model=ckpt.MODEL, add_noise=true, noise_seed=seed, cfg=5.0,
    positive=positive, negative=negative, sampler=sampler, sigmas=sigmas, latent_image=latent)
"""
    reference = _latent(_ksampler("euler_ancestral", "karras"), cache)
    np.testing.assert_array_equal(_latent(body, cache), reference)
    other = _latent(body, cache, {"seed": 8})
    assert np.abs(other - reference).max() > 1e-2


def test_sampler_custom_without_noise_is_ksampler_advanced_disable(cache: TorchModelCache) -> None:
    start = """
start = KSampler(model=ckpt.MODEL, seed=3, steps=4, cfg=5.0, sampler_name="euler",
    scheduler="normal", positive=positive, negative=negative, latent_image=latent, denoise=1.0)
"""
    advanced = start + f"""
result = KSamplerAdvanced(model=ckpt.MODEL, add_noise="disable", noise_seed=seed,
    steps={STEPS}, cfg=5.0, sampler_name="euler", scheduler="simple", positive=positive,
    negative=negative, latent_image=start, start_at_step=2, end_at_step=10000,
    return_with_leftover_noise="disable")
"""
    custom = start + f"""
full = BasicScheduler(model=ckpt.MODEL, scheduler="simple", steps={STEPS}, denoise=1.0)
high, low = SplitSigmas(sigmas=full, step=2)
sampler = KSamplerSelect(sampler_name="euler")
result, denoised = SamplerCustom(model=ckpt.MODEL, add_noise=false, noise_seed=seed, cfg=5.0,
    positive=positive, negative=negative, sampler=sampler, sigmas=low, latent_image=start)
"""
    np.testing.assert_array_equal(_latent(custom, cache), _latent(advanced, cache))


def test_basic_guider_is_cfg_one(cache: TorchModelCache) -> None:
    basic = _latent(_advanced("euler", "normal",
                              "BasicGuider(model=ckpt.MODEL, conditioning=positive)"), cache)
    one = _latent(_advanced("euler", "normal", CFG.replace("cfg=5.0", "cfg=1.0")), cache)
    np.testing.assert_array_equal(basic, one)


@pytest.mark.parametrize("style,cfg2", [("regular", 3.0), ("nested", 1.0)])
def test_dual_cfg_with_cond2_negative_is_cfg(cache: TorchModelCache, style: str,
                                              cfg2: float) -> None:
    dual = (f'DualCFGGuider(model=ckpt.MODEL, cond1=positive, cond2=negative, '
            f'negative=negative, cfg_conds=5.0, cfg_cond2_negative={cfg2}, style="{style}")')
    got = _latent(_advanced("euler", "normal", dual), cache)
    want = _latent(_advanced("euler", "normal", CFG), cache)
    np.testing.assert_allclose(got, want, atol=2e-4)


@pytest.mark.parametrize("style", ["regular", "nested"])
def test_dual_cfg_prediction_is_comfyuis_formula(cache: TorchModelCache, style: str) -> None:
    """One prediction of DualCFGGuider against three single-conditioning predictions combined
    as ``Guider_DualCFG.predict_noise`` combines them."""
    from comfyc.runtime.guiders import Guider

    text = HEAD + """
middle = CLIPTextEncode(text="a handwritten digit five", clip=ckpt.CLIP)
model = ModelSamplingDiscrete(model=ckpt.MODEL, sampling="eps", zsnr=false)
output model
output positive
output negative
output middle
"""
    graph = load_text(text, "dual.cfy")
    run_pipeline(graph, PassContext(models=cache))
    program = lower_to_program(graph, default_catalog(), cache=cache)
    values = program.run({}, save=False).images
    model = values["model"]
    positive, negative, middle = values["positive"], values["negative"], values["middle"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32) * 3
    shape = x.shape
    single = [Guider(model, "basic", c).denoiser(shape)(x, 2.5) for c in (negative, middle,
                                                                          positive)]
    dual = Guider(model, "dual_cfg", positive, negative, 4.0, middle, 2.0,
                  style == "nested").denoiser(shape)(x, 2.5)
    out0, out1, out2 = single
    if style == "nested":
        text = out1 + (out2 - out1) * np.float32(4.0)
        want = out0 + np.float32(2.0) * (text - out0)
    else:
        want = out0 + (out1 - out0) * np.float32(2.0) + (out2 - out1) * np.float32(4.0)
    np.testing.assert_allclose(dual, want, atol=1e-4)


def test_split_sigmas_in_two_runs_is_one_run(cache: TorchModelCache) -> None:
    two = f"""
sampler = KSamplerSelect(sampler_name="euler")
full = BasicScheduler(model=ckpt.MODEL, scheduler="normal", steps={STEPS}, denoise=1.0)
high, low = SplitSigmas(sigmas=full, step=3)
guider = {CFG}
noise = RandomNoise(noise_seed=seed)
quiet = DisableNoise()
first, first_x0 = SamplerCustomAdvanced(noise=noise, guider=guider, sampler=sampler,
    sigmas=high, latent_image=latent)
result, second_x0 = SamplerCustomAdvanced(noise=quiet, guider=guider, sampler=sampler,
    sigmas=low, latent_image=first)
"""
    one = _latent(_advanced("euler", "normal", CFG), cache)
    np.testing.assert_allclose(_latent(two, cache), one, atol=1e-4)


def test_constant_schedules_fold_and_follow_the_model_sampling(cache: TorchModelCache) -> None:
    """Constant custom schedules become FoldedSigmas computed with the MODEL's sampling: a
    zero-terminal-SNR patch changes BasicScheduler's and KSampler's precomputed sigmas."""
    from comfyc.runtime import schedules
    from comfyc.runtime.model_sampling import model_sampling_discrete

    body = f"""
patched = ModelSamplingDiscrete(model=ckpt.MODEL, sampling="v_prediction", zsnr=true)
plain = BasicScheduler(model=ckpt.MODEL, scheduler="karras", steps={STEPS}, denoise=1.0)
zsnr = BasicScheduler(model=patched, scheduler="karras", steps={STEPS}, denoise=1.0)
karras = KarrasScheduler(steps=4, sigma_max=14.614642, sigma_min=0.0291675, rho=7.0)
flipped = FlipSigmas(sigmas=karras)
result = KSampler(model=patched, seed=seed, steps={STEPS}, cfg=5.0, sampler_name="euler",
    scheduler="normal", positive=positive, negative=negative, latent_image=latent, denoise=1.0)
unused = ManualSigmas(sigmas="3, 2, 1")
output flipped
output plain
output zsnr
"""
    graph = _graph(body)
    run_pipeline(graph, PassContext(models=cache))
    producers = {name: graph.outputs[name].producer for name in ("plain", "zsnr", "flipped")}
    assert {p.class_type for p in producers.values()} == {"FoldedSigmas"}
    folded = {name: graph.constants[p.inputs["key"]] for name, p in producers.items()}
    zsnr = model_sampling_discrete("v_prediction", zsnr=True)
    np.testing.assert_array_equal(folded["plain"], schedules.basic_scheduler(None, "karras",
                                                                             STEPS))
    np.testing.assert_array_equal(folded["zsnr"], schedules.basic_scheduler(zsnr, "karras",
                                                                            STEPS))
    assert folded["zsnr"][0] > 100 * folded["plain"][0]
    np.testing.assert_array_equal(folded["flipped"],
                                  schedules.flip_sigmas(schedules.karras_scheduler(4)))
    ks = next(n for n in graph.nodes if n.class_type == "KSampler")
    np.testing.assert_array_equal(graph.constants[ks.facts.sigmas],
                                  schedules.ksampler_sigmas("normal", STEPS, "euler", 1.0,
                                                            schedule=zsnr))
    assert not any(n.class_type in ("BasicScheduler", "KarrasScheduler", "FlipSigmas")
                   for n in graph.nodes)


def test_compiled_custom_sampling_matches_torch(cache: TorchModelCache, tmp_path: Path) -> None:
    """The artifact (ONNX stages, folded sigmas, the RandomNoise seed a runtime param) gives
    the torch path's images within 2/255, and another seed another image."""
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.runtime import load

    body = _advanced("dpmpp_2m", "karras", CFG) + "\nimage = VAEDecode(samples=result, " \
        "vae=ckpt.VAE)\n"
    text = HEAD + body + "\noutput image\n"
    compile_graph(load_text(text, "custom.cfy"), tmp_path / "a.comfyc", CompileOptions())
    program = load(tmp_path / "a.comfyc")
    assert "seed" in program.params
    ops = {op.op for op in program.ops}
    assert "Constant" in ops and "BasicScheduler" not in ops
    artifact = program.run({"seed": 11}, save=False).images["image"]
    graph = load_text(text, "custom.cfy")
    run_pipeline(graph, PassContext(models=cache))
    torch_image = lower_to_program(graph, default_catalog(), cache=cache).run(
        {"seed": 11}, save=False).images["image"]
    assert np.abs(np.asarray(artifact) - np.asarray(torch_image)).max() <= 2 / 255
    other = program.run({"seed": 12}, save=False).images["image"]
    assert np.abs(np.asarray(other) - np.asarray(artifact)).max() > 0.05
