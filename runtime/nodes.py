"""The op table: how the runtime executes each op of a program.

Every op is ``fn(ctx, **args) -> tuple of outputs`` with ComfyUI's input names as keyword
arguments and ComfyUI's output order. Pure array work lives in :mod:`comfyc.runtime.ops`,
sampling in :mod:`comfyc.runtime.samplers`; this module wires them to stages and files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from .program import ProgramError, RunContext
from .values import ClipRef, ModelRef, VaeRef

__all__ = ["OPS", "encode_text", "vae_decode", "vae_encode", "advanced_schedule"]


# --------------------------------------------------------------------------- models
def _load_checkpoint(ctx: RunContext, *, unet: Any, text_encoders: Any,
                     vae_decoder: Any = None, vae_encoder: Any = None,
                     prediction_type: str = "epsilon", latent_scale: float = 0.18215,
                     in_channels: int = 4, default_layer: int = -1, pad_token: int = 49407,
                     name: str = "") -> tuple[Any, ...]:
    # A mapping from CLIP layer to stage: JSON keys are strings in artifacts; the torch path
    # passes a mapping that makes stages for any layer on demand.
    # A stage the workflow never calls directly is None (an artifact ships no file for it),
    # e.g. the checkpoint's own UNet when only a LoRA'd copy samples: the handles still carry
    # the model's facts for ApplyLoRA, which swaps in its stages.
    encoders = (text_encoders if not isinstance(text_encoders, dict)
                else {int(k): v for k, v in text_encoders.items()})
    return (
        ModelRef(unet, prediction_type, latent_scale, in_channels, name),
        ClipRef(encoders or {}, None, default_layer, pad_token, {}, name),
        VaeRef(vae_decoder, vae_encoder, name),
    )


def _load_vae(ctx: RunContext, *, vae_decoder: Any = None, vae_encoder: Any = None,
              name: str = "") -> tuple[Any, ...]:
    return (VaeRef(vae_decoder, vae_encoder, name),)


def _strength_tuple(values: Mapping[str, Any]) -> tuple[float, ...]:
    """``{"0": s0, "1": s1, …}`` (how a program encodes a list) → ``(s0, s1, …)``."""
    return tuple(float(values[key]) for key in sorted(values, key=int))


def _lora_loader(ctx: RunContext, *, model: ModelRef | None = None, clip: ClipRef | None = None,
                 unet: Any = None, text_encoders: Any = None,
                 unet_strengths: Mapping[str, Any] | None = None,
                 text_strengths: Mapping[str, Any] | None = None,
                 **_: Any) -> tuple[Any, ...]:
    # Merged LoRAs were folded into new stages at compile time: swap them in. Runtime-mode
    # LoRAs come as stages with LoRA slots; ``*_strengths`` hold one strength per slot (every
    # runtime-mode LoRA on the way from the checkpoint to here), and the stage for those
    # strengths (a session with merged weights, cached) is swapped in.
    from .lora import with_strengths

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


def _clip_set_last_layer(ctx: RunContext, *, clip: ClipRef, stop_at_clip_layer: int
                         ) -> tuple[Any, ...]:
    return (replace(clip, layer=int(stop_at_clip_layer)),)


def _model_sampling_discrete(ctx: RunContext, *, model: ModelRef, sampling: str,
                             zsnr: bool = False) -> tuple[Any, ...]:
    kinds = {"eps": "epsilon", "v_prediction": "v_prediction"}
    if sampling not in kinds or zsnr:
        raise ProgramError(f"ModelSamplingDiscrete sampling={sampling!r} zsnr={zsnr} is not "
                           f"supported yet; supported: sampling eps or v_prediction, zsnr off")
    return (replace(model, prediction_type=kinds[sampling]),)


# ----------------------------------------------------------------------------- text
# By (pad token, vocabulary file): the vocabulary is read once per process.
_TOKENIZERS: dict[tuple[int, str | None], Any] = {}


def encode_text(clip: ClipRef, text: str, vocab_path: str | None = None
                ) -> list[dict[str, Any]]:
    """ComfyUI's CLIPTextEncode: weighted, chunked, batched encoding.

    Follows ``comfy/sd1_clip.py`` ``encode_token_weights``: all 77-token chunks are encoded in
    one batch; when any weight differs from 1 an all-padding "empty" sequence is encoded too
    and each token becomes ``z_empty + w · (z − z_empty)``; chunks are concatenated along the
    token axis; the pooled output comes from the first chunk.
    """
    from .tokenizer import ClipTokenizer, EmbeddingRef

    key = (clip.pad_token, vocab_path)
    tokenizer = _TOKENIZERS.get(key)
    if tokenizer is None:
        tokenizer = _TOKENIZERS[key] = ClipTokenizer(vocab_path, pad_token=clip.pad_token)
    chunks = tokenizer.tokenize_weighted(text)
    layer = clip.effective_layer
    encoder = clip.encoders.get(layer)
    if encoder is None:
        raise ProgramError(f"no text encoder for CLIP layer {layer}; this program has layers "
                           f"{sorted(clip.encoders)}")
    ids = np.array([[t if isinstance(t, int) else 0 for t, _ in chunk] for chunk in chunks],
                   dtype=np.int64)
    if any(isinstance(t, EmbeddingRef) for chunk in chunks for t, _ in chunk):
        raise ProgramError("textual-inversion embeddings (embedding:NAME) are not supported by "
                           "this runtime path yet; remove them from the prompt")
    weights = np.array([[w for _, w in chunk] for chunk in chunks], dtype=np.float32)
    has_weights = bool(np.any(weights != 1.0))
    if has_weights:
        empty = np.full((1, ids.shape[1]), clip.pad_token, dtype=np.int64)
        empty[0, 0], empty[0, 1] = 49406, 49407
        ids = np.concatenate([ids, empty])
    hidden, pooled = encoder(ids)
    hidden = np.asarray(hidden, dtype=np.float32)
    if has_weights:
        z_empty = hidden[-1]
        hidden = hidden[:-1]
        hidden = z_empty[None] + weights[:, :, None] * (hidden - z_empty[None])
    cond = hidden.reshape(1, -1, hidden.shape[-1]).astype(np.float32)
    return [{"cond": cond, "pooled_output": np.asarray(pooled[:1], dtype=np.float32)}]


def _clip_text_encode(ctx: RunContext, *, text: str, clip: ClipRef) -> tuple[Any, ...]:
    return (encode_text(clip, text, ctx.vocab_path),)


def _constant(ctx: RunContext, *, value: Any) -> tuple[Any, ...]:
    return (value,)


def _conditioning_constant(ctx: RunContext, *, entries: list[dict[str, Any]]
                           ) -> tuple[Any, ...]:
    return ([dict(e) for e in entries],)


# ------------------------------------------------------------------------------ vae
def vae_decode(vae: VaeRef, samples: np.ndarray) -> np.ndarray:
    """Decode raw latents to an IMAGE ([B,H,W,3] in [0,1]) as ComfyUI's VAEDecode."""
    if vae.decoder is None:
        raise ProgramError("this VAE has no decoder stage")
    out = np.asarray(vae.decoder(np.asarray(samples, dtype=np.float32)), dtype=np.float32)
    image = np.clip((out + 1.0) / 2.0, 0.0, 1.0)
    return np.ascontiguousarray(image.transpose(0, 2, 3, 1))


