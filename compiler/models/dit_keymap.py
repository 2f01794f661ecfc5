"""Weight-name maps between the original SD3/Flux layouts and diffusers' transformer modules.

The original layouts (Stability's MMDiT code and Black Forest Labs' Flux code, which ComfyUI
runs as they are) fuse some projections that diffusers keeps apart, so one original tensor may
hold several diffusers tensors concatenated along dimension 0:

* SD3 ``joint_blocks.N.x_block.attn.qkv`` = ``transformer_blocks.N.attn.to_q | to_k | to_v``
  (the context stream's ``context_block.attn.qkv`` = ``add_q_proj | add_k_proj | add_v_proj``;
  SD3.5 medium's second image attention ``x_block.attn2.qkv`` = ``attn2.to_q | to_k | to_v``).
* Flux ``double_blocks.N.img_attn.qkv`` / ``txt_attn.qkv`` likewise, and
  ``single_blocks.N.linear1`` = ``attn.to_q | to_k | to_v | proj_mlp`` (3 x hidden + 4 x hidden
  rows).

The final layer's modulation (and SD3's last, context-"pre-only" joint block's context
modulation) computes ``(shift, scale)`` in the original code and ``(scale, shift)`` in
diffusers' ``AdaLayerNormContinuous``: those tensors swap their two halves (`KeyPlan.swap`).
All other modulations keep their chunk order (shift, scale, gate, ...; 9 chunks in SD3.5
medium's dual-attention blocks).

A plan is computed from the diffusers key set of a module built for the detected config, so
one plan serves loading (split the original tensor by the diffusers shapes) and writing (fuse the
diffusers tensors). Flux norm scales are written ``*_norm.scale`` (Black Forest Labs' names);
`normalize_flux_keys` accepts ComfyUI's ``*_norm.weight`` on reading.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from comfyc.compiler.models.errors import ModelFormatError

__all__ = [
    "KeyPlan",
    "flux_key_plans",
    "fuse_parts",
    "normalize_flux_keys",
    "plans_for",
    "sd3_key_plans",
    "split_original",
]


@dataclass(frozen=True, slots=True)
class KeyPlan:
    """One original tensor and the diffusers tensors it holds.

    Attributes:
        original: The original name (no ``model.diffusion_model.`` prefix).
        parts: diffusers names concatenated along dimension 0, in order.
        swap: The tensor's two halves are swapped between the layouts (shift/scale order).
    """

    original: str
    parts: tuple[str, ...]
    swap: bool = False


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def split_original(
    plan: KeyPlan, tensor: torch.Tensor, shapes: Mapping[str, Sequence[int]]
) -> dict[str, torch.Tensor]:
    """Splits an original tensor into its diffusers tensors.

    Args:
        plan: The plan of `tensor`.
        tensor: The original tensor.
        shapes: diffusers name -> shape (of the module being loaded).

    Returns:
        diffusers name -> tensor (views of `tensor` where no swap is needed).

    Raises:
        ModelFormatError: The rows do not add up to the parts' shapes.
    """
    if plan.swap:
        tensor = _swap_halves(tensor)
    sizes = [int(shapes[p][0]) for p in plan.parts]
    if int(tensor.shape[0]) != sum(sizes):
        raise ModelFormatError(
            f"weight {plan.original!r} has {int(tensor.shape[0])} rows; the detected "
            f"architecture expects {sum(sizes)} ({' + '.join(map(str, sizes))})"
        )
    if len(plan.parts) == 1:
        return {plan.parts[0]: tensor}
    return dict(zip(plan.parts, torch.split(tensor, sizes, dim=0)))


def fuse_parts(plan: KeyPlan, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The original tensor of a plan from its diffusers tensors (the inverse of `split_original`).
    """
    parts = [tensors[p] for p in plan.parts]
    fused = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return _swap_halves(fused) if plan.swap else fused


def _group(mapping: Iterable[tuple[str, str, int, bool]]) -> list[KeyPlan]:
    """Builds plans from (diffusers key, original key, position, swap) rows, in first-seen order.
    """
    slots: dict[str, dict[int, str]] = {}
    swaps: dict[str, bool] = {}
    for diffusers_key, original, position, swap in mapping:
        slot = slots.setdefault(original, {})
        if position in slot:
            raise ModelFormatError(f"two weights map to slot {position} of {original!r}")
        slot[position] = diffusers_key
        swaps[original] = swaps.get(original, False) or swap
    plans = []
    for original, slot in slots.items():
        if sorted(slot) != list(range(len(slot))):
            raise ModelFormatError(f"{original!r} is missing fused parts {sorted(slot)}")
        plans.append(KeyPlan(original, tuple(slot[i] for i in range(len(slot))),
                             swaps[original]))
    return plans


