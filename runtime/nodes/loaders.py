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

from ..values import ClipRef, ModelRef, TextEncoderRef, UpscaleModelRef, VaeRef
from .registry import NodeDef, OpFn
from .schema import combo, files, float_input, link, outputs, schema

__all__ = ["NODES", "PROGRAM_OPS", "clip_from_args"]



# ------------------------------------------------------------------------ program ops
def _layers(stages: Any) -> Any:
    """A CLIP layer → stage mapping (JSON keys are strings in artifacts; the torch path
    passes a mapping that makes a stage for any layer on demand)."""
    if isinstance(stages, dict):
        return {int(k): v for k, v in stages.items()}
    return stages if stages is not None else {}


def clip_from_args(clip: Mapping[str, Any], name: str = "", family: str = "sd1") -> ClipRef:
    """A :class:`ClipRef` from a ``LoadCheckpoint`` op's ``clip`` argument.

    ``{"order": ["clip_l", "clip_g"], "encoders": {"clip_l": {"stages": …, "pad_token",
    "default_layer", "pooled", "tokenizer", "min_length", "width"}, …}}``.
    """
    encoders = clip.get("encoders") or {}
    order = clip.get("order") or list(encoders)
    refs = []
    for key in order:
        spec = encoders[key]
        refs.append(TextEncoderRef(str(key), _layers(spec.get("stages")),
                                   int(spec.get("pad_token", 49407)),
                                   int(spec.get("default_layer", -1)),
                                   bool(spec.get("pooled", True)),
                                   str(spec.get("tokenizer", "clip")),
                                   int(spec.get("min_length", 77)),
                                   int(spec.get("width", 0))))
    return ClipRef(tuple(refs), None, {}, name, family)


def _model_ref(unet: Any, model_sampling: Any, latent_scale: float, latent_shift: float,
               in_channels: int, latent_channels: int, family: str, name: str) -> ModelRef:
    return ModelRef(unet, model_sampling, float(latent_scale), int(in_channels), name, family,
                    float(latent_shift), int(latent_channels))


def load_checkpoint(ctx: Any, *, unet: Any, clip: Mapping[str, Any], vae_decoder: Any = None,
                    vae_encoder: Any = None, model_sampling: Any = None,
                    latent_scale: float = 0.18215, latent_shift: float = 0.0,
                    in_channels: int = 4, latent_channels: int = 4, family: str = "sd1",
                    name: str = "") -> tuple[Any, ...]:
    """``LoadCheckpoint``: MODEL, CLIP and VAE handles over a checkpoint's stages.

    A stage the workflow never calls directly is None (an artifact ships no file for it),
    e.g. the checkpoint's own UNet when only a LoRA'd copy samples: the handles still carry
    the model's facts for ApplyLoRA, which swaps in its stages.
    """
    return (
        _model_ref(unet, model_sampling, latent_scale, latent_shift, in_channels,
                   latent_channels, family, name),
        clip_from_args(clip, name, family),
        VaeRef(vae_decoder, vae_encoder, name),
    )


def load_diffusion_model(ctx: Any, *, unet: Any, model_sampling: Any = None,
                         latent_scale: float = 1.0, latent_shift: float = 0.0,
                         in_channels: int = 16, latent_channels: int = 16,
                         family: str = "flux", name: str = "") -> tuple[Any, ...]:
    """``LoadDiffusionModel`` (UNETLoader): a MODEL handle over a diffusion-model stage."""
    return (_model_ref(unet, model_sampling, latent_scale, latent_shift, in_channels,
                       latent_channels, family, name),)


def load_upscale_model(ctx: Any, *, stage: Any, scale: int, in_channels: int = 3,
                       out_channels: int = 3, size_minimum: int = 0, size_multiple: int = 1,
                       network_multiple: int = 1, architecture: str = "", name: str = ""
                       ) -> tuple[Any, ...]:
    """``LoadUpscaleModel`` (UpscaleModelLoader): an UPSCALE_MODEL over its network stage."""
    return (UpscaleModelRef(stage, int(scale), int(in_channels), int(out_channels),
                            int(size_minimum), int(size_multiple), int(network_multiple),
                            str(architecture), name),)


def load_clip(ctx: Any, *, clip: Mapping[str, Any], family: str = "flux", name: str = ""
              ) -> tuple[Any, ...]:
    """``LoadCLIP`` (CLIPLoader, DualCLIPLoader, TripleCLIPLoader): a CLIP handle."""
    return (clip_from_args(clip, name, family),)


def load_vae(ctx: Any, *, vae_decoder: Any = None, vae_encoder: Any = None, name: str = ""
             ) -> tuple[Any, ...]:
    """``LoadVAE``: a VAE handle over a separately loaded VAE's stages."""
    return (VaeRef(vae_decoder, vae_encoder, name),)


def _strength_tuple(values: Mapping[str, Any]) -> tuple[float, ...]:
    """``{"0": s0, "1": s1, …}`` (how a program encodes a list) → ``(s0, s1, …)``."""
    return tuple(float(values[key]) for key in sorted(values, key=int))


