"""Record ComfyUI's own image and mask nodes on seeded inputs (run by hand; pytest never runs it).

``tests/runtime/nodes/test_comfyui_images.py`` compares comfyc's numpy ops with
``recording.npz`` (beside this file), which this script writes; the test needs neither ComfyUI
nor torch. Recorded with ComfyUI commit ``4f874c5e3a2fafb9938273c5f3fc47d2da017667`` and
kornia 0.9.0, in the venv described in ``tests/runtime/comfyui_samplers/record.py``::

    /work/comfyui-venv/bin/python tests/runtime/nodes/comfyui_images/record.py \\
        --comfyui /work/comfyui

What runs is ComfyUI's code: the node classes of ``comfy_extras/nodes_mask.py``,
``nodes_compositing.py``, ``nodes_canny.py`` (kornia's ``canny``), ``nodes_post_processing.py``
and ``nodes.py`` (``ImageScale``, ``ImageScaleBy``), and ``comfy.utils.tiled_scale`` on a
tile-dependent function (the one ``test_comfyui_images.py`` rebuilds in numpy). ``torchvision``
and ``torchaudio`` (whose PyPI wheels need CUDA torch) are replaced by empty modules at import
time; nothing recorded uses them.

Keys of the recording: ``meta`` (JSON: commit, and per case its node, literal inputs, the
names of its array inputs and outputs) and one array per input and output
(``input/<digest>``, shared by the cases that use it, and ``<case>/out/<index>``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.abc
import importlib.machinery
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RECORDED_COMMIT = "4f874c5e3a2fafb9938273c5f3fc47d2da017667"


def _stub_media_packages() -> None:
    class _Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201
            if name.split(".")[0] in ("torchvision", "torchaudio"):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):  # noqa: ANN001, ANN201
            module = types.ModuleType(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module):  # noqa: ANN001, ANN201
            return None

    sys.meta_path.insert(0, _Stub())


def tile_function(a: Any, torch: Any) -> Any:
    """A per-tile function whose output depends on the tile's extent: nearest x2, plus a
    ramp over the tile's own output width and height, plus a tenth of the tile's first
    pixel. ``test_comfyui_images.py`` computes the same in numpy."""
    up = a.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    h, w = up.shape[2:]
    ry = torch.arange(h, dtype=torch.float32)[:, None] / h
    rx = torch.arange(w, dtype=torch.float32)[None, :] / w
    return up * 0.5 + (ry * rx) * 0.25 + a[:, :, :1, :1] * 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=HERE / "recording.npz")
    args = parser.parse_args()
    sys.path.insert(0, str(args.comfyui))
    sys.argv = [sys.argv[0]]
    _stub_media_packages()
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.utils
    import comfy_extras.nodes_canny as canny_nodes
    import comfy_extras.nodes_compositing as comp
    import comfy_extras.nodes_mask as nm
    import comfy_extras.nodes_post_processing as post
    import nodes
    import torch

    rng = np.random.default_rng(2024)
    arrays: dict[str, np.ndarray] = {}
    cases: dict[str, Any] = {}

    def blocky(shape: tuple[int, ...], block: int = 3) -> np.ndarray:
        """A picture with edges: blocks of flat colour plus a little noise."""
        b, h, w, c = shape
        coarse = rng.random((b, h // block + 1, w // block + 1, c))
        up = np.repeat(np.repeat(coarse, block, 1), block, 2)[:, :h, :w]
        return (0.8 * up + 0.2 * rng.random(shape)).astype(np.float32)

    def record(name: str, node: str, fn: Any, tensors: dict[str, np.ndarray],
               literals: dict[str, Any]) -> None:
        inputs = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
        result = fn(**inputs, **literals)
        outs = result.args if hasattr(result, "args") else result
        refs = {}
        for key, value in tensors.items():
            # Inputs are stored once by content (many cases share them).
            digest = hashlib.sha1(repr(value.shape).encode() + value.tobytes()).hexdigest()
            arrays[f"input/{digest[:16]}"] = value
            refs[key] = digest[:16]
        for i, value in enumerate(outs):
            arrays[f"{name}/out/{i}"] = value.detach().float().numpy()
        cases[name] = {"node": node, "literals": literals, "inputs": refs,
                       "outputs": len(outs)}

    image = blocky((2, 9, 11, 4))
    mask = rng.random((2, 9, 11)).astype(np.float32)
    binary = (rng.random((2, 12, 10)) > 0.7).astype(np.float32)
    for channel in ("red", "green", "blue", "alpha"):
        record(f"ImageToMask.{channel}", "ImageToMask", nm.ImageToMask.execute,
               {"image": image}, {"channel": channel})
    record("MaskToImage", "MaskToImage", nm.MaskToImage.execute, {"mask": mask}, {})
    quantized = np.round(image[..., :3] * 4) / 4
    color = int(np.round(quantized[0, 0, 0] * 255).astype(int) @ np.array([65536, 256, 1]))
    record("ImageColorToMask", "ImageColorToMask", nm.ImageColorToMask.execute,
           {"image": quantized.astype(np.float32)}, {"color": color})
    record("SolidMask", "SolidMask", nm.SolidMask.execute, {},
           {"value": 0.3, "width": 7, "height": 5})
    record("InvertMask", "InvertMask", nm.InvertMask.execute, {"mask": mask}, {})
    for i, (x, y, w, h) in enumerate([(0, 0, 4, 3), (5, 2, 512, 512), (20, 1, 3, 3)]):
        record(f"CropMask.{i}", "CropMask", nm.CropMask.execute, {"mask": mask},
               {"x": x, "y": y, "width": w, "height": h})
    source = rng.random((1, 5, 6)).astype(np.float32)
    for op in ("multiply", "add", "subtract", "and", "or", "xor"):
        for x, y in ((0, 0), (7, 6), (3, 2)):
            record(f"MaskComposite.{op}.{x}.{y}", "MaskComposite", nm.MaskComposite.execute,
                   {"destination": mask, "source": source},
                   {"x": x, "y": y, "operation": op})
    for i, sides in enumerate([(2, 0, 0, 0), (3, 2, 4, 1), (20, 20, 1, 30)]):
        record(f"FeatherMask.{i}", "FeatherMask", nm.FeatherMask.execute, {"mask": mask},
               dict(zip(("left", "top", "right", "bottom"), sides)))
    for expand in (-3, -1, 0, 1, 4):
        for tapered in (True, False):
            for label, m in (("binary", binary), ("grey", mask)):
                record(f"GrowMask.{label}.{expand}.{tapered}", "GrowMask",
                       nm.GrowMask.execute, {"mask": m},
                       {"expand": expand, "tapered_corners": tapered})
    for value in (0.5, 0.1, 0.0):
        record(f"ThresholdMask.{value}", "ThresholdMask", nm.ThresholdMask.execute,
               {"mask": mask}, {"value": value})

    dest = blocky((2, 10, 12, 3))
    src_rgba = blocky((1, 4, 5, 4))
    src_rgb = blocky((2, 6, 7, 3))
    small_mask = rng.random((1, 3, 4)).astype(np.float32)
    for i, (src, x, y, resize, m) in enumerate([
        (src_rgb, 0, 0, False, None), (src_rgb, 8, 7, False, small_mask),
        (src_rgba, 3, 2, False, None), (src_rgb, 0, 0, True, small_mask),
        (src_rgb, 11, 9, False, small_mask), (src_rgb, 12, 10, False, None),
    ]):
        tensors = {"destination": dest, "source": src}
        if m is not None:
            tensors["mask"] = m
        record(f"ImageCompositeMasked.{i}", "ImageCompositeMasked",
               nm.ImageCompositeMasked.execute, tensors,
               {"x": x, "y": y, "resize_source": resize})
    dest_rgba = blocky((2, 10, 12, 4))
    record("ImageCompositeMasked.rgba", "ImageCompositeMasked",
           nm.ImageCompositeMasked.execute, {"destination": dest_rgba, "source": src_rgb},
           {"x": 2, "y": 3, "resize_source": False})

    def latent_composite(destination: Any, source: Any, **kw: Any) -> Any:
        return nm.LatentCompositeMasked.execute({"samples": destination}, {"samples": source},
                                                **kw).args[0]["samples"],

    lat_dest = rng.standard_normal((2, 4, 8, 9)).astype(np.float32)
    lat_src = rng.standard_normal((1, 4, 4, 5)).astype(np.float32)
    for i, (x, y, resize, m) in enumerate([(16, 8, False, None), (40, 40, False, small_mask),
                                           (0, 0, True, small_mask)]):
        tensors = {"destination": lat_dest, "source": lat_src}
        if m is not None:
            tensors["mask"] = m
        record(f"LatentCompositeMasked.{i}", "LatentCompositeMasked", latent_composite,
               tensors, {"x": x, "y": y, "resize_source": resize})

    alpha = rng.random((1, 4, 6)).astype(np.float32)
    record("JoinImageWithAlpha", "JoinImageWithAlpha", comp.JoinImageWithAlpha.execute,
           {"image": src_rgb, "alpha": alpha}, {})
    record("SplitImageWithAlpha.rgba", "SplitImageWithAlpha",
           comp.SplitImageWithAlpha.execute, {"image": dest_rgba}, {})
    record("SplitImageWithAlpha.rgb", "SplitImageWithAlpha", comp.SplitImageWithAlpha.execute,
           {"image": dest}, {})
    pd_src, pd_dst = blocky((2, 6, 8, 3)), blocky((2, 6, 8, 3))
    pd_sa, pd_da = rng.random((2, 6, 8)).astype(np.float32), rng.random((2, 6, 8)).astype(
        np.float32)
    for mode in comp.PorterDuffMode:
        record(f"PorterDuff.{mode.name}", "PorterDuffImageComposite",
               comp.PorterDuffImageComposite.execute,
               {"source": pd_src, "source_alpha": pd_sa, "destination": pd_dst,
                "destination_alpha": pd_da}, {"mode": mode.name})
    record("PorterDuff.resized", "PorterDuffImageComposite",
           comp.PorterDuffImageComposite.execute,
           {"source": blocky((1, 4, 5, 3)), "source_alpha": rng.random((1, 3, 3)).astype(
               np.float32), "destination": pd_dst[:1], "destination_alpha": pd_da[:1, :4]},
           {"mode": "SRC_OVER"})

    canny_rgb = blocky((2, 40, 48, 3), 5)
    canny_grey = blocky((1, 33, 29, 1), 4)
    for low, high in ((0.4, 0.8), (0.1, 0.2), (0.05, 0.9), (0.99, 0.99)):
        record(f"Canny.rgb.{low}.{high}", "Canny", canny_nodes.Canny.execute,
               {"image": canny_rgb}, {"low_threshold": low, "high_threshold": high})
    record("Canny.grey", "Canny", canny_nodes.Canny.execute, {"image": canny_grey},
           {"low_threshold": 0.2, "high_threshold": 0.5})

    def image_scale(image: Any, **kw: Any) -> Any:
        return nodes.ImageScale().upscale(image, **kw)

    def image_scale_by(image: Any, **kw: Any) -> Any:
        return nodes.ImageScaleBy().upscale(image, **kw)

    scale_in = blocky((2, 13, 17, 3))
    scale_rgba = blocky((1, 13, 17, 4))
    for method in ("nearest-exact", "bilinear", "area", "bicubic", "lanczos"):
        for i, (w, h, crop) in enumerate([(23, 9, "disabled"), (8, 20, "center"),
                                          (0, 31, "disabled"), (11, 0, "center")]):
            record(f"ImageScale.{method}.{i}", "ImageScale", image_scale, {"image": scale_in},
                   {"upscale_method": method, "width": w, "height": h, "crop": crop})
        record(f"ImageScale.{method}.rgba", "ImageScale", image_scale, {"image": scale_rgba},
               {"upscale_method": method, "width": 25, "height": 10, "crop": "disabled"})
        for factor in (0.5, 1.7):
            record(f"ImageScaleBy.{method}.{factor}", "ImageScaleBy", image_scale_by,
                   {"image": scale_in}, {"upscale_method": method, "scale_by": factor})
        for mp, steps in ((0.0005, 1), (0.001, 8)):
            record(f"ImageScaleToTotalPixels.{method}.{steps}", "ImageScaleToTotalPixels",
                   post.ImageScaleToTotalPixels.execute, {"image": scale_in},
                   {"upscale_method": method, "megapixels": mp, "resolution_steps": steps})

    def tiled(samples: Any, **kw: Any) -> Any:
        return comfy.utils.tiled_scale(samples, lambda a: tile_function(a, torch), **kw),

    tile_in = rng.random((1, 3, 40, 70)).astype(np.float32)
    for i, (tx, ty, overlap) in enumerate([(16, 16, 4), (32, 24, 8), (64, 64, 8),
                                           (70, 40, 4), (17, 13, 5)]):
        record(f"tiled_scale.{i}", "tiled_scale", tiled, {"samples": tile_in},
               {"tile_x": tx, "tile_y": ty, "overlap": overlap, "upscale_amount": 2,
                "out_channels": 3})

    meta = {"commit": RECORDED_COMMIT, "kornia": __import__("kornia").__version__,
            "torch": torch.__version__, "cases": cases}
    np.savez_compressed(args.out, meta=np.array(json.dumps(meta)), **arrays)
    print(f"{len(cases)} cases -> {args.out}")


if __name__ == "__main__":
    main()
