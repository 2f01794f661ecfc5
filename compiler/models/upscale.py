"""Upscale models as ComfyUI loads them through spandrel: ESRGAN/RealESRGAN, Compact, SwinIR.

ComfyUI's ``UpscaleModelLoader`` reads a ``.pth``/``.safetensors`` file, hands the state dict
to spandrel, which detects the architecture from the key names and tensor shapes and builds the
network; ``ImageUpscaleWithModel`` then runs it over 512x512 tiles (see
:mod:`comfyc.runtime.ops.tiles`). This module does the same with comfyc's own torch modules:

* :func:`read_upscale_state_dict` — ComfyUI's ``load_torch_file`` (``weights_only=True``), the
  loader's SwinIR ``module.`` strip and spandrel's ``canonicalize_state_dict``.
* :func:`detect_upscale_architecture` — spandrel's detection and hyper-parameter recovery, as a
  :class:`UpscaleSpec`: ESRGAN in the old (``model.N``), new (``conv_first``/``body``, RealESRGAN)
  and BSRGAN (``RRDB_trunk``) layouts, ESRGAN+, pixel-unshuffle RealESRGAN x2/x1, Compact
  (SRVGGNetCompact: realesr-general-x4v3, animevideov3) and SwinIR (classical ``pixelshuffle``,
  lightweight ``pixelshuffledirect``, real-SR ``nearest+conv``, 1conv/3conv, denoising/JPEG).
* :func:`build_upscale_network` — the network (:class:`RRDBNet`, :class:`SRVGGNetCompact`,
  :class:`SwinIR`) with the weights loaded; :func:`load_upscale_model` does all three.
* :class:`UpscaleModel` — spandrel's ``ImageModelDescriptor`` call (pad to the size
  requirements, run, clamp to [0, 1], cut the padding) and ComfyUI's tiled node semantics.
* :func:`export_upscale_onnx` — the bare network as an ONNX stage with dynamic height/width.
* :func:`random_upscale_state_dict` / :func:`write_random_upscale_model` — seeded random
  weights in each architecture's original key layout, tiny or at the published sizes.

Where spandrel's detection has quirks, they are kept, so a file behaves as in ComfyUI: an old
ESRGAN x3 file (one x3 up-convolution) is detected as x2, SwinIR's ``img_range`` is 255 exactly
when the window is 7 (the JPEG models), and Compact models are always PReLU.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelFormatError

__all__ = [
    "ARCHITECTURES",
    "RANDOM_KINDS",
    "UPSCALE_IO",
    "RRDBNet",
    "SRVGGNetCompact",
    "SwinIR",
    "UpscaleModel",
    "UpscaleSpec",
    "build_upscale_network",
    "canonicalize_upscale_state_dict",
    "detect_upscale_architecture",
    "export_upscale_onnx",
    "load_upscale_model",
    "random_upscale_state_dict",
    "read_upscale_state_dict",
    "write_random_upscale_model",
]

#: The architectures comfyc builds (spandrel's ids).
ARCHITECTURES = ("ESRGAN", "Compact", "SwinIR")
#: Input and output names of an exported upscale stage.
UPSCALE_IO = (("image",), ("upscaled",))

StateDict = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------ the spec


@dataclass(frozen=True)
class UpscaleSpec:
    """What spandrel's detection finds in a state dict.

    Attributes:
        architecture: ``"ESRGAN"``, ``"Compact"`` or ``"SwinIR"``.
        scale: Output pixels per input pixel (the descriptor's ``scale``, ComfyUI's
            ``upscale_amount``).
        in_channels: Channels of the input image.
        out_channels: Channels of the output image.
        size_minimum: The smallest input side the model takes (spandrel's size requirements;
            smaller tiles are padded).
        size_multiple: Input sides are padded to a multiple of this.
        network_multiple: A multiple the network pads its input to itself (by reflection: the
            SwinIR window). An ONNX stage is exported without that padding, so its caller pads.
        config: The network's constructor arguments.
        tags: spandrel's descriptive tags (``64nf``, ``23nb`` …).
    """

    architecture: str
    scale: int
    in_channels: int
    out_channels: int
    size_minimum: int = 0
    size_multiple: int = 1
    network_multiple: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


# ------------------------------------------------------------------------------ ESRGAN


class _DenseBlock(nn.Module):
    """Residual dense block: five 3x3 convolutions fed with everything before them."""

    def __init__(self, nf: int, gc: int, plus: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        # ESRGAN+ adds a 1x1 residual path from the input to the second convolution.
        self.conv1x1 = nn.Conv2d(nf, gc, 1, bias=False) if plus else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.leaky_relu(self.conv1(x), 0.2)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), 0.2)
        if self.conv1x1 is not None:
            x2 = x2 + self.conv1x1(x)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), 0.2)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), 0.2)
        if self.conv1x1 is not None:
            x4 = x4 + x2
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class _RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks and a scaled shortcut."""

    def __init__(self, nf: int, gc: int, plus: bool) -> None:
        super().__init__()
        self.rdb1 = _DenseBlock(nf, gc, plus)
        self.rdb2 = _DenseBlock(nf, gc, plus)
        self.rdb3 = _DenseBlock(nf, gc, plus)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator (RealESRGAN's, with ``shuffle_factor`` for the x2/x1 models).

    Keys follow the new (basicsr) layout: ``conv_first``, ``body.N.rdbK.convJ``,
    ``conv_body``, ``conv_upK``, ``conv_hr``, ``conv_last``; :func:`detect_upscale_architecture`
    maps the old and BSRGAN layouts onto it.

    Args:
        in_nc: Channels into ``conv_first`` (image channels times ``shuffle_factor²``).
        out_nc: Output channels.
        num_filters: Feature channels.
        num_blocks: RRDB blocks.
        growth: Channels each dense convolution adds (32 in every published model).
        upsamples: Nearest x2 up-convolutions (the network's internal scale is ``2**upsamples``).
        plus: ESRGAN+ 1x1 residual paths.
        shuffle_factor: Pixel-unshuffle the input by this first (RealESRGAN x2: 2, x1: 4).
    """

    def __init__(self, *, in_nc: int = 3, out_nc: int = 3, num_filters: int = 64,
                 num_blocks: int = 23, growth: int = 32, upsamples: int = 2,
                 plus: bool = False, shuffle_factor: int | None = None) -> None:
        super().__init__()
        self.shuffle_factor = shuffle_factor
        self.internal_scale = 2 ** upsamples
        self.conv_first = nn.Conv2d(in_nc, num_filters, 3, 1, 1)
        self.body = nn.Sequential(*(_RRDB(num_filters, growth, plus)
                                    for _ in range(num_blocks)))
        self.conv_body = nn.Conv2d(num_filters, num_filters, 3, 1, 1)
        for k in range(1, upsamples + 1):
            self.add_module(f"conv_up{k}", nn.Conv2d(num_filters, num_filters, 3, 1, 1))
        self.upsamples = upsamples
        self.conv_hr = nn.Conv2d(num_filters, num_filters, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_filters, out_nc, 3, 1, 1)

    def forward_unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """The network on an input whose sides are multiples of the shuffle factor."""
        if self.shuffle_factor:
            x = F.pixel_unshuffle(x, self.shuffle_factor)
        fea = self.conv_first(x)
        fea = fea + self.conv_body(self.body(fea))
        for k in range(1, self.upsamples + 1):
            conv = getattr(self, f"conv_up{k}")
            fea = F.leaky_relu(conv(F.interpolate(fea, scale_factor=2.0, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(fea), 0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.shuffle_factor:
            return self.forward_unpadded(x)
        # NOTE: spandrel pads by reflection to the shuffle factor, then cuts the output back.
        h, w = x.shape[-2:]
        f = self.shuffle_factor
        pad_h, pad_w = (-h) % f, (-w) % f
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        true_scale = self.internal_scale // f
        return self.forward_unpadded(x)[:, :, :h * true_scale, :w * true_scale]


def _esrgan_to_new_layout(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Old (``model.N``) and BSRGAN (``RRDB_trunk``) ESRGAN keys in the new layout."""
    if "conv_first.weight" in sd and any(k.startswith("body.") for k in sd):
        return dict(sd)
    out: StateDict = {}
    if "conv_first.weight" in sd:  # BSRGAN / RealSR
        for key, value in sd.items():
            m = re.fullmatch(r"RRDB_trunk\.(\d+)\.RDB(\d)\.(conv\d+|conv1x1)\.(weight|bias)", key)
            if m:
                out[f"body.{m[1]}.rdb{m[2]}.{m[3]}.{m[4]}"] = value
                continue
            m = re.fullmatch(r"upconv(\d)\.(weight|bias)", key)
            if m:
                out[f"conv_up{m[1]}.{m[2]}"] = value
                continue
            renamed = {"trunk_conv": "conv_body", "HRconv": "conv_hr"}
            stem, _, kind = key.rpartition(".")
            out[f"{renamed.get(stem, stem)}.{kind}"] = value
        return out
    seq_len = 1 + max(int(k.split(".")[1]) for k in sd if re.match(r"model\.\d+\.", k))
    upsamples = (seq_len - 5) // 3
    # NOTE: model.0 conv, model.1 the shortcut over the RRDBs and the trunk conv, then
    # (upsample, conv, act) per x2 step at 3k, then conv_hr at 3n+2 and conv_last at 3n+4.
    names = {0: "conv_first", 3 * upsamples + 2: "conv_hr", 3 * upsamples + 4: "conv_last"}
    names.update({3 * k: f"conv_up{k}" for k in range(1, upsamples + 1)})
    trunk = max(int(m[1]) for k in sd if (m := re.match(r"model\.1\.sub\.(\d+)\.", k)))
    for key, value in sd.items():
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.(conv\d)\.0\.(weight|bias)", key)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.{m[3]}.{m[4]}"] = value
            continue
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv1x1\.weight", key)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.conv1x1.weight"] = value
            continue
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.(weight|bias)", key)
        if m and int(m[1]) == trunk:
            out[f"conv_body.{m[2]}"] = value
            continue
        m = re.fullmatch(r"model\.(\d+)\.(weight|bias)", key)
        if m and int(m[1]) in names:
            out[f"{names[int(m[1])]}.{m[2]}"] = value
            continue
        raise ModelFormatError(f"unexpected key {key!r} in an old-layout ESRGAN state dict")
    return out


