"""The seeded random-weight checkpoint writer: determinism, layouts, loading, the CLI."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from comfyc.compiler.models.diffusers_folder import load_diffusers_folder  # noqa: E402
from comfyc.compiler.models.sdxl import (  # noqa: E402
    adm_vector,
    sdxl_unet_forward,
    text_conditioning,
)
from comfyc.compiler.models.single_file import load_checkpoint, read_state_dict  # noqa: E402
from comfyc.compiler.models.synthetic import (  # noqa: E402
    FAMILIES,
    ModelSpec,
    SyntheticFamily,
    TensorGroup,
    build_modules,
    family_names,
    model_spec,
    register_family,
    single_file_layout,
    tiny_checkpoint,
    write_checkpoint,
    write_safetensors_stream,
)

# sha256 of the tensor data (after the header) of the tiny SDXL file, seed 0, float32. It pins
# "same seed -> same bytes" across sessions; it changes only when the generator does (then bump
# synthetic.GENERATOR_VERSION and update this value).
_SDXL_TINY_SEED0_DATA_SHA256 = (
    "89ca78ad6ad770be8bd2157ae9467f83ab28f60b9f462f590bd08137fb35ebb7")
_REPO = Path(__file__).resolve().parents[3]


def _data_digest(path: Path) -> str:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return hashlib.sha256(raw[8 + length:]).hexdigest()


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny checkpoint of every registered family (seed 0, float32)."""
    folder = tmp_path_factory.mktemp("synthetic")
    return {name: tiny_checkpoint(name, directory=folder) for name in
            ("sd15", "sdxl", "sdxl_refiner", "sdxl_turbo")}


def test_same_seed_same_bytes(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    """Two writes with one seed are byte-identical; the data matches the pinned digest; another
    seed gives other weights."""
    again = write_checkpoint(tmp_path / "again.safetensors", "sdxl", "tiny", seed=0,
                             dtype=torch.float32)
    assert again.read_bytes() == tiny_files["sdxl"].read_bytes()
    assert _data_digest(again) == _SDXL_TINY_SEED0_DATA_SHA256
    other = write_checkpoint(tmp_path / "other.safetensors", "sdxl", "tiny", seed=1,
                             dtype=torch.float32)
    assert _data_digest(other) != _SDXL_TINY_SEED0_DATA_SHA256
    cached = tiny_checkpoint("sdxl", directory=tiny_files["sdxl"].parent)
    assert cached == tiny_files["sdxl"]


@pytest.mark.parametrize(("name", "family", "encoders"), [
    ("sd15", "sd1", ["clip_l"]),
    ("sdxl", "sdxl", ["clip_l", "clip_g"]),
    ("sdxl_refiner", "sdxl_refiner", ["clip_g"]),
    ("sdxl_turbo", "sdxl", ["clip_l", "clip_g"]),
])
def test_tiny_models_load_and_give_sane_outputs(tiny_files: dict[str, Path], name: str,
                                                family: str, encoders: list[str]) -> None:
    """Every tiny model loads with the family's facts and gives finite, non-degenerate outputs
    for a 64x64 image (8x8 latent): prompt encoding, one UNet call, one VAE decode."""
    loaded = load_checkpoint(tiny_files[name])
    assert loaded.family == family
    assert [s.name for s in loaded.text_encoders] == encoders
    assert loaded.variant == ("turbo" if name == "sdxl_turbo" else None)
    tokens = torch.full((2, 77), 49407)
    tokens[:, 0], tokens[:, 1] = 49406, torch.tensor([320, 2368])
    context, pooled = text_conditioning(loaded, tokens)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if loaded.is_sdxl:
            ids = {n: 64.0 for n in loaded.adm_ids}
            y = adm_vector(pooled, loaded.family, **ids)
            out = sdxl_unet_forward(loaded.unet, latents, torch.tensor([500, 500]), context, y)
        else:
            out = loaded.unet(latents, 500, context).sample
        image = loaded.vae.decode(latents[:1] / loaded.latent_scale).sample
    for tensor in (context, out, image) + (() if pooled is None else (pooled,)):
        assert torch.isfinite(tensor).all()
        assert 0.05 < float(tensor.std()) < 20
    assert image.shape == (1, 3, 64, 64) and out.shape == latents.shape
    assert not torch.allclose(out[0], out[1])  # the prompt reaches the output


def test_initialisation_rules(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    """fan-in normal weights, norms 1 and biases 0 (unless jittered), small embeddings."""
    state, metadata = read_state_dict(tiny_files["sdxl"])
    proj = state["model.diffusion_model.input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight"]
    assert abs(float(proj.std()) * 128 ** 0.5 - 1) < 0.05
    conv = state["model.diffusion_model.input_blocks.1.0.in_layers.2.weight"]
    assert abs(float(conv.std()) * (64 * 9) ** 0.5 - 1) < 0.05
    assert torch.equal(state["model.diffusion_model.out.0.weight"], torch.ones(64))
    assert torch.equal(state["model.diffusion_model.out.2.bias"], torch.zeros(4))
    tokens = state["conditioner.embedders.1.model.token_embedding.weight"]
    assert abs(float(tokens.std()) - 0.02) < 0.002
    info = json.loads(metadata["comfyc.synthetic"])
    assert info == {"family": "sdxl", "size": "tiny", "seed": 0, "jitter": 0.0, "generator": 1}
    jittered = write_checkpoint(tmp_path / "j.safetensors", "sdxl", "tiny", jitter=0.05,
                                dtype=torch.float32)
    state_j, _ = read_state_dict(jittered)
    assert not torch.equal(state_j["model.diffusion_model.out.0.weight"], torch.ones(64))
    assert torch.equal(state_j["model.diffusion_model.out.2.weight"],
                       state["model.diffusion_model.out.2.weight"])


def test_single_file_and_diffusers_folder_hold_the_same_weights(tmp_path: Path) -> None:
    """One seed, two layouts, identical modules; the folder opens in the diffusers pipeline."""
    from diffusers import StableDiffusionXLPipeline

    file = write_checkpoint(tmp_path / "xl.safetensors", "sdxl", "tiny", seed=4,
                            dtype=torch.float32, diffusers_dir=tmp_path / "xl-diffusers")
    from_file = load_checkpoint(file)
    from_folder = load_diffusers_folder(tmp_path / "xl-diffusers")
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(from_file, component).state_dict(), getattr(
            from_folder, component).state_dict()
        assert a.keys() == b.keys(), component
        assert all(torch.equal(a[k], b[k]) for k in a), component
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        pipe = StableDiffusionXLPipeline.from_pretrained(str(tmp_path / "xl-diffusers"),
                                                         local_files_only=True)
    image = pipe("a cat", num_inference_steps=1, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3)


def test_sd15_folder_opens_in_stable_diffusion_pipeline(tmp_path: Path) -> None:
    """The SD1.5 writer's folder is a StableDiffusionPipeline folder with fp16 weights."""
    from diffusers import StableDiffusionPipeline

    write_checkpoint(tmp_path / "sd.safetensors", "sd15", "tiny",
                     diffusers_dir=tmp_path / "sd-diffusers")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "sd-diffusers"),
                                                       local_files_only=True)
    assert pipe.unet.conv_in.weight.dtype == torch.float32  # fp16 on disk, default dtype on load
    state, _ = read_state_dict(tmp_path / "sd.safetensors")
    assert state["model.diffusion_model.input_blocks.0.0.weight"].dtype == torch.float16
    assert torch.equal(pipe.unet.conv_in.weight,
                       state["model.diffusion_model.input_blocks.0.0.weight"].float())


