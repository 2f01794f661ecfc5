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
