"""The PyTorch backend: stages that run diffusers/transformers modules eagerly.

It is the reference every other backend is compared with, and the fallback for stages that
have no ONNX lowering. torch is imported lazily: importing this module is cheap, and creating
a stage without torch installed raises a :class:`BackendError` that says what to install.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .base import BackendError, Stage

__all__ = ["require_torch", "require_cuda", "TorchUNet", "TorchTextEncoder", "TorchVaeDecoder",
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


def require_cuda(backend: str = "torch-cuda") -> Any:
    """torch with a usable CUDA device, or a :class:`BackendError` naming what is missing."""
    torch = require_torch()
    if not torch.cuda.is_available():
        build = (f"a CUDA {torch.version.cuda} build" if torch.version.cuda
                 else "a CPU-only build")
        raise BackendError(
            f"backend {backend} needs an NVIDIA GPU, but torch {torch.__version__} ({build}) "
            f"sees no CUDA device (torch.cuda.is_available() is False); run on a machine with "
            f"an NVIDIA GPU and driver and a CUDA build of torch, or use --backend torch "
            f"(the CPU)")
    return torch


def _compile(torch: Any, fn: Any) -> Any:
    """``torch.compile`` with the backend named by ``COMFYC_TORCH_COMPILE_BACKEND`` (default
    inductor; tests use ``eager`` to check the plumbing without minutes of codegen)."""
    return torch.compile(fn, backend=os.environ.get("COMFYC_TORCH_COMPILE_BACKEND", "inductor"))


class _TorchStage(Stage):
    backend = "torch"

    def __init__(self, name: str, kind: str, module: Any, info: dict[str, Any] | None = None,
                 compile: bool = False, device: str = "cpu") -> None:
        super().__init__(name, kind, info)
        torch = require_cuda() if device.startswith("cuda") else require_torch()
        self.torch = torch
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        self.dtype = next(module.parameters()).dtype
        self.call = self.module
        if compile:
            self.backend = "torch-compile"
            self.call = _compile(torch, self.module)
        if self.device.type == "cuda":
            self.backend += "-cuda"

    def _tensor(self, array: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device, self.dtype)

    def _numpy(self, tensor: Any) -> np.ndarray:
        return tensor.detach().float().cpu().numpy()


class TorchUNet(_TorchStage):
    """``unet(sample, timestep, context) -> eps|v`` on a diffusers UNet2DConditionModel."""

    def __init__(self, name: str, module: Any, info: dict[str, Any] | None = None,
                 compile: bool = False, device: str = "cpu") -> None:
        super().__init__(name, "unet", module, info, compile, device)

    def forward(self, sample: np.ndarray, timestep: np.ndarray, context: np.ndarray
                ) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.call(self._tensor(sample),
                            self.torch.from_numpy(np.asarray(timestep, dtype=np.float32)
                                                  ).to(self.device),
                            encoder_hidden_states=self._tensor(context), return_dict=False)[0]
        return self._numpy(out)


class TorchTextEncoder(_TorchStage):
    """``text_encoder(input_ids) -> (hidden, pooled)`` at a fixed CLIP layer.

    ComfyUI's CLIPSetLastLayer(n) takes hidden layer ``n`` (−1 last, −2 penultimate …) and
    applies the final layer norm to it (``comfy/sd1_clip.py``, ``layer="hidden"`` with
    ``layer_norm_hidden_state=True``).
    """

    def __init__(self, name: str, module: Any, layer: int = -1,
                 info: dict[str, Any] | None = None, compile: bool = False,
                 device: str = "cpu") -> None:
        super().__init__(name, "text_encoder", module, {**(info or {}), "layer": layer},
                         compile, device)
        self.layer = layer
        # transformers 4 nests the layers under .text_model; transformers 5 does not.
        inner = getattr(module, "text_model", module)
        self.final_norm = inner.final_layer_norm

    def forward(self, input_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64)).to(self.device)
        with torch.inference_mode():
            out = self.call(input_ids=ids, output_hidden_states=True, return_dict=True)
            layers = len(out.hidden_states) - 1
            index = self.layer if -layers <= self.layer < 0 else -1
            hidden = self.final_norm(out.hidden_states[index])
            pooled = out.pooler_output
        return self._numpy(hidden), self._numpy(pooled)


class TorchVaeDecoder(_TorchStage):
    """``vae_decoder(latent) -> image in [-1, 1]`` on a diffusers AutoencoderKL."""

    def __init__(self, name: str, module: Any, info: dict[str, Any] | None = None,
                 compile: bool = False, device: str = "cpu") -> None:
        super().__init__(name, "vae_decoder", module, info, compile, device)
        # NOTE: decode/encode are methods, not forward: compile those bound methods.
        self.method = (_compile(self.torch, self.module.decode) if compile
                       else self.module.decode)

    def forward(self, latent: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.method(self._tensor(latent), return_dict=False)[0]
        return self._numpy(out)


class TorchVaeEncoder(_TorchStage):
    """``vae_encoder(image in [-1, 1]) -> latent mean`` (the posterior mode, as ComfyUI)."""

    def __init__(self, name: str, module: Any, info: dict[str, Any] | None = None,
                 compile: bool = False, device: str = "cpu") -> None:
        super().__init__(name, "vae_encoder", module, info, compile, device)
        # NOTE: decode/encode are methods, not forward: compile those bound methods.
        self.method = (_compile(self.torch, self.module.encode) if compile
                       else self.module.encode)

    def forward(self, image: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            dist = self.method(self._tensor(image), return_dict=False)[0]
        return self._numpy(dist.mean)
