"""Single-file round trips, safe pickle loading and separate VAE files."""
from __future__ import annotations

import os
import pickle
import sys
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from comfyc.compiler.models.errors import ModelFormatError  # noqa: E402
from comfyc.compiler.models.single_file import (  # noqa: E402
    CONFIG_METADATA_KEY,
    checkpoint_from_state_dict,
    diffusers_to_single_file,
    load_checkpoint,
    load_vae,
    read_state_dict,
    save_single_file,
)


def _same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def _same_outputs(model, loaded) -> None:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, model.width, generator=generator)
    ids = torch.randint(0, 49406, (1, 77), generator=generator)
    with torch.no_grad():
        assert torch.equal(model.unet(latents, 10, context).sample,
                           loaded.unet(latents, 10, context).sample)
        assert torch.equal(model.vae.decode(latents).sample, loaded.vae.decode(latents).sample)
        assert torch.equal(model.text_encoder(ids).last_hidden_state,
                           loaded.text_encoder(ids).last_hidden_state)


def test_sd1_round_trip(small_sd1, sd1_file: Path) -> None:
    """diffusers -> single file -> load gives identical tensors and identical outputs."""
    state, metadata = read_state_dict(sd1_file)
    assert any(k.startswith("model.diffusion_model.") for k in state)
    assert any(k.startswith("first_stage_model.") for k in state)
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in state
    assert CONFIG_METADATA_KEY in metadata
    loaded = load_checkpoint(sd1_file)
    assert loaded.source == sd1_file and loaded.family == "sd1"
    for a, b in ((small_sd1.unet, loaded.unet), (small_sd1.vae, loaded.vae),
                 (small_sd1.text_encoder, loaded.text_encoder)):
        _same_weights(a, b)
    _same_outputs(small_sd1, loaded)


def test_sd1_round_trip_without_metadata(small_sd1, sd1_file: Path) -> None:
    """Shape inference alone rebuilds the model when it follows the SD1 conventions."""
    state, _ = read_state_dict(sd1_file)
    loaded = checkpoint_from_state_dict(state, {})
    _same_weights(small_sd1.unet, loaded.unet)
    _same_outputs(small_sd1, loaded)


def test_sd2_round_trip(small_sd2, tmp_path: Path) -> None:
    """An SD2-style model goes through the OpenCLIP layout and back unchanged."""
    path = save_single_file(tmp_path / "sd2.safetensors", small_sd2.unet, small_sd2.vae,
                            small_sd2.text_encoder, prediction_type="v_prediction")
    state, _ = read_state_dict(path)
    assert any(k.startswith("cond_stage_model.model.transformer.resblocks.") for k in state)
    for metadata in (None, {}):
        loaded = (load_checkpoint(path) if metadata is None
                  else checkpoint_from_state_dict(state, metadata, prediction_type="v_prediction"))
        assert (loaded.family, loaded.prediction_type) == ("sd2", "v_prediction")
        assert (loaded.clip_pad_token, loaded.default_clip_layer) == (0, -2)
        _same_weights(small_sd2.unet, loaded.unet)
        _same_weights(small_sd2.text_encoder, loaded.text_encoder)
        _same_outputs(small_sd2, loaded)