def test_stream_writer_checks_and_reads_back(tmp_path: Path) -> None:
    """Declared names and shapes are enforced; the file is standard safetensors."""
    from safetensors import safe_open

    groups = [
        TensorGroup({"a": (2, 3)}, lambda: {"a": torch.arange(6.0).reshape(2, 3)}),
        TensorGroup({"b": (1,), "ids": (1, 4)},
                    lambda: {"b": torch.tensor([0.5]), "ids": torch.arange(4)[None]},
                    {"ids": torch.int64}),
    ]
    path = write_safetensors_stream(tmp_path / "s.safetensors", groups, dtype=torch.bfloat16,
                                    metadata={"k": "v"})
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"k": "v"}
        assert handle.get_tensor("a").dtype == torch.bfloat16
        assert torch.equal(handle.get_tensor("ids"), torch.arange(4)[None])
        assert handle.get_tensor("b").item() == 0.5
    bad = [TensorGroup({"a": (2,)}, lambda: {"a": torch.zeros(3)})]
    with pytest.raises(ValueError, match="declared"):
        write_safetensors_stream(tmp_path / "bad.safetensors", bad)
    assert not (tmp_path / "bad.safetensors").exists()
    assert not list(tmp_path.glob("bad.safetensors.*"))  # no temporary left behind
    with pytest.raises(ValueError, match="written twice"):
        write_safetensors_stream(tmp_path / "twice.safetensors", groups + groups[:1])


def test_registry_hooks(tmp_path: Path) -> None:
    """A new family plugs in with its own spec and layout; unknown names are clear errors."""
    assert family_names()[:4] == ["sd15", "sdxl", "sdxl_refiner", "sdxl_turbo"]
    with pytest.raises(ValueError, match="unknown family 'flux'"):
        model_spec("flux")
    with pytest.raises(ValueError, match="sizes"):
        model_spec("sdxl", "huge")
    base = FAMILIES["sd15"]

    def unet_only(modules: dict[str, Any], spec: ModelSpec, seed: int,
                  jitter: float) -> list[TensorGroup]:
        return single_file_layout({"unet": modules["unet"]}, spec, seed, jitter)

    register_family(SyntheticFamily("test_unet_only", base.specs, "test", build_modules,
                                    unet_only))
    try:
        path = write_checkpoint(tmp_path / "u.safetensors", "test_unet_only", "tiny")
        loaded = load_checkpoint(path)
        assert loaded.vae is None and loaded.text_encoder is None
    finally:
        del FAMILIES["test_unet_only"]


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bench/make_checkpoints.py lists, writes with timing and size, and rejects bad names."""
    spec = importlib.util.spec_from_file_location(
        "make_checkpoints", _REPO / "bench" / "make_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--list"]) == 0
    assert "sdxl_refiner" in capsys.readouterr().out
    assert module.main(["sd15", "sdxl_refiner", "--size", "tiny", "-o", str(tmp_path),
                        "--dtype", "fp32", "--json"]) == 0
    out = capsys.readouterr().out
    results = json.loads(out[out.index("["):])
    assert [r["family"] for r in results] == ["sd15", "sdxl_refiner"]
    assert (tmp_path / "synthetic-sdxl_refiner-tiny-s0.safetensors").is_file()
    assert all(r["bytes"] > 0 and r["seconds"] > 0 for r in results)
    assert module.main(["flux"]) == 2
    assert "unknown or missing family" in capsys.readouterr().err
