"""Builders for the tiny SD1.x-architecture digits model (diffusers modules, tokenizer, scheduler).

Every size of the model is fixed here, in one place, so that training, evaluation and the tests
build exactly the same modules. Where a choice cannot be read back from the tensor shapes of a
single-file checkpoint, it follows the SD1.x convention so that a shape-based loader guesses it
right:

- every GroupNorm (UNet and VAE) has 32 groups, as in SD1.x (channel counts are multiples of 32);
- the UNet's attention uses 8 heads (diffusers' misnamed ``attention_head_dim=8``, as in SD1.x);
- the text encoder's attention uses ``hidden_size // 64`` heads (head width 64, as CLIP ViT-L/14),
  here 1 head; ``intermediate_size`` is ``4 * hidden_size``, ``quick_gelu``, as in CLIP;
- the VAE has one attention block in its mid block (``mid_block_add_attention``), as in SD1.x.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

__all__ = [
    "BOS_TOKEN_ID",
    "EOS_TOKEN_ID",
    "LATENT_SCALING_FACTOR",
    "MAX_LENGTH",
    "REPO_ROOT",
    "VOCAB_PATH",
    "build_scheduler",
    "build_text_encoder",
    "build_tokenizer",
    "build_unet",
    "build_vae",
    "count_parameters",
    "text_encoder_config",
    "unet_config",
    "vae_config",
    "write_slow_tokenizer_files",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
VOCAB_PATH = REPO_ROOT / "runtime" / "data" / "bpe_simple_vocab_16e6.txt.gz"

#: The SD1.x latent scale: ``latent * 0.18215`` is what the UNet sees. Fixed by the format.
LATENT_SCALING_FACTOR = 0.18215
#: CLIP's context length, vocabulary size and special tokens (the real CLIP ids).
MAX_LENGTH = 77
VOCAB_SIZE = 49408
BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407

#: Text encoder width. It dominates the checkpoint: 49408 x 64 embeddings = 3.16M params (6.3 MB
#: in fp16). It is also the UNet's cross-attention width (SD1.x has no text projection).
TEXT_HIDDEN_SIZE = 64


def text_encoder_config() -> dict[str, Any]:
    """Returns the CLIPTextConfig keyword arguments of the tiny text encoder."""
    return {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": TEXT_HIDDEN_SIZE,
        "intermediate_size": 4 * TEXT_HIDDEN_SIZE,
        "num_hidden_layers": 2,
        "num_attention_heads": max(1, TEXT_HIDDEN_SIZE // 64),
        "max_position_embeddings": MAX_LENGTH,
        "projection_dim": TEXT_HIDDEN_SIZE,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "pad_token_id": EOS_TOKEN_ID,
    }


def unet_config() -> dict[str, Any]:
    """Returns the UNet2DConditionModel keyword arguments of the tiny UNet (8x8x4 latents)."""
    return {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": (32, 64, 64),
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": TEXT_HIDDEN_SIZE,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "use_linear_projection": False,
    }


def vae_config() -> dict[str, Any]:
    """Returns the AutoencoderKL keyword arguments of the tiny VAE (64x64x3 <-> 8x8x4)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (32, 32, 32, 64),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 64,
        "scaling_factor": LATENT_SCALING_FACTOR,
    }


def build_text_encoder() -> CLIPTextModel:
    """Builds a randomly initialised tiny CLIP text encoder (seed the RNG first)."""
    return CLIPTextModel(CLIPTextConfig(**text_encoder_config()))


def build_unet() -> UNet2DConditionModel:
    """Builds a randomly initialised tiny UNet (seed the RNG first)."""
    return UNet2DConditionModel(**unet_config())


def build_vae() -> AutoencoderKL:
    """Builds a randomly initialised tiny KL autoencoder (seed the RNG first)."""
    return AutoencoderKL(**vae_config())


def build_scheduler() -> EulerDiscreteScheduler:
    """Builds the SD1.x Euler scheduler the pipeline folder ships with.

    SD1.x training schedule (scaled_linear betas 0.00085..0.012, 1000 steps, epsilon prediction);
    ``timestep_spacing="linspace"`` so that the first step starts at the largest sigma (t=999),
    which is what ComfyUI's "normal" schedule and k-diffusion do; ``steps_offset=1`` as in the
    SD1.x scheduler configs (it has no effect with linspace spacing).
    """
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="linspace",
        steps_offset=1,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """Returns the byte -> printable character table of GPT-2/CLIP byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    # NOTE: insertion order matters: the vocabulary lists the printable bytes first, then the
    # others, which map to code points from 256 upwards.
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _read_merges(vocab_path: Path) -> list[str]:
    """Returns the lines of the gzipped BPE merges list."""
    with gzip.open(vocab_path) as handle:
        return handle.read().decode("utf-8").split("\n")


def build_tokenizer(vocab_path: Path = VOCAB_PATH) -> CLIPTokenizer:
    """Builds the real CLIP BPE tokenizer from the bundled merges file, offline.

    Args:
        vocab_path: The ``bpe_simple_vocab_16e6.txt.gz`` merges list shipped with the runtime.

    Returns:
        A CLIPTokenizer giving the real CLIP ids (``"a photo of a cat"`` ->
        ``[49406, 320, 1125, 539, 320, 2368, 49407]``), padding with ``<|endoftext|>`` to 77.
    """
    lines = _read_merges(vocab_path)
    # NOTE: line 0 is a version header; CLIP uses the first 49152 - 256 - 2 merges.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = MAX_LENGTH
    return tokenizer


def write_slow_tokenizer_files(folder: Path, vocab_path: Path = VOCAB_PATH) -> None:
    """Writes ``vocab.json`` and ``merges.txt`` next to a saved ``tokenizer.json``.

    transformers 5 saves only ``tokenizer.json``; older transformers releases and other CLIP
    tokenizer implementations read the two classic files, so the pipeline folder carries both.

    Args:
        folder: The pipeline's ``tokenizer/`` folder (created if missing).
        vocab_path: The bundled merges list.
    """
    tokenizer = build_tokenizer(vocab_path)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = dict(sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = _read_merges(vocab_path)
    merges = lines[1 : 49152 - 256 - 2 + 1]
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8"
    )


def count_parameters(module: torch.nn.Module) -> int:
    """Returns the number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
