"""Upscale models against spandrel (what ComfyUI loads them with) on the same state dicts.

spandrel is the oracle for detection (architecture, scale, channels, size requirements,
hyper-parameters) and for the networks' outputs; ComfyUI's ``tiled_scale`` (rebuilt below from
``comfy/utils.py``, commit 4f874c5e) around spandrel's descriptor is the oracle for
``ImageUpscaleWithModel``; onnxruntime checks the ONNX export. spandrel needs torchvision only
for two architectures comfyc does not build; where torchvision is absent (its PyPI wheels pull
a CUDA torch) it is replaced by an empty module before spandrel is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from comfyc.compiler.models.errors import ModelFormatError
from comfyc.compiler.models.upscale import (
    RANDOM_KINDS,
    UpscaleModel,
    detect_upscale_architecture,
    export_upscale_onnx,
    load_upscale_model,
    random_upscale_state_dict,
    read_upscale_state_dict,
    write_random_upscale_model,
)
from comfyc.runtime.ops.tiles import upscale_with_model


class _EmptyTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``torchvision`` as empty modules whose attributes are inert functions."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name.split(".")[0] == "torchvision":
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def attribute(name: str) -> Any:
            # NOTE: dunder lookups (``__file__`` …) must fail as on a real module: tools that
            # walk sys.modules (hypothesis' constant collection) read them.
            if name.startswith("__"):
                raise AttributeError(name)
            return lambda *a, **k: None

        module.__getattr__ = attribute  # type: ignore[method-assign]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


@pytest.fixture(scope="module")
def spandrel() -> Any:
    if importlib.util.find_spec("spandrel") is None:
        pytest.skip("spandrel is not installed (pip install spandrel --no-deps)")
    finder = None
    if importlib.util.find_spec("torchvision") is None:
        finder = _EmptyTorchvision()
        sys.meta_path.insert(0, finder)
    import spandrel as module

    yield module
    if finder is not None:  # Later tests see no torchvision again.
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
            del sys.modules[name]


def _spandrel_model(spandrel: Any, sd: dict[str, Any]) -> Any:
    descriptor = spandrel.ModelLoader().load_from_state_dict({k: v.clone() for k, v in sd.items()})
    descriptor.model.eval()
    return descriptor


def _image(*shape: int, seed: int = 0) -> Any:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_tiny_models_match_spandrel(spandrel: Any, kind: str) -> None:
    """Detection facts equal spandrel's, and the networks agree within 1e-5 (odd sizes too)."""
    sd = random_upscale_state_dict(kind, "tiny", seed=3)
    ours = load_upscale_model(sd)
    ref = _spandrel_model(spandrel, sd)
    assert ours.spec.architecture == ref.architecture.id
    assert ours.scale == ref.scale
    assert (ours.spec.in_channels, ours.spec.out_channels) == (ref.input_channels,
                                                               ref.output_channels)
    req = ref.size_requirements
    assert (ours.spec.size_minimum, ours.spec.size_multiple) == (req.minimum, req.multiple_of)
    assert ours.spec.tags == tuple(ref.tags)
    for h, w in ((16, 16), (21, 18), (5, 7)):
        x = _image(1, 3, h, w, seed=h * w)
        with torch.no_grad():
            if min(h, w) >= 16:
                assert (ours.network(x) - ref.model(x)).abs().max() <= 1e-5
            out = ours(x)
            assert out.shape == (1, 3, h * ours.scale, w * ours.scale)
            assert (out - ref(x)).abs().max() <= 1e-5
    # The calibrated random weights give image-like outputs (the clamp matters, not always).
    assert 0.1 < float(out.std()) < 0.5


@pytest.mark.parametrize("kind", ["realesrgan-x4", "esrgan", "compact", "swinir-classical",
                                  "swinir-lightweight", "swinir-real-large"])
def test_published_sizes_detect_like_spandrel(spandrel: Any, kind: str) -> None:
    """At the published sizes the recovered hyper-parameters are spandrel's."""
    sd = random_upscale_state_dict(kind, "real", seed=1)
    spec, _ = detect_upscale_architecture(sd)
    ref = _spandrel_model(spandrel, sd)
    hyper = ref.model.hyperparameters
    assert spec.scale == ref.scale and spec.tags == tuple(ref.tags)
    if spec.architecture == "ESRGAN":
        assert (spec.config["num_filters"], spec.config["num_blocks"]) == (64, 23)
        assert hyper["num_blocks"] == 23 and hyper["shuffle_factor"] is None
    elif spec.architecture == "Compact":
        assert spec.config["num_conv"] == hyper["num_conv"] == 32
    else:
        for key in ("embed_dim", "window_size", "upsampler", "resi_connection", "img_size",
                    "mlp_ratio", "img_range", "upscale"):
            assert spec.config[key] == hyper[key], key
        assert list(spec.config["depths"]) == list(hyper["depths"])
        assert list(spec.config["num_heads"]) == list(hyper["num_heads"])


@pytest.mark.parametrize("kind,suffix", [("realesrgan-x2", ".pth"), ("compact", ".pth"),
                                         ("esrgan", ".safetensors"),
                                         ("swinir-real", ".pth")])
def test_files_read_as_comfyui_reads_them(tmp_path: Path, kind: str, suffix: str) -> None:
    """``params_ema``/``params`` wrappers, safetensors, and a DataParallel ``module.`` prefix."""
    path = write_random_upscale_model(tmp_path / f"model{suffix}", kind, seed=4)
    sd = read_upscale_state_dict(path)
    assert not any(isinstance(v, dict) for v in sd.values())
    spec, _ = detect_upscale_architecture(sd)
    expected, _ = detect_upscale_architecture(random_upscale_state_dict(kind, seed=4))
    assert spec == expected
    wrapped = tmp_path / "parallel.pth"
    torch.save({f"module.{k}": v for k, v in random_upscale_state_dict(kind, seed=4).items()},
               wrapped)
    assert detect_upscale_architecture(read_upscale_state_dict(wrapped))[0] == expected


