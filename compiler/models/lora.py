"""LoRA files: key formats, low-rank factors per target weight, and merging into the weights.

A LoRA adds ``strength * (alpha / rank) * up @ down`` to a weight (ComfyUI's `LoraLoader`);
``up`` is ``[out, rank]`` (``[out, rank, 1, 1]`` for convolutions), ``down`` is ``[rank, in]``
(``[rank, in, kh, kw]``: 1x1 and 3x3 convolutions both work), ``alpha`` defaults to the rank.
The UNet uses ``strength_model``, the text encoder ``strength_clip``.

Key formats understood (module name + suffix):

* kohya / A1111: ``lora_unet_<name with _>``, ``lora_te_<name with _>`` (``lora_te1_`` too) with
  ``.lora_up.weight``, ``.lora_down.weight``, ``.alpha``; UNet names may be diffusers names
  (``lora_unet_down_blocks_0_attentions_0_..._to_q``) or original ones
  (``lora_unet_input_blocks_1_1_..._to_q``; SDXL LoRAs use these, e.g.
  ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``).
* SDXL text encoders (as ComfyUI's ``model_lora_keys_clip``): CLIP-L is ``lora_te1_`` (and
  ``lora_te_``), bigG ``lora_te2_`` (``lora_te2_text_projection`` too, OneTrainer); the
  refiner's only encoder, bigG, answers to ``lora_te_``.
* ComfyUI: ``diffusion_model.<original name>``, ``clip_l.transformer.text_model...``,
  ``clip_g.transformer.text_model...``.
* diffusers / peft: ``unet.<diffusers name>``, ``text_encoder.text_model...`` and
  ``text_encoder_2.text_model...`` with ``.lora_A.weight``/``.lora_B.weight`` (peft),
  ``.lora_linear_layer.{down,up}.weight``, ``.lora.{down,up}.weight``, or the old
  attention-processor form ``unet....attn1.processor.to_q_lora.{down,up}.weight``.

Targets are named like the modules' state dicts: diffusers names for the UNet
(``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight``) and ``text_model.*``
names (plus bigG's ``text_projection.weight``) for the text encoders. Components are ``unet``,
``text_encoder`` and ``text_encoder_2`` (SDXL's bigG), as in `LoadedCheckpoint`; the CLIP
strength applies to both text encoders, as ComfyUI's CLIP object holds both. LoHa, LoKr, LoCon
"mid", DoRA and diff patches are refused with a clear error rather than silently ignored.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from comfyc.compiler.models.errors import ModelFormatError
from comfyc.compiler.models.keymap import unet_diffusers_to_ldm_map
from comfyc.compiler.models.single_file import (
    canonical_text_encoder_state,
    canonical_text_key,
    read_state_dict,
)

__all__ = [
    "LoraFactor",
    "LoraFactors",
    "extract_lora_factors",
    "load_lora",
    "lora_key_aliases",
    "make_random_lora",
    "merge_lora",
    "round_text_weights",
    "TEXT_ENCODER_DTYPE",
]

_log = logging.getLogger(__name__)

# (up suffix, down suffix) pairs, most common first.
_SUFFIXES = (
    (".lora_up.weight", ".lora_down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora.up.weight", ".lora.down.weight"),
)
_UNSUPPORTED = {
    ".hada_w1_a": "LoHa", ".lokr_w1": "LoKr", ".lokr_w2": "LoKr", ".lokr_w1_a": "LoKr",
    ".lora_mid.weight": "LoCon with a mid (Tucker) factor", ".dora_scale": "DoRA",
    ".a1.weight": "GLoRA", ".w_norm": "norm patch", ".diff": "full-weight diff",
    ".diff_b": "bias diff",
}
_TEXT_PREFIXES = (
    "lora_te_", "lora_te1_", "text_encoder.", "clip_l.transformer.", "clip_h.transformer.",
    "cond_stage_model.transformer.", "text_encoders.clip_l.transformer.",
)
# SDXL base's bigG (beside CLIP-L).
_TEXT_2_PREFIXES = (
    "lora_te2_", "text_encoder_2.", "clip_g.transformer.", "text_encoders.clip_g.transformer.",
)
# The SDXL refiner's bigG, its only text encoder (ComfyUI maps lora_te_ to it).
_TEXT_2_ALONE_PREFIXES = (
    "lora_te_", "text_encoder.", "clip_g.transformer.", "text_encoders.clip_g.transformer.",
    "lora_te2_", "text_encoder_2.",
)
_TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")
_COMPONENTS = ("unet", *_TEXT_COMPONENTS)


@dataclass(frozen=True, slots=True)
class LoraFactor:
    """The low-rank update of one weight.

    Attributes:
        component: ``"unet"``, ``"text_encoder"`` or ``"text_encoder_2"`` (SDXL's bigG).
        target: The weight's state-dict name (diffusers names; ``text_model.*`` for CLIP).
        up: ``[out, rank]`` or ``[out, rank, 1, 1]``.
        down: ``[rank, in]`` or ``[rank, in, kh, kw]``.
        alpha: The file's alpha, or None (then the scale is 1).
        source: The LoRA module name in the file.
    """

    component: str
    target: str
    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None
    source: str

    @property
    def rank(self) -> int:
        """The LoRA rank (rows of ``down``)."""
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """``alpha / rank`` (1.0 without alpha)."""
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def delta(self, shape: Iterable[int], strength: float = 1.0) -> torch.Tensor:
        """The float32 update ``strength * scale * up @ down`` reshaped to the weight's shape.

        Args:
            shape: The target weight's shape.
            strength: The LoraLoader strength for this component.
        """
        shape = tuple(shape)
        product = self.up.flatten(1).float() @ self.down.flatten(1).float()
        if product.numel() != torch.Size(shape).numel():
            raise ModelFormatError(
                f"LoRA module {self.source!r} gives a {tuple(product.shape)} update for "
                f"{self.target!r} of shape {shape}; the LoRA was made for another model "
                "(SD1 vs SD2, or another architecture)"
            )
        return (strength * self.scale) * product.reshape(shape)


@dataclass(slots=True)
class LoraFactors:
    """All factors of one LoRA file, per component, plus what matched nothing.

    Attributes:
        unet: Target weight name -> factor.
        text_encoder: Target weight name -> factor.
        unmatched: LoRA module names (or stray keys) that fit no weight of the model.
        text_encoder_2: Target weight name -> factor, for SDXL's bigG.
    """

    unet: dict[str, LoraFactor] = field(default_factory=dict)
    text_encoder: dict[str, LoraFactor] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    text_encoder_2: dict[str, LoraFactor] = field(default_factory=dict)


def load_lora(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Reads a LoRA file (``.safetensors``, or a pickle with ``weights_only=True``)."""
    return read_state_dict(path)[0]


def lora_key_aliases(
    unet_keys: Iterable[str] | None = None,
    text_encoder_keys: Iterable[str] | None = None,
    text_encoder_2_keys: Iterable[str] | None = None,
) -> dict[str, tuple[str, str]]:
    """Every LoRA module name that may refer to each weight.

    Args:
        unet_keys: The UNet's diffusers state-dict keys.
        text_encoder_keys: The (first) text encoder's keys (with or without ``text_model.``).
        text_encoder_2_keys: SDXL bigG's keys; with no `text_encoder_keys` it is the refiner's
            only encoder and takes the plain ``lora_te_`` / ``text_encoder.`` names too.

    Returns:
        ``{alias: (component, target_key)}``.
    """
    aliases: dict[str, tuple[str, str]] = {}
    if unet_keys is not None:
        keys = list(unet_keys)
        ldm = unet_diffusers_to_ldm_map(keys)
        for key in keys:
            if not key.endswith(".weight"):
                continue
            base, original = key[: -len(".weight")], ldm[key][: -len(".weight")]
            target = ("unet", key)
            processor = base.replace(".to_", ".processor.to_")
            if processor.endswith(".to_out.0"):
                processor = processor[: -len(".0")]
            for alias in (
                "lora_unet_" + base.replace(".", "_"),
                "lora_unet_" + original.replace(".", "_"),
                "diffusion_model." + original,
                "model.diffusion_model." + original,
                "unet." + base,
                base,
                "unet." + processor,
                processor,
            ):
                aliases.setdefault(alias, target)
    if text_encoder_keys is not None:
        _text_aliases(aliases, "text_encoder", text_encoder_keys, _TEXT_PREFIXES)
    if text_encoder_2_keys is not None:
        prefixes = _TEXT_2_PREFIXES if text_encoder_keys is not None else _TEXT_2_ALONE_PREFIXES
        _text_aliases(aliases, "text_encoder_2", text_encoder_2_keys, prefixes)
    return aliases


def _text_aliases(
    aliases: dict[str, tuple[str, str]],
    component: str,
    keys: Iterable[str],
    prefixes: tuple[str, ...],
) -> None:
    """Adds the aliases of one text encoder's weights (first registration wins)."""
    for key in keys:
        key = canonical_text_key(key)
        if not key.endswith(".weight"):
            continue
        base = key[: -len(".weight")]
        for prefix in prefixes:
            alias = prefix + (base.replace(".", "_") if prefix.startswith("lora_") else base)
            aliases.setdefault(alias, (component, key))


def _components(targets: Any) -> dict[str, Any]:
    """Normalises merge targets to ``{"unet", "text_encoder", "text_encoder_2"}`` (values may be
    None)."""
    if hasattr(targets, "unet"):
        return {"unet": targets.unet, "text_encoder": getattr(targets, "text_encoder", None),
                "text_encoder_2": getattr(targets, "text_encoder_2", None)}
    if isinstance(targets, Mapping) and set(targets) <= set(_COMPONENTS):
        return {name: targets.get(name) for name in _COMPONENTS}
    if isinstance(targets, (tuple, list)) and len(targets) in (2, 3):
        return {name: targets[i] if i < len(targets) else None
                for i, name in enumerate(_COMPONENTS)}
    raise TypeError(
        "LoRA targets must be a LoadedCheckpoint, {'unet': ..., 'text_encoder': ..., "
        "'text_encoder_2': ...} or a (unet, text_encoder[, text_encoder_2]) tuple of modules "
        f"or state dicts; got {type(targets).__name__}"
    )


def _keys(component: str, target: Any) -> list[str] | None:
    if target is None:
        return None
    if component in _TEXT_COMPONENTS:
        return list(canonical_text_encoder_state(target))
    return list(target.state_dict() if hasattr(target, "state_dict") else target)


def _check_supported(lora_sd: Mapping[str, Any]) -> None:
    for key in lora_sd:
        for marker, kind in _UNSUPPORTED.items():
            if key.endswith(marker):
                raise ModelFormatError(
                    f"LoRA key {key!r} is a {kind} patch; comfyc merges plain LoRA (up/down "
                    "factors, optional alpha) only. Convert it to a plain LoRA or use ComfyUI"
                )


def _extract(
    lora_sd: Mapping[str, torch.Tensor],
    unet_keys: list[str] | None,
    text_encoder_keys: list[str] | None,
    text_encoder_2_keys: list[str] | None = None,
) -> LoraFactors:
    _check_supported(lora_sd)
    aliases = lora_key_aliases(unet_keys, text_encoder_keys, text_encoder_2_keys)
    result = LoraFactors()
    used: set[str] = set()
    for key in lora_sd:
        for up_suffix, down_suffix in _SUFFIXES:
            if not key.endswith(up_suffix):
                continue
            name = key[: -len(up_suffix)]
            down_key = name + down_suffix
            if down_key not in lora_sd:
                raise ModelFormatError(
                    f"LoRA has {key!r} but no {down_key!r}; the file is incomplete"
                )
            used.update((key, down_key, name + ".alpha"))
            up, down = lora_sd[key], lora_sd[down_key]
            if up.ndim < 2 or down.ndim < 2 or up.shape[1] != down.shape[0]:
                raise ModelFormatError(
                    f"LoRA module {name!r}: up {tuple(up.shape)} and down {tuple(down.shape)} "
                    "do not share a rank"
                )
            found = aliases.get(name)
            if found is None:
                result.unmatched.append(name)
                break
            alpha_tensor = lora_sd.get(name + ".alpha")
            alpha = None if alpha_tensor is None else float(alpha_tensor.float().reshape(-1)[0])
            component, target = found
            factor = LoraFactor(component, target, up, down, alpha, name)
            getattr(result, component)[target] = factor
            break
    result.unmatched.extend(k for k in lora_sd if k not in used and not k.endswith(".alpha"))
    if result.unmatched:
        _log.warning(
            "%d LoRA entries match no weight of this model (e.g. %s); they are ignored, as "
            "ComfyUI does", len(result.unmatched), result.unmatched[:3],
        )
    return result


def extract_lora_factors(targets: Any, lora_sd: Mapping[str, torch.Tensor]) -> LoraFactors:
    """Finds the low-rank factors of a LoRA per target weight, without changing any weight.

    The compiler can store these and merge them later (at session creation).

    Args:
        targets: A `LoadedCheckpoint`, ``{"unet": ..., "text_encoder": ...,
            "text_encoder_2": ...}`` or a tuple; each a module or a state dict (None skips the
            component).
        lora_sd: The LoRA file's tensors.

    Returns:
        The factors per component and the LoRA names that matched nothing.
    """
    parts = _components(targets)
    return _extract(
        lora_sd, *(_keys(name, parts[name]) for name in _COMPONENTS)
    )


def _merge_into(
    target: Any, component: str, factors: dict[str, LoraFactor], strength: float
) -> None:
    if hasattr(target, "state_dict"):
        local = {k: k for k in target.state_dict()}
        if component in _TEXT_COMPONENTS:
            local = {canonical_text_key(k): k for k in target.state_dict()}
        with torch.no_grad():
            for name, factor in factors.items():
                weight = target.get_parameter(local[name])
                merged = weight.float() + factor.delta(weight.shape, strength)
                weight.copy_(merged.to(weight.dtype))
        return
    for name, factor in factors.items():
        key = name
        if key not in target and component in _TEXT_COMPONENTS:
            key = name[len("text_model.") :]
        weight = target[key]
        target[key] = (weight.float() + factor.delta(weight.shape, strength)).to(weight.dtype)


#: The dtype ComfyUI's text encoders hold their weights in (``text_encoder_dtype``: float16 on
#: a CPU and on a GPU, unless it runs with ``--fp32-text-enc``). ComfyUI sums a patched weight
#: in float32 and rounds it to the weight's dtype once, after every LoRA on it
#: (``ModelPatcher.patch_weight_to_device``); its UNet on a CPU is float32, so only the text
#: encoders' patched weights are rounded.
TEXT_ENCODER_DTYPE = torch.float16


def round_text_weights(targets: Any, names: Mapping[str, Iterable[str]],
                       dtype: torch.dtype = TEXT_ENCODER_DTYPE) -> None:
    """Rounds text-encoder weights to ``dtype``'s precision in place, as ComfyUI stores them.

    Args:
        targets: As for :func:`merge_lora`.
        names: Per text component (``text_encoder``, ``text_encoder_2``), the weight names
            (``LoraFactors`` names) to round; the weights keep their own dtype.
        dtype: The precision to round to.
    """
    parts = _components(targets)
    for component, chosen in names.items():
        target = parts.get(component)
        if component not in _TEXT_COMPONENTS or target is None:
            continue
        if hasattr(target, "state_dict"):
            local = {canonical_text_key(k): k for k in target.state_dict()}
            with torch.no_grad():
                for name in chosen:
                    weight = target.get_parameter(local[name])
                    weight.copy_(weight.to(dtype).to(weight.dtype))
            continue
        for name in chosen:
            key = name if name in target else name[len("text_model."):]
            target[key] = target[key].to(dtype).to(target[key].dtype)


def merge_lora(
    targets: Any,
    lora_sd: Mapping[str, torch.Tensor],
    strength_model: float = 1.0,
    strength_clip: float = 1.0,
    *,
    round_text: bool = True,
) -> LoraFactors:
    """Merges a LoRA into the UNet and text-encoder weights: ``W += s * (alpha/rank) * up @ down``.

    Modules are changed in place; state dicts get new tensors under the same keys. The sum is
    computed in float32 and cast back to each weight's dtype (as ComfyUI does). The text
    encoders' patched weights are then rounded to :data:`TEXT_ENCODER_DTYPE`, the precision
    ComfyUI keeps them in (``round_text=False``: not yet, for a chain of LoRAs that is rounded
    once at its end with :func:`round_text_weights`). A strength of 0 leaves that component
    untouched.

    Args:
        targets: A `LoadedCheckpoint`, ``{"unet": ..., "text_encoder": ...,
            "text_encoder_2": ...}`` or a ``(unet, text_encoder[, text_encoder_2])`` tuple;
            each a module or a state dict, or None.
        lora_sd: The LoRA file's tensors.
        strength_model: LoraLoader ``strength_model`` (UNet).
        strength_clip: LoraLoader ``strength_clip`` (both text encoders).
        round_text: Round the patched text-encoder weights to float16 precision now.

    Returns:
        The factors that were found (merged where the strength is not 0).
    """
    parts = _components(targets)
    factors = extract_lora_factors(parts, lora_sd)
    for component, strength in (("unet", strength_model), ("text_encoder", strength_clip),
                                ("text_encoder_2", strength_clip)):
        chosen = getattr(factors, component)
        if strength != 0 and chosen and parts[component] is not None:
            _merge_into(parts[component], component, chosen, float(strength))
    if round_text and strength_clip != 0:
        round_text_weights(parts, {c: list(getattr(factors, c)) for c in _TEXT_COMPONENTS})
    return factors


_UNET_LORA_TARGETS = (
    ".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight", ".proj_in.weight",
    ".proj_out.weight", ".ff.net.0.proj.weight", ".ff.net.2.weight",
)
_TEXT_LORA_TARGETS = (
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.out_proj.weight", "mlp.fc1.weight", "mlp.fc2.weight",
)


def make_random_lora(
    unet: Any,
    text_encoder: Any | None = None,
    *,
    rank: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    key_format: str = "kohya",
    include_convs: bool = True,
    scale: float = 0.05,
    text_encoder_2: Any | None = None,
) -> dict[str, torch.Tensor]:
    """Makes a random LoRA for a model, for tests and examples.

    It targets every attention projection, transformer ``proj_in``/``proj_out`` and
    feed-forward of the UNet, the resnets' 3x3 ``conv1`` when `include_convs`, and the text
    encoders' attention and MLP weights. kohya names follow the model: ``lora_te_`` for SD1/SD2,
    ``lora_te1_``/``lora_te2_`` for SDXL, ``lora_te_`` for the refiner's bigG; UNet names are
    diffusers names for SD1/SD2 and original (``input_blocks``) names for SDXL, as kohya's
    SDXL trainer writes them.

    Args:
        unet: The UNet module (or its state dict).
        text_encoder: The (first) text encoder module (or state dict), or None.
        rank: LoRA rank.
        alpha: Stored alpha; None gives ``rank / 2`` for kohya/comfy and no alpha for peft.
        seed: Random seed.
        key_format: ``"kohya"``, ``"comfy"`` or ``"peft"``.
        include_convs: Also target the resnets' 3x3 convolutions.
        scale: Standard deviation of the factors.
        text_encoder_2: SDXL's bigG module (or state dict), or None.

    Returns:
        The LoRA tensors, float32.
    """
    if key_format not in ("kohya", "comfy", "peft"):
        raise ValueError(f"key_format is {key_format!r}; expected kohya, comfy or peft")
    generator = torch.Generator().manual_seed(seed)
    unet_state = unet.state_dict() if hasattr(unet, "state_dict") else dict(unet)
    ldm = unet_diffusers_to_ldm_map(unet_state)
    sdxl = any(k.startswith("add_embedding.") for k in unet_state)
    stored_alpha = alpha if alpha is not None else (None if key_format == "peft" else rank / 2)
    out: dict[str, torch.Tensor] = {}

    def add(name: str, shape: torch.Size) -> None:
        down_shape = (rank, *shape[1:])
        up_shape = (shape[0], rank, *([1] * (len(shape) - 2)))
        down = torch.randn(down_shape, generator=generator) * scale
        up = torch.randn(up_shape, generator=generator) * scale
        up_suffix, down_suffix = (
            (".lora_B.weight", ".lora_A.weight") if key_format == "peft"
            else (".lora_up.weight", ".lora_down.weight")
        )
        out[name + up_suffix] = up
        out[name + down_suffix] = down
        if stored_alpha is not None:
            out[name + ".alpha"] = torch.tensor(float(stored_alpha))

    for key, tensor in unet_state.items():
        is_conv = include_convs and ".resnets." in key and key.endswith(".conv1.weight")
        if not (key.endswith(_UNET_LORA_TARGETS) or is_conv) or tensor.ndim < 2:
            continue
        base = key[: -len(".weight")]
        original = ldm[key][: -len(".weight")]
        name = {
            "kohya": "lora_unet_" + (original if sdxl else base).replace(".", "_"),
            "comfy": "diffusion_model." + original,
            "peft": "unet." + base,
        }[key_format]
        add(name, tensor.shape)
    encoders = [("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)]
    both = text_encoder is not None and text_encoder_2 is not None
    for component, module in encoders:
        if module is None:
            continue
        kohya = "lora_te_"
        if both:
            kohya = "lora_te1_" if component == "text_encoder" else "lora_te2_"
        comfy = "clip_g.transformer." if component == "text_encoder_2" else "clip_l.transformer."
        peft = "text_encoder_2." if both and component == "text_encoder_2" else "text_encoder."
        for key, tensor in canonical_text_encoder_state(module).items():
            if not key.endswith(_TEXT_LORA_TARGETS):
                continue
            base = key[: -len(".weight")]
            name = {
                "kohya": kohya + base.replace(".", "_"),
                "comfy": comfy + base,
                "peft": peft + base,
            }[key_format]
            add(name, tensor.shape)
    return out