def vae_encode(vae: VaeRef, pixels: np.ndarray) -> np.ndarray:
    """Encode an IMAGE to raw latents (posterior mean) as ComfyUI's VAEEncode."""
    from .ops.image import vae_encode_crop

    if vae.encoder is None:
        raise ProgramError("this VAE has no encoder stage")
    pixels = vae_encode_crop(np.asarray(pixels, dtype=np.float32))[..., :3]
    image = pixels.transpose(0, 3, 1, 2) * 2.0 - 1.0
    return np.asarray(vae.encoder(np.ascontiguousarray(image, dtype=np.float32)),
                      dtype=np.float32)


def _vae_decode(ctx: RunContext, *, samples: dict[str, Any], vae: VaeRef, **_: Any
                ) -> tuple[Any, ...]:
    return (vae_decode(vae, samples["samples"]),)


def _vae_encode(ctx: RunContext, *, pixels: np.ndarray, vae: VaeRef, **_: Any
                ) -> tuple[Any, ...]:
    return ({"samples": vae_encode(vae, pixels)},)


def _vae_encode_for_inpaint(ctx: RunContext, *, pixels: np.ndarray, vae: VaeRef,
                            mask: np.ndarray, grow_mask_by: int = 6) -> tuple[Any, ...]:
    from .ops.image import inpaint_prepare

    prepared, noise_mask = inpaint_prepare(np.asarray(pixels, dtype=np.float32),
                                           np.asarray(mask, dtype=np.float32), int(grow_mask_by))
    return ({"samples": vae_encode(vae, prepared), "noise_mask": noise_mask},)


