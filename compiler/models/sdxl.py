"""SDXL conditioning: ComfyUI's ADM vector ``y``, the UNet run on it, and prompt encodings.

ComfyUI conditions an SDXL UNet on a precomputed vector ``y`` (``comfy/model_base.py``,
``SDXL.encode_adm`` and ``SDXLRefiner.encode_adm``), added to the timestep embedding through the
UNet's ``label_emb`` (diffusers: ``add_embedding``)::

    base:    y = [pooled | E(height) | E(width) | E(crop_h) | E(crop_w) | E(target_height)
                  | E(target_width)]                         1280 + 6 x 256 = 2816
    refiner: y = [pooled | E(height) | E(width) | E(crop_h) | E(crop_w) | E(aesthetic_score)]
                                                             1280 + 5 x 256 = 2560

``pooled`` is bigG's projected pooled output (`text_conditioning`). ``E(v)`` is ComfyUI's
``Timestep(256)`` = ``timestep_embedding(v, 256)`` (``comfy/ldm/modules/diffusionmodules/
util.py``): ``f_i = exp(-ln(10000) * i / 128)`` for ``i = 0..127`` and
``E(v) = [cos(v f_0) .. cos(v f_127), sin(v f_0) .. sin(v f_127)]`` (cosines first), in float32.
The ids come from the conditioning: ``CLIPTextEncodeSDXL`` sets width, height, crop_w, crop_h,
target_width, target_height (defaults 1024, 1024, 0, 0, 1024, 1024); with a plain
``CLIPTextEncode`` ComfyUI's sampler fills ``width``/``height`` with the latent size times 8
(``comfy/samplers.py encode_model_conds``), crops with 0 and targets with width/height. The
refiner's ``aesthetic_score`` is 6 for positive and 2.5 for negative prompts unless
``CLIPTextEncodeSDXLRefiner`` sets it (``ascore``, default 6).

diffusers builds the same vector from ``added_cond_kwargs``: ``time_ids = original_size (h, w) +
crops_coords_top_left (top, left) + target_size (h, w)`` (refiner: ``+ (aesthetic_score,)``)
through ``add_time_proj = Timesteps(256, flip_sin_to_cos=True, freq_shift=0)`` - the same
formula, so `adm_vector` equals diffusers' concatenation bit for bit. `SdxlUNet` runs a diffusers
UNet on ``y`` directly, which is what the compiler exports: ComfyUI computes ``y`` outside the
UNet and so can comfyc (a few numpy ops; `adm_vector_numpy`).

Prompt encoding (``comfy/sdxl_clip.py``): SDXL's CLIP-L and bigG both return the *penultimate*
hidden state *without* the final layer norm (``layer="hidden", layer_idx=-2,
layer_norm_hidden_state=False``); the context is ``concat([clip_l (768), clip_g (1280)], -1)``
(2048; the refiner: bigG only, 1280). The pooled vector is bigG's *last* layer through its final
layer norm at the first end token, times ``text_projection`` - independent of the chosen layer.
``CLIPSetLastLayer(stop_at_clip_layer=-n)`` sets layer ``-n`` on both encoders (still without
the final norm; ``-1`` is the raw last layer, not ``last_hidden_state``). CLIP-L pads with the
end token 49407, bigG with 0. On SD1/SD2 the final norm *is* applied to a hidden layer's output.
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from comfyc.compiler.models.configs import ADM_TIME_EMBED_DIM
from comfyc.compiler.models.errors import ModelFormatError

__all__ = [
    "ADM_IDS",
    "SdxlUNet",
    "adm_id_names",
    "adm_vector",
    "adm_vector_numpy",
    "clip_hidden_state",
    "sdxl_unet_forward",
    "size_embedding",
    "text_conditioning",
]

#: The ids after the pooled vector, in ComfyUI's encode_adm order, per family.
ADM_IDS: dict[str, tuple[str, ...]] = {
    "sdxl": ("height", "width", "crop_h", "crop_w", "target_height", "target_width"),
    "sdxl_refiner": ("height", "width", "crop_h", "crop_w", "aesthetic_score"),
}
_MAX_PERIOD = 10000


def adm_id_names(family: str) -> tuple[str, ...]:
    """The ADM id names of an SDXL family (`ADM_IDS`).

    Raises:
        ValueError: `family` is not ``"sdxl"`` or ``"sdxl_refiner"``.
    """
    try:
        return ADM_IDS[family]
    except KeyError:
        raise ValueError(f"family {family!r} has no ADM input; expected one of "
                         f"{sorted(ADM_IDS)}") from None


def size_embedding(values: torch.Tensor, dim: int = ADM_TIME_EMBED_DIM) -> torch.Tensor:
    """ComfyUI's ``timestep_embedding(values, dim)``: ``[cos(v f), sin(v f)]`` in float32.

    Args:
        values: ``[N]`` numbers (sizes, crops, scores).
        dim: Embedding width (even; 256 for SDXL).

    Returns:
        ``[N, dim]`` float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(_MAX_PERIOD) * torch.arange(half, dtype=torch.float32) / half)
    args = values.reshape(-1).float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _id_values(family: str, ids: Mapping[str, float]) -> list[float]:
    names = adm_id_names(family)
    missing = [n for n in names if n not in ids]
    unknown = [n for n in ids if n not in names]
    if missing or unknown:
        raise ValueError(f"{family} ADM ids are {names}; missing {missing}, unknown {unknown}")
    return [float(ids[n]) for n in names]


