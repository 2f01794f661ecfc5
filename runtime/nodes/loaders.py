"""Loader nodes (ComfyUI's ``loaders`` category) and the program ops they lower to.

Model loaders do not run as themselves: the compiler chooses the weights when it compiles
(:mod:`comfyc.compiler.nodes.loaders`) and emits ``LoadCheckpoint`` / ``LoadVAE`` /
``ApplyLoRA`` ops whose arguments are the model's stages and facts. Those ops build the
MODEL / CLIP / VAE handles (:mod:`comfyc.runtime.values`) the other nodes use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..values import ClipRef, ModelRef, VaeRef
from .registry import NodeDef, OpFn
from .schema import files, float_input, link, outputs, schema

__all__ = ["NODES", "PROGRAM_OPS"]

_NOT_YET_CONTROL = ("ControlNet and T2I-Adapter models are not supported by comfyc yet; run "
                    "this workflow in ComfyUI or remove the ControlNet nodes")
_NOT_YET_UPSCALE = ("upscale models (ESRGAN, SwinIR …) are not supported by comfyc yet; use "
                    "ImageScale/ImageScaleBy or run this workflow in ComfyUI")


# ------------------------------------------------------------------------ program ops
def load_checkpoint(ctx: Any, *, unet: Any, text_encoders: Any, vae_decoder: Any = None,
                    vae_encoder: Any = None, prediction_type: str = "epsilon",
                    latent_scale: float = 0.18215, in_channels: int = 4,
                    default_layer: int = -1, pad_token: int = 49407, name: str = ""
                    ) -> tuple[Any, ...]:
    """``LoadCheckpoint``: MODEL, CLIP and VAE handles over a checkpoint's stages.

    ``text_encoders`` maps CLIP layers to stages (JSON keys are strings in artifacts; the
    torch path passes a mapping that makes a stage for any layer on demand). A stage the
    workflow never calls directly is None (an artifact ships no file for it), e.g. the
    checkpoint's own UNet when only a LoRA'd copy samples: the handles still carry the
    model's facts for ApplyLoRA, which swaps in its stages.
    """
    encoders = (text_encoders if not isinstance(text_encoders, dict)
                else {int(k): v for k, v in text_encoders.items()})
    return (
        ModelRef(unet, prediction_type, latent_scale, in_channels, name),
        ClipRef(encoders or {}, None, default_layer, pad_token, {}, name),
        VaeRef(vae_decoder, vae_encoder, name),
    )


def load_vae(ctx: Any, *, vae_decoder: Any = None, vae_encoder: Any = None, name: str = ""
             ) -> tuple[Any, ...]:
    """``LoadVAE``: a VAE handle over a separately loaded VAE's stages."""
    return (VaeRef(vae_decoder, vae_encoder, name),)


def _strength_tuple(values: Mapping[str, Any]) -> tuple[float, ...]:
    """``{"0": s0, "1": s1, …}`` (how a program encodes a list) → ``(s0, s1, …)``."""
    return tuple(float(values[key]) for key in sorted(values, key=int))


def apply_lora(ctx: Any, *, model: ModelRef | None = None, clip: ClipRef | None = None,
               unet: Any = None, text_encoders: Any = None,
               unet_strengths: Mapping[str, Any] | None = None,
               text_strengths: Mapping[str, Any] | None = None, **_: Any) -> tuple[Any, ...]:
    """``ApplyLoRA``: swap in the stages of a LoRA'd model.

    Merged LoRAs were folded into new stages at compile time. Runtime-mode LoRAs come as
    stages with LoRA slots; ``*_strengths`` hold one strength per slot (every runtime-mode
    LoRA on the way from the checkpoint to here), and the stage for those strengths (a
    session with merged weights, cached) is swapped in.
    """
    from ..lora import with_strengths

    if unet is not None and unet_strengths is not None:
        unet = with_strengths(unet, _strength_tuple(unet_strengths))
    if text_encoders and text_strengths is not None:
        text_encoders = with_strengths(text_encoders, _strength_tuple(text_strengths))
    new_model = replace(model, unet=unet) if model is not None and unet is not None else model
    new_clip = clip
    if clip is not None and text_encoders:
        encoders = (text_encoders if not isinstance(text_encoders, dict)
                    else {int(k): v for k, v in text_encoders.items()})
        new_clip = replace(clip, encoders=encoders)
    return new_model, new_clip


PROGRAM_OPS: dict[str, OpFn] = {
    "LoadCheckpoint": load_checkpoint,
    "LoadVAE": load_vae,
    "ApplyLoRA": apply_lora,
}

# ---------------------------------------------------------------------------- classes
NODES: list[NodeDef] = [
    NodeDef(schema("CheckpointLoaderSimple", [files("ckpt_name", "checkpoints")],
                   outputs("MODEL", "CLIP", "VAE"), "Load Checkpoint", "loaders"),
            lowered_to="LoadCheckpoint", binding="ckpt"),
    NodeDef(schema("VAELoader", [files("vae_name", "vae")], outputs("VAE"), "Load VAE",
                   "loaders"),
            lowered_to="LoadVAE"),
    NodeDef(schema("LoraLoader", [
        link("model", "MODEL"), link("clip", "CLIP"), files("lora_name", "loras"),
        float_input("strength_model", 1.0, -100.0, 100.0),
        float_input("strength_clip", 1.0, -100.0, 100.0),
    ], outputs("MODEL", "CLIP"), "Load LoRA", "loaders"),
        lowered_to="ApplyLoRA", binding="lora"),
    NodeDef(schema("LoraLoaderModelOnly", [
        link("model", "MODEL"), files("lora_name", "loras"),
        float_input("strength_model", 1.0, -100.0, 100.0),
    ], outputs("MODEL"), "LoraLoaderModelOnly", "loaders"),
        lowered_to="ApplyLoRA"),
    NodeDef(schema("ControlNetLoader", [files("control_net_name", "controlnet")],
                   outputs("CONTROL_NET"), "Load ControlNet Model", "loaders"),
            check_only=_NOT_YET_CONTROL),
    NodeDef(schema("DiffControlNetLoader", [
        link("model", "MODEL"), files("control_net_name", "controlnet"),
    ], outputs("CONTROL_NET"), "Load ControlNet Model (diff)", "loaders"),
        check_only=_NOT_YET_CONTROL),
    NodeDef(schema("UpscaleModelLoader", [files("model_name", "upscale_models")],
                   outputs("UPSCALE_MODEL"), "Load Upscale Model", "loaders",
                   python_module="comfy_extras.nodes_upscale_model"),
            check_only=_NOT_YET_UPSCALE),
]
