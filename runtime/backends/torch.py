"""The PyTorch backend: stages that run diffusers/transformers modules eagerly.

It is the reference every other backend is compared with, and the fallback for stages that
have no ONNX lowering. torch is imported lazily: importing this module is cheap, and creating
a stage without torch installed raises a :class:`BackendError` that says what to install.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from .base import BackendError, Stage

__all__ = ["require_torch", "require_cuda", "spliced_token_embeddings", "TorchUNet",
           "TorchTextEncoder", "TorchVaeDecoder",
           "TorchVaeEncoder", "TorchUpscale", "TorchControlNet", "TorchT2IAdapter", "adm_unet",
           "ADM_TIME_EMBED_DIM"]

#: Width of each sinusoidal size embedding in SDXL's ADM vector ``y``.
ADM_TIME_EMBED_DIM = 256


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


def adm_unet(unet: Any) -> Any:
    """An SDXL diffusers UNet called as ComfyUI calls its UNet: ``(x, t, context, y)``.

    diffusers' text_time path computes ``add_embedding(concat(text_embeds,
    add_time_proj(time_ids)))``; a view of the UNet that shares every weight but whose
    ``add_time_proj`` is the identity, given the two halves of ComfyUI's ADM vector ``y``,
    computes ``add_embedding(y)`` — ldm's ``label_emb(y)`` — and the rest of the forward is
    diffusers' own. Returns a torch module (its state-dict keys are ``unet.<diffusers name>``).
    """
    import copy

    torch = require_torch()
    if getattr(unet.config, "addition_embed_type", None) != "text_time":
        raise BackendError("the UNet has no text_time addition embedding; only SDXL UNets take "
                           "an ADM vector y")
    view = copy.copy(unet)
    # NOTE: copy.copy shares the module tables; give the view its own before editing one.
    object.__setattr__(view, "_modules", dict(unet._modules))
    object.__setattr__(view, "_parameters", dict(unet._parameters))
    object.__setattr__(view, "_buffers", dict(unet._buffers))
    view._modules["add_time_proj"] = torch.nn.Identity()
    width = int(unet.config.projection_class_embeddings_input_dim)

    class _AdmUNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = view
            self.adm_in_channels = width

        def forward(self, x: Any, t: Any, context: Any, y: Any, **kwargs: Any) -> Any:
            # NOTE: the split point is immaterial: the halves are concatenated back unchanged.
            split = width - ADM_TIME_EMBED_DIM
            added = {"text_embeds": y[:, :split], "time_ids": y[:, split:]}
            return self.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added,
                             return_dict=False, **kwargs)[0]

    return _AdmUNet()


class TorchUNet(_TorchStage):
    """``unet(sample, timestep, context, **extras) -> eps|v|flow`` on a diffusers
    UNet2DConditionModel; an SDXL UNet (``info["extra_inputs"] == ["y"]``) takes the ADM
    vector ``y`` as ComfyUI's does (:func:`adm_unet`). A diffusion transformer
    (``info["arch"] == "dit"``: SD3's MMDiT, Flux) is a module already called as ComfyUI
    calls it, ``(x, timestep, context, y[, guidance])``."""

    def __init__(self, name: str, module: Any, info: dict[str, Any] | None = None,
                 compile: bool = False, device: str = "cpu") -> None:
        info = dict(info or {})
        self.extra_inputs = tuple(info.get("extra_inputs") or ())
        if ("y" in self.extra_inputs and info.get("arch") != "dit"
                and not hasattr(module, "adm_in_channels")):
            module = adm_unet(module)
        super().__init__(name, "unet", module, info, compile, device)

    def forward(self, sample: np.ndarray, timestep: np.ndarray, context: np.ndarray,
                **extras: np.ndarray) -> np.ndarray:
        missing = [name for name in self.extra_inputs if name not in extras]
        if missing:
            raise BackendError(f"unet stage {self.name!r} needs input(s) {missing}; the "
                               f"conditioning has no pooled output for them")
        with self.torch.inference_mode():
            t = self.torch.from_numpy(np.asarray(timestep, dtype=np.float32)).to(self.device)
            control = self._control(extras)
            if self.extra_inputs:
                more = {name: self._tensor(extras[name]) for name in self.extra_inputs}
                out = self.call(self._tensor(sample), t, self._tensor(context), **more,
                                **control)
            else:
                out = self.call(self._tensor(sample), t,
                                encoder_hidden_states=self._tensor(context), return_dict=False,
                                **control)[0]
        return self._numpy(out)

    def _control(self, extras: dict[str, np.ndarray]) -> dict[str, Any]:
        """ControlNet / T2I-Adapter inputs (``control_down_*``, ``control_mid``,
        ``control_intra_*``) as diffusers' UNet keywords."""
        names = [n for n in extras if n.startswith("control_")]
        if not names:
            return {}
        if self.info.get("arch") == "dit":
            raise BackendError(f"stage {self.name!r}: ControlNets for SD3/Flux transformers are "
                               f"not supported")

        def ordered(prefix: str) -> list[Any]:
            keys = sorted((n for n in names if n.startswith(prefix)),
                          key=lambda n: int(n[len(prefix):]))
            return [self._tensor(extras[k]) for k in keys]

        out: dict[str, Any] = {}
        down = ordered("control_down_")
        if down:
            out["down_block_additional_residuals"] = tuple(down)
        if "control_mid" in extras:
            out["mid_block_additional_residual"] = self._tensor(extras["control_mid"])
        intra = ordered("control_intra_")
        if intra:
            # NOTE: diffusers pops from this list: a fresh one per call.
            out["down_intrablock_additional_residuals"] = intra
        return out


@contextlib.contextmanager
def spliced_token_embeddings(module: Any, input_ids: Any, embeds: Any) -> Iterator[Any]:
    """Textual-inversion vectors in a CLIP text encoder (ComfyUI's ``embedding:NAME``): while
    open, where ``input_ids`` is -1 the module's token embedding gives that position of
    ``embeds`` ``[B, T, width]`` instead (position embeddings are added as for any token).
    Yields the ids to call the module with (-1 replaced by 0; the pooled output still finds
    the first end token). Used by :class:`TorchTextEncoder` and by the ONNX exporter, which
    traces it."""
    import torch

    where = input_ids < 0
    handle = module.get_input_embeddings().register_forward_hook(
        lambda _m, _args, out: torch.where(where.unsqueeze(-1), embeds.to(out.dtype), out))
    try:
        yield torch.where(where, torch.zeros_like(input_ids), input_ids)
    finally:
        handle.remove()


class TorchTextEncoder(_TorchStage):
    """``text_encoder(input_ids) -> (hidden, pooled)`` at a fixed CLIP layer.

    ComfyUI's CLIPSetLastLayer(n) takes hidden layer ``n`` (−1 last, −2 penultimate …); SD1/SD2
    apply the final layer norm to it (``layer_norm_hidden_state=True``), SDXL's encoders do not
    (``info["layer_norm"] = False``). The pooled output is CLIP's pooled output, projected by the
    text projection when the module has one (SDXL's OpenCLIP bigG).
    """

    def __init__(self, name: str, module: Any, layer: int = -1,
                 info: dict[str, Any] | None = None, compile: bool = False,
                 device: str = "cpu") -> None:
        super().__init__(name, "text_encoder", module, {**(info or {}), "layer": layer},
                         compile, device)
        self.layer = layer
        self.t5 = hasattr(module.config, "d_model")
        if self.t5:
            encoder = module.encoder
            self.final_norm = encoder.final_layer_norm
            self.blocks = encoder.block
            return
        # transformers 4 nests the layers under .text_model; transformers 5 does not.
        inner = getattr(module, "text_model", module)
        self.final_norm = inner.final_layer_norm if self.info.get("layer_norm", True) else None
        self.projected = bool(self.info.get("projected", True))

    def forward(self, input_ids: np.ndarray, embeds: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """``embeds``: ``[B, T, width]`` textual-inversion vectors used where ``input_ids``
        is -1 (in place of the token embedding; positions are added as for any token)."""
        torch = self.torch
        ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64)).to(self.device)
        if self.t5:
            if embeds is not None:
                raise BackendError(f"stage {self.name!r}: T5 takes no textual-inversion "
                                   f"vectors")
            return self._t5(ids)
        splice = (contextlib.nullcontext(ids) if embeds is None else spliced_token_embeddings(
            self.module, ids, torch.from_numpy(np.asarray(embeds, np.float32)).to(self.device)))
        with splice as ids, torch.inference_mode():
            out = self.call(input_ids=ids, output_hidden_states=True, return_dict=True)
            layers = len(out.hidden_states) - 1
            index = self.layer if -layers <= self.layer < 0 else -1
            hidden = out.hidden_states[index]
            if self.final_norm is not None:
                hidden = self.final_norm(hidden)
            pooled = getattr(out, "text_embeds", None) if self.projected else None
            if pooled is None:
                # NOTE: CLIP pools the final-norm last layer at the first end token.
                first_end = (ids == 49407).int().argmax(dim=-1)
                pooled = out.last_hidden_state[torch.arange(ids.shape[0]), first_end]
        return self._numpy(hidden), self._numpy(pooled)

    def _t5(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """T5: the last layer after the final norm; CLIPSetLastLayer(-n) takes block -n's
        output through the final norm (ComfyUI's ``layer_norm_hidden_state``). No pooled
        output (zeros ``[B, 1]``); no attention mask, as ComfyUI's SD3 and Flux encoders."""
        torch = self.torch
        depth = len(self.blocks)
        with torch.inference_mode():
            if self.layer == -1 or abs(self.layer) > depth:
                hidden = self.call(input_ids=ids).last_hidden_state
            else:
                captured: dict[str, Any] = {}

                def keep(_module: Any, _args: Any, output: Any) -> None:
                    captured["hidden"] = output[0] if isinstance(output, tuple) else output

                handle = self.blocks[depth + self.layer].register_forward_hook(keep)
                try:
                    self.call(input_ids=ids)
                finally:
                    handle.remove()
                hidden = self.final_norm(captured["hidden"])
        return self._numpy(hidden), np.zeros((ids.shape[0], 1), np.float32)


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


class TorchUpscale(_TorchStage):
    """``upscale(image [1,C,h,w] in [0,1]) -> [1,C',h·s,w·s]``: an upscale network's
    ``forward_unpadded`` (the caller pads and clamps, as for the ONNX stage)."""

    def __init__(self, name: str, module: Any, info: dict[str, Any] | None = None,
                 compile: bool = False, device: str = "cpu") -> None:
        super().__init__(name, "upscale", module, info, compile, device)
        self.method = getattr(self.module, "forward_unpadded", self.module)

    def forward(self, image: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.method(self._tensor(image))
        return self._numpy(out)


class TorchControlNet(_TorchStage):
    """``controlnet(sample, hint, timestep, context[, y]) -> (down_0, …, mid)``: a ControlNet
    module called as ComfyUI calls its ``cldm.ControlNet`` (the compiler's
    ``ControlNetStage``; ``info["takes_y"]`` for SDXL's)."""

    def __init__(self, name: str, module: Any, info: dict[str, Any] | None = None,
                 compile: bool = False, device: str = "cpu") -> None:
        super().__init__(name, "controlnet", module, info, compile, device)

    def forward(self, sample: np.ndarray, hint: np.ndarray, timestep: np.ndarray,
                context: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        torch = self.torch
        with torch.inference_mode():
            t = torch.from_numpy(np.asarray(timestep, dtype=np.float32)).to(self.device)
            args = [self._tensor(sample), self._tensor(hint), t, self._tensor(context)]
            if y is not None:
                args.append(self._tensor(y))
            out = self.call(*args)
        return tuple(self._numpy(o) for o in out)


class TorchT2IAdapter(_TorchStage):
    """``t2i_adapter(hint) -> (feature_0, …)``: a T2I-Adapter computed as ComfyUI computes it
    (the compiler's ``T2IAdapterStage``)."""

    def __init__(self, name: str, module: Any, info: dict[str, Any] | None = None,
                 compile: bool = False, device: str = "cpu") -> None:
        super().__init__(name, "t2i_adapter", module, info, compile, device)

    def forward(self, hint: np.ndarray) -> tuple[np.ndarray, ...]:
        with self.torch.inference_mode():
            out = self.call(self._tensor(hint))
        return tuple(self._numpy(o) for o in out)
