"""The seeded model files and input pictures of the recorded references (never stored).

``write_models(models_dir, input_dir)`` writes, as pure functions of fixed seeds:

* ``checkpoints/sd15-ref.safetensors``: random weights at SD1.5's exact architecture
  (``comfyc.compiler.models.synthetic.write_checkpoint("sd15", "full", seed=2101)``, float16,
  about 2.1 GB), which ComfyUI's model detection takes for SD1.5;
* ``loras/sd15-ref-lora.safetensors``: a random kohya LoRA for it (rank 4, UNet attention,
  feed-forward and resnet convolutions, text-encoder attention and MLP; float16);
* ``embeddings/sd15-ref-emb.safetensors``: a random A1111-style textual-inversion embedding
  (``emb_params``, 3 vectors of width 768, normal(0, 0.02) like CLIP's token embeddings;
  float16);
* ``controlnet/sd15-ref-controlnet.safetensors``: random weights at the published SD1.5
  ControlNet architecture (``comfyc.compiler.models.controlnet_synthetic.write_controlnet("sd1",
  "full", seed=2104)``, ComfyUI's ``control_model.*`` names, float16, about 0.7 GB; about 15 s
  to write), which ComfyUI's ``load_controlnet`` takes for an SD1.5 ControlNet; its zero
  convolutions are random too, so the control changes every picture;
* ``ref-input.png`` and ``ref-input-masked.png`` (an RGBA picture whose alpha is the inpainting
  mask, as LoadImage reads it) in ``input_dir``.

``write_sdxl_models(models_dir)`` writes the ``sdxl`` set's one file,
``checkpoints/sdxl-ref.safetensors``: random weights at SDXL's published architecture
(``write_checkpoint("sdxl", "full", seed=2201)``, float16, about 6.9 GB; ComfyUI's model
detection takes it for SDXL only at that architecture).

``write_sd3_models(models_dir)`` writes the ``sd3`` set's separate files (a small MMDiT that
ComfyUI detects as SD3, the published CLIP-L, CLIP-G and 16-channel VAE; seed 2301, float16,
about 1.8 GB; see its docstring).

``record.py`` stores the SHA-256 of each file with the recording, and the tests regenerate them
and compare the hashes before trusting a comparison.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .cases import (
    CHECKPOINT,
    CONTROLNET,
    EMBEDDING,
    INPUT_IMAGE,
    INPUT_MASKED,
    LORA,
    SDXL_CHECKPOINT,
    SIZE,
)

__all__ = ["CHECKPOINT_SEED", "CONTROLNET_SEED", "EMBEDDING_SEED", "LORA_SEED",
           "SD3_SEED", "SDXL_CHECKPOINT_SEED", "file_sha256", "models_writer", "write_controlnet",
           "write_embedding", "write_inputs", "write_models", "write_sd3_models",
           "write_sdxl_models"]

CHECKPOINT_SEED = 2101
LORA_SEED = 2102
EMBEDDING_SEED = 2103
CONTROLNET_SEED = 2104
SDXL_CHECKPOINT_SEED = 2201
SD3_SEED = 2301


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def write_checkpoint(models_dir: Path) -> Path:
    """Write the SD1.5-architecture random checkpoint into ``models_dir/checkpoints``."""
    import torch

    from comfyc.compiler.models.synthetic import write_checkpoint as write

    path = Path(models_dir) / "checkpoints" / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    return write(path, "sd15", "full", seed=CHECKPOINT_SEED, dtype=torch.float16)


def write_lora(models_dir: Path) -> Path:
    """Write the random kohya LoRA for the SD1.5 architecture into ``models_dir/loras``."""
    import torch
    from safetensors.torch import save_file

    from comfyc.compiler.models.lora import make_random_lora
    from comfyc.compiler.models.synthetic import FAMILIES, model_spec

    # NOTE: only the shapes and names matter, so the modules are built on the meta device
    # (no memory, no random initialisation); the factors come from the LoRA's own generator.
    with torch.device("meta"):
        modules = FAMILIES["sd15"].build(model_spec("sd15", "full"))
    factors = make_random_lora(modules["unet"], modules["text_encoder"], rank=4, seed=LORA_SEED,
                               key_format="kohya", include_convs=True, scale=0.05)
    tensors = {k: v.to(torch.float16).contiguous() for k, v in sorted(factors.items())}
    path = Path(models_dir) / "loras" / LORA
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def write_embedding(models_dir: Path) -> Path:
    """Write the random textual-inversion embedding into ``models_dir/embeddings``."""
    from safetensors.numpy import save_file

    vectors = np.random.default_rng(EMBEDDING_SEED).normal(0.0, 0.02, (3, 768))
    path = Path(models_dir) / "embeddings" / EMBEDDING
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": vectors.astype(np.float16)}, str(path))
    return path


def write_controlnet(models_dir: Path) -> Path:
    """Write the SD1.5-ControlNet-architecture random ControlNet into ``models_dir/controlnet``."""
    import torch

    from comfyc.compiler.models.controlnet_synthetic import write_controlnet as write

    path = Path(models_dir) / "controlnet" / CONTROLNET
    path.parent.mkdir(parents=True, exist_ok=True)
    return write(path, "sd1", "full", seed=CONTROLNET_SEED, dtype=torch.float16)


def _picture() -> np.ndarray:
    """A 64x64 RGB test picture: gradients, a disc and stripes (uint8)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1)
    r = 0.2 + 0.6 * x
    g = 0.3 + 0.5 * y
    b = 0.5 + 0.4 * np.sin(6.0 * np.pi * x) * 0.5
    disc = (x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.05
    r = np.where(disc, 0.9, r)
    g = np.where(disc, 0.2, g)
    b = np.where(disc, 0.1, b)
    rgb = np.stack([r, g, b], axis=-1)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def write_inputs(input_dir: Path) -> list[Path]:
    """Write the LoadImage pictures (pixels are a pure function of this code)."""
    from PIL import Image

    input_dir = Path(input_dir)
    input_dir.mkdir(parents=True, exist_ok=True)
    rgb = _picture()
    plain = input_dir / INPUT_IMAGE
    Image.fromarray(rgb, "RGB").save(plain)
    # NOTE: LoadImage's MASK is 1 - alpha: alpha 0 (transparent) marks the area to repaint.
    alpha = np.full((SIZE, SIZE), 255, np.uint8)
    alpha[16:48, 8:40] = 0
    masked = input_dir / INPUT_MASKED
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(masked)
    return [plain, masked]


def write_models(models_dir: Path) -> dict[str, Path]:
    """Write the checkpoint, the LoRA, the embedding and the ControlNet; returns ComfyUI-relative
    name -> path."""
    checkpoint = write_checkpoint(models_dir)
    lora = write_lora(models_dir)
    return {f"checkpoints/{CHECKPOINT}": checkpoint, f"loras/{LORA}": lora,
            f"embeddings/{EMBEDDING}": write_embedding(models_dir),
            f"controlnet/{CONTROLNET}": write_controlnet(models_dir)}


def write_sdxl_models(models_dir: Path) -> dict[str, Path]:
    """Write the ``sdxl`` set's checkpoint (SDXL architecture, float16, about 6.9 GB; about
    a minute); returns ComfyUI-relative name -> path."""
    import torch

    from comfyc.compiler.models.synthetic import write_checkpoint as write

    path = Path(models_dir) / "checkpoints" / SDXL_CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, "sdxl", "full", seed=SDXL_CHECKPOINT_SEED, dtype=torch.float16)
    return {f"checkpoints/{SDXL_CHECKPOINT}": path}


