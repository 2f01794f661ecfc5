"""Storing a stage for the PyTorch backend inside an artifact: config + safetensors weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["save_torch_stage"]


def save_torch_stage(module: Any, kind: str, folder: Path) -> bool:
    """Write ``config.json`` (module class and config) and ``model.safetensors``.

    Args:
        module: A diffusers UNet2DConditionModel / AutoencoderKL, a transformers
            CLIPTextModel / T5EncoderModel, an SD3 / Flux transformer wrapper, or a
            ControlNet / T2I-Adapter stage (runtime/backends/torch_control.py).
        kind: The stage kind.
        folder: Where to write (created).

    Returns:
        False (nothing written) for stage kinds that run as ONNX only (upscale models).
    """
    from safetensors.torch import save_file

    if kind == "upscale":
        # NOTE: the upscale networks (ESRGAN, SRVGG, SwinIR) are built by the compiler's
        # model code, which an artifact's runtime does not import: ONNX only.
        return False
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("controlnet", "t2i_adapter"):
        _save_control_stage(module, kind, folder)
        return True
    wrapper = None
    if kind == "unet" and hasattr(module, "adm_in_channels") and hasattr(module, "unet") \
            and not hasattr(module, "config"):
        # An SDXL UNet in ComfyUI's call (runtime/backends/torch.py adm_unet): its diffusers
        # UNet (a view sharing every weight) is stored, and TorchUNet wraps it again at load.
        module = module.unet
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
    return True


def _save_control_stage(module: Any, kind: str, folder: Path) -> None:
    """A ControlNetStage / T2IAdapterStage: the diffusers module's class, config and weights,
    and the stage's own flag (shuffle pooling); the runtime wraps the module again."""
    from safetensors.torch import save_file

    if kind == "controlnet":
        inner = module.controlnet
        payload = {"class": "ControlNetModel", "kind": kind, "config": dict(inner.config),
                   "stage": {"global_average_pooling": bool(module.global_average_pooling)}}
        state = inner.state_dict()
    else:
        payload = {"class": "T2IAdapter", "kind": kind, "config": dict(module.adapter_config)}
        state = {f"adapter.{k}": v for k, v in module.adapter.state_dict().items()}
    (folder / "config.json").write_text(json.dumps(payload, indent=1, default=str))
    save_file({k: v.detach().contiguous() for k, v in state.items()},
              str(folder / "model.safetensors"))
