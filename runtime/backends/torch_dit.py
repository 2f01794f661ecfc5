"""SD3's MMDiT and Flux called as ComfyUI calls them, over diffusers' transformers.

:class:`Sd3Model` and :class:`FluxModel` wrap a diffusers ``SD3Transformer2DModel`` /
``FluxTransformer2DModel`` (weights shared) with ComfyUI's signature, which is what a flow
model's diffusion stage is: the compiler exports them to ONNX
(:mod:`comfyc.compiler.lowering.stage_exports`) and an artifact's PyTorch stage rebuilds them
(:mod:`comfyc.runtime.backends.torch_artifact`). The signatures are in
:mod:`comfyc.compiler.models.flow`'s docstring.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Sd3Model", "FluxModel", "pad_to_patch", "wrap_transformer"]


def pad_to_patch(x: torch.Tensor, patch: int) -> torch.Tensor:
    """ComfyUI's ``pad_to_patch_size``: circular padding at the bottom/right to a multiple."""
    pad_h = (patch - x.shape[-2] % patch) % patch
    pad_w = (patch - x.shape[-1] % patch) % patch
    if pad_h or pad_w:
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="circular")
    return x


class Sd3Model(torch.nn.Module):
    """An ``SD3Transformer2DModel`` called as ComfyUI calls its MMDiT: ``(x, timestep, context,
    y)`` (see the module docstring). Weights are shared with the wrapped module.

    Args:
        transformer: The diffusers SD3 transformer.
    """

    def __init__(self, transformer: Any) -> None:
        super().__init__()
        self.transformer = transformer
        self.patch_size = int(transformer.config.patch_size)

    def forward(
        self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Runs the transformer.

        Args:
            x: ``[B, 16, H, W]`` latents (sampling space).
            timestep: ``[B]`` = sigma * 1000.
            context: ``[B, T, joint_attention_dim]``.
            y: ``[B, pooled_projection_dim]``.

        Returns:
            ``[B, 16, H, W]`` flow prediction.
        """
        height, width = x.shape[-2:]
        padded = pad_to_patch(x, self.patch_size)
        out = self.transformer(hidden_states=padded, encoder_hidden_states=context,
                               pooled_projections=y, timestep=timestep, return_dict=False)[0]
        return out[..., :height, :width]


class FluxModel(torch.nn.Module):
    """A ``FluxTransformer2DModel`` called as ComfyUI calls Flux: ``(x, timestep, context, y,
    guidance)`` (see the module docstring). Weights are shared with the wrapped module.

    Args:
        transformer: The diffusers Flux transformer.
    """

    patch_size = 2

    def __init__(self, transformer: Any) -> None:
        super().__init__()
        self.transformer = transformer
        self.guidance_embed = bool(transformer.config.guidance_embeds)
        self.out_channels = int(transformer.config.out_channels or
                                transformer.config.in_channels) // (self.patch_size ** 2)

    def forward(
        self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, y: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Runs the transformer.

        Args:
            x: ``[B, C, H, W]`` latents (sampling space; C = 16, or 96 for Fill with its
                concatenated image and mask).
            timestep: ``[B]`` sigma.
            context: ``[B, T, joint_attention_dim]`` (T5 hidden states).
            y: ``[B, pooled_projection_dim]`` (CLIP-L pooled).
            guidance: ``[B]`` distilled guidance (dev/fill; required there).

        Returns:
            ``[B, 16, H, W]`` flow prediction.

        Raises:
            ValueError: A dev model without guidance.
        """
        if self.guidance_embed and guidance is None:
            raise ValueError("this Flux model has a guidance embedding (dev/fill); pass guidance "
                             "(ComfyUI's default is 3.5)")
        batch, channels, height, width = x.shape
        p = self.patch_size
        padded = pad_to_patch(x, p)
        rows, cols = padded.shape[-2] // p, padded.shape[-1] // p
        img = padded.reshape(batch, channels, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
        img = img.reshape(batch, rows * cols, channels * p * p)
        img_ids = torch.zeros(rows, cols, 3, dtype=torch.float32)
        img_ids[..., 1] = torch.arange(rows, dtype=torch.float32)[:, None]
        img_ids[..., 2] = torch.arange(cols, dtype=torch.float32)[None, :]
        txt_ids = torch.zeros(context.shape[1], 3, dtype=torch.float32)
        out = self.transformer(
            hidden_states=img, encoder_hidden_states=context, pooled_projections=y,
            timestep=timestep, img_ids=img_ids.reshape(-1, 3).to(x.device), txt_ids=txt_ids.to(
                x.device), guidance=guidance if self.guidance_embed else None,
            return_dict=False)[0]
        c = self.out_channels
        out = out.reshape(batch, rows, cols, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(batch, c, rows * p, cols * p)[..., :height, :width]


def wrap_transformer(transformer: Any) -> torch.nn.Module:
    """The ComfyUI-signature wrapper of a diffusers SD3 or Flux transformer."""
    if type(transformer).__name__.startswith("Flux"):
        return FluxModel(transformer)
    return Sd3Model(transformer)
