"""Model files: single-file SD1.x/SD2.x checkpoints, diffusers folders, VAEs, LoRAs, embeddings.

This package uses torch, diffusers and transformers (the compiler side). Its names are loaded
lazily, so that importing ``comfyc.compiler.models.cli`` (for the command line) stays cheap.

Main entry points:

* `load_checkpoint(path)` -> `LoadedCheckpoint` (modules + family, prediction type, ...)
* `save_single_file(path, unet, vae, text_encoder, dtype)` / `diffusers_to_single_file(...)`
* `write_diffusers_folder(ckpt_path, out_dir)`
* `load_vae(path)`, `load_embedding(path)`, `EmbeddingLibrary(models_dir)`
* `load_lora(path)`, `merge_lora(...)`, `extract_lora_factors(...)`, `make_random_lora(...)`
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "EmbeddingLibrary",
    "LoadedCheckpoint",
    "LoraFactor",
    "LoraFactors",
    "ModelFormatError",
    "diffusers_to_single_file",
    "extract_lora_factors",
    "load_checkpoint",
    "load_embedding",
    "load_lora",
    "load_vae",
    "make_random_lora",
    "merge_lora",
    "read_state_dict",
    "save_single_file",
    "write_diffusers_folder",
]

_HOMES = {
    "EmbeddingLibrary": "embeddings",
    "load_embedding": "embeddings",
    "LoadedCheckpoint": "single_file",
    "diffusers_to_single_file": "single_file",
    "load_checkpoint": "single_file",
    "load_vae": "single_file",
    "read_state_dict": "single_file",
    "save_single_file": "single_file",
    "LoraFactor": "lora",
    "LoraFactors": "lora",
    "extract_lora_factors": "lora",
    "load_lora": "lora",
    "make_random_lora": "lora",
    "merge_lora": "lora",
    "ModelFormatError": "errors",
    "write_diffusers_folder": "diffusers_folder",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
