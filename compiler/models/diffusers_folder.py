"""diffusers folders (``model_index.json`` layout): loading them and writing them from checkpoints.

`write_diffusers_folder` turns a single-file checkpoint into a folder that diffusers' own
``StableDiffusionPipeline.from_pretrained(folder)`` loads offline: ``unet/``, ``vae/``,
``text_encoder/``, a ``tokenizer/`` built from comfyc's packaged CLIP vocabulary (nothing is
fetched), and a scheduler that matches the model (SD1: PNDM, SD2: DDIM, as in the official
repositories; both ``scaled_linear`` 0.00085..0.012 with ``steps_offset`` 1 and the model's
``prediction_type``). SD2's text encoder is cut to 23 layers, the diffusers convention that makes
its last hidden state equal ComfyUI's default (penultimate layer, final norm applied).
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
from comfyc.compiler.models.errors import ModelFormatError
from comfyc.compiler.models.single_file import LoadedCheckpoint, load_checkpoint

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


def build_scheduler(family: str, prediction_type: str) -> Any:
    """The scheduler the official SD1.x (PNDM) / SD2.x (DDIM) repositories ship, for this model."""
    from diffusers import DDIMScheduler, PNDMScheduler

    common: dict[str, Any] = {
        "num_train_timesteps": 1000,
        "beta_start": _BETA_START,
        "beta_end": _BETA_END,
        "beta_schedule": "scaled_linear",
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": prediction_type,
    }
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
    if checkpoint.vae is None or checkpoint.text_encoder is None:
        raise ModelFormatError(
            "the checkpoint has no VAE or no text encoder; a diffusers pipeline folder needs "
            "both. Merge a VAE first or convert a complete checkpoint"
        )
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


def _save_pipeline(checkpoint: LoadedCheckpoint, text_encoder: Any, target: Path) -> None:
    """Assembles the pipeline in a temporary sibling folder and renames it to `target`."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(
        vae=checkpoint.vae,
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(pad_token=checkpoint.clip_pad_token),
        unet=checkpoint.unet,
        scheduler=build_scheduler(checkpoint.family, checkpoint.prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
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

    weights = folder / "text_encoder" / "model.safetensors"
    if weights.is_file():
        tensors = load_file(str(weights))
        if not all(key.startswith("text_model.") for key in tensors):
            save_file({key if key.startswith("text_model.") else f"text_model.{key}": value
                       for key, value in tensors.items()}, str(weights),
                      metadata={"format": "pt"})
    tokenizer_dir = folder / "tokenizer"
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
    """Loads a diffusers Stable Diffusion folder (local files only).

    Args:
        folder: A folder with ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``.
        dtype: Floating dtype (None keeps the stored one).
        prediction_type: Force the prediction type; None reads ``scheduler_config.json``.

    Returns:
        The loaded checkpoint; ``default_clip_layer`` is -1 (a diffusers SD2 text encoder is
        already cut to the layer SD2 uses).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = Path(folder)
    if not (root / "model_index.json").is_file():
        raise ModelFormatError(
            f"{str(root)!r} is a folder without model_index.json; expected a diffusers "
            "Stable Diffusion folder (unet/, vae/, text_encoder/)"
        )
    missing = [p for p in ("unet", "vae", "text_encoder") if not (root / p).is_dir()]
    if missing:
        raise ModelFormatError(f"diffusers folder {str(root)!r} lacks {missing}")
    unet = UNet2DConditionModel.from_pretrained(str(root / "unet"), torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(str(root / "vae"), torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), dtype=dtype)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
    scheduler_config = root / "scheduler" / "scheduler_config.json"
    stored = "epsilon"
    if scheduler_config.is_file():
        stored = json.loads(scheduler_config.read_text("utf-8")).get("prediction_type", "epsilon")
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
