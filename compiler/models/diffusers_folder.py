"""diffusers folders (``model_index.json`` layout): loading them and writing them from checkpoints.

`write_diffusers_folder` turns a single-file checkpoint into a folder that diffusers' own
pipelines load offline: ``unet/``, ``vae/``, the text encoders, tokenizers built from comfyc's
packaged CLIP vocabulary (nothing is fetched), and the scheduler of the official repositories:

* SD1.x: ``StableDiffusionPipeline``, PNDM; SD2.x: DDIM. SD2's text encoder is cut to 23 layers,
  the diffusers convention that makes its last hidden state equal ComfyUI's default
  (penultimate layer, final norm applied).
* SDXL base: ``StableDiffusionXLPipeline`` with ``text_encoder`` (CLIP-L), ``text_encoder_2``
  (bigG, `CLIPTextModelWithProjection`), ``tokenizer`` (pad ``<|endoftext|>``) and
  ``tokenizer_2`` (pad ``!`` = 0), Euler (``leading`` spacing). diffusers takes
  ``hidden_states[-2]`` itself, so nothing is cut. SDXL-Turbo: Euler ancestral, ``trailing``.
* SDXL refiner: ``StableDiffusionXLImg2ImgPipeline`` with bigG only (``text_encoder`` and
  ``tokenizer`` null) and ``requires_aesthetics_score=True``, as the published refiner.

All schedulers are ``scaled_linear`` 0.00085..0.012 with ``steps_offset`` 1 and the model's
``prediction_type``.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from comfyc.compiler.models.configs import SDXL_LATENT_SCALE
from comfyc.compiler.models.errors import ModelFormatError
from comfyc.compiler.models.single_file import (
    LoadedCheckpoint,
    canonical_text_key,
    load_checkpoint,
)

__all__ = [
    "build_scheduler",
    "build_tokenizer",
    "load_diffusers_folder",
    "write_diffusers_folder",
    "write_tokenizer_files",
]

_BETA_START = 0.00085
_BETA_END = 0.012


@functools.lru_cache(maxsize=1)
def _packaged_tokenizer() -> Any:
    from comfyc.runtime.tokenizer import ClipTokenizer

    return ClipTokenizer()


def write_tokenizer_files(directory: str | os.PathLike[str], *, pad_token: int = 49407) -> Path:
    """Writes ``vocab.json``, ``merges.txt`` and tokenizer configs from the packaged vocabulary.

    Args:
        directory: Folder to write into (created).
        pad_token: 49407 (``<|endoftext|>``, SD1) or 0 (``!``, SD2).

    Returns:
        The folder.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _packaged_tokenizer()
    (folder / "vocab.json").write_text(json.dumps(tokenizer.vocab, ensure_ascii=False), "utf-8")
    merges = "".join(f"{a} {b}\n" for a, b in tokenizer.merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges, "utf-8")
    pad = "<|endoftext|>" if pad_token == 49407 else tokenizer.decode([pad_token]) or "!"
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), "utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), "utf-8")
    return folder