def _leaf(rest: str, table: Mapping[str, tuple[str, int]]) -> tuple[str, int] | None:
    """Maps ``<module>.<weight|bias>`` through a table of module names (longest match first)."""
    for name in sorted(table, key=len, reverse=True):
        if rest.startswith(name + "."):
            target, position = table[name]
            return target + rest[len(name):], position
    return None


# -- SD3 / SD3.5 ---------------------------------------------------------------------------------

_SD3_TOP = {
    "pos_embed.proj": ("x_embedder.proj", 0),
    "time_text_embed.timestep_embedder.linear_1": ("t_embedder.mlp.0", 0),
    "time_text_embed.timestep_embedder.linear_2": ("t_embedder.mlp.2", 0),
    "time_text_embed.text_embedder.linear_1": ("y_embedder.mlp.0", 0),
    "time_text_embed.text_embedder.linear_2": ("y_embedder.mlp.2", 0),
    "context_embedder": ("context_embedder", 0),
    "norm_out.linear": ("final_layer.adaLN_modulation.1", 0),
    "proj_out": ("final_layer.linear", 0),
}
_SD3_BLOCK = {
    "attn.to_q": ("x_block.attn.qkv", 0),
    "attn.to_k": ("x_block.attn.qkv", 1),
    "attn.to_v": ("x_block.attn.qkv", 2),
    "attn.add_q_proj": ("context_block.attn.qkv", 0),
    "attn.add_k_proj": ("context_block.attn.qkv", 1),
    "attn.add_v_proj": ("context_block.attn.qkv", 2),
    "attn.norm_q": ("x_block.attn.ln_q", 0),
    "attn.norm_k": ("x_block.attn.ln_k", 0),
    "attn.norm_added_q": ("context_block.attn.ln_q", 0),
    "attn.norm_added_k": ("context_block.attn.ln_k", 0),
    "attn.to_out.0": ("x_block.attn.proj", 0),
    "attn.to_add_out": ("context_block.attn.proj", 0),
    "attn2.to_q": ("x_block.attn2.qkv", 0),
    "attn2.to_k": ("x_block.attn2.qkv", 1),
    "attn2.to_v": ("x_block.attn2.qkv", 2),
    "attn2.norm_q": ("x_block.attn2.ln_q", 0),
    "attn2.norm_k": ("x_block.attn2.ln_k", 0),
    "attn2.to_out.0": ("x_block.attn2.proj", 0),
    "norm1.linear": ("x_block.adaLN_modulation.1", 0),
    "norm1_context.linear": ("context_block.adaLN_modulation.1", 0),
    "ff.net.0.proj": ("x_block.mlp.fc1", 0),
    "ff.net.2": ("x_block.mlp.fc2", 0),
    "ff_context.net.0.proj": ("context_block.mlp.fc1", 0),
    "ff_context.net.2": ("context_block.mlp.fc2", 0),
}


def sd3_key_plans(diffusers_keys: Iterable[str]) -> list[KeyPlan]:
    """Plans for an ``SD3Transformer2DModel`` state dict (see the module docstring).

    Raises:
        ModelFormatError: A key without a counterpart in the MMDiT layout.
    """
    keys = list(diffusers_keys)
    # NOTE: a block without to_add_out is the last, context-"pre-only" block: its context
    # modulation is AdaLayerNormContinuous in diffusers, (scale, shift) instead of (shift, scale).
    pre_only = {m.group(1) for k in keys
                if (m := re.match(r"transformer_blocks\.(\d+)\.norm1_context\.", k))}
    pre_only -= {m.group(1) for k in keys
                 if (m := re.match(r"transformer_blocks\.(\d+)\.attn\.to_add_out\.", k))}
    rows = []
    for key in keys:
        if m := re.match(r"transformer_blocks\.(\d+)\.(.+)$", key):
            found = _leaf(m.group(2), _SD3_BLOCK)
            if found is None:
                raise ModelFormatError(f"SD3 transformer weight {key!r} has no MMDiT name")
            name, position = found
            swap = m.group(1) in pre_only and m.group(2).startswith("norm1_context.")
            rows.append((key, f"joint_blocks.{m.group(1)}.{name}", position, swap))
            continue
        if key == "pos_embed.pos_embed":  # NOTE: a buffer, not <module>.<weight|bias>
            rows.append((key, "pos_embed", 0, False))
            continue
        found = _leaf(key, _SD3_TOP)
        if found is None:
            raise ModelFormatError(f"SD3 transformer weight {key!r} has no MMDiT name")
        name, position = found
        rows.append((key, name, position, key.startswith("norm_out.")))
    return _group(rows)


