"""Noise modes of the samplers: which draws follow ``cpu``, ``cpu-legacy`` and ``cuda``.

ComfyUI (``comfy/k_diffusion/sampling.py``): ``default_noise_sampler(x, seed)`` seeds a
generator on ``x.device``, with ``seed + 1`` on a CPU since #11528; ``BrownianTreeNoiseSampler``
keeps its tree on the CPU (``cpu=True``) except in the ``*_sde_gpu`` samplers (``cpu=False``);
the initial noise and ddim's inpaint noise always come from the CPU generator. The recorded
comparisons with ComfyUI itself are in ``tests/comfyui_reference``.
"""

from __future__ import annotations

import numpy as np
import pytest

from comfyc.runtime import noise as N
from comfyc.runtime import samplers as S
from comfyc.runtime.noise import BrownianTreeNoise, CudaGenerator, TorchGenerator

SHAPE = (1, 4, 6, 6)
SIGMAS = np.array([14.6, 6.0, 2.5, 1.0, 0.3, 0.0], dtype=np.float32)


def _denoiser(x: np.ndarray, sigma: float) -> np.ndarray:
    """A smooth stand-in model: shrinks x towards a fixed pattern."""
    pattern = np.linspace(-1.0, 1.0, x.size, dtype=np.float32).reshape(x.shape)
    return (x / np.float32(1.0 + sigma) + pattern * np.float32(sigma / (1.0 + sigma))).astype(
        np.float32)


def _run(sampler: str, seed: int, mode: str | None = None, mask: np.ndarray | None = None
         ) -> np.ndarray:
    latent = np.zeros(SHAPE, np.float32) if mask is None else np.full(SHAPE, 0.5, np.float32)
    noise = TorchGenerator(99).randn(SHAPE)
    kwargs = {} if mode is None else {"noise_mode": mode}
    return S.sample(_denoiser, latent, noise, SIGMAS, sampler, seed, mask, **kwargs)


def test_default_mode_is_cpu() -> None:
    """Without a mode the samplers behave as before (ComfyUI on a CPU)."""
    assert N.DEFAULT_NOISE_MODE == "cpu"
    assert np.array_equal(_run("euler_ancestral", 7), _run("euler_ancestral", 7, "cpu"))


@pytest.mark.parametrize("sampler", sorted(S.DEVICE_NOISE_SAMPLERS))
def test_cpu_legacy_is_cpu_with_the_seed_itself(sampler: str) -> None:
    """cpu-legacy with seed s draws what cpu draws with s - 1 (ComfyUI's seed += 1)."""
    legacy = _run(sampler, 1000, "cpu-legacy")
    assert np.array_equal(legacy, _run(sampler, 999, "cpu"))
    assert not np.array_equal(legacy, _run(sampler, 1000, "cpu"))