# ------------------------------------------------------------------------- sampling
def _sample(ctx: RunContext, model: ModelRef, seed: int, steps: int, cfg: float,
            sampler_name: str, scheduler: str, positive: list[dict[str, Any]],
            negative: list[dict[str, Any]], latent: dict[str, Any], sigmas: np.ndarray | None,
            add_noise: bool = True) -> tuple[Any, ...]:
    from .cfg import make_denoiser
    from .samplers import ksampler

    if model.unet is None:
        raise ProgramError(f"the MODEL from {model.name or 'the checkpoint'} has no UNet stage in "
                           f"this program (it was not compiled in); compile the workflow again")
    samples = np.asarray(latent["samples"], dtype=np.float32)
    denoiser = make_denoiser(model.unet, positive, negative, float(cfg), samples.shape,
                             prediction_type=model.prediction_type)
    op = ctx.current
    label = f"#{op.id} {op.title or op.op}" if op else "sampling"

    def callback(step: int, x0: np.ndarray, x: np.ndarray, total: int) -> None:
        if ctx.preview is not None:
            ctx.preview(x0)
        if ctx.progress is not None:
            ctx.progress(label, step + 1, total)

    out = ksampler(denoiser, samples, int(seed), sigmas, sampler_name, add_noise=add_noise,
                   batch_index=latent.get("batch_index"), noise_mask=latent.get("noise_mask"),
                   latent_scale=model.latent_scale, callback=callback)
    result = dict(latent)
    result["samples"] = out
    return (result,)


def _ksampler(ctx: RunContext, *, model: ModelRef, seed: int, steps: int, cfg: float,
              sampler_name: str, scheduler: str, positive: list, negative: list,
              latent_image: dict[str, Any], denoise: float = 1.0,
              sigmas: Any = None) -> tuple[Any, ...]:
    from .schedules import ksampler_sigmas

    if sigmas is None:
        sigmas = ksampler_sigmas(scheduler, int(steps), sampler_name, float(denoise))
    return _sample(ctx, model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                   latent_image, np.asarray(sigmas, dtype=np.float32))


def _ksampler_advanced(ctx: RunContext, *, model: ModelRef, add_noise: str, noise_seed: int,
                       steps: int, cfg: float, sampler_name: str, scheduler: str,
                       positive: list, negative: list, latent_image: dict[str, Any],
                       start_at_step: int = 0, end_at_step: int = 10000,
                       return_with_leftover_noise: str = "disable",
                       sigmas: Any = None) -> tuple[Any, ...]:
    if sigmas is None:
        sigmas = advanced_schedule(scheduler, int(steps), sampler_name, int(start_at_step),
                                   int(end_at_step), return_with_leftover_noise == "enable")
    return _sample(ctx, model, noise_seed, steps, cfg, sampler_name, scheduler, positive,
                   negative, latent_image,
                   None if sigmas is None else np.asarray(sigmas, dtype=np.float32),
                   add_noise=add_noise == "enable")


def advanced_schedule(scheduler: str, steps: int, sampler_name: str, start_at_step: int,
                      end_at_step: int, leftover: bool) -> np.ndarray | None:
    """KSamplerAdvanced's sigmas: the full schedule cut to the step window."""
    from .schedules import advanced_sigmas, ksampler_sigmas

    full = ksampler_sigmas(scheduler, steps, sampler_name, 1.0)
    return advanced_sigmas(full, start_at_step, end_at_step, leftover)


# ---------------------------------------------------------------------------- files
def _load_image(ctx: RunContext, *, image: str, **_: Any) -> tuple[Any, ...]:
    from .image_io import load_image

    return load_image(image, ctx.input_dir)


def _load_image_mask(ctx: RunContext, *, image: str, channel: str = "alpha", **_: Any
                     ) -> tuple[Any, ...]:
    from .image_io import load_image_mask

    return (load_image_mask(image, ctx.input_dir, channel),)


def _save_image(ctx: RunContext, *, images: np.ndarray, filename_prefix: str = "ComfyUI"
                ) -> tuple[Any, ...]:
    from .image_io import save_images

    op = ctx.current
    assert op is not None
    ctx.images[op.id] = images
    if ctx.save:
        ctx.files[op.id] = save_images(images, ctx.output_dir, filename_prefix, ctx.prompt,
                                       ctx.extra_pnginfo)
    return ()


def _preview_image(ctx: RunContext, *, images: np.ndarray) -> tuple[Any, ...]:
    from .image_io import save_preview

    op = ctx.current
    assert op is not None
    ctx.images[op.id] = images
    if ctx.save:
        # NOTE: ComfyUI writes previews to its temp folder; ours is `temp/` inside the output
        # folder, so nothing is written outside the folder the user chose.
        ctx.files[op.id] = save_preview(images, ctx.output_dir / "temp", ctx.prompt,
                                        ctx.extra_pnginfo)
    return ()