# -- Flux ----------------------------------------------------------------------------------------

_FLUX_TOP = {
    "time_text_embed.timestep_embedder.linear_1": ("time_in.in_layer", 0),
    "time_text_embed.timestep_embedder.linear_2": ("time_in.out_layer", 0),
    "time_text_embed.guidance_embedder.linear_1": ("guidance_in.in_layer", 0),
    "time_text_embed.guidance_embedder.linear_2": ("guidance_in.out_layer", 0),
    "time_text_embed.text_embedder.linear_1": ("vector_in.in_layer", 0),
    "time_text_embed.text_embedder.linear_2": ("vector_in.out_layer", 0),
    "context_embedder": ("txt_in", 0),
    "x_embedder": ("img_in", 0),
    "norm_out.linear": ("final_layer.adaLN_modulation.1", 0),
    "proj_out": ("final_layer.linear", 0),
}
_FLUX_DOUBLE = {
    "norm1.linear": ("img_mod.lin", 0),
    "norm1_context.linear": ("txt_mod.lin", 0),
    "attn.to_q": ("img_attn.qkv", 0),
    "attn.to_k": ("img_attn.qkv", 1),
    "attn.to_v": ("img_attn.qkv", 2),
    "attn.add_q_proj": ("txt_attn.qkv", 0),
    "attn.add_k_proj": ("txt_attn.qkv", 1),
    "attn.add_v_proj": ("txt_attn.qkv", 2),
    "attn.norm_q": ("img_attn.norm.query_norm", 0),
    "attn.norm_k": ("img_attn.norm.key_norm", 0),
    "attn.norm_added_q": ("txt_attn.norm.query_norm", 0),
    "attn.norm_added_k": ("txt_attn.norm.key_norm", 0),
    "attn.to_out.0": ("img_attn.proj", 0),
    "attn.to_add_out": ("txt_attn.proj", 0),
    "ff.net.0.proj": ("img_mlp.0", 0),
    "ff.net.2": ("img_mlp.2", 0),
    "ff_context.net.0.proj": ("txt_mlp.0", 0),
    "ff_context.net.2": ("txt_mlp.2", 0),
}
_FLUX_SINGLE = {
    "norm.linear": ("modulation.lin", 0),
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", 0),
    "attn.norm_q": ("norm.query_norm", 0),
    "attn.norm_k": ("norm.key_norm", 0),
}


def _flux_scale(name: str) -> str:
    """Black Forest Labs names norm gains ``scale``: ``...query_norm.weight`` -> ``.scale``."""
    return name[: -len(".weight")] + ".scale" if re.search(r"_norm\.weight$", name) else name


def flux_key_plans(diffusers_keys: Iterable[str]) -> list[KeyPlan]:
    """Plans for a ``FluxTransformer2DModel`` state dict (see the module docstring).

    Raises:
        ModelFormatError: A key without a counterpart in the Flux layout.
    """
    rows = []
    for key in diffusers_keys:
        if m := re.match(r"transformer_blocks\.(\d+)\.(.+)$", key):
            found, head = _leaf(m.group(2), _FLUX_DOUBLE), f"double_blocks.{m.group(1)}."
        elif m := re.match(r"single_transformer_blocks\.(\d+)\.(.+)$", key):
            found, head = _leaf(m.group(2), _FLUX_SINGLE), f"single_blocks.{m.group(1)}."
        else:
            found, head = _leaf(key, _FLUX_TOP), ""
        if found is None:
            raise ModelFormatError(f"Flux transformer weight {key!r} has no Flux name")
        name, position = found
        rows.append((key, _flux_scale(head + name), position, key.startswith("norm_out.")))
    return _group(rows)


def normalize_flux_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flux weights with ComfyUI's ``*_norm.weight`` names turned back into ``*_norm.scale``."""
    return {_flux_scale(k): v for k, v in state.items()}


def plans_for(kind: str) -> Callable[[Iterable[str]], list[KeyPlan]]:
    """`sd3_key_plans` or `flux_key_plans` for a `DetectedTransformer.kind`."""
    if kind == "sd3":
        return sd3_key_plans
    if kind == "flux":
        return flux_key_plans
    raise ValueError(f"transformer kind {kind!r}; expected 'sd3' or 'flux'")