def build_tokenizer(*, pad_token: int = 49407) -> Any:
    """A transformers `CLIPTokenizer` built offline from the packaged vocabulary."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="comfyc-tokenizer-") as scratch:
        write_tokenizer_files(scratch, pad_token=pad_token)
        return CLIPTokenizer.from_pretrained(scratch)


def build_scheduler(family: str, prediction_type: str, variant: str | None = None) -> Any:
    """The scheduler the official repositories ship for this model.

    SD1.x: PNDM; SD2.x: DDIM; SDXL base/refiner: Euler (``leading``); SDXL-Turbo: Euler
    ancestral (``trailing``).
    """
    from diffusers import (
        DDIMScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
    )

    common: dict[str, Any] = {
        "num_train_timesteps": 1000,
        "beta_start": _BETA_START,
        "beta_end": _BETA_END,
        "beta_schedule": "scaled_linear",
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": prediction_type,
    }
    if family in ("sdxl", "sdxl_refiner"):
        common.pop("set_alpha_to_one")
        if variant == "turbo":
            return EulerAncestralDiscreteScheduler(timestep_spacing="trailing", **common)
        return EulerDiscreteScheduler(timestep_spacing="leading", interpolation_type="linear",
                                      use_karras_sigmas=False, **common)
    if family == "sd2":
        return DDIMScheduler(clip_sample=False, **common)
    return PNDMScheduler(skip_prk_steps=True, **common)


def _encoder_layers(text_encoder: Any) -> Any:
    return getattr(text_encoder, "text_model", text_encoder).encoder.layers


def write_diffusers_folder(
    ckpt_path: str | os.PathLike[str] | LoadedCheckpoint,
    out_dir: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Converts a checkpoint into a diffusers ``StableDiffusionPipeline`` folder.

    The folder is assembled in a temporary sibling and renamed into place, so a failure leaves
    nothing half-written.

    Args:
        ckpt_path: A single-file checkpoint, or an already loaded one (written as it is; its
            modules are left unchanged).
        out_dir: The folder to create.
        dtype: Load a checkpoint file in this dtype (None: float32); ignored for a loaded one.
        overwrite: Replace an existing non-empty `out_dir`.

    Returns:
        `out_dir`.

    Raises:
        ModelFormatError: The checkpoint lacks a VAE or text encoder, or `out_dir` exists.
    """
    target = Path(out_dir)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise ModelFormatError(
            f"{str(target)!r} already exists and is not empty; choose another folder or pass "
            "overwrite=True (--overwrite)"
        )
    checkpoint = ckpt_path if isinstance(ckpt_path, LoadedCheckpoint) else load_checkpoint(
        ckpt_path, dtype=dtype or torch.float32
    )
    sdxl = checkpoint.family in ("sdxl", "sdxl_refiner")
    needs_clip_l = checkpoint.family != "sdxl_refiner"
    if (checkpoint.vae is None or (needs_clip_l and checkpoint.text_encoder is None)
            or (sdxl and checkpoint.text_encoder_2 is None)):
        raise ModelFormatError(
            f"the {checkpoint.family} checkpoint lacks its VAE or a text encoder; a diffusers "
            "pipeline folder needs all of them. Merge a VAE first or convert a complete "
            "checkpoint"
        )
    if sdxl:
        _save_pipeline(checkpoint, checkpoint.text_encoder, target)
        return target
    text_encoder = checkpoint.text_encoder
    layers = _encoder_layers(text_encoder)
    removed = None
    if checkpoint.default_clip_layer == -2:
        # NOTE: cut for saving only; the layer is put back below so a caller's model is intact.
        removed = layers[-1]
        del layers[-1]
        text_encoder.config.num_hidden_layers = len(layers)
    try:
        _save_pipeline(checkpoint, text_encoder, target)
    finally:
        if removed is not None:
            layers.append(removed)
            text_encoder.config.num_hidden_layers = len(layers)
    return target


