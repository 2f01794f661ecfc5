"""Compile rules of the loader family: checkpoints, VAEs and LoRAs become stages.

A checkpoint loader's outputs are handles on stages the lowering makes from the file
(``LoadCheckpoint``); a LoRA loader swaps in stages with merged weights or LoRA slots
(``ApplyLoRA``). The weights each output holds (``origin``, ``lora_sides``) are what
:func:`~comfyc.compiler.nodes.weights.trace_weights` follows.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..ir.core import Node, Value
from .rules import CompileRule, LoraSide

__all__ = ["RULES"]


def _checkpoint_origin(node: Node, output: str) -> tuple[str, ...] | None:
    name = node.inputs.get("ckpt_name")
    return ("checkpoint", name) if isinstance(name, str) else None


def _unet_origin(node: Node, output: str) -> tuple[str, ...] | None:
    from ..models.store import unet_key

    name = node.inputs.get("unet_name")
    dtype = node.inputs.get("weight_dtype", "default")
    if not isinstance(name, str) or not isinstance(dtype, str):
        return None
    return ("checkpoint", unet_key(name, dtype))


#: The file inputs of each CLIP loader, in order, and its fixed type (None: its ``type``).
_CLIP_LOADERS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "CLIPLoader": (("clip_name",), None),
    "DualCLIPLoader": (("clip_name1", "clip_name2"), None),
    "TripleCLIPLoader": (("clip_name1", "clip_name2", "clip_name3"), "sd3"),
}


def _clip_loader_key(node: Node) -> str | None:
    from ..models.store import clip_key

    names, fixed = _CLIP_LOADERS[node.class_type]
    files = [node.inputs.get(n) for n in names]
    clip_type = fixed or node.inputs.get("type", "stable_diffusion")
    if not all(isinstance(f, str) for f in files) or not isinstance(clip_type, str):
        return None
    return clip_key(files, clip_type)  # type: ignore[arg-type]


def _clip_origin(node: Node, output: str) -> tuple[str, ...] | None:
    key = _clip_loader_key(node)
    return ("checkpoint", key) if key is not None else None


def _vae_origin(node: Node, output: str) -> tuple[str, ...] | None:
    name = node.inputs.get("vae_name")
    return ("vae", name) if isinstance(name, str) else None


def clip_arg(lowering: Any, desc: Any, stages: dict[str, str]) -> dict[str, Any]:
    """The ``clip`` argument of ``LoadCheckpoint``: each text encoder's stages and rules."""
    from ..lowering.program import encoder_fields

    loaded = lowering.cache.checkpoint(desc.checkpoint)
    encoders = {}
    for spec in loaded.text_encoders:
        encoders[spec.name] = {"stages": {"$stage": stages[spec.name]}, **encoder_fields(spec)}
    return {"order": [spec.name for spec in loaded.text_encoders], "encoders": encoders}


def _lower_checkpoint(node: Node, lowering: Any) -> list[Any]:
    """``CheckpointLoaderSimple`` → UNet, text-encoder and VAE stages + ``LoadCheckpoint``."""
    from comfyc.runtime.program import Op

    from ..lowering.program import ModelDesc

    name = lowering.const_input(node, "ckpt_name")
    loaded = lowering.load(node, "ckpt_name", lowering.cache.checkpoint)
    desc = ModelDesc(name)
    vae = {}
    if loaded.vae is not None:
        dec, enc = lowering.vae_stages(desc.key(), loaded.vae)
        vae = {"vae_decoder": {"$stage": dec}, "vae_encoder": {"$stage": enc}}
    return [Op(node.id, "LoadCheckpoint", {
        "unet": {"$stage": lowering.unet_stage(desc)},
        "clip": clip_arg(lowering, desc, lowering.text_stages(desc)),
        **vae,
        **_model_facts(loaded),
        "name": name,
    }, node.title)]


def _model_facts(loaded: Any) -> dict[str, Any]:
    """The MODEL handle's facts a loader op carries (sampling, latent format, family)."""
    from ..lowering.program import model_sampling_spec

    in_channels = getattr(loaded, "in_channels", None)
    if in_channels is None or not isinstance(in_channels, int):
        in_channels = int(loaded.unet.config.in_channels)
    return {"model_sampling": model_sampling_spec(loaded),
            "latent_scale": float(loaded.latent_scale),
            "latent_shift": float(getattr(loaded, "latent_shift", 0.0)),
            "latent_channels": int(getattr(loaded, "latent_channels", 4)),
            "in_channels": int(in_channels), "family": loaded.family}


def _lower_unet(node: Node, lowering: Any) -> list[Any]:
    """``UNETLoader`` → the diffusion-model stage + ``LoadDiffusionModel``."""
    from comfyc.runtime.program import Op

    from ..lowering.program import ModelDesc
    from ..models.store import unet_key

    name = lowering.const_input(node, "unet_name")
    dtype = lowering.const_input(node, "weight_dtype")
    key = unet_key(name, dtype)
    loaded = lowering.load(node, "unet_name", lambda _: lowering.cache.checkpoint(key))
    desc = ModelDesc(key)
    return [Op(node.id, "LoadDiffusionModel", {
        "unet": {"$stage": lowering.unet_stage(desc)}, **_model_facts(loaded), "name": name,
    }, node.title)]