def _detect_esrgan(sd: Mapping[str, torch.Tensor]) -> tuple[UpscaleSpec, StateDict]:
    new = _esrgan_to_new_layout(sd)
    in_nc = int(new["conv_first.weight"].shape[1])
    out_nc = int(new["conv_last.weight"].shape[0])
    num_filters = int(new["conv_first.weight"].shape[0])
    num_blocks = 1 + max(int(k.split(".")[1]) for k in new if k.startswith("body."))
    growth = int(new["body.0.rdb1.conv1.weight"].shape[0])
    upsamples = sum(1 for k in new if re.fullmatch(r"conv_up\d\.weight", k))
    plus = any(".conv1x1." in k for k in new)
    internal = 2 ** upsamples
    shuffle = None
    # NOTE: spandrel's pixel-unshuffle test: 4x or 16x more input than output channels.
    if in_nc in (out_nc * 4, out_nc * 16) and out_nc in (in_nc / 4, in_nc / 16):
        shuffle = int(math.sqrt(in_nc / out_nc))
    tags = (["ESRGAN+"] if plus else []) + [f"{num_filters}nf", f"{num_blocks}nb"]
    scale, image_nc = internal, in_nc
    if shuffle:
        image_nc, scale = in_nc // shuffle**2, internal // shuffle
        tags.append("unshuffle")
    config = dict(in_nc=in_nc, out_nc=out_nc, num_filters=num_filters, num_blocks=num_blocks,
                  growth=growth, upsamples=upsamples, plus=plus, shuffle_factor=shuffle)
    # NOTE: spandrel's SizeRequirements(minimum=2, multiple_of=4) rounds the minimum up to 4.
    multiple = 4 if shuffle else 1
    spec = UpscaleSpec("ESRGAN", scale, image_nc, out_nc, size_minimum=-(-2 // multiple) * multiple,
                       size_multiple=multiple, config=config, tags=tuple(tags))
    return spec, new


# ------------------------------------------------------------------------------ Compact


class SRVGGNetCompact(nn.Module):
    """RealESRGAN's compact VGG-style network: convolutions with PReLU at low resolution, a
    pixel shuffle at the end, plus the nearest-upscaled input.

    Args:
        num_in_ch: Input channels.
        num_out_ch: Output channels.
        num_feat: Feature channels.
        num_conv: Body convolutions (between the first and the last).
        upscale: Scale.
    """

    def __init__(self, *, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_conv: int = 16, upscale: int = 4) -> None:
        super().__init__()
        self.upscale = upscale
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1),
                                   nn.PReLU(num_parameters=num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_parameters=num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward_unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """The network (it has no size requirement)."""
        out = x
        for layer in self.body:
            out = layer(out)
        out = F.pixel_shuffle(out, self.upscale)
        return out + F.interpolate(x, scale_factor=float(self.upscale), mode="nearest")

    forward = forward_unpadded


def _seq_len(sd: Mapping[str, Any], prefix: str) -> int:
    """spandrel's ``get_seq_len``: 1 + the largest ``N`` of the keys ``prefix.N.…``."""
    found = [int(k[len(prefix) + 1:].split(".", 1)[0]) for k in sd
             if k.startswith(prefix + ".")]
    return 1 + max(found) if found else 0


def _scale_and_channels(x: int, in_nc: int) -> tuple[int, int]:
    """spandrel's ``get_scale_and_output_channels``: ``scale² · out = x``, out in (in, 3, 4, 1)."""
    for c in (in_nc, 3, 4, 1):
        if x % c == 0 and math.isqrt(x // c) ** 2 == x // c:
            return math.isqrt(x // c), c
    raise ModelFormatError(f"a Compact model's last convolution has {x} channels; expected "
                           "scale² times 1, 3 or 4 output channels")


def _detect_compact(sd: Mapping[str, torch.Tensor]) -> tuple[UpscaleSpec, StateDict]:
    highest = _seq_len(sd, "body") - 1
    in_nc = int(sd["body.0.weight"].shape[1])
    num_feat = int(sd["body.0.weight"].shape[0])
    num_conv = (highest - 2) // 2
    scale, out_nc = _scale_and_channels(int(sd[f"body.{highest}.bias"].shape[0]), in_nc)
    config = dict(num_in_ch=in_nc, num_out_ch=out_nc, num_feat=num_feat, num_conv=num_conv,
                  upscale=scale)
    spec = UpscaleSpec("Compact", scale, in_nc, out_nc, config=config,
                       tags=(f"{num_feat}nf", f"{num_conv}nc"))
    return spec, dict(sd)


# ------------------------------------------------------------------------------ SwinIR


def _relative_position_index(ws: int) -> torch.Tensor:
    """Index into the ``(2ws-1)²`` relative-position table for each pair of window cells."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[:, :, 0] * (2 * ws - 1) + rel[:, :, 1]


def _shift_mask(h: int, w: int, ws: int, shift: int, device: torch.device) -> torch.Tensor:
    """The shifted-window attention mask ``[nW, ws², ws²]`` (0, or -100 across regions).

    The rolled image is cut into three bands per axis (``[0, h-ws)``, ``[h-ws, h-shift)``,
    ``[h-shift, h)``); cells of different bands in one window must not attend to each other.
    Written with comparisons on ``arange`` so a traced graph stays valid for every size.
    """
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    band_r = (rows >= h - ws).to(torch.float32) + (rows >= h - shift).to(torch.float32)
    band_c = (cols >= w - ws).to(torch.float32) + (cols >= w - shift).to(torch.float32)
    labels = band_r[:, None] * 3.0 + band_c[None, :]
    windows = labels.view(h // ws, ws, w // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))


class _WindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        self.register_buffer("relative_position_index", _relative_position_index(ws),
                             persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        index: torch.Tensor = self.relative_position_index  # type: ignore[assignment]
        bias = self.relative_position_bias_table[index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b_ // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        attn = torch.softmax(attn, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ws: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, ws, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        ws, shift = self.ws, self.shift
        y = self.norm1(x).view(b, h, w, c)
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        windows = y.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(-1, ws * ws, c)
        mask = _shift_mask(h, w, ws, shift, x.device) if shift else None
        out = self.attn(windows, mask).view(b, h // ws, w // ws, ws, ws, c)
        y = out.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + y.view(b, h * w, c)
        return x + self.mlp(self.norm2(x))


def _resi_conv(dim: int, kind: str) -> nn.Module:
    """The convolution closing a residual group (``1conv``, or the bottleneck ``3conv``)."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2),
                         nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2),
                         nn.Conv2d(dim // 4, dim, 3, 1, 1))


class _ResidualGroup(nn.Module):
    def __init__(self, blocks: list[_SwinBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class _RSTB(nn.Module):
    """Residual Swin Transformer block: Swin blocks, a convolution, a shortcut."""

    def __init__(self, dim: int, blocks: list[_SwinBlock], resi_connection: str) -> None:
        super().__init__()
        self.residual_group = _ResidualGroup(blocks)
        self.conv = _resi_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = x
        for block in self.residual_group.blocks:
            y = block(y, size)
        b, _, c = y.shape
        y = self.conv(y.transpose(1, 2).view(b, c, size[0], size[1]))
        return y.flatten(2).transpose(1, 2) + x


class _PatchNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)


class SwinIR(nn.Module):
    """SwinIR (Liang et al. 2021): a convolution, residual Swin Transformer groups, and one of
    four reconstruction heads.

    Args:
        in_chans: Image channels.
        out_chans: Output channels.
        embed_dim: Feature channels.
        depths: Swin blocks per residual group.
        num_heads: Attention heads per group.
        window_size: Attention window side.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        upscale: The head's scale.
        img_range: Pixel range inside the network (255 for the JPEG models, else 1).
        upsampler: ``"pixelshuffle"`` (classical), ``"pixelshuffledirect"`` (lightweight),
            ``"nearest+conv"`` (real-world SR) or ``""`` (denoising / JPEG, same size).
        resi_connection: ``"1conv"`` or ``"3conv"``.
        num_feat: Channels of the ``pixelshuffle`` / ``nearest+conv`` heads.
        start_unshuffle: Pixel-unshuffle the input by this first.
        patch_norm: A LayerNorm after the patch embedding.
        img_size: The training patch size; a window as large as it has no shift (as SwinIR).
    """

    def __init__(self, *, in_chans: int = 3, out_chans: int = 3, embed_dim: int = 96,
                 depths: tuple[int, ...] = (6, 6, 6, 6), num_heads: tuple[int, ...] = (6,) * 4,
                 window_size: int = 8, mlp_ratio: float = 2.0, upscale: int = 2,
                 img_range: float = 1.0, upsampler: str = "", resi_connection: str = "1conv",
                 num_feat: int = 64, start_unshuffle: int = 1, patch_norm: bool = True,
                 img_size: int = 64) -> None:
        super().__init__()
        self.window_size, self.upscale, self.upsampler = window_size, upscale, upsampler
        self.img_range, self.start_unshuffle = img_range, start_unshuffle
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0.0,)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(in_chans * start_unshuffle**2, embed_dim, 3, 1, 1)
        self.patch_embed = _PatchNorm(embed_dim) if patch_norm else None
        # NOTE: SwinIR keeps the full window and no shift only when the training patch is
        # larger than the window; otherwise the window is the patch.
        ws, shift = window_size, window_size // 2
        if img_size <= window_size:
            ws, shift = img_size, 0
        self.layers = nn.ModuleList(
            _RSTB(embed_dim, [_SwinBlock(embed_dim, heads, ws, 0 if j % 2 == 0 else shift,
                                         mlp_ratio) for j in range(depth)], resi_connection)
            for depth, heads in zip(depths, num_heads))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _resi_conv(embed_dim, resi_connection)
        if upsampler in ("pixelshuffle", "nearest+conv"):
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                      nn.LeakyReLU(0.01))
        if upsampler == "pixelshuffle":
            steps: list[nn.Module] = []
            if upscale & (upscale - 1) == 0:
                for _ in range(int(math.log2(upscale))):
                    steps += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
            else:  # x3
                steps += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
            self.upsample = nn.Sequential(*steps)
            self.conv_last = nn.Conv2d(num_feat, out_chans, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(
                nn.Conv2d(embed_dim, upscale**2 * out_chans, 3, 1, 1), nn.PixelShuffle(upscale))
        elif upsampler == "nearest+conv":
            self.ups = {2: 1, 4: 2, 8: 3}.get(upscale, 1)
            for k in range(1, self.ups + 1):
                self.add_module(f"conv_up{k}", nn.Conv2d(num_feat, num_feat, 3, 1, 1))
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, out_chans, 3, 1, 1)
        else:
            self.conv_last = nn.Conv2d(embed_dim, out_chans, 3, 1, 1)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        size = (h, w)
        y = x.flatten(2).transpose(1, 2)
        if self.patch_embed is not None:
            y = self.patch_embed.norm(y)
        for layer in self.layers:
            y = layer(y, size)
        y = self.norm(y)
        return y.transpose(1, 2).view(b, c, h, w)

    def forward_unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """The network on an input whose sides are multiples of the window (no cut-back)."""
        mean: torch.Tensor = self.mean  # type: ignore[assignment]
        mean = mean.type_as(x)
        x = (x - mean) * self.img_range
        if self.start_unshuffle > 1:
            x = F.pixel_unshuffle(x, self.start_unshuffle)
        if self.upsampler == "pixelshuffle":
            x = self.conv_first(x)
            x = self.conv_after_body(self._features(x)) + x
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        elif self.upsampler == "pixelshuffledirect":
            x = self.conv_first(x)
            x = self.upsample(self.conv_after_body(self._features(x)) + x)
        elif self.upsampler == "nearest+conv":
            x = self.conv_first(x)
            x = self.conv_before_upsample(self.conv_after_body(self._features(x)) + x)
            for k in range(1, self.ups + 1):
                conv = getattr(self, f"conv_up{k}")
                x = F.leaky_relu(conv(F.interpolate(x, scale_factor=2.0, mode="nearest")), 0.2)
            x = self.conv_last(F.leaky_relu(self.conv_hr(x), 0.2))
        else:
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self._features(first)) + first)
        return x / self.img_range + mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ws = self.window_size
        pad_h, pad_w = (-h) % ws, (-w) % ws
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return self.forward_unpadded(x)[:, :, :h * self.upscale, :w * self.upscale]


