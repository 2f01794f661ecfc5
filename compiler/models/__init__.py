"""Model files: SD1.x/SD2.x/SDXL, SD3/SD3.5 and Flux single files and diffusers folders, VAEs,
text encoders, LoRAs, embeddings.

This package uses torch, diffusers and transformers (the compiler side). Its names are loaded
lazily, so that importing ``comfyc.cli.commands.model`` (the ``comfyc model`` command) stays cheap.

Main entry points:

* `load_checkpoint(path)` -> `LoadedCheckpoint` (modules + family, prediction type, ...)
* `save_single_file(path, unet, vae, text_encoder, dtype)` / `diffusers_to_single_file(...)`
* `write_diffusers_folder(ckpt_path, out_dir)`
* `load_vae(path)`, `load_embedding(path)`, `EmbeddingLibrary(models_dir)`
* `load_lora(path)`, `merge_lora(...)`, `extract_lora_factors(...)`, `make_random_lora(...)`
* SDXL: `adm_vector(pooled, family, **ids)`, `SdxlUNet(unet)` / `sdxl_unet_forward(unet, x, t,
  context, y)`, `text_conditioning(checkpoint, tokens, clip_layer)`, `load_sdxl_embedding(path)`
* SD3/SD3.5 and Flux (`comfyc.compiler.models.flow`): `load_diffusion_model(path,
  weight_dtype=...)` (UNETLoader) -> `DiffusionModel`, `load_flow_checkpoint(path)` ->
  `FlowCheckpoint`, `load_any_checkpoint(path)`, `checkpoint_family(path)`; text encoders
  `load_text_encoder(path)`, `load_clip(paths, clip_type)` -> `TextEncoders`; prompt encodings
  `sd3_text_conditioning(...)`, `flux_text_conditioning(...)`; VAEs `load_vae(path, family=...)`;
  diffusers folders `load_flow_folder` / `write_flow_folder`
* ControlNets and T2I-Adapters (`comfyc.compiler.models.controlnet`): `load_controlnet(path,
  unet=...)` (ControlNetLoader / DiffControlNetLoader) -> `LoadedControlNet` (`.stage()`:
  `ControlNetStage`) or `LoadedT2IAdapter` (`.stage()`: `T2IAdapterStage`),
  `detect_control_model(state)`; seeded files `write_controlnet(...)`, `write_t2i_adapter(...)`
  (`comfyc.compiler.models.controlnet_synthetic`)
* Seeded random-weight checkpoints: `write_checkpoint(path, family, size, seed=...)`,
  `write_split_files(directory, family, size)`, `tiny_checkpoint(family)`
  (`comfyc.compiler.models.synthetic`)
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ControlNetStage",
    "LoadedControlNet",
    "LoadedT2IAdapter",
    "T2IAdapterStage",
    "detect_control_model",
    "load_controlnet",
    "write_controlnet",
    "write_t2i_adapter",
    "DiffusionModel",
    "EmbeddingLibrary",
    "FlowCheckpoint",
    "LatentFormat",
    "TextEncoders",
    "checkpoint_family",
    "flux_text_conditioning",
    "load_any_checkpoint",
    "load_clip",
    "load_diffusion_model",
    "load_flow_checkpoint",
    "load_flow_folder",
    "load_text_encoder",
    "sd3_text_conditioning",
    "write_flow_folder",
    "write_split_files",
    "LoadedCheckpoint",
    "LoraFactor",
    "LoraFactors",
    "ModelFormatError",
    "SdxlUNet",
    "TextEncoderSpec",
    "adm_vector",
    "diffusers_to_single_file",
    "embedding_libraries",
    "extract_lora_factors",
    "load_checkpoint",
    "load_embedding",
    "load_lora",
    "load_sdxl_embedding",
    "load_vae",
    "make_random_lora",
    "merge_lora",
    "read_state_dict",
    "save_single_file",
    "sdxl_unet_forward",
    "text_conditioning",
    "tiny_checkpoint",
    "write_checkpoint",
    "write_diffusers_folder",
]

_HOMES = {
    "ControlNetStage": "controlnet",
    "LoadedControlNet": "controlnet",
    "LoadedT2IAdapter": "controlnet",
    "T2IAdapterStage": "controlnet",
    "detect_control_model": "controlnet",
    "load_controlnet": "controlnet",
    "write_controlnet": "controlnet_synthetic",
    "write_t2i_adapter": "controlnet_synthetic",
    "DiffusionModel": "flow",
    "FlowCheckpoint": "flow",
    "LatentFormat": "flow",
    "checkpoint_family": "flow",
    "load_any_checkpoint": "flow",
    "load_diffusion_model": "flow",
    "load_flow_checkpoint": "flow",
    "TextEncoders": "text_encoders",
    "load_clip": "text_encoders",
    "load_text_encoder": "text_encoders",
    "flux_text_conditioning": "flow_conditioning",
    "sd3_text_conditioning": "flow_conditioning",
    "load_flow_folder": "flow_folder",
    "write_flow_folder": "flow_folder",
    "write_split_files": "synthetic",
    "EmbeddingLibrary": "embeddings",
    "embedding_libraries": "embeddings",
    "load_embedding": "embeddings",
    "load_sdxl_embedding": "embeddings",
    "LoadedCheckpoint": "single_file",
    "TextEncoderSpec": "single_file",
    "SdxlUNet": "sdxl",
    "adm_vector": "sdxl",
    "sdxl_unet_forward": "sdxl",
    "text_conditioning": "sdxl",
    "tiny_checkpoint": "synthetic",
    "write_checkpoint": "synthetic",
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
