"""ControlNets and T2I-Adapters called as ComfyUI calls them, over diffusers' modules.

:class:`ControlNetStage` and :class:`T2IAdapterStage` wrap a diffusers ``ControlNetModel`` /
``T2IAdapter`` (weights shared) with the call of ComfyUI's ``cldm.ControlNet`` and
``T2IAdapter``: they are what a ``controlnet`` / ``t2i_adapter`` stage computes. The compiler
loads the files (:mod:`comfyc.compiler.models.controlnet`, whose docstring gives ComfyUI's
semantics) and exports these modules to ONNX; an artifact's stored PyTorch stage rebuilds them
(:mod:`comfyc.runtime.backends.torch_artifact`). Strength, step windows and chaining are the
sampler's (:mod:`comfyc.runtime.control`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["ControlNetStage", "T2IAdapterStage"]

#: Width of each sinusoidal embedding in SDXL's ADM vector (ComfyUI's ``Timestep(256)``).
ADM_TIME_EMBED_DIM = 256


def _adm_view(controlnet: Any) -> Any:
    """A shallow copy sharing every weight whose ``add_time_proj`` is the identity.

    diffusers' text_time path computes ``add_embedding(concat(text_embeds,
    add_time_proj(time_ids)))``; with an identity ``add_time_proj`` the two halves of ComfyUI's
    ADM vector ``y`` give ``add_embedding(y)`` = ldm's ``label_emb(y)``.
    """
    view = copy.copy(controlnet)
    # NOTE: copy.copy shares the module tables; give the view its own before editing one.
    object.__setattr__(view, "_modules", dict(controlnet._modules))
    object.__setattr__(view, "_parameters", dict(controlnet._parameters))
    object.__setattr__(view, "_buffers", dict(controlnet._buffers))
    view._modules["add_time_proj"] = torch.nn.Identity()
    return view


class ControlNetStage(torch.nn.Module):
    """A ControlNet called as ComfyUI calls its ``cldm.ControlNet``, returning diffusers' order.

    ``forward(x, hint, timestep, context, y=None) -> (down_0, ..., down_{n-1}, mid)``:

    * ``x`` ``[B, 4, h, w]``: the UNet's input for these rows (``x / sqrt(sigma^2 + 1)``);
    * ``hint`` ``[B or 1, 3, 8 h, 8 w]``: the resized hint, pixels in [0, 1] (module docstring);
    * ``timestep`` ``[B]`` (or a scalar): the UNet's timestep (0..999);
    * ``context`` ``[B, T, context_dim]``: the UNet's prompt encoding for these rows;
    * ``y`` ``[B, adm_in_channels]``: the ADM vector (SDXL ControlNets only; else omit it).

    Returns ``residual_count`` down residuals (the UNet's skip tensors, conv_in's first) and
    the mid residual: ``down_block_additional_residuals=out[:-1]``,
    ``mid_block_additional_residual=out[-1]``. Strength, timestep range and chaining are the
    runtime's. With ``global_average_pooling`` each residual is its spatial mean, expanded to
    the full size (ComfyUI's ``repeat``). Weights are shared with the loaded module.

    Args:
        controlnet: The diffusers ``ControlNetModel`` (the compiler's `LoadedControlNet.module`).
        global_average_pooling: Shuffle ControlNets (see above).
    """

    def __init__(self, controlnet: Any, global_average_pooling: bool = False) -> None:
        super().__init__()
        config = controlnet.config
        self.adm_in_channels = (int(config.projection_class_embeddings_input_dim)
                                if config.addition_embed_type == "text_time" else None)
        self.controlnet = (_adm_view(controlnet) if self.adm_in_channels is not None
                           else controlnet)
        self.global_average_pooling = bool(global_average_pooling)

    def output_names(self) -> list[str]:
        """``down_0 .. down_{n-1}, mid`` (names for exported outputs)."""
        count = len(self.controlnet.controlnet_down_blocks)
        return [f"down_{i}" for i in range(count)] + ["mid"]

    def forward(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Runs the ControlNet (see the class docstring)."""
        added = None
        if self.adm_in_channels is not None:
            if y is None:
                raise ValueError("this SDXL ControlNet needs the ADM vector y (ComfyUI: 'y is "
                                 "None, did you try using a controlnet for SDXL on SD1?')")
            if y.shape[-1] != self.adm_in_channels:
                raise ValueError(f"y has width {y.shape[-1]}; the ControlNet expects "
                                 f"{self.adm_in_channels}")
            # NOTE: the split point is immaterial (the halves are concatenated back unchanged).
            split = self.adm_in_channels - ADM_TIME_EMBED_DIM
            added = {"text_embeds": y[:, :split], "time_ids": y[:, split:]}
        down, mid = self.controlnet(x, timestep, encoder_hidden_states=context,
                                    controlnet_cond=hint, added_cond_kwargs=added,
                                    return_dict=False)
        outputs = (*down, mid)
        if self.global_average_pooling:
            outputs = tuple(r.mean(dim=(2, 3), keepdim=True).expand_as(r) for r in outputs)
        return outputs


def _comfy_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """ComfyUI's adapter ``Downsample`` without a convolution: 2x2 average pooling whose padding
    is set to ``(h % 2, w % 2)`` on both sides (zeros counted), i.e. odd sizes round up and the
    first row/column averages with a zero. diffusers' ``ceil_mode`` pooling differs at odd sizes.
    """
    pad_h = x.shape[-2] % 2
    pad_w = x.shape[-1] % 2
    # NOTE: zero padding + plain pooling = avg_pool2d(padding=...) with count_include_pad, and
    # the pad amounts stay computed from the shape when traced.
    x = torch.nn.functional.pad(x, (pad_w, pad_w, pad_h, pad_h))
    return torch.nn.functional.avg_pool2d(x, kernel_size=2, stride=2)


class T2IAdapterStage(torch.nn.Module):
    """A T2I-Adapter computed as ComfyUI computes it: ``forward(hint) -> (f_0, f_1, f_2, f_3)``.

    ``hint`` ``[B, C, H, W]``: pixels in [0, 1] already resized to `LoadedT2IAdapter.hint_size`
    (H, W multiples of the unshuffle factor); 1-channel adapters average C channels first (as
    ComfyUI). The features are diffusers' ``down_intrablock_additional_residuals`` in order:
    SD1 adapters give one per down level (at latent/1, /2, /4, /8), SDXL adapters one per down
    level of SDXL's UNet (latent/2, /2, /4) and one for the mid block (latent/4). Downsampling
    pads odd sizes as ComfyUI does (`_comfy_avg_pool`), so odd latent sizes match ComfyUI too.
    Weights are shared with the loaded module.

    Args:
        adapter: The diffusers ``T2IAdapter`` (the compiler's `LoadedT2IAdapter.module`).
    """

    def __init__(self, adapter: Any) -> None:
        super().__init__()
        self.adapter = adapter.adapter
        #: The T2IAdapter's config (an artifact's stored torch stage rebuilds it from this).
        self.adapter_config = dict(adapter.config)
        self.light = adapter.config.adapter_type == "light_adapter"
        self.input_channels = int(adapter.config.in_channels)

    def output_names(self) -> list[str]:
        """``feature_0 .. feature_3`` (names for exported outputs)."""
        return [f"feature_{i}" for i in range(len(self.adapter.body))]

    def forward(self, hint: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Runs the adapter (see the class docstring)."""
        x = hint
        if self.input_channels == 1 and x.shape[1] > 1:
            x = x.mean(dim=1, keepdim=True)
        x = self.adapter.unshuffle(x)
        if not self.light:
            x = self.adapter.conv_in(x)
        features = []
        for block in self.adapter.body:
            if block.downsample is not None:
                x = _comfy_avg_pool(x)
            if block.in_conv is not None:
                x = block.in_conv(x)
            x = block.resnets(x)
            if self.light:
                x = block.out_conv(x)
            features.append(x)
        return tuple(features)