def test_unknown_and_unsupported_models_are_named() -> None:
    """A Swin2SR file and a file of unknown keys are refused with what comfyc supports."""
    sd = random_upscale_state_dict("swinir-classical")
    sd["layers.0.residual_group.blocks.0.attn.logit_scale"] = torch.zeros(2, 1, 1)
    with pytest.raises(ModelFormatError, match="Swin2SR model; comfyc supports"):
        detect_upscale_architecture(sd)
    with pytest.raises(ModelFormatError, match="unknown upscale model architecture"):
        detect_upscale_architecture({"encoder.weight": torch.zeros(3)})


def _comfy_tiled_scale(samples: Any, function: Any, tile: int, overlap: int,
                       upscale_amount: int, out_channels: int) -> Any:
    """``comfy.utils.tiled_scale_multidim`` for two dimensions, as ComfyUI writes it."""
    output = torch.empty([samples.shape[0], out_channels]
                         + [round(upscale_amount * s) for s in samples.shape[2:]])
    for b in range(samples.shape[0]):
        s = samples[b:b + 1]
        if all(s.shape[d + 2] <= tile for d in range(2)):
            output[b:b + 1] = function(s)
            continue
        out = output[b:b + 1].zero_()
        out_div = torch.zeros([1, 1] + list(output.shape[2:]))
        positions = [range(0, s.shape[d + 2] - overlap, tile - overlap)
                     if s.shape[d + 2] > tile else [0] for d in range(2)]
        for it in itertools.product(*positions):
            s_in, upscaled = s, []
            for d in range(2):
                pos = max(0, min(s.shape[d + 2] - overlap, it[d]))
                length = min(tile, s.shape[d + 2] - pos)
                s_in = s_in.narrow(d + 2, pos, length)
                upscaled.append(round(upscale_amount * pos))
            ps = function(s_in)
            mask = torch.ones([1, 1] + list(ps.shape[2:]))
            for d in range(2, 4):
                feather = round(upscale_amount * overlap)
                if feather >= mask.shape[d]:
                    continue
                for t in range(feather):
                    a = (t + 1) / feather
                    mask.narrow(d, t, 1).mul_(a)
                    mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_(a)
            o, o_d, ps_view, mask_view = out, out_div, ps, mask
            for d in range(2):
                length = min(ps_view.shape[d + 2], o.shape[d + 2] - upscaled[d])
                o = o.narrow(d + 2, upscaled[d], length)
                o_d = o_d.narrow(d + 2, upscaled[d], length)
                if length < ps_view.shape[d + 2]:
                    ps_view = ps_view.narrow(d + 2, 0, length)
                    mask_view = mask_view.narrow(d + 2, 0, length)
            o.add_(ps_view * mask_view)
            o_d.add_(mask_view)
        out.div_(out_div)
    return output


@pytest.mark.parametrize("kind", ["realesrgan-x2", "compact", "swinir-lightweight"])
@pytest.mark.parametrize("tile,overlap", [(24, 6), (512, 32)])
def test_tiled_upscale_is_comfyuis(spandrel: Any, kind: str, tile: int, overlap: int) -> None:
    """``UpscaleModel.upscale`` is ImageUpscaleWithModel: tiles, feathered blend, clamp."""
    sd = random_upscale_state_dict(kind, seed=5)
    ours = load_upscale_model(sd)
    ref = _spandrel_model(spandrel, sd)
    image = _image(2, 45, 61, 3, seed=9)
    with torch.no_grad():
        s = _comfy_tiled_scale(image.movedim(-1, -3), lambda a: ref(a.float()), tile, overlap,
                               ref.scale, 3)
    expected = torch.clamp(s.movedim(-3, -1), min=0, max=1.0).numpy()
    got = ours.upscale(image.numpy(), tile=tile, overlap=overlap)
    assert got.shape == expected.shape == (2, 45 * ours.scale, 61 * ours.scale, 3)
    assert np.abs(got - expected).max() <= 1e-5


@pytest.mark.parametrize("kind", ["esrgan", "realesrgan-x2", "compact", "swinir-classical",
                                  "swinir-lightweight", "swinir-real"])
def test_onnx_stage_agrees_with_torch(tmp_path: Path, kind: str) -> None:
    """The exported network (dynamic H/W) under onnxruntime, padded and tiled by the numpy
    runtime helpers, gives what the torch model gives, within 1e-4."""
    ort = pytest.importorskip("onnxruntime")
    model: UpscaleModel = load_upscale_model(random_upscale_state_dict(kind, seed=6))
    facts = export_upscale_onnx(model, tmp_path / "upscale.onnx")
    assert facts["inputs"] == ["image"] and facts["outputs"] == ["upscaled"]
    session = ort.InferenceSession(str(tmp_path / "upscale.onnx"),
                                   providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {"image": x})[0]

    spec = model.spec
    for h, w in ((16, 16), (37, 23), (9, 30)):
        image = _image(1, h, w, 3, seed=h + w).numpy()
        expected = model.upscale(image, tile=24, overlap=4)
        got = upscale_with_model(image, run, spec.scale, minimum=spec.size_minimum,
                                 multiple_of=spec.size_multiple,
                                 network_multiple=spec.network_multiple, tile=24, overlap=4)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4