def _detect_swinir(sd: Mapping[str, torch.Tensor]) -> tuple[UpscaleSpec, StateDict]:
    sd = dict(sd)
    if "conv_before_upsample.0.weight" in sd:
        upsampler = "nearest+conv" if "conv_up1.weight" in sd else "pixelshuffle"
    elif "upsample.0.weight" in sd:
        upsampler = "pixelshuffledirect"
    else:
        upsampler = ""
    start_unshuffle = 1
    if "conv_first.1.weight" in sd:
        sd["conv_first.weight"] = sd.pop("conv_first.1.weight")
        sd["conv_first.bias"] = sd.pop("conv_first.1.bias")
        start_unshuffle = round(math.sqrt(sd["conv_first.weight"].shape[1] // 3))
    num_in_ch = int(sd["conv_first.weight"].shape[1])
    num_out_ch = int(sd["conv_last.weight"].shape[0]) if "conv_last.weight" in sd else num_in_ch
    num_feat = 64
    upscale = 1
    if upsampler == "nearest+conv":
        upscale = 2 ** sum(1 for k in sd if "conv_up" in k and "bias" not in k)
        num_feat = int(sd["conv_before_upsample.0.weight"].shape[0])
    elif upsampler == "pixelshuffle":
        for i in range(0, 10, 2):
            weight = sd.get(f"upsample.{i}.weight")
            if weight is None:
                break
            num_feat = int(weight.shape[1])
            upscale *= math.isqrt(int(weight.shape[0]) // num_feat)
    elif upsampler == "pixelshuffledirect":
        upscale = math.isqrt(int(sd["upsample.0.bias"].shape[0]) // num_out_ch)
    embed_dim = int(sd["conv_first.weight"].shape[0])
    prefix = "layers.0.residual_group.blocks.0."
    mlp_ratio = float(sd[prefix + "mlp.fc1.bias"].shape[0] / embed_dim)
    window_size = math.isqrt(int(sd[prefix + "attn.relative_position_index"].shape[0]))
    img_size = 64
    mask = sd.get("layers.0.residual_group.blocks.1.attn_mask")
    if mask is not None:
        img_size = int(math.sqrt(mask.shape[0]) * window_size)
    depths, heads = [], []
    for i in range(_seq_len(sd, "layers")):
        depths.append(_seq_len(sd, f"layers.{i}.residual_group.blocks"))
        table = sd[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"]
        heads.append(int(table.shape[1]))
    resi = "1conv" if "conv_after_body.weight" in sd else "3conv"
    # NOTE: spandrel: "the JPEG models are the only ones with window size 7" (range 0..255).
    img_range = 255.0 if window_size == 7 else 1.0
    in_nc = num_in_ch // start_unshuffle**2
    # Buffers SwinIR stores and comfyc recomputes for every input size.
    weights = {k: v for k, v in sd.items()
               if not k.endswith(("attn.relative_position_index", "attn_mask"))}
    config = dict(in_chans=in_nc, out_chans=num_out_ch, embed_dim=embed_dim,
                  depths=tuple(depths), num_heads=tuple(heads), window_size=window_size,
                  mlp_ratio=mlp_ratio, upscale=upscale, img_range=img_range,
                  upsampler=upsampler, resi_connection=resi, num_feat=num_feat,
                  start_unshuffle=start_unshuffle,
                  patch_norm="patch_embed.norm.weight" in sd, img_size=img_size)
    size_tag = "small" if len(depths) <= 4 else "medium" if len(depths) < 9 else "large"
    tags = (size_tag, f"s{img_size}w{window_size}", f"{num_feat}nf", f"{embed_dim}dim", resi,
            f"{start_unshuffle}unshuf")
    spec = UpscaleSpec("SwinIR", upscale // start_unshuffle, in_nc, num_out_ch,
                       size_minimum=16, size_multiple=start_unshuffle**2,
                       network_multiple=window_size, config=config, tags=tags)
    return spec, weights


# ------------------------------------------------------------------------------ loading


def canonicalize_upscale_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """spandrel's ``canonicalize_state_dict``: unwrap training wrappers and common prefixes.

    A dict under ``model_state_dict``, ``state_dict``, ``params_ema``, ``params-ema``,
    ``params``, ``model`` or ``net`` (first found) is taken, a single-entry dict holding a dict
    is unwrapped, and a ``module.`` or ``netG.`` prefix shared by every key is removed.
    """
    for key in ("model_state_dict", "state_dict", "params_ema", "params-ema", "params",
                "model", "net"):
        if isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    if len(sd) == 1:
        single = next(iter(sd.values()))
        if isinstance(single, Mapping):
            sd = single
    out = dict(sd)
    for prefix in ("module.", "netG."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def read_upscale_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read an upscale model file as ComfyUI's ``UpscaleModelLoader`` does.

    ``.safetensors``/``.sft`` through safetensors, anything else through
    ``torch.load(weights_only=True)``; a pickle's ``state_dict`` entry or single entry is
    unwrapped (``comfy.utils.load_torch_file``), a SwinIR saved from ``DataParallel`` loses
    its ``module.`` prefix, then :func:`canonicalize_upscale_state_dict`.

    Raises:
        ModelFormatError: A missing, unreadable or unsafe file, or one with no tensors.
    """
    file = Path(path)
    if not file.is_file():
        raise ModelFormatError(f"upscale model file {str(file)!r} does not exist")
    try:
        if file.suffix.lower() in (".safetensors", ".sft"):
            from safetensors.torch import load_file

            sd: Any = load_file(str(file))
        else:
            loaded = torch.load(str(file), map_location="cpu", weights_only=True)
            if not isinstance(loaded, Mapping):
                raise ModelFormatError(f"{file.name} holds a {type(loaded).__name__}; "
                                       "expected a state dict of tensors")
            if "state_dict" in loaded:
                sd = loaded["state_dict"]
            elif len(loaded) == 1 and isinstance(next(iter(loaded.values())), Mapping):
                sd = next(iter(loaded.values()))
            else:
                sd = loaded
    except ModelFormatError:
        raise
    except Exception as error:  # noqa: BLE001 - torch/safetensors raise many kinds
        raise ModelFormatError(f"cannot read upscale model {file.name}: {error}. Expected a "
                               ".pth or .safetensors state dict (pickles with code are refused)"
                               ) from error
    if "module.layers.0.residual_group.blocks.0.norm1.weight" in sd:
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    sd = canonicalize_upscale_state_dict(sd)
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFormatError(f"{file.name} holds no tensors; expected an upscale model")
    return tensors


def _unsupported(sd: Mapping[str, Any]) -> str | None:
    """The name of a spandrel architecture that would claim `sd` before the ones comfyc builds."""
    if any(".attn.logit_scale" in k or ".attn.cpb_mlp." in k for k in sd):
        return "Swin2SR"
    if any(".conv_block.cab." in k or k.startswith("overlap_attns.") for k in sd):
        return "HAT"
    return None


def detect_upscale_architecture(state_dict: Mapping[str, torch.Tensor]
                                ) -> tuple[UpscaleSpec, StateDict]:
    """Detect the architecture and hyper-parameters of an upscale model, as spandrel does.

    Args:
        state_dict: A canonical state dict (:func:`read_upscale_state_dict` gives one).

    Returns:
        (the spec, the weights in the layout :func:`build_upscale_network` loads).

    Raises:
        ModelFormatError: The keys match no supported architecture.
    """
    sd = canonicalize_upscale_state_dict(state_dict)
    keys = set(sd)
    other = _unsupported(sd)
    if other is not None:
        raise ModelFormatError(f"this upscale model is a {other} model; comfyc supports "
                               f"{', '.join(ARCHITECTURES)} (run it in ComfyUI)")
    # NOTE: the order of spandrel's registry: Compact first, SwinIR, then ESRGAN.
    if {"body.0.weight", "body.1.weight"} <= keys:
        return _detect_compact(sd)
    swin = "layers.0.residual_group.blocks.0."
    if ({swin + "norm1.weight", swin + "mlp.fc1.bias", swin + "attn.relative_position_index"}
            <= keys and keys & {"conv_first.weight", "conv_first.1.weight"}):
        return _detect_swinir(sd)
    if ({"model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"} <= keys
            or {"model.0.weight", "model.1.sub.0.RDB1.conv1x1.weight"} <= keys
            or {"conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight",
                "conv_last.weight"} <= keys
            or {"conv_first.weight", "RRDB_trunk.0.RDB1.conv1.weight", "trunk_conv.weight",
                "conv_last.weight"} <= keys):
        return _detect_esrgan(sd)
    sample = ", ".join(sorted(keys)[:5])
    raise ModelFormatError(f"unknown upscale model architecture (keys {sample} …); comfyc "
                           f"supports {', '.join(ARCHITECTURES)} (ESRGAN, RealESRGAN, "
                           "BSRGAN, ESRGAN+, Compact/SRVGG, SwinIR)")


_NETWORKS: dict[str, type[nn.Module]] = {"ESRGAN": RRDBNet, "Compact": SRVGGNetCompact,
                                         "SwinIR": SwinIR}


def build_upscale_network(spec: UpscaleSpec, weights: Mapping[str, torch.Tensor] | None = None
                          ) -> nn.Module:
    """The network of `spec` in eval mode, with `weights` loaded (strictly) when given.

    Raises:
        ModelFormatError: The weights do not fit the detected architecture.
    """
    network = _NETWORKS[spec.architecture](**spec.config)
    if weights is not None:
        try:
            network.load_state_dict(dict(weights), strict=True)
        except RuntimeError as error:
            raise ModelFormatError(f"the weights do not fit the detected {spec.architecture} "
                                   f"network ({', '.join(spec.tags)}): {error}") from error
    return network.eval().requires_grad_(False)


class UpscaleModel:
    """A loaded upscale model: the network, its spec, and ComfyUI's ways of calling it.

    Attributes:
        network: The torch module (``forward``: the network with its own padding;
            ``forward_unpadded``: what :func:`export_upscale_onnx` exports).
        spec: The detected architecture and size requirements.
    """

    def __init__(self, network: nn.Module, spec: UpscaleSpec) -> None:
        self.network = network
        self.spec = spec

    @property
    def scale(self) -> int:
        """Output pixels per input pixel."""
        return self.spec.scale

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """spandrel's descriptor call on ``[1,C,h,w]`` in [0, 1]: pad to the size requirements
        (reflect, then replicate), run, clamp to [0, 1], cut to ``h*scale × w*scale``."""
        h, w = image.shape[-2:]
        x = image
        need_h, need_w = _padded_size(h, self.spec), _padded_size(w, self.spec)
        did_pad = (need_h, need_w) != (h, w)
        if did_pad:
            reflect_h, reflect_w = min(need_h - h, h - 1), min(need_w - w, w - 1)
            x = F.pad(x, (0, reflect_w, 0, reflect_h), mode="reflect")
            x = F.pad(x, (0, need_w - w - reflect_w, 0, need_h - h - reflect_h),
                      mode="replicate")
        out = self.network(x).clamp_(0, 1)
        if did_pad:
            out = out[..., :h * self.scale, :w * self.scale]
        return out

    def upscale(self, image: np.ndarray, tile: int = 512, overlap: int = 32) -> np.ndarray:
        """``ImageUpscaleWithModel`` on an IMAGE ``[B,H,W,C]`` (numpy, float32).

        Tiles as ComfyUI does (:func:`comfyc.runtime.ops.tiles.upscale_with_model`), each
        tile through :meth:`__call__`.
        """
        from comfyc.runtime.ops.tiles import tiled_scale

        def run(tile_array: np.ndarray) -> np.ndarray:
            return self(torch.from_numpy(np.ascontiguousarray(tile_array))).float().numpy()

        samples = np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(0, 3, 1, 2))
        out = tiled_scale(samples, run, tile_x=tile, tile_y=tile, overlap=overlap,
                          upscale_amount=self.scale, out_channels=self.spec.out_channels)
        return np.ascontiguousarray(np.clip(out, 0.0, 1.0).transpose(0, 2, 3, 1))


def _padded_size(size: int, spec: UpscaleSpec) -> int:
    """spandrel's ``SizeRequirements.get_padding``, one side (no model here is square-only)."""
    m = max(1, spec.size_multiple)
    minimum = -(-spec.size_minimum // m) * m
    return -(-max(minimum, size) // m) * m


def load_upscale_model(source: str | os.PathLike[str] | Mapping[str, torch.Tensor]
                       ) -> UpscaleModel:
    """Read (a path) or take (a state dict), detect and build an upscale model."""
    sd = source if isinstance(source, Mapping) else read_upscale_state_dict(source)
    spec, weights = detect_upscale_architecture(sd)
    return UpscaleModel(build_upscale_network(spec, weights), spec)


# ------------------------------------------------------------------------------ ONNX


class _Unpadded(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network.forward_unpadded(image)  # type: ignore[operator]


def export_upscale_onnx(model: UpscaleModel, path: str | os.PathLike[str], *,
                        opset: int = 18, sample_size: int | None = None) -> dict[str, Any]:
    """Export the bare network as an ONNX stage with dynamic batch, height and width.

    The graph is ``image[B,C,H,W] f32 -> upscaled[B,C',H*s,W*s] f32`` with no clamp and no
    padding: the caller pads each tile to ``size_minimum``/``size_multiple`` (spandrel's
    reflect-then-replicate) and to ``network_multiple`` (reflect), then clamps and cuts the
    output, as :func:`comfyc.runtime.ops.tiles.model_call` does; ComfyUI's tiling stays in the
    runtime (:func:`comfyc.runtime.ops.tiles.upscale_with_model`).

    Args:
        model: The loaded model.
        path: The ``.onnx`` file to write.
        opset: The ONNX opset.
        sample_size: The side of the traced sample (default: a valid size that is not the
            minimum, so no size-dependent branch is baked in).

    Returns:
        Facts for a manifest: input/output names, scale, size requirements, channels.
    """
    spec = model.spec
    multiple = math.lcm(max(1, spec.size_multiple), max(1, spec.network_multiple))
    side = sample_size or multiple * max(2, -(-max(spec.size_minimum, 16) // multiple) + 1)
    sample = torch.rand(1, spec.in_channels * 1, side, side + multiple)
    (name_in,), (name_out,) = UPSCALE_IO
    with warnings.catch_warnings():
        # NOTE: the legacy exporter on purpose, as for every stage (onnx_export.py): the traced
        # graph keeps the window masks size-generic, and it exports in seconds.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _Unpadded(model.network).eval(), (sample,), str(path), dynamo=False,
            input_names=[name_in], output_names=[name_out], opset_version=opset,
            dynamic_axes={name_in: {0: "batch", 2: "height", 3: "width"},
                          name_out: {0: "batch", 2: "out_height", 3: "out_width"}})
    return {"inputs": [name_in], "outputs": [name_out], "architecture": spec.architecture,
            "scale": spec.scale, "in_channels": spec.in_channels,
            "out_channels": spec.out_channels, "size_minimum": spec.size_minimum,
            "size_multiple": spec.size_multiple, "network_multiple": spec.network_multiple}


# ------------------------------------------------------------------------------ random weights


#: Seeded random models: (architecture spec builder arguments) by kind and size.
RANDOM_KINDS = ("esrgan", "esrgan-plus", "bsrgan", "realesrgan-x4", "realesrgan-x2", "compact",
                "swinir-classical", "swinir-lightweight", "swinir-real", "swinir-real-large")


def _random_spec(kind: str, size: str, scale: int | None) -> tuple[str, dict[str, Any]]:
    tiny = size == "tiny"
    if size not in ("tiny", "real"):
        raise ValueError(f"size {size!r}; expected 'tiny' or 'real'")
    if kind in ("esrgan", "esrgan-plus", "bsrgan", "realesrgan-x4", "realesrgan-x2"):
        s = scale or (2 if kind == "realesrgan-x2" else 4)
        shuffle = 2 if kind == "realesrgan-x2" else None
        internal = s * (shuffle or 1)
        return "ESRGAN", dict(in_nc=3 * (shuffle or 1) ** 2, out_nc=3,
                              num_filters=8 if tiny else 64, num_blocks=1 if tiny else 23,
                              growth=32, upsamples=int(math.log2(internal)),
                              plus=kind == "esrgan-plus", shuffle_factor=shuffle)
    if kind == "compact":
        return "Compact", dict(num_in_ch=3, num_out_ch=3, num_feat=8 if tiny else 64,
                               num_conv=2 if tiny else 32, upscale=scale or 4)
    if kind.startswith("swinir-"):
        variant = kind.removeprefix("swinir-")
        upsampler = {"classical": "pixelshuffle", "lightweight": "pixelshuffledirect",
                     "real": "nearest+conv", "real-large": "nearest+conv"}.get(variant)
        if upsampler is None:
            raise ValueError(f"unknown SwinIR variant {kind!r}")
        if tiny:
            dims = dict(embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4,
                        img_size=16)
        elif variant == "lightweight":
            dims = dict(embed_dim=60, depths=(6,) * 4, num_heads=(6,) * 4, window_size=8,
                        img_size=64)
        elif variant == "real-large":
            dims = dict(embed_dim=240, depths=(6,) * 9, num_heads=(8,) * 9, window_size=8,
                        img_size=64)
        else:
            dims = dict(embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, window_size=8,
                        img_size=48 if variant == "classical" else 64)
        return "SwinIR", dict(in_chans=3, out_chans=3, mlp_ratio=2.0, upscale=scale or 4,
                              img_range=1.0, upsampler=upsampler,
                              resi_connection="3conv" if variant == "real-large" else "1conv",
                              **dims)
    raise ValueError(f"unknown upscale model kind {kind!r}; expected one of {RANDOM_KINDS}")


def _randomize(network: nn.Module, seed: int) -> None:
    """Seeded weights that keep activations in range: convolutions ~ N(0, 0.5/fan_in) (so
    stacked residual blocks neither explode nor vanish), small biases, LayerNorms near 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(network.named_parameters()):
            if param.ndim >= 2 and not name.endswith("relative_position_bias_table"):
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator)
                            * math.sqrt(0.5 / fan_in))
            elif name.endswith("relative_position_bias_table"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
            elif isinstance(network.get_submodule(name.rsplit(".", 1)[0]), nn.PReLU):
                param.copy_(0.25 + 0.05 * torch.randn(param.shape, generator=generator))
            elif name.endswith("weight"):  # LayerNorm scales
                param.copy_(1.0 + 0.05 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.01 * torch.randn(param.shape, generator=generator))


def _last_conv(network: nn.Module) -> nn.Conv2d:
    """The convolution that makes the output (every head ends in one)."""
    last = [m for m in network.modules() if isinstance(m, nn.Conv2d)][-1]
    if isinstance(network, SwinIR) and network.upsampler == "pixelshuffledirect":
        last = network.upsample[0]
    return last  # type: ignore[return-value]


def _calibrate(network: nn.Module, architecture: str, seed: int) -> None:
    """Scale the last convolution so a random image gives an image-like output.

    The output is affine in the last convolution's weights: with ``y0`` the output for zero
    weights, scaling them by ``k`` gives ``y0 + k (y - y0)``. ``k`` makes the spread about 0.25
    (0.1 for Compact, whose output adds to the upscaled input) and, except for Compact, a bias
    shift centres the output on 0.5; some pixels still fall outside [0, 1], so the clamp is
    exercised too.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    probe = torch.rand(1, 3, 24, 24, generator=generator)
    conv = _last_conv(network)
    with torch.no_grad():
        y = network(probe)
        saved = conv.weight.clone()
        conv.weight.zero_()
        y0 = network(probe)
        conv.weight.copy_(saved)
        target = 0.1 if architecture == "Compact" else 0.25
        k = target / max(float((y - y0).std()), 1e-8)
        conv.weight.mul_(k)
        if architecture != "Compact" and conv.bias is not None:
            y = y0 + k * (y - y0)
            conv.bias.add_(0.5 - float(y.mean()))


def _esrgan_layout(sd: StateDict, kind: str, config: dict[str, Any]) -> StateDict:
    """New-layout ESRGAN weights in the key layout files of `kind` use."""
    if kind in ("realesrgan-x4", "realesrgan-x2"):
        return sd
    out: StateDict = {}
    n = config["upsamples"]
    if kind == "bsrgan":
        names = {"conv_body": "trunk_conv", "conv_hr": "HRconv"}
        for key, value in sd.items():
            m = re.fullmatch(r"body\.(\d+)\.rdb(\d)\.(conv\d|conv1x1)\.(weight|bias)", key)
            if m:
                out[f"RRDB_trunk.{m[1]}.RDB{m[2]}.{m[3]}.{m[4]}"] = value
            elif (m := re.fullmatch(r"conv_up(\d)\.(weight|bias)", key)):
                out[f"upconv{m[1]}.{m[2]}"] = value
            else:
                stem, _, kind_ = key.rpartition(".")
                out[f"{names.get(stem, stem)}.{kind_}"] = value
        return out
    layers = {"conv_first": 0, "conv_hr": 3 * n + 2, "conv_last": 3 * n + 4}
    layers.update({f"conv_up{k}": 3 * k for k in range(1, n + 1)})
    for key, value in sd.items():
        m = re.fullmatch(r"body\.(\d+)\.rdb(\d)\.(conv\d)\.(weight|bias)", key)
        if m:
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.{m[3]}.0.{m[4]}"] = value
        elif (m := re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv1x1\.weight", key)):
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv1x1.weight"] = value
        elif key.startswith("conv_body."):
            out[f"model.1.sub.{config['num_blocks']}.{key.split('.')[1]}"] = value
        else:
            stem, _, kind_ = key.rpartition(".")
            out[f"model.{layers[stem]}.{kind_}"] = value
    return out


def _swinir_layout(sd: StateDict, config: dict[str, Any]) -> StateDict:
    """SwinIR weights plus the buffers SwinIR files carry (the relative position index of
    every block, the attention mask of every shifted block at the training patch size)."""
    out = dict(sd)
    ws, size = config["window_size"], config["img_size"]
    shift = ws // 2 if size > ws else 0
    ws = ws if size > ws else size
    for i, depth in enumerate(config["depths"]):
        for j in range(depth):
            prefix = f"layers.{i}.residual_group.blocks.{j}."
            out[prefix + "attn.relative_position_index"] = _relative_position_index(ws)
            if j % 2 == 1 and shift:
                out[prefix + "attn_mask"] = _shift_mask(size, size, ws, shift,
                                                        torch.device("cpu"))
    return out


def random_upscale_state_dict(kind: str, size: str = "tiny", seed: int = 0,
                              scale: int | None = None) -> StateDict:
    """Seeded random weights of an upscale model, in the key layout its real files use.

    Args:
        kind: One of :data:`RANDOM_KINDS`: ``esrgan`` (old ``model.N`` layout), ``esrgan-plus``,
            ``bsrgan`` (``RRDB_trunk``), ``realesrgan-x4`` / ``realesrgan-x2`` (basicsr layout,
            x2 with pixel unshuffle), ``compact`` (realesr-general-x4v3 at ``real`` size),
            ``swinir-classical`` / ``-lightweight`` / ``-real`` / ``-real-large``.
        size: ``"tiny"`` (a few thousand parameters, for tests) or ``"real"`` (the published
            architecture: ESRGAN 64nf 23nb, Compact 64nf 32nc, SwinIR-M/L, lightweight).
        seed: The torch generator seed.
        scale: The scale (default 4; 2 for ``realesrgan-x2``).

    Returns:
        A state dict that both comfyc and spandrel detect as the same architecture.
    """
    architecture, config = _random_spec(kind, size, scale)
    network = _NETWORKS[architecture](**config)
    _randomize(network, seed)
    _calibrate(network.eval(), architecture, seed)
    sd = {k: v.detach().clone().contiguous() for k, v in network.state_dict().items()}
    if architecture == "ESRGAN":
        return _esrgan_layout(sd, kind, config)
    if architecture == "SwinIR":
        return _swinir_layout(sd, config)
    return sd


def write_random_upscale_model(path: str | os.PathLike[str], kind: str, size: str = "tiny",
                               seed: int = 0, scale: int | None = None) -> Path:
    """Write :func:`random_upscale_state_dict` to ``path`` (``.safetensors`` or ``.pth``)."""
    sd = random_upscale_state_dict(kind, size, seed, scale)
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    if file.suffix.lower() in (".safetensors", ".sft"):
        from safetensors.torch import save_file

        save_file(sd, str(file))
    else:
        # RealESRGAN's releases wrap the weights in {"params_ema": ...} / {"params": ...}.
        wrapper = {"realesrgan-x4": "params_ema", "realesrgan-x2": "params_ema",
                   "compact": "params"}.get(kind)
        torch.save({wrapper: sd} if wrapper else sd, str(file))
    return file