def apply_lora(ctx: Any, *, model: ModelRef | None = None, clip: ClipRef | None = None,
               unet: Any = None, clip_stages: Mapping[str, Any] | None = None,
               unet_strengths: Mapping[str, Any] | None = None,
               text_strengths: Mapping[str, Any] | None = None, **_: Any) -> tuple[Any, ...]:
    """``ApplyLoRA``: swap in the stages of a LoRA'd model.

    Merged LoRAs were folded into new stages at compile time. Runtime-mode LoRAs come as
    stages with LoRA slots; ``*_strengths`` hold one strength per slot (every runtime-mode
    LoRA on the way from the checkpoint to here), and the stage for those strengths (a
    session with merged weights, cached) is swapped in. ``clip_stages`` has the new stages
    of each text encoder by its name.
    """
    from ..lora import with_strengths

    if unet is not None and unet_strengths is not None:
        unet = with_strengths(unet, _strength_tuple(unet_strengths))
    new_model = replace(model, unet=unet) if model is not None and unet is not None else model
    new_clip = clip
    if clip is not None and clip_stages:
        encoders = []
        for encoder in clip.encoders:
            stages = clip_stages.get(encoder.name)
            if stages is not None and text_strengths is not None:
                stages = with_strengths(stages, _strength_tuple(text_strengths))
            encoders.append(encoder if stages is None else
                            replace(encoder, stages=_layers(stages)))
        new_clip = replace(clip, encoders=tuple(encoders))
    return new_model, new_clip


PROGRAM_OPS: dict[str, OpFn] = {
    "LoadCheckpoint": load_checkpoint,
    "LoadVAE": load_vae,
    "LoadDiffusionModel": load_diffusion_model,
    "LoadCLIP": load_clip,
    "LoadUpscaleModel": load_upscale_model,
    "ApplyLoRA": apply_lora,
}

#: ``UNETLoader``'s weight_dtype choices (fp8 storage: weights rounded through fp8).
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
#: ``CLIPLoader``'s types in ComfyUI's order; comfyc runs sd3, flux and stable_diffusion.
CLIP_LOADER_TYPES = (
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart",
    "cosmos", "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image",
    "hunyuan_image", "flux2", "ovis", "longcat_image", "cogvideox", "lens", "pixeldit",
    "ideogram4", "boogu", "krea2", "joyimage", "mage")
#: ``DualCLIPLoader``'s types in ComfyUI's order.
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image",
                   "hunyuan_video_15", "kandinsky5", "kandinsky5_image", "ltxv", "newbie",
                   "ace")
_DEVICE = combo("device", ["default", "cpu"], required=False)

# ---------------------------------------------------------------------------- classes
NODES: list[NodeDef] = [
    NodeDef(schema("CheckpointLoaderSimple", [files("ckpt_name", "checkpoints")],
                   outputs("MODEL", "CLIP", "VAE"), "Load Checkpoint", "loaders"),
            lowered_to="LoadCheckpoint", binding="ckpt"),
    NodeDef(schema("VAELoader", [files("vae_name", "vae")], outputs("VAE"), "Load VAE",
                   "loaders"),
            lowered_to="LoadVAE"),
    NodeDef(schema("UNETLoader", [files("unet_name", "diffusion_models"),
                                  combo("weight_dtype", WEIGHT_DTYPES)],
                   outputs("MODEL"), "Load Diffusion Model", "model/loaders"),
            lowered_to="LoadDiffusionModel", binding="model"),
    NodeDef(schema("CLIPLoader", [files("clip_name", "text_encoders"),
                                  combo("type", CLIP_LOADER_TYPES), _DEVICE],
                   outputs("CLIP"), "Load CLIP", "model/loaders"),
            lowered_to="LoadCLIP", binding="clip"),
    NodeDef(schema("DualCLIPLoader", [files("clip_name1", "text_encoders"),
                                      files("clip_name2", "text_encoders"),
                                      combo("type", DUAL_CLIP_TYPES), _DEVICE],
                   outputs("CLIP"), "DualCLIPLoader", "model/loaders"),
            lowered_to="LoadCLIP", binding="clip"),
    NodeDef(schema("TripleCLIPLoader", [files("clip_name1", "text_encoders"),
                                        files("clip_name2", "text_encoders"),
                                        files("clip_name3", "text_encoders")],
                   outputs("CLIP"), "Load CLIP (Triple)", "model/loaders",
                   python_module="comfy_extras.nodes_sd3"),
            lowered_to="LoadCLIP", binding="clip"),
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
    NodeDef(schema("UpscaleModelLoader", [files("model_name", "upscale_models")],
                   outputs("UPSCALE_MODEL"), "Load Upscale Model", "loaders",
                   python_module="comfy_extras.nodes_upscale_model"),
            lowered_to="LoadUpscaleModel", binding="upscaler"),
]
