"""Test oracles: k-diffusion and diffusers set up the way ComfyUI uses them.

* :func:`load_k_sampling` imports ``k_diffusion.sampling`` / ``k_diffusion.external`` without the
  package ``__init__`` (which needs scikit-image and torchvision); see spikes.md section 2.
* :class:`DummyUNet` is a deterministic stand-in for a UNet, written twice with the same float32
  math: :meth:`DummyUNet.numpy` for the runtime, :meth:`DummyUNet.torch` for the oracles.
* :func:`comfy_k_denoiser` is k-diffusion's ``DiscreteEpsDDPMDenoiser`` (quantized timesteps) over
  ComfyUI's exact float32 sigma table, with CFG on x0 as ComfyUI computes it.
* :func:`comfy_noise_scaling` is ComfyUI's initial noise scaling (not k-diffusion's
  ``noise * sigmas[0]``); :func:`cpu_noise_sampler` is ComfyUI's CPU ancestral noise stream
  (a generator seeded ``seed + 1``).
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from typing import Any

import numpy as np
import torch

__all__ = [
    "DummyUNet",
    "comfy_k_denoiser",
    "comfy_noise_scaling",
    "comfy_sigma_tables",
    "cpu_noise_sampler",
    "load_k_external",
    "load_k_sampling",
]


def _import_k_diffusion() -> tuple[Any, Any]:
    """Import ``k_diffusion.sampling`` and ``.external`` with a bare package and, for the
    import only, a stub ``torchvision`` (``k_diffusion/utils.py`` imports it at module level)."""
    stubbed: list[str] = []
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
        tv, tr, tf = (types.ModuleType(n) for n in names)
        tv.transforms, tr.functional = tr, tf  # type: ignore[attr-defined]
        sys.modules.update(dict(zip(names, (tv, tr, tf), strict=True)))
        stubbed.extend(names)
    try:
        if "k_diffusion" not in sys.modules:
            spec = importlib.util.find_spec("k_diffusion")
            if spec is None or spec.submodule_search_locations is None:
                raise ImportError("k-diffusion is not installed: pip install --no-deps k-diffusion")
            pkg = types.ModuleType("k_diffusion")
            pkg.__path__ = list(spec.submodule_search_locations)
            sys.modules["k_diffusion"] = pkg
        from k_diffusion import external, sampling
    finally:
        # NOTE: drop the stub again: diffusers probes find_spec("torchvision"), which fails on a
        # module without a spec.
        for name in stubbed:
            sys.modules.pop(name, None)
    return sampling, external


def load_k_sampling() -> Any:
    """``k_diffusion.sampling`` without running ``k_diffusion/__init__.py``."""
    return _import_k_diffusion()[0]


def load_k_external() -> Any:
    """``k_diffusion.external`` (model wrappers) without the package ``__init__``."""
    return _import_k_diffusion()[1]


def comfy_sigma_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's SD1 ``sigmas`` and ``log_sigmas`` (float32), computed in torch from scratch."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    return sigmas.float(), sigmas.log().float()


class DummyUNet:
    """A deterministic eps model ``eps(x_in, t, context)``, identical in numpy and torch.

    eps = 0.8 x + 0.15 tanh(W x + 0.5 roll(x)) + 0.05 sin(t / 50 + c) + 0.1 (mean_T context) P
    """

    def __init__(self, seed: int = 0, channels: int = 4, dim: int = 8) -> None:
        rng = np.random.default_rng(seed)
        self.w = (rng.standard_normal((channels, channels)) * 0.5).astype(np.float32)
        self.p = (rng.standard_normal((dim, channels)) * 0.5).astype(np.float32)
        self.phase = np.arange(channels, dtype=np.float32)
        self.calls = 0
        self.rows: list[int] = []

    def numpy(self, x: np.ndarray, t: np.ndarray, context: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.rows.append(x.shape[0])
        x4 = x[:, : self.w.shape[0]]
        mix = np.einsum("oc,bchw->bohw", self.w, x4) + np.float32(0.5) * np.roll(x4, 1, axis=-1)
        wave = np.sin(t[:, None] / np.float32(50.0) + self.phase[None, :])
        ctx = context.mean(axis=1) @ self.p
        return (
            np.float32(0.8) * x4
            + np.float32(0.15) * np.tanh(mix)
            + np.float32(0.05) * wave[:, :, None, None]
            + np.float32(0.1) * ctx[:, :, None, None]
        ).astype(np.float32)

    def torch(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        w, p = torch.from_numpy(self.w), torch.from_numpy(self.p)
        phase = torch.from_numpy(self.phase)
        x4 = x[:, : w.shape[0]]
        mix = torch.einsum("oc,bchw->bohw", w, x4) + 0.5 * torch.roll(x4, 1, dims=-1)
        wave = torch.sin(t.float()[:, None] / 50.0 + phase[None, :])
        ctx = context.mean(dim=1) @ p
        return (
            0.8 * x4
            + 0.15 * torch.tanh(mix)
            + 0.05 * wave[:, :, None, None]
            + 0.1 * ctx[:, :, None, None]
        )


def comfy_k_denoiser(
    unet: DummyUNet, cond: np.ndarray, uncond: np.ndarray | None, cfg: float
) -> Any:
    """k-diffusion ``DiscreteEpsDDPMDenoiser(quantize=True)`` over ComfyUI's table, with CFG.

    Returns a module ``model(x, sigma_batch) -> x0`` usable by ``k_diffusion.sampling``.
    """
    external = load_k_external()
    sigmas, log_sigmas = comfy_sigma_tables()

    class _Eps(torch.nn.Module):
        def forward(self, x_in, t, cond):
            return unet.torch(x_in, t, cond)

    class _Wrapper(external.DiscreteEpsDDPMDenoiser):
        def __init__(self) -> None:
            alphas_cumprod = 1.0 / (sigmas.double() ** 2 + 1.0)
            super().__init__(_Eps(), alphas_cumprod, quantize=True)
            # NOTE: ComfyUI's exact float32 tables, so quantized timesteps resolve like ComfyUI.
            self.register_buffer("sigmas", sigmas.clone())
            self.register_buffer("log_sigmas", log_sigmas.clone())

    inner = _Wrapper()
    c = torch.from_numpy(np.asarray(cond, np.float32))
    u = None if uncond is None else torch.from_numpy(np.asarray(uncond, np.float32))

    class _CFG(torch.nn.Module):
        def forward(self, x, sigma):
            batch = x.shape[0]
            x0_c = inner(x, sigma, cond=c.expand(batch, -1, -1))
            if u is None or math.isclose(cfg, 1.0):
                return x0_c * cfg
            x0_u = inner(x, sigma, cond=u.expand(batch, -1, -1))
            return x0_u + (x0_c - x0_u) * cfg

    return _CFG()


def comfy_noise_scaling(noise: torch.Tensor, sigma0: torch.Tensor) -> torch.Tensor:
    """ComfyUI's initial state for an empty latent: ``noise * sqrt(1 + s0^2)`` at max denoise."""
    sigma_max = comfy_sigma_tables()[0][-1]
    max_denoise = math.isclose(float(sigma_max), float(sigma0), rel_tol=1e-5) or float(
        sigma0
    ) > float(sigma_max)
    if max_denoise:
        return noise * torch.sqrt(1.0 + sigma0**2.0)
    return noise * sigma0


def cpu_noise_sampler(shape: tuple[int, ...], seed: int) -> Any:
    """ComfyUI's ``default_noise_sampler`` on a CPU device: a generator seeded ``seed + 1``."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed + 1)
    return lambda sigma, sigma_next: torch.randn(shape, generator=generator)