def write_sd3_models(models_dir: Path) -> dict[str, Path]:
    """Write the ``sd3`` set's separate files (float16, about 1.8 GB; under a minute); returns
    ComfyUI-relative name -> path.

    * ``diffusion_models/sd3-ref.safetensors``: an MMDiT that ComfyUI's detection takes for
      SD3 (``image_model: mmdit``; it derives the depth from the width, 64 per block, and
      counts nothing): 2 joint blocks of width 128 (2 heads of 64), with SD3 medium's patch
      size, 4096-wide context, 2048-wide pooled vector and 192x192 position table;
    * ``text_encoders/sd3-ref-clip_l.safetensors`` and ``sd3-ref-clip_g.safetensors``: CLIP-L
      and OpenCLIP bigG at their published architectures (ComfyUI builds them from fixed
      configs);
    * ``vae/sd3-ref-vae.safetensors``: the published 16-channel VAE.

    No T5-XXL (4.7 B parameters): DualCLIPLoader's ``sd3`` type conditions on CLIP-L and
    CLIP-G alone, padding the context to 4096. The files carry no comfyc metadata, like
    downloaded ones, so both programs detect everything from the tensors.
    """
    import torch

    from comfyc.compiler.models import flow_synthetic as flow
    from comfyc.compiler.models.synthetic import FAMILIES, write_safetensors_stream

    transformer = {**flow._SD3_MEDIUM, "num_layers": 2, "num_attention_heads": 2,
                   "caption_projection_dim": 128}
    spec = flow._sd3_spec(transformer, flow._FLOW_VAE, flow._CLIP_L, flow._CLIP_BIGG,
                          flow._TINY_T5, "sd3_medium")
    parts = flow.flow_split_layout(FAMILIES["sd3"].build(spec), spec, SD3_SEED, 0.0, "sd3-ref")
    written: dict[str, Path] = {}
    for role, (relative, groups, _) in parts.items():
        if role == "t5xxl":
            continue
        written[relative] = write_safetensors_stream(Path(models_dir) / relative, groups,
                                                     dtype=torch.float16,
                                                     metadata={"format": "pt"})
    return written


def models_writer(which: str) -> Callable[[Path], dict[str, Path]]:
    """The function that writes the model files of a recording set."""
    return {"sdxl": write_sdxl_models, "sd3": write_sd3_models}.get(which, write_models)
