"""The PyTorch backend: stages that run diffusers/transformers modules eagerly.

It is the reference every other backend is compared with, and the fallback for stages that
have no ONNX lowering. torch is imported lazily: importing this module is cheap, and creating
a stage without torch installed raises a :class:`BackendError` that says what to install.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import BackendError, Stage

__all__ = ["require_torch", "TorchUNet", "TorchTextEncoder", "TorchVaeDecoder",
           "TorchVaeEncoder"]


def require_torch() -> Any:
    """Import torch or explain how to get it."""
    try:
        import torch
    except ImportError:
        raise BackendError(
            "this stage runs on the PyTorch backend, but torch is not installed; install "
            "the compiler extra: pip install 'comfyc[compiler,cpu]' (torch==2.13.0 is the "
            "tested version)") from None
    return torch


class _TorchStage(Stage):
    backend = "torch"

    def __init__(self, name: str, kind: str, module: Any, info: dict[str, Any] | None = None,
                 compile: bool = False) -> None:
        super().__init__(name, kind, info)
        torch = require_torch()
        self.torch = torch
        self.module = module.eval()
        self.dtype = next(module.parameters()).dtype
        self.call = module
        if compile:
            self.backend = "torch-compile"
            self.call = torch.compile(module)

    def _tensor(self, array: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.dtype)

    def _numpy(self, tensor: Any) -> np.ndarray:
        return tensor.detach().float().cpu().numpy()


class TorchUNet(_TorchStage):
    """``unet(sample, timestep, context) -> eps|v`` on a diffusers UNet2DConditionModel."""

    def __init__(self, name: str, module: Any, info: dict[str, Any] | None = None,
                 compile: bool = False) -> None:
        super().__init__(name, "unet", module, info, compile)

    def forward(self, sample: np.ndarray, timestep: np.ndarray, context: np.ndarray
                ) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.call(self._tensor(sample),
                            self.torch.from_numpy(np.asarray(timestep, dtype=np.float32)),
                            encoder_hidden_states=self._tensor(context), return_dict=False)[0]
        return self._numpy(out)


class TorchTextEncoder(_TorchStage):
    """``text_encoder(input_ids) -> (hidden, pooled)`` at a fixed CLIP layer.

    ComfyUI's CLIPSetLastLayer(n) takes hidden layer ``n`` (−1 last, −2 penultimate …) and
    applies the final layer norm to it (``comfy/sd1_clip.py``, ``layer="hidden"`` with
    ``layer_norm_hidden_state=True``).
    """

    def __init__(self, name: str, module: Any, layer: int = -1,
                 info: dict[str, Any] | None = None) -> None:
        super().__init__(name, "text_encoder", module, {**(info or {}), "layer": layer})
        self.layer = layer
        # transformers 4 nests the layers under .text_model; transformers 5 does not.
        inner = getattr(module, "text_model", module)
        self.final_norm = inner.final_layer_norm

    def forward(self, input_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
        with torch.inference_mode():
            out = self.module(input_ids=ids, output_hidden_states=True, return_dict=True)
            layers = len(out.hidden_states) - 1
            index = self.layer if -layers <= self.layer < 0 else -1
            hidden = self.final_norm(out.hidden_states[index])
            pooled = out.pooler_output
        return self._numpy(hidden), self._numpy(pooled)


class TorchVaeDecoder(_TorchStage):
    """``vae_decoder(latent) -> image in [-1, 1]`` on a diffusers AutoencoderKL."""

    def __init__(self, name: str, module: Any, info: dict[str, Any] | None = None) -> None:
        super().__init__(name, "vae_decoder", module, info)

    def forward(self, latent: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.module.decode(self._tensor(latent), return_dict=False)[0]
        return self._numpy(out)


class TorchVaeEncoder(_TorchStage):
    """``vae_encoder(image in [-1, 1]) -> latent mean`` (the posterior mode, as ComfyUI)."""

    def __init__(self, name: str, module: Any, info: dict[str, Any] | None = None) -> None:
        super().__init__(name, "vae_encoder", module, info)

    def forward(self, image: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            dist = self.module.encode(self._tensor(image), return_dict=False)[0]
        return self._numpy(dist.mean)
