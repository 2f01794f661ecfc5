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
    TorchControlNet,
    TorchT2IAdapter,
    TorchTextEncoder,
    TorchUNet,
    TorchVaeDecoder,
    TorchVaeEncoder,
    require_cuda,
    require_torch,
)

__all__ = ["load_torch_stage"]


#: The module classes a stored torch stage may be, and where each comes from.
TORCH_STAGE_CLASSES: dict[str, tuple[str, str]] = {
    "CLIPTextModel": ("transformers", "CLIPTextModel"),
    "CLIPTextModelWithProjection": ("transformers", "CLIPTextModelWithProjection"),
    "T5EncoderModel": ("transformers", "T5EncoderModel"),
    "UNet2DConditionModel": ("diffusers", "UNet2DConditionModel"),
    "AutoencoderKL": ("diffusers", "AutoencoderKL"),
    "SD3Transformer2DModel": ("diffusers", "SD3Transformer2DModel"),
    "FluxTransformer2DModel": ("diffusers", "FluxTransformer2DModel"),
    "ControlNetModel": ("diffusers", "ControlNetModel"),
    "T2IAdapter": ("diffusers", "T2IAdapter"),
}


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
    try:
        payload = json.loads((folder / "config.json").read_text())
        cls_name, config = payload["class"], payload["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"stage {name}: its config.json is unreadable ({exc}); compile the "
                           f"artifact again") from None
    # NOTE: the class comes from an allow-list, never straight from the file: a config must
    # not be able to pick any class of diffusers or transformers to instantiate.
    if cls_name not in TORCH_STAGE_CLASSES or not isinstance(config, dict):
        raise BackendError(f"stage {name}: config.json names class {cls_name!r}, which is not "
                           f"a stage class comfyc stores ({', '.join(TORCH_STAGE_CLASSES)})")
    try:
        library, attribute = TORCH_STAGE_CLASSES[cls_name]
        if library == "transformers":
            import transformers

            model_class = getattr(transformers, attribute)
            module = model_class(model_class.config_class(**config))
        else:
            import diffusers

            module = getattr(diffusers, attribute).from_config(config)
    except ImportError as exc:
        raise BackendError(
            f"stage {name} runs on PyTorch and needs {exc.name}; install the compiler extra: "
            f"pip install 'comfyc[compiler,cpu]'") from None
    module.load_state_dict(load_file(str(folder / "model.safetensors")))
    # NOTE: no gradients, as the compiler's own modules (single_file, diffusers_folder): a
    # weight that requires grad also changes how torch splits a 3-D matmul (at::matmul folds
    # the batch only when it need not keep the input for backward), so a stored stage took
    # other kernels than the torch path and its images differed in the last bits on CPUs
    # whose GEMM results depend on the shapes (Intel's MKL on an AMX Xeon: 3e-6).
    module.requires_grad_(False)
    module.eval()
    if payload.get("wrapper") is not None:
        from .torch_dit import wrap_transformer

        module = wrap_transformer(module)
    if kind in ("controlnet", "t2i_adapter"):
        from .torch_control import ControlNetStage, T2IAdapterStage

        if kind == "controlnet":
            pooling = bool((payload.get("stage") or {}).get("global_average_pooling", False))
            return TorchControlNet(name, ControlNetStage(module, pooling), info,
                                   compile=compile, device=device)
        return TorchT2IAdapter(name, T2IAdapterStage(module), info, compile=compile,
                               device=device)
    if kind == "unet":
        return TorchUNet(name, module, info, compile=compile, device=device)
    if kind == "text_encoder":
        return TorchTextEncoder(name, module, int(info.get("layer", -1)), info,
                                compile=compile, device=device)
    if kind == "vae_decoder":
        return TorchVaeDecoder(name, module, info, compile=compile, device=device)
    return TorchVaeEncoder(name, module, info, compile=compile, device=device)