def adm_vector(pooled: torch.Tensor, family: str = "sdxl", **ids: float) -> torch.Tensor:
    """Builds ComfyUI's ADM vector ``y`` (``SDXL.encode_adm`` / ``SDXLRefiner.encode_adm``).

    Args:
        pooled: ``[B, P]`` bigG pooled, projected output (P = 1280 for the real models).
        family: ``"sdxl"`` (base, Turbo) or ``"sdxl_refiner"``.
        **ids: Every name of `adm_id_names(family)`, e.g. ``height=1024, width=1024, crop_h=0,
            crop_w=0, target_height=1024, target_width=1024``; the same for the whole batch.

    Returns:
        ``[B, P + len(ids) * 256]`` in float32 (ComfyUI concatenates in float32 too).
    """
    values = torch.tensor(_id_values(family, ids), dtype=torch.float32)
    flat = size_embedding(values).reshape(1, -1).repeat(pooled.shape[0], 1)
    return torch.cat([pooled.float(), flat], dim=1)


def adm_vector_numpy(pooled: np.ndarray, family: str = "sdxl", **ids: float) -> np.ndarray:
    """`adm_vector` in numpy (for torch-free code); equal to it within float32 rounding.

    The arguments ``v * f`` reach ~1e3 radians, where float32's spacing is ~1e-4, so a one-ulp
    difference between numpy's and torch's ``exp`` shows as up to ~1e-4 (for sizes up to 1024);
    ComfyUI's own vector carries the same float32 rounding.

    Args:
        pooled: ``[B, P]`` pooled output.
        family: ``"sdxl"`` or ``"sdxl_refiner"``.
        **ids: As for `adm_vector`.

    Returns:
        ``[B, P + n * 256]`` float32.
    """
    half = ADM_TIME_EMBED_DIM // 2
    freqs = np.exp(np.float32(-math.log(_MAX_PERIOD)) * np.arange(half, dtype=np.float32)
                   / np.float32(half)).astype(np.float32)
    values = np.asarray(_id_values(family, ids), dtype=np.float32)
    args = values[:, None] * freqs[None]
    flat = np.concatenate([np.cos(args), np.sin(args)], axis=-1).reshape(1, -1)
    batch = np.asarray(pooled, dtype=np.float32)
    return np.concatenate([batch, np.repeat(flat, batch.shape[0], axis=0)], axis=1)


def _adm_view(unet: Any) -> Any:
    """A shallow copy of `unet` that shares every weight but whose ``add_time_proj`` is identity.

    diffusers' text_time path computes ``add_embedding(concat(text_embeds,
    add_time_proj(time_ids)))``; with an identity ``add_time_proj``, passing the two halves of
    ``y`` as ``text_embeds`` and ``time_ids`` gives ``add_embedding(y)`` exactly (ldm's
    ``label_emb(y)``), and the rest of the forward is diffusers' own, unchanged (ControlNet
    residuals and attention processors keep working).
    """
    if getattr(unet.config, "addition_embed_type", None) != "text_time":
        raise ModelFormatError(
            "the UNet has no text_time addition embedding (addition_embed_type is "
            f"{getattr(unet.config, 'addition_embed_type', None)!r}); expected an SDXL UNet"
        )
    from comfyc.runtime.backends.torch import adm_unet

    return adm_unet(unet).unet


class SdxlUNet(torch.nn.Module):
    """An SDXL `UNet2DConditionModel` called as ComfyUI calls its UNet: ``(x, t, context, y)``.

    The wrapped UNet shares its weights with the one given (merging a LoRA into either changes
    both); only the module holding them differs. Its state dict keys are ``unet.<diffusers
    name>``.

    Args:
        unet: An SDXL UNet (``addition_embed_type="text_time"``).
    """

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = _adm_view(unet)
        self.adm_in_channels = int(unet.config.projection_class_embeddings_input_dim)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
        **unet_kwargs: Any,
    ) -> torch.Tensor:
        """Runs the UNet.

        Args:
            x: ``[B, 4, H, W]`` latents (already scaled for the timestep, as ComfyUI passes them).
            t: ``[B]`` or scalar diffusers timestep (0..999).
            context: ``[B, 77 k, 2048]`` prompt encoding (1280 for the refiner).
            y: ``[B, adm_in_channels]`` ADM vector from `adm_vector`.
            **unet_kwargs: Passed to diffusers' forward (e.g. ControlNet residuals).

        Returns:
            ``[B, 4, H, W]`` model output (eps or v).
        """
        if y.shape[-1] != self.adm_in_channels:
            raise ValueError(f"y has width {y.shape[-1]}; the UNet expects "
                             f"{self.adm_in_channels}")
        # NOTE: the split point is immaterial (the halves are concatenated back unchanged).
        split = self.adm_in_channels - ADM_TIME_EMBED_DIM
        added = {"text_embeds": y[:, :split], "time_ids": y[:, split:]}
        return self.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added,
                         return_dict=False, **unet_kwargs)[0]