def _lower_clip(node: Node, lowering: Any) -> list[Any]:
    """``CLIPLoader`` / ``DualCLIPLoader`` / ``TripleCLIPLoader`` → text-encoder stages +
    ``LoadCLIP``."""
    from comfyc.runtime.program import Op

    from ..lowering.program import ModelDesc

    names, _ = _CLIP_LOADERS[node.class_type]
    for input_name in names:
        lowering.const_input(node, input_name)
    key = _clip_loader_key(node)
    if key is None:
        lowering.const_input(node, "type")
    loaded = lowering.load(node, names[0], lambda _: lowering.cache.checkpoint(key))
    desc = ModelDesc(key)
    return [Op(node.id, "LoadCLIP", {
        "clip": clip_arg(lowering, desc, lowering.text_stages(desc)),
        "family": loaded.family, "name": " + ".join(node.inputs[n] for n in names),
    }, node.title)]


def _lower_vae(node: Node, lowering: Any) -> list[Any]:
    """``VAELoader`` → decoder and encoder stages + ``LoadVAE``."""
    from comfyc.runtime.program import Op

    name = lowering.const_input(node, "vae_name")
    vae = lowering.load(node, "vae_name", lowering.cache.vae)
    dec, enc = lowering.vae_stages(hashlib.sha1(name.encode()).hexdigest()[:10], vae)
    return [Op(node.id, "LoadVAE", {"vae_decoder": {"$stage": dec},
                                    "vae_encoder": {"$stage": enc}, "name": name}, node.title)]


def _lower_upscale(node: Node, lowering: Any) -> list[Any]:
    """``UpscaleModelLoader`` → the network stage + ``LoadUpscaleModel``."""
    from comfyc.runtime.program import Op

    name = lowering.const_input(node, "model_name")
    model = lowering.load(node, "model_name", lowering.cache.upscale)
    stage = lowering.upscale_stage(hashlib.sha1(name.encode()).hexdigest()[:10], model)
    spec = model.spec
    return [Op(node.id, "LoadUpscaleModel", {
        "stage": {"$stage": stage}, "scale": int(spec.scale),
        "in_channels": int(spec.in_channels), "out_channels": int(spec.out_channels),
        "size_minimum": int(spec.size_minimum), "size_multiple": int(spec.size_multiple),
        "network_multiple": int(spec.network_multiple), "architecture": spec.architecture,
        "name": name}, node.title)]


def _lower_lora(node: Node, lowering: Any) -> list[Any]:
    """A LoRA loader → an ``ApplyLoRA`` op that swaps in new UNet / text-encoder stages.

    Each side (MODEL with ``strength_model``, CLIP with ``strength_clip``) is lowered on its
    own from the weights its output holds: a strength of 0 leaves that side as it is (no
    stage argument); a folded LoRA (constant strength, ``merged``) gives a stage with merged
    weights; a runtime-mode one (``runtime``, or a strength that is not a constant — the torch
    path runs without the LoRA pass) gives a stage with a slot per runtime LoRA and one
    strength argument per slot.
    """
    from comfyc.runtime.program import Op

    from ..lowering.program import ModelDesc, encode_value
    from ..nodes import compile_rule
    from .weights import trace_weights

    lowering.load(node, "lora_name", lowering.cache.lora)  # The file must exist.
    args: dict[str, Any] = {}
    for side in compile_rule(node.class_type).lora_sides:
        value = node.inputs.get(side.input)
        if not isinstance(value, Value):
            continue
        lowering.desc(node, side.input, side.side)  # Fails unless it comes from a checkpoint.
        args[side.input] = encode_value(value)
        weights = trace_weights(node.output(side.output))
        if weights is None or not weights.loras or weights.loras[-1].node is not node:
            continue  # Strength 0: this side is unchanged.
        desc = ModelDesc.of(weights, side.side)
        if side.side == "model":
            args["unet"] = {"$stage": lowering.unet_stage(desc)}
            if desc.runtime:
                args["unet_strengths"] = {str(i): s for i, s in enumerate(desc.strengths)}
        else:
            args["clip_stages"] = {encoder: {"$stage": stage} for encoder, stage in
                                   lowering.text_stages(desc).items()}
            if desc.runtime:
                args["text_strengths"] = {str(i): s for i, s in enumerate(desc.strengths)}
    return [Op(node.id, "ApplyLoRA", args, node.title)]


_MODEL = LoraSide("model", "MODEL", "model", "strength_model")
_CLIP = LoraSide("clip", "CLIP", "clip", "strength_clip")

RULES: dict[str, CompileRule] = {
    "CheckpointLoaderSimple": CompileRule(lower=_lower_checkpoint, origin=_checkpoint_origin),
    "VAELoader": CompileRule(lower=_lower_vae, origin=_vae_origin),
    "UNETLoader": CompileRule(lower=_lower_unet, origin=_unet_origin),
    "CLIPLoader": CompileRule(lower=_lower_clip, origin=_clip_origin),
    "DualCLIPLoader": CompileRule(lower=_lower_clip, origin=_clip_origin),
    "TripleCLIPLoader": CompileRule(lower=_lower_clip, origin=_clip_origin),
    "UpscaleModelLoader": CompileRule(lower=_lower_upscale),
    "LoraLoader": CompileRule(lower=_lower_lora, lora_sides=(_MODEL, _CLIP)),
    "LoraLoaderModelOnly": CompileRule(lower=_lower_lora, lora_sides=(_MODEL,)),
}