def _pipeline(checkpoint: LoadedCheckpoint, text_encoder: Any) -> Any:
    """The diffusers pipeline object for a checkpoint's family (modules shared, not copied)."""
    scheduler = build_scheduler(checkpoint.family, checkpoint.prediction_type, checkpoint.variant)
    if checkpoint.family == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=checkpoint.vae, text_encoder=text_encoder,
            text_encoder_2=checkpoint.text_encoder_2,
            tokenizer=build_tokenizer(pad_token=49407), tokenizer_2=build_tokenizer(pad_token=0),
            unet=checkpoint.unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    if checkpoint.family == "sdxl_refiner":
        from diffusers import StableDiffusionXLImg2ImgPipeline

        return StableDiffusionXLImg2ImgPipeline(
            vae=checkpoint.vae, text_encoder=None, text_encoder_2=checkpoint.text_encoder_2,
            tokenizer=None, tokenizer_2=build_tokenizer(pad_token=0), unet=checkpoint.unet,
            scheduler=scheduler, requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False, add_watermarker=False,
        )
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=checkpoint.vae,
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(pad_token=checkpoint.clip_pad_token),
        unet=checkpoint.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _save_pipeline(checkpoint: LoadedCheckpoint, text_encoder: Any, target: Path) -> None:
    """Assembles the pipeline in a temporary sibling folder and renames it to `target`."""
    pipeline = _pipeline(checkpoint, text_encoder)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        pipeline.save_pretrained(str(scratch), safe_serialization=True)
        _make_portable(scratch)
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _make_portable(folder: Path) -> None:
    """Write the folder as the hub's SD folders are, so every transformers version loads it.

    transformers 5 saves CLIPTextModel weights without the ``text_model.`` prefix and the
    tokenizer only as ``tokenizer.json``; transformers 4 then finds none of the text
    encoder's keys and *silently* initialises it at random, and its slow ``CLIPTokenizer``
    needs ``vocab.json`` and ``merges.txt`` (found running optimum-onnx, which pins
    transformers < 4.58, on a folder written here). Prefixed keys load under 5 as well.
    """
    from safetensors.numpy import load_file, save_file

    for part in ("text_encoder", "text_encoder_2"):
        weights = folder / part / "model.safetensors"
        if weights.is_file():
            tensors = load_file(str(weights))
            if not all(key.startswith(("text_model.", "text_projection.")) for key in tensors):
                save_file({canonical_text_key(key): value for key, value in tensors.items()},
                          str(weights), metadata={"format": "pt"})
    for part in ("tokenizer", "tokenizer_2"):
        tokenizer_dir = folder / part
        if tokenizer_dir.is_dir() and not (tokenizer_dir / "vocab.json").is_file():
            tokenizer = _packaged_tokenizer()
            (tokenizer_dir / "vocab.json").write_text(
                json.dumps(tokenizer.vocab, ensure_ascii=False), "utf-8")
            merges = "".join(f"{a} {b}\n" for a, b in tokenizer.merges)
            (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n" + merges, "utf-8")


def load_diffusers_folder(
    folder: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = torch.float32,
    prediction_type: str | None = None,
) -> LoadedCheckpoint:
    """Loads a diffusers Stable Diffusion (1.x, 2.x, XL, XL refiner) folder, local files only.

    Args:
        folder: A folder with ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``
            and, for SDXL, ``text_encoder_2/`` (the refiner has no ``text_encoder/``).
        dtype: Floating dtype (None keeps the stored one).
        prediction_type: Force the prediction type; None reads ``scheduler_config.json``.

    Returns:
        The loaded checkpoint; for SD1/SD2 ``default_clip_layer`` is -1 (a diffusers SD2 text
        encoder is already cut to the layer SD2 uses); SDXL's encoders are complete (-2).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    root = Path(folder)
    if not (root / "model_index.json").is_file():
        raise ModelFormatError(
            f"{str(root)!r} is a folder without model_index.json; expected a diffusers "
            "Stable Diffusion folder (unet/, vae/, text_encoder/)"
        )
    unet_config = root / "unet" / "config.json"
    sdxl = unet_config.is_file() and json.loads(unet_config.read_text("utf-8")).get(
        "addition_embed_type") == "text_time"
    required = ["unet", "vae"] + (["text_encoder_2"] if sdxl else ["text_encoder"])
    missing = [p for p in required if not (root / p).is_dir()]
    if missing:
        raise ModelFormatError(
            f"diffusers folder {str(root)!r} lacks {missing}; expected "
            f"{', '.join(p + '/' for p in required)} (SDXL: text_encoder_2/ too)"
        )
    unet = UNet2DConditionModel.from_pretrained(str(root / "unet"), torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(str(root / "vae"), torch_dtype=dtype)
    text_encoder = None
    if (root / "text_encoder").is_dir():
        text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), dtype=dtype)
    text_encoder_2 = None
    if sdxl:
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            str(root / "text_encoder_2"), dtype=dtype)
    for module in (unet, vae, text_encoder, text_encoder_2):
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    scheduler_config = root / "scheduler" / "scheduler_config.json"
    stored = "epsilon"
    scheduler: dict[str, Any] = {}
    if scheduler_config.is_file():
        scheduler = json.loads(scheduler_config.read_text("utf-8"))
        stored = scheduler.get("prediction_type", "epsilon")
    if sdxl:
        assert text_encoder_2 is not None  # required above
        family = _folder_sdxl_family(unet, text_encoder, text_encoder_2)
        turbo = (family == "sdxl" and scheduler.get("timestep_spacing") == "trailing"
                 and scheduler.get("_class_name") == "EulerAncestralDiscreteScheduler")
        return LoadedCheckpoint(
            unet=unet, vae=vae, text_encoder=text_encoder, family=family,
            prediction_type=prediction_type or stored,
            clip_pad_token=49407 if text_encoder is not None else 0, default_clip_layer=-2,
            in_channels=int(unet.config.in_channels), latent_scale=SDXL_LATENT_SCALE,
            source=root, text_encoder_2=text_encoder_2,
            adm_in_channels=int(unet.config.projection_class_embeddings_input_dim),
            variant="turbo" if turbo else None, clip_pad_token_2=0, default_clip_layer_2=-2,
            clip_layer_norm=False,
        )
    assert text_encoder is not None  # required above
    linear = bool(unet.config.use_linear_projection)
    family = "sd2" if linear or text_encoder.config.hidden_act == "gelu" else "sd1"
    return LoadedCheckpoint(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        family=family,
        prediction_type=prediction_type or stored,
        clip_pad_token=0 if family == "sd2" else 49407,
        default_clip_layer=-1,
        in_channels=int(unet.config.in_channels),
        source=root,
    )


def _folder_sdxl_family(unet: Any, text_encoder: Any | None, text_encoder_2: Any) -> str:
    """``"sdxl"`` or ``"sdxl_refiner"`` for a diffusers SDXL folder's modules."""
    ids, rest = divmod(
        int(unet.config.projection_class_embeddings_input_dim)
        - int(text_encoder_2.config.projection_dim),
        int(unet.config.addition_time_embed_dim),
    )
    if rest == 0 and ids in (5, 6):
        return "sdxl" if ids == 6 else "sdxl_refiner"
    return "sdxl" if text_encoder is not None else "sdxl_refiner"
