"""SD3 and Flux diffusers folders: the synthetic writer's folders hold the single file's weights
and open offline in StableDiffusion3Pipeline / FluxPipeline; loaded checkpoints convert to
folders and back."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from comfyc.compiler.models.flow import checkpoint_family, load_flow_checkpoint  # noqa: E402
from comfyc.compiler.models.flow_folder import (  # noqa: E402
    build_flow_scheduler,
    load_flow_folder,
    write_flow_folder,
)
from comfyc.compiler.models.text_encoders import load_text_encoder  # noqa: E402


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub access: diffusers/transformers must only read local files."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _same(a: Any, b: Any) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _same_checkpoint(a: Any, b: Any) -> None:
    assert _same(a.model.transformer, b.model.transformer)
    assert _same(a.vae, b.vae)
    assert a.text_encoders.present == b.text_encoders.present
    for name in a.text_encoders.present:
        left = getattr(a.text_encoders, name).module
        right = getattr(b.text_encoders, name).module
        assert _same(left, right), name


@pytest.mark.parametrize("name", ["sd3", "flux_dev"])
def test_folder_holds_the_single_file(flow_files: dict[str, Path],
                                      flow_folders: dict[str, Path], name: str) -> None:
    """The folder written with the same seed loads to the same modules and facts."""
    folder = flow_folders[name]
    assert checkpoint_family(folder) == ("sd3" if name == "sd3" else "flux")
    from_folder = load_flow_checkpoint(folder)
    from_file = load_flow_checkpoint(flow_files[name])
    _same_checkpoint(from_folder, from_file)
    assert from_folder.model.detected.variant == from_file.model.detected.variant
    assert from_folder.latent_format == from_file.latent_format
    assert from_folder.vae.config.shift_factor == from_file.latent_format.shift
    from comfyc.compiler.models.single_file import load_vae

    vae = load_vae(folder / "vae" / "diffusion_pytorch_model.safetensors",
                   family=from_file.family)  # NOTE: diffusers names, no quant convs
    assert _same(vae, from_file.vae) and vae.config.scaling_factor == from_file.latent_format.scale
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ("StableDiffusion3Pipeline" if name == "sd3"
                                    else "FluxPipeline")
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    if name == "sd3":
        assert scheduler["shift"] == 3.0 and not scheduler["use_dynamic_shifting"]
    else:
        assert scheduler["use_dynamic_shifting"] and scheduler["max_shift"] == 1.15


@pytest.mark.parametrize("name", ["sd3", "flux_dev"])
def test_pipelines_open_offline_and_run(flow_folders: dict[str, Path], name: str,
                                        offline: None) -> None:
    """diffusers' own pipeline opens the folder without a hub and makes a 64x64 image."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    cls = StableDiffusion3Pipeline if name == "sd3" else FluxPipeline
    pipe = cls.from_pretrained(str(flow_folders[name]), local_files_only=True)
    length = {"max_sequence_length": 77 if name == "sd3" else 256}
    images = pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="np",
                  generator=torch.Generator().manual_seed(0), **length).images
    assert images.shape == (1, 64, 64, 3)
    assert pipe.tokenizer_2.pad_token_id == 0


def test_write_folder_from_loaded_checkpoint(flow_files: dict[str, Path],
                                             flow_split: dict[str, dict[str, Path]],
                                             tmp_path: Path, offline: None) -> None:
    """A loaded checkpoint converts to a folder that loads back equal; SD3's CLIP-L without a
    projection gets an identity one (ComfyUI pools it unprojected)."""
    from diffusers import StableDiffusion3Pipeline

    flux = load_flow_checkpoint(flow_files["flux_dev"])
    out = write_flow_folder(flux, tmp_path / "flux")
    _same_checkpoint(load_flow_folder(out), flux)
    with pytest.raises(Exception, match="already exists"):
        write_flow_folder(flux, out)
    sd3 = load_flow_checkpoint(flow_files["sd3"])
    bare_l = load_text_encoder(flow_split["flux_dev"]["clip_l"])  # CLIPTextModel, no projection
    assert not hasattr(bare_l.module, "text_projection")
    mixed = dataclasses.replace(sd3, text_encoders=dataclasses.replace(sd3.text_encoders,
                                                                       clip_l=bare_l))
    folder = write_flow_folder(mixed, tmp_path / "sd3")
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), local_files_only=True)
    eye = torch.eye(bare_l.module.config.hidden_size)
    assert torch.equal(pipe.text_encoder.text_projection.weight, eye)
    missing = dataclasses.replace(sd3, vae=None)
    with pytest.raises(Exception, match="needs the VAE"):
        write_flow_folder(missing, tmp_path / "none")


def test_folder_family_of_stable_diffusion_folders(tmp_path: Path) -> None:
    """checkpoint_family reads SD1 and SDXL folders' configs (no weights) and SD files' shapes."""
    from comfyc.compiler.models.flow import load_any_checkpoint
    from comfyc.compiler.models.synthetic import write_checkpoint

    for name, family in (("sd15", "sd1"), ("sdxl", "sdxl")):
        file = write_checkpoint(tmp_path / f"{name}.safetensors", name, "tiny",
                                diffusers_dir=tmp_path / name)
        assert checkpoint_family(tmp_path / name) == family
        assert checkpoint_family(file) == family
    assert load_any_checkpoint(tmp_path / "sd15.safetensors").family == "sd1"


def test_schedulers() -> None:
    """The published schedulers: SD3 shift 3; Flux dev dynamic 0.5..1.15; schnell shift 1."""
    assert build_flow_scheduler("sd3").config.shift == 3.0
    dev = build_flow_scheduler("flux").config
    assert dev.use_dynamic_shifting and (dev.base_shift, dev.max_shift) == (0.5, 1.15)
    schnell = build_flow_scheduler("flux_schnell").config
    assert not schnell.use_dynamic_shifting and schnell.shift == 1.0
    with pytest.raises(ValueError):
        build_flow_scheduler("sdxl")
