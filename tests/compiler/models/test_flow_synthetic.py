"""The SD3/Flux synthetic families: determinism, sizes and parameter counts, layouts, the CLI."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from comfyc.compiler.models.flow_synthetic import FLOW_SYNTHETIC_FAMILIES  # noqa: E402
from comfyc.compiler.models.single_file import read_state_dict  # noqa: E402
from comfyc.compiler.models.synthetic import (  # noqa: E402
    FAMILIES,
    model_spec,
    write_checkpoint,
    write_split_files,
)

# sha256 of the tensor data of the tiny files, seed 0, float32 ("same seed -> same bytes"
# across sessions); they change only with the generator (bump GENERATOR_VERSION then).
_DATA_SHA256 = {
    "sd3": "4d701fa7ae1252476f70293aa005e66086fa20ef9d3a3271eb5787b2b6c897b6",
    "flux_dev": "ca466fb58b0ed75c29d3c2c5380ff804b119d06e48c72f51fc8cbb00f42d8f1c",
}
# Parameters per component (millions, rounded) of the reduced "large" sizes; SD3's transformer
# count includes its 192 x 192 position table.
_LARGE_MILLIONS = {
    "sd35_large": {"transformer": 904, "vae": 84, "text_encoder": 124, "text_encoder_2": 695,
                   "text_encoder_3": 517},
    "flux_dev": {"transformer": 1310, "vae": 84, "text_encoder": 123, "text_encoder_2": 517},
}
_REPO = Path(__file__).resolve().parents[3]


def _data_digest(path: Path) -> str:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return hashlib.sha256(raw[8 + length:]).hexdigest()


def _millions(family: str, size: str) -> dict[str, int]:
    modules = FAMILIES[family].build(model_spec(family, size))
    out = {}
    for name, module in modules.items():
        count = sum(p.numel() for p in module.parameters())
        count += sum(b.numel() for n, b in module.named_buffers() if n.endswith("pos_embed"))
        out[name] = round(count / 1e6)
    return out


@pytest.mark.parametrize("name", sorted(_DATA_SHA256))
def test_same_seed_same_bytes(tmp_path: Path, name: str) -> None:
    """Two writes with one seed are byte-identical and match the pinned digest."""
    first = write_checkpoint(tmp_path / "a.safetensors", name, "tiny", dtype=torch.float32)
    again = write_checkpoint(tmp_path / "b.safetensors", name, "tiny", dtype=torch.float32)
    assert first.read_bytes() == again.read_bytes()
    assert _data_digest(first) == _DATA_SHA256[name]
    other = write_checkpoint(tmp_path / "c.safetensors", name, "tiny", seed=1,
                             dtype=torch.float32)
    assert _data_digest(other) != _DATA_SHA256[name]


def test_registry_sizes_and_parameter_counts() -> None:
    """Families and sizes as documented; the reduced sizes' parameter counts are pinned; the
    full sizes are the published models' counts (meta modules, nothing allocated)."""
    assert set(FLOW_SYNTHETIC_FAMILIES) <= set(FAMILIES)
    assert sorted(FAMILIES["flux_dev"].specs) == ["full", "large", "tiny"]
    assert sorted(FAMILIES["sd3"].specs) == ["full", "tiny"]
    for name, want in _LARGE_MILLIONS.items():
        assert _millions(name, "large") == want
    full = _millions("flux_dev", "full")
    assert full["transformer"] == 11901 and full["text_encoder_2"] == 4762
    assert _millions("sd35_large", "full")["transformer"] == 8146
    assert _millions("sd3", "full")["transformer"] == 2085
    assert sum(_millions("flux_schnell", "tiny").values()) < 25


def test_layouts_and_metadata(tmp_path: Path) -> None:
    """The single file uses ComfyUI's all-in-one prefixes (Flux VAE under vae.); split files are
    bare and name their encoder; all hold the same values for one seed."""
    flux = write_checkpoint(tmp_path / "flux.safetensors", "flux_schnell", "tiny",
                            dtype=torch.float32)
    state, metadata = read_state_dict(flux)
    prefixes = {k.split(".", 1)[0] for k in state}
    assert prefixes == {"model", "vae", "text_encoders"}
    assert "model.diffusion_model.single_blocks.0.linear1.weight" in state
    assert "model.diffusion_model.double_blocks.0.img_attn.norm.query_norm.scale" in state
    assert "model.diffusion_model.guidance_in.in_layer.weight" not in state
    assert "text_encoders.t5xxl.transformer.shared.weight" in state
    assert "text_encoders.t5xxl.transformer.encoder.embed_tokens.weight" not in state
    assert metadata["comfyc.family"] == "flux_schnell"
    assert json.loads(metadata["comfyc.synthetic"])["family"] == "flux_schnell"
    files = write_split_files(tmp_path / "models", "sd3", "tiny", dtype=torch.float32,
                              stem="x")
    assert {role: p.relative_to(tmp_path / "models").as_posix() for role, p in files.items()} == {
        "diffusion_model": "diffusion_models/x.safetensors",
        "clip_l": "text_encoders/x-clip_l.safetensors",
        "clip_g": "text_encoders/x-clip_g.safetensors",
        "t5xxl": "text_encoders/x-t5xxl.safetensors",
        "vae": "vae/x-vae.safetensors"}
    bare, bare_meta = read_state_dict(files["diffusion_model"])
    full, _ = read_state_dict(write_checkpoint(tmp_path / "sd3.safetensors", "sd3", "tiny",
                                               dtype=torch.float32))
    assert all(torch.equal(v, full["model.diffusion_model." + k]) for k, v in bare.items())
    assert bare_meta["comfyc.variant"] == "sd3_medium"
    clip_l, clip_meta = read_state_dict(files["clip_l"])
    assert clip_meta["comfyc.text_encoder"] == "clip_l"
    assert torch.equal(clip_l["text_projection.weight"], torch.eye(64))  # SD3's CLIP-L
    vae, _ = read_state_dict(files["vae"])
    assert "encoder.conv_in.weight" in vae and "quant_conv.weight" not in vae


def test_cli_writes_flow_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bench/make_checkpoints.py lists the flow families and sizes, writes split files, and
    reports parameters."""
    spec = importlib.util.spec_from_file_location(
        "make_checkpoints", _REPO / "bench" / "make_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "flux_dev" in listing and "full, large, tiny" in listing
    assert module.main(["flux_schnell", "--size", "tiny", "-o", str(tmp_path), "--split",
                        "--dtype", "fp8_e4m3fn", "--json"]) == 0
    out = capsys.readouterr().out
    results = json.loads(out[out.index("["):])
    assert results[0]["parameters"] > 2e7 and set(results[0]["files"]) == {
        "diffusion_model", "clip_l", "t5xxl", "vae"}
    assert (tmp_path / "vae" / "synthetic-flux_schnell-tiny-s0-vae.safetensors").is_file()
    assert module.main(["sd3", "--size", "large"]) == 2
    assert "no size 'large'" in capsys.readouterr().err