@pytest.mark.parametrize("sampler", sorted(S.DEVICE_NOISE_SAMPLERS))
def test_cuda_mode_draws_from_the_cuda_generator(sampler: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda mode equals the cpu code path fed by CudaGenerator(seed) (seed not incremented)."""
    got = _run(sampler, 1234, "cuda")
    monkeypatch.setattr(S, "sampler_noise_generator", lambda mode, seed: CudaGenerator(seed))
    assert np.array_equal(got, _run(sampler, 1234, "cpu"))


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "heun", "uni_pc", "deis", "lms"])
def test_deterministic_samplers_ignore_the_mode(sampler: str) -> None:
    """ODE samplers draw no noise: all modes agree bit for bit."""
    ref = _run(sampler, 5, "cpu")
    for mode in ("cpu-legacy", "cuda"):
        assert np.array_equal(ref, _run(sampler, 5, mode))
        assert not S.noise_mode_matters(sampler)


@pytest.mark.parametrize("base", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun",
                                  "dpmpp_3m_sde"])
def test_sde_trees(base: str) -> None:
    """Plain SDE samplers keep a CPU tree in every mode; the _gpu twins use a CUDA tree in cuda."""
    cpu = _run(base, 42, "cpu")
    for mode in ("cpu-legacy", "cuda"):
        assert np.array_equal(cpu, _run(base, 42, mode))
    gpu = base + "_gpu"
    assert np.array_equal(cpu, _run(gpu, 42, "cpu"))
    assert np.array_equal(cpu, _run(gpu, 42, "cpu-legacy"))
    cuda_tree = _run(gpu, 42, "cuda")
    assert not np.array_equal(cpu, cuda_tree)
    assert np.isfinite(cuda_tree).all()
    assert S.noise_mode_matters(gpu) and not S.noise_mode_matters(base)


def test_cuda_brownian_tree_draws_from_cuda_generators() -> None:
    """A CUDA tree's root increment is CudaGenerator(root seed).randn * sqrt(t1 - t0)."""
    tree = BrownianTreeNoise(SHAPE, 0.03, 14.6, 42, device="cuda")
    root_seed = int(np.random.SeedSequence(entropy=42, pool_size=24).generate_state(3)[0])
    t0, t1 = float(np.float32(0.03)), float(np.float32(14.6))
    expected = CudaGenerator(root_seed).randn(SHAPE) * np.float32(np.sqrt(t1 - t0))
    whole = tree.increment(round(t0, 6), round(t1, 6))
    assert np.array_equal(whole, expected)
    # NOTE: a bridge split sums back to the whole increment (to float32 rounding).
    mid = 2.0
    parts = tree.increment(round(t0, 6), mid) + tree.increment(mid, round(t1, 6))
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    with pytest.raises(ValueError):
        BrownianTreeNoise(SHAPE, 0.03, 14.6, 42, device="mps")


def test_ddim_inpaint_noise_is_cpu_in_every_mode() -> None:
    """ddim's re-noised unmasked area uses the CPU generator (seed + 1) on every device."""
    mask = np.zeros((6 * 8, 6 * 8), np.float32)
    mask[8:32, 8:40] = 1.0
    ref = _run("ddim", 3, "cpu", mask)
    for mode in ("cpu-legacy", "cuda"):
        assert np.array_equal(ref, _run("ddim", 3, mode, mask))


def test_entry_points_take_the_mode() -> None:
    """ksampler and sample_custom pass the mode on; unknown modes are SamplerErrors."""
    latent = np.zeros(SHAPE, np.float32)
    a = S.ksampler(_denoiser, latent, 11, SIGMAS, "euler_ancestral", noise_mode="cpu-legacy")
    b = S.sample_custom(_denoiser, latent, "euler_ancestral", SIGMAS, S.RandomNoise(11),
                        noise_mode="cpu-legacy").output
    assert np.array_equal(a, b)
    c = S.ksampler(_denoiser, latent, 11, SIGMAS, "euler_ancestral")
    assert not np.array_equal(a, c)
    for call in (
        lambda: S.ksampler(_denoiser, latent, 1, SIGMAS, "euler", noise_mode="gpu"),
        lambda: S.ksampler(_denoiser, latent, 1, [], "euler", noise_mode="gpu"),
        lambda: S.sample_custom(_denoiser, latent, "euler", SIGMAS, noise_mode="CUDA"),
        lambda: S.sample(_denoiser, latent, latent, SIGMAS, "euler", 1, noise_mode=""),
    ):
        with pytest.raises(S.SamplerError, match="unknown noise mode"):
            call()


def test_sampler_noise_generator() -> None:
    """The generator of default_noise_sampler per mode, seeds at the 2**64 edge included."""
    shape = (1, 4, 3, 3)
    top = 2**64 - 1
    assert np.array_equal(N.sampler_noise_generator("cpu", top).randn(shape),
                          TorchGenerator(0).randn(shape))
    assert np.array_equal(N.sampler_noise_generator("cpu-legacy", 8).randn(shape),
                          TorchGenerator(8).randn(shape))
    assert np.array_equal(N.sampler_noise_generator("cuda", top).randn(shape),
                          CudaGenerator(top).randn(shape))
    with pytest.raises(ValueError, match="unknown noise mode"):
        N.sampler_noise_generator("xpu", 1)


def test_noise_mode_matters() -> None:
    """Which samplers' results depend on the mode (for warnings and metadata)."""
    assert S.noise_mode_matters("euler_ancestral")
    assert S.noise_mode_matters("lcm")
    assert not S.noise_mode_matters("dpm_fast")
    assert S.noise_mode_matters(S.SamplerSpec("dpm_fast", {"eta": 1.0}))
    assert not S.noise_mode_matters(S.sampler_euler_ancestral(eta=0.0))
    assert not S.noise_mode_matters("ddim")
    assert set(S.SAMPLER_NAMES) >= S.DEVICE_NOISE_SAMPLERS


# --- the noise mode of a whole run: Program.run, `comfyc run --noise-mode`, the PNG record ---

_TINY_WORKFLOW = """\
ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")
positive = CLIPTextEncode(text="a handwritten digit three", clip=ckpt.CLIP)
negative = CLIPTextEncode(text="", clip=ckpt.CLIP)
latent = EmptyLatentImage(width=32, height=32, batch_size=1)
sampler = KSampler(model=ckpt.MODEL, seed=5, steps=4, cfg=5.0, sampler_name="{sampler}",
                   scheduler="normal", positive=positive, negative=negative,
                   latent_image=latent, denoise=1.0)
image = VAEDecode(samples=sampler, vae=ckpt.VAE)
SaveImage(images=image, filename_prefix="nm")
"""


def _tiny_model_or_skip() -> None:
    from tests.conftest import REPO

    if not (REPO / "runtime" / "models" / "tiny-digits.safetensors").is_file():
        pytest.skip("the tiny model is not built yet")


@pytest.fixture
def one_torch_thread():
    """PyTorch on one thread for the whole test, restored after.

    NOTE: the torch path's images can differ in the last bit between thread counts (PyTorch
    splits some sums by thread), and a stage's default count follows the load average, as does
    the count that compiling's prompt folding inherits from earlier loads in this process: the
    images these tests compare bit for bit must all be made with the same count.
    """
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cli_run(tmp_path, sampler: str, out: str, *extra: str):
    """`comfyc run` on a tiny-model workflow; returns (pixels, PNG text chunks, PNG path)."""
    from pathlib import Path

    from PIL import Image

    from comfyc.cli.main import main

    source = Path(extra[0]) if extra and extra[0].endswith((".png", ".comfyc")) else None
    if source is None:
        source = tmp_path / f"{sampler}.cfy"
        source.write_text(_TINY_WORKFLOW.format(sampler=sampler))
    else:
        extra = extra[1:]
    assert main(["run", str(source), "-o", str(tmp_path / out), "-q", "--threads", "1",
                 *extra]) == 0
    [png] = sorted((tmp_path / out).glob("*.png"))
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB")), dict(image.text), png


@pytest.mark.usefixtures("one_torch_thread")
def test_run_noise_mode_option_reaches_the_sampler_and_the_png(tmp_path) -> None:
    """`comfyc run --noise-mode cpu-legacy` draws ComfyUI-before-#11528's ancestral noise (another
    image than the default cpu), the PNG records the mode in a `comfyc` chunk, and `comfyc run
    PNG` reproduces that image without the option (a given option still wins)."""
    import json

    _tiny_model_or_skip()
    cpu, cpu_chunks, _ = _cli_run(tmp_path, "euler_ancestral", "cpu")
    legacy, chunks, png = _cli_run(tmp_path, "euler_ancestral", "legacy",
                                   "--noise-mode", "cpu-legacy")
    assert not np.array_equal(cpu, legacy)
    assert json.loads(chunks["comfyc"]) == {"noise_mode": "cpu-legacy"}
    assert json.loads(cpu_chunks["comfyc"]) == {"noise_mode": "cpu"}
    assert "comfyc" not in json.loads(chunks["prompt"])  # the prompt chunk stays ComfyUI's
    again, again_chunks, _ = _cli_run(tmp_path, "euler_ancestral", "again", str(png))
    assert np.array_equal(again, legacy)
    assert json.loads(again_chunks["comfyc"]) == {"noise_mode": "cpu-legacy"}
    forced, _, _ = _cli_run(tmp_path, "euler_ancestral", "forced", str(png),
                            "--noise-mode", "cpu")
    assert np.array_equal(forced, cpu)


@pytest.mark.usefixtures("one_torch_thread")
def test_noise_mode_free_sampler_png_has_no_record(tmp_path) -> None:
    """euler draws no per-step noise: any mode gives the same image, and the PNG carries only
    ComfyUI's own chunks."""
    _tiny_model_or_skip()
    cpu, chunks, _ = _cli_run(tmp_path, "euler", "cpu")
    cuda, cuda_chunks, _ = _cli_run(tmp_path, "euler", "cuda", "--noise-mode", "cuda")
    assert np.array_equal(cpu, cuda)
    assert set(chunks) == set(cuda_chunks) == {"prompt"}


def test_program_run_checks_the_noise_mode(tmp_path) -> None:
    """A bad mode is a ParamError before any work; a program's meta gives its default."""
    from comfyc.runtime.errors import ParamError
    from comfyc.runtime.program import Op, Program

    seen: list[str] = []
    program = Program([Op("1", "Probe", {})], {})
    from comfyc.runtime import nodes

    table = dict(nodes.OPS)
    table["Probe"] = lambda ctx: seen.append(ctx.noise_mode) or ()
    program._op_table = table
    with pytest.raises(ParamError, match="unknown noise mode 'gpu'"):
        program.run(noise_mode="gpu")
    assert seen == []
    program.run()
    program.run(noise_mode="cuda")
    program.meta["noise_mode"] = "cpu-legacy"
    program.run()
    program.run(noise_mode="cpu")
    assert seen == ["cpu", "cuda", "cpu-legacy", "cpu"]


@pytest.mark.usefixtures("one_torch_thread")
def test_compile_noise_mode_is_the_artifacts_default(tmp_path) -> None:
    """`comfyc compile --noise-mode cpu-legacy`: the manifest records it, the artifact's runs
    use it (the same image as `comfyc run --noise-mode cpu-legacy` on the workflow) and record
    it in their PNGs; `run --noise-mode cpu` on the artifact overrides it."""
    import json

    from comfyc.cli.main import main

    _tiny_model_or_skip()
    source = tmp_path / "euler_ancestral.cfy"
    source.write_text(_TINY_WORKFLOW.format(sampler="euler_ancestral"))
    artifact = tmp_path / "legacy.comfyc"
    assert main(["compile", str(source), "-o", str(artifact), "--backend", "torch",
                 "--noise-mode", "cpu-legacy", "-q"]) == 0
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["run_meta"]["noise_mode"] == "cpu-legacy"
    legacy, _, _ = _cli_run(tmp_path, "euler_ancestral", "workflow-legacy",
                            "--noise-mode", "cpu-legacy")
    cpu, _, _ = _cli_run(tmp_path, "euler_ancestral", "workflow-cpu")
    got, chunks, _ = _cli_run(tmp_path, "euler_ancestral", "artifact", str(artifact))
    assert np.array_equal(got, legacy)
    assert json.loads(chunks["comfyc"]) == {"noise_mode": "cpu-legacy"}
    got, _, _ = _cli_run(tmp_path, "euler_ancestral", "artifact-cpu", str(artifact),
                         "--noise-mode", "cpu")
    assert np.array_equal(got, cpu)
