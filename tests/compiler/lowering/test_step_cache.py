"""Step caching (DeepCache): the split UNet, its two ONNX graphs, and the caching stage.

The full stage must compute exactly the plain UNet (it is the same modules in the same
order); the shallow stage with features cached at the same step must too; with an interval
the runtime runs the shallow graph in between and the manifest says the artifact
approximates.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("onnxruntime")

from comfyc.compiler.errors import ExportError
from comfyc.compiler.lowering.step_cache import (
    DEEP_FEATURES,
    export_unet_step_cache,
    split_forward,
)
from comfyc.runtime.backends.base import BackendError
from comfyc.runtime.backends.ort import OrtSession
from comfyc.runtime.backends.step_cache import StepCacheUNet

REPO = Path(__file__).resolve().parents[3]


def make_unet() -> Any:
    """A small SD1.x-shaped UNet (three levels, two layers per block)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32).eval()


def inputs(rows: int = 2, size: int = 8) -> tuple[Any, Any, Any]:
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(rows, 4, size, size, generator=generator), torch.full((rows,), 321.0),
            torch.randn(rows, 77, 32, generator=generator))


@pytest.mark.parametrize("skip", [1, 2, 3])
@pytest.mark.parametrize("size", [8, 9], ids=["even", "odd"])
def test_split_forward_is_the_unet(skip: int, size: int) -> None:
    """Full and shallow-from-fresh-features both equal diffusers' forward, bit for bit."""
    unet = make_unet()
    x, t, c = inputs(size=size)
    with torch.no_grad():
        reference = unet(x, t, encoder_hidden_states=c, return_dict=False)[0]
        out, deep = split_forward(unet, x, t, c, skip=skip)
        again, _ = split_forward(unet, x, t, c, skip=skip, deep=deep)
    assert torch.equal(out, reference) and torch.equal(again, reference)


def test_bad_skip_is_an_export_error(tmp_path: Path) -> None:
    """A skip deeper than the last up block's layers is refused before tracing."""
    with pytest.raises(ExportError, match="skip 4 does not fit"):
        export_unet_step_cache(make_unet(), tmp_path / "u.onnx", tmp_path / "s.onnx", skip=4,
                               batch=2, height=8, width=8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("step-cache")
    unet = make_unet()
    facts = export_unet_step_cache(unet, folder / "unet.onnx", folder / "unet.shallow.onnx",
                                   skip=1, batch=2, height=8, width=8, dynamic=True,
                                   compact=True)
    return {"unet": unet, "facts": facts, "folder": folder}


def test_two_graphs_share_one_weight_file(exported: dict[str, Any]) -> None:
    """The shallow graph stores no weights of its own: it reads the full graph's file."""
    import onnx

    folder = exported["folder"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "unet.onnx", "unet.onnx.data", "unet.shallow.onnx"]
    shallow = onnx.load(str(folder / "unet.shallow.onnx"), load_external_data=False)
    locations = {e.value for t in shallow.graph.initializer for e in t.external_data
                 if e.key == "location"}
    assert locations == {"unet.onnx.data"}
    assert exported["facts"]["shallow"]["weights_bytes"] == 0


def test_onnx_graphs_match_torch(exported: dict[str, Any]) -> None:
    """Both graphs compute what split_forward computes (onnxruntime vs torch)."""
    folder, unet = exported["folder"], exported["unet"]
    full = OrtSession(folder / "unet.onnx", intra_op_threads=1)
    shallow = OrtSession(folder / "unet.shallow.onnx", intra_op_threads=1)
    x, t, c = inputs(size=9)
    feed = {"sample": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": c.numpy()}
    out, deep = full.run(feed)
    with torch.no_grad():
        reference, reference_deep = split_forward(unet, x, t, c, skip=1)
    assert np.abs(out - reference.numpy()).max() < 1e-4
    assert np.abs(deep - reference_deep.numpy()).max() < 1e-4
    (again,) = shallow.run({**feed, DEEP_FEATURES: deep})
    assert np.abs(again - reference.numpy()).max() < 1e-4


def test_stage_refreshes_every_interval_steps(exported: dict[str, Any]) -> None:
    """Full graph at steps 0, 3, 6 …, shallow in between; a higher timestep starts over;
    interval 1 is exact."""
    folder = exported["folder"]

    def stage(interval: int) -> StepCacheUNet:
        return StepCacheUNet("unet", OrtSession(folder / "unet.onnx", intra_op_threads=1),
                             OrtSession(folder / "unet.shallow.onnx", intra_op_threads=1),
                             interval=interval)

    x, _, c = (a.numpy() for a in inputs())
    cached, exact = stage(3), stage(1)
    outputs = []
    for timestep in (999.0, 800.0, 600.0, 400.0, 200.0, 999.0):
        t = np.full((2,), timestep, np.float32)
        outputs.append((cached(x, t, c), exact(x, t, c)))
    assert (cached.full_calls, cached.shallow_calls) == (3, 3)  # 999, 400, 999 (new run)
    assert exact.shallow_calls == 0
    np.testing.assert_array_equal(outputs[0][0], outputs[0][1])
    assert not np.array_equal(outputs[1][0], outputs[1][1])  # approximate in between


def test_artifact_says_it_approximates(tmp_path: Path) -> None:
    """A --step-cache compile records it in the manifest, runs on onnxruntime and refuses
    torch; its image is close to the exact one."""
    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.frontends.dsl import parse_dsl
    from comfyc.runtime.artifact import load, read_manifest

    text = re.sub(r"steps=\d+", "steps=6", (REPO / "examples" / "txt2img.cfy").read_text())
    images = {}
    for name, cache in (("exact", None), ("cached", 3)):
        root = tmp_path / f"{name}.comfyc"
        compile_graph(parse_dsl(text, "t.cfy", default_catalog()), root,
                      CompileOptions(step_cache=cache, store_torch=cache is not None))
        images[name] = next(iter(load(root).run({"seed": 2}, save=False).images.values()))
    manifest = read_manifest(tmp_path / "cached.comfyc")
    assert manifest.options["approximate"] is True
    assert manifest.options["step_cache"] == {"interval": 3, "skip": 1}
    assert "approximate" not in read_manifest(tmp_path / "exact.comfyc").options
    mse = float(np.mean((images["exact"] - images["cached"]) ** 2))
    # NOTE: 6 steps, 2 of them full: a coarse cache (20 steps at interval 3 measure ~34 dB).
    assert mse > 0 and 10 * np.log10(1 / mse) > 12
    with pytest.raises(BackendError, match="onnxruntime or OpenVINO only"):
        load(tmp_path / "cached.comfyc", backend="torch")
