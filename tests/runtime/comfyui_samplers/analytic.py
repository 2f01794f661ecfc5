"""A closed-form denoiser for the ComfyUI sampler recordings (numpy only).

The "model" is the exact posterior mean of a per-element two-component Gaussian mixture prior:
every latent element ``x0[b, c, h, w]`` is drawn from ``sum_k pi_k[c] N(mu_k[c, h, w], v_k[c])``.
Given a noisy ``x``:

* EPS / V models (k-diffusion convention): ``x = x0 + sigma * n``, so ``alpha = 1``;
* CONST (flow) models: ``x = (1 - sigma) x0 + sigma * n``, so ``alpha = 1 - sigma``;

and ``E[x0 | x] = sum_k w_k(x) (mu_k + alpha v_k / (alpha^2 v_k + sigma^2) (x - alpha mu_k))`` with
the posterior component weights ``w_k``. It is nonlinear in ``x`` (the weights), deterministic,
and smooth, so multistep and adaptive samplers behave as on a real model.

Two prompts: the positive prompt uses the means ``mu``, the negative one ``0.3 * mu`` shifted per
channel; CFG combines them as ComfyUI's ``cfg_function`` does, in float32:
``uncond + (cond - uncond) * cfg``.

Everything is evaluated in float64 from the float32 inputs and rounded to float32 once, so the
recording (which feeds ComfyUI's torch tensors through :meth:`MixtureModel.x0`) and the tests see
bit-identical denoiser outputs for identical inputs. The recorder imports this very module.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["CFGPair", "MixtureModel", "make_models"]


class MixtureModel:
    """Posterior mean of a per-element Gaussian mixture (see the module docstring).

    Args:
        means: ``[K, C, H, W]`` component means.
        variances: ``[K, C, 1, 1]`` component variances.
        log_weights: ``[K, C, 1, 1]`` log mixture weights (normalised).
        flow: True for CONST (flow) models (``alpha = 1 - sigma``).
    """

    def __init__(
        self, means: np.ndarray, variances: np.ndarray, log_weights: np.ndarray, flow: bool
    ) -> None:
        self.means = np.asarray(means, dtype=np.float64)[:, None]
        self.variances = np.asarray(variances, dtype=np.float64)[:, None]
        self.log_weights = np.asarray(log_weights, dtype=np.float64)[:, None]
        self.flow = flow
        self.calls = 0

    def x0(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """The denoised prediction for ``x`` (float32 ``[B, C, H, W]``) at ``sigma``."""
        self.calls += 1
        s = float(np.float32(sigma))
        a = 1.0 - s if self.flow else 1.0
        xx = np.asarray(x, dtype=np.float32).astype(np.float64)[None]
        mean = self.means * a
        total = self.variances * (a * a) + s * s
        log_w = self.log_weights - 0.5 * np.log(total) - 0.5 * (xx - mean) ** 2 / total
        log_w = log_w - log_w.max(axis=0, keepdims=True)
        w = np.exp(log_w)
        w /= w.sum(axis=0, keepdims=True)
        post = self.means + (self.variances * a / total) * (xx - mean)
        return (w * post).sum(axis=0).astype(np.float32)


class CFGPair:
    """``denoiser(x, sigma) -> x0`` with CFG over two :class:`MixtureModel` prompts.

    It follows comfyc's denoiser contract, including the optional
    ``denoise_with_uncond(x, sigma) -> (x0, uncond_x0)`` that the CFG++ samplers use (which, like
    ComfyUI with ``disable_cfg1_optimization``, always evaluates the negative prompt).

    Args:
        cond: The positive prompt's model.
        uncond: The negative prompt's model.
        cfg: Guidance scale.
    """

    def __init__(self, cond: MixtureModel, uncond: MixtureModel, cfg: float) -> None:
        self.cond = cond
        self.uncond = uncond
        self.cfg = float(cfg)

    @property
    def calls(self) -> int:
        """Number of evaluations of either prompt."""
        return self.cond.calls + self.uncond.calls

    def _combine(self, c: np.ndarray, u: np.ndarray) -> np.ndarray:
        return u + (c - u) * np.float32(self.cfg)

    def __call__(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """CFG x0; the negative is skipped at cfg 1 (ComfyUI's cfg1 optimisation)."""
        c = self.cond.x0(x, sigma)
        if math.isclose(self.cfg, 1.0):
            return self._combine(c, np.zeros_like(c))
        return self._combine(c, self.uncond.x0(x, sigma))

    def denoise_with_uncond(self, x: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """CFG x0 and the negative prompt's x0 (always evaluated)."""
        c = self.cond.x0(x, sigma)
        u = self.uncond.x0(x, sigma)
        return self._combine(c, u), u


def make_models(
    channels: int = 4, height: int = 4, width: int = 4, seed: int = 2024, flow: bool = False
) -> tuple[MixtureModel, MixtureModel]:
    """The positive and negative prompt models used by the recording.

    Args:
        channels: Latent channels.
        height: Latent height.
        width: Latent width.
        seed: Parameter seed (numpy ``default_rng``).
        flow: Build CONST (flow) models.

    Returns:
        ``(cond, uncond)`` models.
    """
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.0, (2, channels, height, width))
    means[1] = -0.7 * means[0] + rng.normal(0.0, 0.4, (channels, height, width))
    variances = 0.02 + 0.2 * rng.random((2, channels, 1, 1))
    weights = 0.2 + 0.6 * rng.random((1, channels, 1, 1))
    log_weights = np.log(np.concatenate([weights, 1.0 - weights], axis=0))
    shift = rng.normal(0.0, 0.5, (1, channels, 1, 1))
    cond = MixtureModel(means, variances, log_weights, flow)
    uncond = MixtureModel(0.3 * means + shift, variances * 1.5, log_weights[::-1], flow)
    return cond, uncond