def test_unconventional_model_needs_metadata(tmp_path: Path) -> None:
    """Heads and norm groups outside the SD conventions survive through comfyc.config."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(3)
    unet = UNet2DConditionModel(
        sample_size=8, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                        norm_num_groups=8, latent_channels=4)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4))
    path = save_single_file(tmp_path / "tiny.safetensors", unet, vae, text, torch.float16)
    loaded = load_checkpoint(path, dtype=None)
    assert loaded.unet.config.attention_head_dim == 4
    assert loaded.vae.config.norm_num_groups == 8
    assert loaded.text_encoder.config.num_attention_heads == 4
    assert loaded.unet.dtype == torch.float16
    assert torch.equal(loaded.unet.conv_in.weight, unet.conv_in.weight.half())


def test_fp16_file_loads_as_float32(small_sd1, tmp_path: Path) -> None:
    """dtype casts on save and on load; position_ids stays int64."""
    path = save_single_file(tmp_path / "half.safetensors", small_sd1.unet, small_sd1.vae,
                            small_sd1.text_encoder, torch.float16)
    state, _ = read_state_dict(path)
    assert state["model.diffusion_model.input_blocks.0.0.weight"].dtype == torch.float16
    assert state["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == (
        torch.int64)
    loaded = load_checkpoint(path)
    assert loaded.unet.dtype == torch.float32
    expected = small_sd1.unet.conv_in.weight.half().float()
    assert torch.equal(loaded.unet.conv_in.weight, expected)


def test_safe_ckpt_with_lightning_wrapper(small_sd1, tmp_path: Path) -> None:
    """A .ckpt with {"state_dict": ..., "global_step": ...} loads via weights_only."""
    state = diffusers_to_single_file(small_sd1.unet, small_sd1.vae, small_sd1.text_encoder)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "global_step": 470000, "epoch": 6}, path)
    loaded = load_checkpoint(path)
    _same_weights(small_sd1.unet, loaded.unet)


def test_lightning_callback_state_is_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Original SD .ckpt files pickle a Lightning ModelCheckpoint; its state is read as data."""
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self) -> None:
            self.best_model_score = 0.5

    ModelCheckpoint.__module__ = module.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint  # type: ignore[attr-defined]
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name) if name != module.__name__
                            else module)
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": {"cb": ModelCheckpoint()}}, path)
    monkeypatch.delitem(sys.modules, module.__name__)
    state, metadata = read_state_dict(path)
    assert list(state) == ["w"] and metadata == {}


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    """A pickle that would run code is refused, with a clear message, and never executed."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": {"w": torch.ones(1)}, "x": _Exploit(str(marker))}, handle,
                    protocol=2)
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": _Exploit(str(marker))}, tmp_path / "e.pt")
    for bad in (path, tmp_path / "e.pt"):
        with pytest.raises(ModelFormatError, match="refusing to load.*GLOBAL.*safetensors"):
            load_checkpoint(bad)
    assert not marker.exists()


def test_numpy_scalars_in_ckpt_are_data(tmp_path: Path) -> None:
    """Lightning stores numpy scalars (global_step, metrics); they are inert and allowed."""
    import numpy as np

    path = tmp_path / "np.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": np.int64(5),
                "score": np.float64(0.5)}, path)
    state, _ = read_state_dict(path)
    assert list(state) == ["w"]
    torch.save({"state_dict": {"w": torch.ones(2)}, "array": np.zeros(3)}, path)
    with pytest.raises(ModelFormatError, match="refusing.*_reconstruct"):
        read_state_dict(path)


@pytest.mark.parametrize("name", ["model.pkl", "model.gguf", "model"])
def test_unsupported_extensions_are_refused(tmp_path: Path, name: str) -> None:
    """Other file types are refused with the list of supported ones."""
    path = tmp_path / name
    path.write_bytes(b"\x80\x04N.")
    with pytest.raises(ModelFormatError, match="unsupported model file type.*safetensors"):
        load_checkpoint(path)


def test_missing_and_truncated_files(tmp_path: Path) -> None:
    """Missing or broken files give a readable error."""
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ModelFormatError, match="cannot read"):
        load_checkpoint(broken)


def test_weights_that_do_not_fit_are_reported(small_sd1) -> None:
    """A damaged state dict names the missing weights."""
    state = diffusers_to_single_file(small_sd1.unet, small_sd1.vae, small_sd1.text_encoder)
    del state["model.diffusion_model.middle_block.1.proj_out.weight"]
    with pytest.raises(ModelFormatError, match="missing.*mid_block.attentions.0.proj_out.weight"):
        checkpoint_from_state_dict(state, {})


def test_separate_vae_files(small_sd1, tmp_path: Path) -> None:
    """A VAE file with LDM names, with diffusers names, or with old attention names loads."""
    from safetensors.torch import save_file

    full = diffusers_to_single_file(small_sd1.unet, small_sd1.vae, None)
    ldm = {k[len("first_stage_model."):]: v for k, v in full.items()
           if k.startswith("first_stage_model.")}
    ldm["loss.logvar"] = torch.zeros(())
    save_file(ldm, tmp_path / "vae-ldm.safetensors")
    torch.save({"state_dict": ldm}, tmp_path / "vae-ldm.pt")
    diffusers = {k: v.clone() for k, v in small_sd1.vae.state_dict().items()}
    save_file(diffusers, tmp_path / "vae-diffusers.safetensors")
    old = {k.replace("to_q.", "query.").replace("to_k.", "key.").replace("to_v.", "value.")
           .replace("to_out.0.", "proj_attn."): v for k, v in diffusers.items()}
    save_file(old, tmp_path / "vae-old.safetensors")
    for name in ("vae-ldm.safetensors", "vae-ldm.pt", "vae-diffusers.safetensors",
                 "vae-old.safetensors"):
        _same_weights(small_sd1.vae, load_vae(tmp_path / name))
    small_sd1.vae.save_pretrained(tmp_path / "vae-folder")
    _same_weights(small_sd1.vae, load_vae(tmp_path / "vae-folder"))


def test_vae_from_full_checkpoint(small_sd1, sd1_file: Path) -> None:
    """load_vae on a full checkpoint takes its first_stage_model part."""
    _same_weights(small_sd1.vae, load_vae(sd1_file))


def test_checkpoint_without_vae_and_clip(small_sd1) -> None:
    """A UNet-only single file loads with vae/text_encoder None."""
    state = diffusers_to_single_file(small_sd1.unet, None, None)
    loaded = checkpoint_from_state_dict(state)
    assert loaded.vae is None and loaded.text_encoder is None


def test_old_transformers_clip_names(small_sd1) -> None:
    """SD1 files without the text_model level (transformers < 4.19) load too."""
    state = diffusers_to_single_file(small_sd1.unet, small_sd1.vae, small_sd1.text_encoder)
    prefix = "cond_stage_model.transformer.text_model."
    state = {("cond_stage_model.transformer." + k[len(prefix):] if k.startswith(prefix) else k): v
             for k, v in state.items()}
    loaded = checkpoint_from_state_dict(state, {})
    _same_weights(small_sd1.text_encoder, loaded.text_encoder)
