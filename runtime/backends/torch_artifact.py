"""Rebuilding PyTorch stages stored in an artifact (``torch/<stage>/``).

Imported only when an artifact runs a stage on the torch backend; needs the compiler extra
(torch, diffusers, transformers) and says so when they are missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .base import BackendError, Stage
from .torch import (
    TorchTextEncoder,
    TorchUNet,
    TorchVaeDecoder,
    TorchVaeEncoder,
    require_cuda,
    require_torch,
)

__all__ = ["load_torch_stage"]


def load_torch_stage(folder: Path, name: str, kind: str, info: dict[str, Any],
                     compile: bool = False, device: str = "cpu") -> Stage:
    """Build the module from its stored config and weights and wrap it as a stage.

    Args:
        compile: Wrap the module in ``torch.compile`` (compiled at the first call).
        device: ``cpu`` or ``cuda`` (``cuda`` needs a CUDA build of torch and a GPU).

    Raises:
        BackendError: torch / diffusers / transformers are not installed, or ``cuda`` was
            asked for without a GPU.
    """
    if device.startswith("cuda"):
        require_cuda("torch-compile-cuda" if compile else "torch-cuda")
    require_torch()
    try:
        from safetensors.torch import load_file
    except ImportError:  # pragma: no cover - safetensors is in every extra
        raise BackendError("safetensors is needed to load torch stages") from None
    payload = json.loads((folder / "config.json").read_text())
    cls_name, config = payload["class"], payload["config"]
    try:
        if cls_name == "CLIPTextModel":
            from transformers import CLIPTextConfig, CLIPTextModel

            module = CLIPTextModel(CLIPTextConfig(**config))
        else:
            import diffusers

            module = getattr(diffusers, cls_name).from_config(config)
    except ImportError as exc:
        raise BackendError(
            f"stage {name} runs on PyTorch and needs {exc.name}; install the compiler extra: "
            f"pip install 'comfyc[compiler,cpu]'") from None
    module.load_state_dict(load_file(str(folder / "model.safetensors")))
    module.eval()
    if kind == "unet":
        return TorchUNet(name, module, info, compile=compile, device=device)
    if kind == "text_encoder":
        return TorchTextEncoder(name, module, int(info.get("layer", -1)), info,
                                compile=compile, device=device)
    if kind == "vae_decoder":
        return TorchVaeDecoder(name, module, info, compile=compile, device=device)
    return TorchVaeEncoder(name, module, info, compile=compile, device=device)