def _output(ctx: RunContext, *, name: str, value: Any) -> tuple[Any, ...]:
    # A declared output (DSL `output NAME`): its value is returned by Program.run.
    if isinstance(value, dict) and "samples" in value:
        value = value["samples"]
    ctx.images[name] = value
    return ()


def _primitive(ctx: RunContext, *, value: Any) -> tuple[Any, ...]:
    return (value,)


# ----------------------------------------------------------------- pure array ops
def _wrap(module: str, function: str, outputs: int = 1) -> Any:
    """An op that calls ``comfyc.runtime.ops.<module>.<function>(**args)``."""

    cached: list[Any] = []

    def op(ctx: RunContext, **args: Any) -> tuple[Any, ...]:
        if not cached:  # Import the op module on first use only.
            import importlib

            cached.append(getattr(importlib.import_module(f"comfyc.runtime.ops.{module}"),
                                  function))
        result = cached[0](**args)
        return tuple(result) if outputs > 1 else (result,)

    op.__name__ = f"_{function}"
    return op


def _unsupported(name: str) -> Any:
    def op(ctx: RunContext, **args: Any) -> tuple[Any, ...]:
        raise ProgramError(f"{name} is not supported by comfyc yet")

    return op


OPS: dict[str, Any] = {
    # Lowering ops (model handles built from stages).
    "LoadCheckpoint": _load_checkpoint,
    "LoadVAE": _load_vae,
    "ApplyLoRA": _lora_loader,
    "Constant": _constant,
    "Output": _output,
    "ConditioningConstant": _conditioning_constant,
    # Node classes.
    "CLIPSetLastLayer": _clip_set_last_layer,
    "ModelSamplingDiscrete": _model_sampling_discrete,
    "CLIPTextEncode": _clip_text_encode,
    "VAEDecode": _vae_decode,
    "VAEDecodeTiled": _vae_decode,
    "VAEEncode": _vae_encode,
    "VAEEncodeTiled": _vae_encode,
    "VAEEncodeForInpaint": _vae_encode_for_inpaint,
    "KSampler": _ksampler,
    "KSamplerAdvanced": _ksampler_advanced,
    "LoadImage": _load_image,
    "LoadImageMask": _load_image_mask,
    "SaveImage": _save_image,
    "PreviewImage": _preview_image,
    "PrimitiveInt": _primitive,
    "PrimitiveFloat": _primitive,
    "PrimitiveString": _primitive,
    "PrimitiveStringMultiline": _primitive,
    "PrimitiveBoolean": _primitive,
    "EmptyLatentImage": _wrap("latent", "empty_latent_image"),
    "LatentUpscale": _wrap("latent", "latent_upscale"),
    "LatentUpscaleBy": _wrap("latent", "latent_upscale_by"),
    "LatentComposite": _wrap("latent", "latent_composite"),
    "LatentFromBatch": _wrap("latent", "latent_from_batch"),
    "RepeatLatentBatch": _wrap("latent", "repeat_latent_batch"),
    "SetLatentNoiseMask": _wrap("latent", "set_latent_noise_mask"),
    "ImageScale": _wrap("image", "image_scale"),
    "ImageScaleBy": _wrap("image", "image_scale_by"),
    "ImageScaleToTotalPixels": _wrap("image", "image_scale_to_total_pixels"),
    "ImageInvert": _wrap("image", "image_invert"),
    "ImageBatch": _wrap("image", "image_batch"),
    "ImagePadForOutpaint": _wrap("image", "image_pad_for_outpaint", 2),
    "EmptyImage": _wrap("image", "empty_image"),
    "ConditioningCombine": _wrap("conditioning", "conditioning_combine"),
    "ConditioningConcat": _wrap("conditioning", "conditioning_concat"),
    "ConditioningAverage": _wrap("conditioning", "conditioning_average"),
    "ConditioningSetArea": _wrap("conditioning", "set_area"),
    "ConditioningSetAreaPercentage": _wrap("conditioning", "set_area_percentage"),
    "ConditioningSetAreaStrength": _wrap("conditioning", "set_area_strength"),
    "ConditioningSetMask": _wrap("conditioning", "set_mask"),
    "ConditioningZeroOut": _wrap("conditioning", "zero_out"),
    "ConditioningSetTimestepRange": _wrap("conditioning", "set_timestep_range"),
}

#: Node classes the runtime cannot execute yet (they fail before any work starts).
UNSUPPORTED = {
    "ControlNetLoader", "DiffControlNetLoader", "ControlNetApply", "ControlNetApplyAdvanced",
    "UpscaleModelLoader", "ImageUpscaleWithModel",
}
