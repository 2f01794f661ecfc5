"""Tests for comfyc.runtime.ops.resample against torch's interpolate, a torch bislerp and PIL."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from comfyc.runtime.ops import OpError
from comfyc.runtime.ops.resample import bislerp, center_crop, common_upscale, interpolate, lanczos

torch = pytest.importorskip("torch")

# Sizes (in_h, in_w, out_h, out_w): up, down, mixed, identity, 2x, to 1x1, from 1x1.
SIZES = [(7, 9, 13, 5), (16, 16, 33, 47), (64, 48, 17, 100), (5, 5, 5, 5), (8, 8, 16, 16),
         (10, 3, 1, 1), (1, 1, 4, 7), (64, 64, 96, 96), (12, 20, 7, 11)]


def _torch_interpolate(x: np.ndarray, h: int, w: int, mode: str) -> np.ndarray:
    # ComfyUI's call: size given, align_corners and antialias left at their defaults.
    return torch.nn.functional.interpolate(torch.from_numpy(x), size=(h, w), mode=mode).numpy()


@pytest.mark.parametrize("mode", ["nearest-exact", "bilinear", "bicubic", "area"])
@pytest.mark.parametrize("size", SIZES)
def test_interpolate_matches_torch(mode: str, size: tuple[int, int, int, int]) -> None:
    """Every torch mode agrees with torch to float32 rounding (nearest-exact exactly)."""
    in_h, in_w, out_h, out_w = size
    x = np.random.default_rng(sum(size)).standard_normal((2, 3, in_h, in_w)).astype(np.float32)
    got = interpolate(x, out_h, out_w, mode)
    want = _torch_interpolate(x, out_h, out_w, mode)
    assert got.dtype == np.float32 and got.shape == want.shape
    if mode == "nearest-exact":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_nearest_exact_large_ratios_exact() -> None:
    """Index rounding of nearest-exact follows torch on awkward ratios (3 -> 1000, 999 -> 7)."""
    for in_w, out_w in [(3, 1000), (999, 7), (77, 131), (128, 96)]:
        x = np.arange(in_w, dtype=np.float32).reshape(1, 1, 1, in_w)
        np.testing.assert_array_equal(interpolate(x, 1, out_w, "nearest-exact"),
                                      _torch_interpolate(x, 1, out_w, "nearest-exact"))


def _torch_bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """An independent torch rendering of ComfyUI's bislerp (comfy/utils.py) as the oracle."""
    def slerp(b1: torch.Tensor, b2: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        n1 = b1.norm(dim=-1, keepdim=True)
        n2 = b2.norm(dim=-1, keepdim=True)
        u1 = torch.where(n1 == 0, torch.zeros_like(b1), b1 / n1)
        u2 = torch.where(n2 == 0, torch.zeros_like(b2), b2 / n2)
        dot = (u1 * u2).sum(1)
        omega = torch.acos(dot)
        so = torch.sin(omega)
        res = (torch.sin((1 - r[:, 0]) * omega) / so)[:, None] * u1 \
            + (torch.sin(r[:, 0] * omega) / so)[:, None] * u2
        res = res * (n1 * (1 - r) + n2 * r)
        res[dot > 1 - 1e-5] = b1[dot > 1 - 1e-5]
        res[dot < 1e-5 - 1] = (b1 * (1 - r) + b2 * r)[dot < 1e-5 - 1]
        return res

    def data(old: int, new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = torch.arange(old, dtype=torch.float32).reshape(1, 1, 1, -1)
        a = torch.nn.functional.interpolate(a, size=(1, new), mode="bilinear")
        b = torch.arange(old, dtype=torch.float32).reshape(1, 1, 1, -1) + 1
        b[..., -1] -= 1
        b = torch.nn.functional.interpolate(b, size=(1, new), mode="bilinear")
        return (a - a.floor()).reshape(-1), a.to(torch.int64).reshape(-1), \
            b.to(torch.int64).reshape(-1)

    n, c, h, w = samples.shape
    r, i1, i2 = data(w, width)
    p1 = samples[:, :, :, i1].permute(0, 2, 3, 1).reshape(-1, c)
    p2 = samples[:, :, :, i2].permute(0, 2, 3, 1).reshape(-1, c)
    rr = r.expand(n, h, width).reshape(-1, 1)
    x = slerp(p1, p2, rr).reshape(n, h, width, c).permute(0, 3, 1, 2)
    r, i1, i2 = data(h, height)
    p1 = x[:, :, i1, :].permute(0, 2, 3, 1).reshape(-1, c)
    p2 = x[:, :, i2, :].permute(0, 2, 3, 1).reshape(-1, c)
    rr = r[:, None].expand(n, height, width).reshape(-1, 1)
    return slerp(p1, p2, rr).reshape(n, height, width, c).permute(0, 3, 1, 2)


@pytest.mark.parametrize("size", [(8, 8, 12, 12), (16, 12, 24, 18), (9, 13, 5, 7), (4, 4, 4, 4)])
def test_bislerp_matches_torch_oracle(size: tuple[int, int, int, int]) -> None:
    """bislerp agrees with a torch rendering of ComfyUI's algorithm."""
    in_h, in_w, out_h, out_w = size
    x = np.random.default_rng(1).standard_normal((2, 4, in_h, in_w)).astype(np.float32)
    x[0, :, 0, 0] = 0.0  # a zero vector exercises the zero-norm branch
    x[1, :, 1, 1] = x[1, :, 1, 2]  # equal neighbours exercise the "same direction" branch
    got = bislerp(x, out_w, out_h)
    want = _torch_bislerp(torch.from_numpy(x), out_w, out_h).numpy()
    assert got.shape == (2, 4, out_h, out_w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bislerp_keeps_constant_field() -> None:
    """A latent that is the same vector everywhere stays that vector."""
    x = np.broadcast_to(np.array([1.0, -2.0, 0.5, 3.0], np.float32)[None, :, None, None],
                        (1, 4, 6, 6)).copy()
    np.testing.assert_allclose(bislerp(x, 9, 11), np.broadcast_to(x[:, :, :1, :1], (1, 4, 11, 9)),
                               rtol=1e-6)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_lanczos_matches_pil(channels: int) -> None:
    """lanczos is PIL's LANCZOS on the 8-bit picture (truncating), divided by 255."""
    x = np.random.default_rng(2).random((2, channels, 10, 14)).astype(np.float32)
    got = lanczos(x, 21, 6)
    assert got.shape == (2, channels, 6, 21)
    for k in range(2):
        pixels = (255.0 * x[k].transpose(1, 2, 0)).astype(np.float32).clip(0, 255).astype(np.uint8)
        pic = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)
        want = np.asarray(pic.resize((21, 6), Image.Resampling.LANCZOS), dtype=np.float32) / 255
        want = want.reshape(6, 21, channels).transpose(2, 0, 1)
        np.testing.assert_array_equal(got[k], want)


def test_center_crop_offsets() -> None:
    """Centre crop keeps the target aspect: 10x4 -> 1:1 cuts 3 columns each side."""
    x = np.arange(40, dtype=np.float32).reshape(1, 1, 4, 10)
    assert center_crop(x, 64, 64).shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(center_crop(x, 64, 64)[0, 0, 0], [3, 4, 5, 6])
    # taller target: 6x6 -> 1:2 (w:h) crops rows: round((6 - 6 * 0.5) / 2) = round(1.5) = 2
    y = np.zeros((1, 1, 6, 6), np.float32)
    assert center_crop(y, 10, 20).shape == (1, 1, 6, 2)
    assert center_crop(y, 20, 10).shape == (1, 1, 2, 6)


@pytest.mark.parametrize("mode", ["nearest-exact", "bilinear", "bicubic", "area"])
def test_common_upscale_center_crop_matches_torch(mode: str) -> None:
    """crop='center' then resize equals torch on the same slice."""
    x = np.random.default_rng(3).random((1, 3, 30, 50)).astype(np.float32)
    got = common_upscale(x, 16, 16, mode, "center")
    want = _torch_interpolate(np.ascontiguousarray(x[:, :, :, 10:40]), 16, 16, mode)
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_common_upscale_errors() -> None:
    """Unknown methods, unknown crops and empty targets are refused with the fix."""
    x = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(OpError, match="upscale_method 'cubic'"):
        common_upscale(x, 8, 8, "cubic", "disabled")
    with pytest.raises(OpError, match="crop 'middle'"):
        common_upscale(x, 8, 8, "bilinear", "middle")
    with pytest.raises(OpError, match="at least 1"):
        common_upscale(x, 0, 8, "bilinear", "disabled")
