"""The runtime's tiled upscaling helpers, without torch: tile counts, padding, blending.

Their agreement with ComfyUI's ``tiled_scale`` is checked on the recording
(``tests/runtime/nodes/test_comfyui_images.py``) and, around real networks and onnxruntime, in
``tests/compiler/models/test_upscale.py``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from comfyc.runtime.ops._common import OpError
from comfyc.runtime.ops.tiles import (
    pad_to_requirements,
    tiled_scale,
    tiled_scale_steps,
    upscale_with_model,
)


def _nearest(scale: int):  # type: ignore[no-untyped-def]
    calls: list[tuple[int, ...]] = []

    def run(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape)
        return x.repeat(scale, axis=2).repeat(scale, axis=3)

    return run, calls


@pytest.mark.parametrize("height,width,tile,overlap", [(40, 70, 16, 4), (512, 513, 512, 32),
                                                       (1000, 300, 512, 32), (8, 8, 16, 4)])
def test_steps_count_the_tiles_run(height: int, width: int, tile: int, overlap: int) -> None:
    """``tiled_scale_steps`` is the number of calls, and a position-free model is unchanged
    by tiling (the feathered weights sum back to one)."""
    run, calls = _nearest(2)
    x = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)
    out = tiled_scale(x, run, tile, tile, overlap, 2, 3)
    assert len(calls) == tiled_scale_steps(width, height, tile, tile, overlap)
    assert np.abs(out - x.repeat(2, axis=2).repeat(2, axis=3)).max() < 1e-6


def test_padding_reflects_then_repeats() -> None:
    """spandrel's padding: reflect what it can (size - 1), repeat the edge for the rest."""
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    padded, out = pad_to_requirements(x, minimum=4, multiple_of=1)
    assert padded and out.shape == (1, 1, 4, 4)
    assert out[0, 0].tolist() == [[0, 1, 2, 1], [3, 4, 5, 4], [0, 1, 2, 1], [0, 1, 2, 1]]
    assert pad_to_requirements(x, 2, 1) == (False, x)


def test_upscale_with_model_clamps_and_cuts() -> None:
    """Each tile's output is clamped and cut to h*scale; the padded rows never show."""
    seen: list[tuple[int, ...]] = []

    def run(x: np.ndarray) -> np.ndarray:
        seen.append(x.shape)
        return (x * 3 - 1).repeat(2, axis=2).repeat(2, axis=3)

    image = np.random.default_rng(1).random((2, 5, 7, 3), dtype=np.float32)
    out = upscale_with_model(image, run, 2, minimum=16, multiple_of=4, tile=8, overlap=2)
    assert out.shape == (2, 10, 14, 3) and out.min() >= 0 and out.max() <= 1
    assert all(s[2] >= 16 and s[3] >= 16 for s in seen)
    assert np.allclose(out, np.clip(image * 3 - 1, 0, 1).repeat(2, 1).repeat(2, 2), atol=1e-6)
    with pytest.raises(OpError, match="overlap"):
        tiled_scale(image.transpose(0, 3, 1, 2), run, 4, 4, 4, 2, 3)


def test_tiles_run_without_torch() -> None:
    """The lean runtime tiles with numpy only."""
    script = textwrap.dedent("""
        import builtins
        real_import = builtins.__import__
        def guarded(name, *args, **kwargs):
            if name.split(".")[0] == "torch":
                raise ImportError("torch is forbidden in the lean runtime")
            return real_import(name, *args, **kwargs)
        builtins.__import__ = guarded
        import numpy as np
        from comfyc.runtime.ops.tiles import upscale_with_model
        out = upscale_with_model(np.zeros((1, 4, 4, 3), np.float32), lambda x: x, 1)
        print(out.shape)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 4, 4, 3)"
