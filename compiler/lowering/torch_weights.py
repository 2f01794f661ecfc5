"""Storing a stage for the PyTorch backend inside an artifact: config + safetensors weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["save_torch_stage"]


def save_torch_stage(module: Any, kind: str, folder: Path) -> None:
    """Write ``config.json`` (module class and config) and ``model.safetensors``.

    Args:
        module: A diffusers UNet2DConditionModel / AutoencoderKL, a transformers
            CLIPTextModel / T5EncoderModel, or an SD3 / Flux transformer wrapper.
        kind: The stage kind.
        folder: Where to write (created).
    """
    from safetensors.torch import save_file

    if kind == "upscale":
        from .onnx_export import ExportError

        raise ExportError("upscale models run as ONNX stages only (no stored torch stage); "
                          "compile for an onnxruntime backend")
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = None
    if kind == "unet" and hasattr(module, "transformer") and not hasattr(module, "config"):
        # An SD3 / Flux transformer in ComfyUI's call (runtime/backends/torch_dit.py): the
        # diffusers transformer is stored, the runtime wraps it again.
        wrapper = type(module).__name__
        module = module.transformer
    if kind == "text_encoder":
        config = module.config.to_dict()
    else:
        config = dict(module.config)
    payload = {"class": type(module).__name__, "kind": kind, "config": config}
    if wrapper is not None:
        payload["wrapper"] = wrapper
    (folder / "config.json").write_text(json.dumps(payload, indent=1, default=str))
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