_WRAPPERS: weakref.WeakKeyDictionary[Any, SdxlUNet] = weakref.WeakKeyDictionary()


def sdxl_unet_forward(
    unet: Any, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Runs an SDXL diffusers UNet on ComfyUI's ADM vector ``y`` (see `SdxlUNet`).

    Equivalent to ComfyUI's ``UNetModel.forward(x, t, context, y)``: ``emb = time_embed(t_emb)
    + label_emb(y)``. The wrapper is cached per UNet.

    Args:
        unet: SDXL `UNet2DConditionModel`.
        x: Latents ``[B, 4, H, W]``.
        t: Timesteps ``[B]``.
        context: ``[B, T, context_dim]``.
        y: ``[B, adm_in_channels]``.

    Returns:
        The UNet output, shaped like `x`.
    """
    wrapper = _WRAPPERS.get(unet)
    if wrapper is None:
        wrapper = _WRAPPERS[unet] = SdxlUNet(unet)
    return wrapper(x, t, context, y)


def clip_hidden_state(
    text_encoder: Any, tokens: torch.Tensor, layer: int, layer_norm_hidden_state: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One CLIP encoder's output as ComfyUI's ``SDClipModel`` computes it.

    Args:
        text_encoder: `CLIPTextModel` or `CLIPTextModelWithProjection`.
        tokens: ``[B, 77]`` token ids.
        layer: Layer index as ComfyUI's ``layer_idx``: -1 last, -2 penultimate, ...; 0, 1, ...
            count from the first layer. Beyond the depth means the last layer with the final
            norm (ComfyUI's ``"last"``).
        layer_norm_hidden_state: Apply the final layer norm to the chosen layer (SD1/SD2).

    Returns:
        ``(hidden [B, 77, width], pooled)``; pooled is the projected pooled output for a
        model with a projection (SDXL's bigG), else None.
    """
    out = text_encoder(tokens, output_hidden_states=True)
    depth = len(out.hidden_states) - 1
    if abs(layer) > depth or layer == depth:
        hidden = out.last_hidden_state
    else:
        # NOTE: hidden_states[0] is the embedding output; layer i's output is hidden_states[i+1].
        hidden = out.hidden_states[layer if layer < 0 else layer + 1]
        if layer_norm_hidden_state:
            model = getattr(text_encoder, "text_model", text_encoder)
            hidden = model.final_layer_norm(hidden)
    pooled = getattr(out, "text_embeds", None)
    return hidden, pooled


def text_conditioning(
    checkpoint: Any,
    tokens: Mapping[str, torch.Tensor] | torch.Tensor,
    clip_layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CONDITIONING tensors ComfyUI's CLIPTextEncode gives for token ids (reference code).

    Args:
        checkpoint: A `LoadedCheckpoint` (any family).
        tokens: ``{spec.name: [B, 77] ids}`` per encoder (``clip_l``, ``clip_g``, ``clip_h``;
            each padded with its own pad token), or one tensor used for every encoder.
        clip_layer: ``CLIPSetLastLayer``'s ``stop_at_clip_layer`` (applied to every encoder);
            None uses each encoder's default.

    Returns:
        ``(context, pooled)``: ``[B, 77, sum of widths]`` and SDXL's ``[B, 1280]`` pooled
        output (None for SD1/SD2).
    """
    parts: list[torch.Tensor] = []
    pooled = None
    with torch.no_grad():
        for spec in checkpoint.text_encoders:
            ids = tokens if isinstance(tokens, torch.Tensor) else tokens[spec.name]
            module = getattr(checkpoint, spec.attribute)
            layer = spec.default_layer if clip_layer is None else clip_layer
            hidden, projected = clip_hidden_state(module, ids, layer,
                                                  spec.layer_norm_hidden_state)
            parts.append(hidden.float())
            if spec.pooled:
                pooled = None if projected is None else projected.float()
    if not parts:
        raise ModelFormatError("the checkpoint has no text encoder to encode prompts with")
    length = min(p.shape[1] for p in parts)
    return torch.cat([p[:, :length] for p in parts], dim=-1), pooled
