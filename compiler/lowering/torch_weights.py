"""Storing a stage for the PyTorch backend inside an artifact: config + safetensors weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["save_torch_stage"]


def save_torch_stage(module: Any, kind: str, folder: Path) -> None:
    """Write ``config.json`` (module class and config) and ``model.safetensors``.

    Args:
        module: A diffusers UNet2DConditionModel / AutoencoderKL or a transformers
            CLIPTextModel.
        kind: The stage kind.
        folder: Where to write (created).
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "text_encoder":
        config = module.config.to_dict()
    else:
        config = dict(module.config)
    payload = {"class": type(module).__name__, "kind": kind, "config": config}
    (folder / "config.json").write_text(json.dumps(payload, indent=1, default=str))
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
