"""SDXL checkpoints: layout, round trips, the ADM vector, the UNet on ``y``, prompt encodings,
diffusers folders and the pipelines that load them."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from comfyc.compiler.models.diffusers_folder import (  # noqa: E402
    load_diffusers_folder,
    write_diffusers_folder,
)
from comfyc.compiler.models.errors import ModelFormatError  # noqa: E402
from comfyc.compiler.models.sdxl import (  # noqa: E402
    SdxlUNet,
    adm_vector,
    adm_vector_numpy,
    clip_hidden_state,
    sdxl_unet_forward,
    size_embedding,
    text_conditioning,
)
from comfyc.compiler.models.single_file import (  # noqa: E402
    checkpoint_from_state_dict,
    diffusers_to_single_file,
    load_checkpoint,
    read_state_dict,
    save_single_file,
)

_BASE_IDS = {"height": 1024, "width": 768, "crop_h": 16, "crop_w": 8, "target_height": 1024,
             "target_width": 768}
_REFINER_IDS = {"height": 1024, "width": 768, "crop_h": 16, "crop_w": 8, "aesthetic_score": 6.0}


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub access: diffusers/transformers must only read local files."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _tokens(batch: int = 2, pad: int = 49407) -> torch.Tensor:
    ids = torch.full((batch, 77), pad)
    ids[:, 0] = 49406
    ids[0, 1:4] = torch.tensor([320, 1125, 539])
    ids[-1, 1:3] = torch.tensor([2368, 268])
    ids[0, 4] = ids[-1, 3] = 49407
    return ids


def test_sdxl_single_file_layout(small_sdxl, sdxl_file: Path) -> None:
    """Keys follow Stability's sgm layout: label_emb, conditioner.embedders.{0,1}, VAE."""
    state, metadata = read_state_dict(sdxl_file)
    width_g = small_sdxl.text_encoder_2.config.hidden_size
    assert state["model.diffusion_model.label_emb.0.0.weight"].shape[1] == 128 + 6 * 256
    assert "model.diffusion_model.label_emb.0.2.bias" in state
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.2.mlp.fc2.weight" in state
    assert "conditioner.embedders.0.transformer.text_model.embeddings.position_ids" in state
    fused = state["conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_weight"]
    assert fused.shape == (3 * width_g, width_g)
    projection = state["conditioner.embedders.1.model.text_projection"]
    assert torch.equal(projection, small_sdxl.text_encoder_2.text_projection.weight.t())
    assert "first_stage_model.decoder.up.3.block.0.conv1.weight" in state
    assert not any(k.startswith("cond_stage_model.") for k in state)
    assert metadata["comfyc.family"] == "sdxl"


@pytest.mark.parametrize("with_metadata", [True, False])
def test_sdxl_round_trip(small_sdxl, sdxl_file: Path, with_metadata: bool) -> None:
    """Single file -> modules gives identical weights, with or without comfyc's metadata."""
    state, metadata = read_state_dict(sdxl_file)
    loaded = checkpoint_from_state_dict(state, metadata if with_metadata else {})
    assert (loaded.family, loaded.prediction_type, loaded.variant) == ("sdxl", "epsilon", None)
    assert loaded.adm_in_channels == 128 + 6 * 256 and loaded.latent_scale == 0.13025
    assert loaded.vae.config.scaling_factor == 0.13025
    assert loaded.unet.config.addition_embed_type == "text_time"
    for a, b in ((small_sdxl.unet, loaded.unet), (small_sdxl.vae, loaded.vae),
                 (small_sdxl.text_encoder, loaded.text_encoder),
                 (small_sdxl.text_encoder_2, loaded.text_encoder_2)):
        _same_weights(a, b)
    assert type(loaded.text_encoder_2).__name__ == "CLIPTextModelWithProjection"


def test_sdxl_facts(sdxl_file: Path, refiner_file: Path) -> None:
    """Pad tokens, CLIP layers (penultimate, no final norm), ADM ids and encoder order."""
    base = load_checkpoint(sdxl_file)
    assert (base.clip_pad_token, base.default_clip_layer) == (49407, -2)
    assert (base.clip_pad_token_2, base.default_clip_layer_2) == (0, -2)
    assert base.clip_layer_norm is False and base.is_sdxl
    assert base.adm_ids == ("height", "width", "crop_h", "crop_w", "target_height",
                            "target_width")
    specs = base.text_encoders
    assert [(s.name, s.width, s.pad_token, s.default_layer, s.layer_norm_hidden_state, s.pooled)
            for s in specs] == [("clip_l", 64, 49407, -2, False, False),
                                ("clip_g", 128, 0, -2, False, True)]
    refiner = load_checkpoint(refiner_file)
    assert refiner.family == "sdxl_refiner" and refiner.text_encoder is None
    assert refiner.adm_ids == ("height", "width", "crop_h", "crop_w", "aesthetic_score")
    assert [s.name for s in refiner.text_encoders] == ["clip_g"]
    assert refiner.clip_pad_token == 0


def test_refiner_layout_and_round_trip(small_refiner, refiner_file: Path) -> None:
    """The refiner's bigG is conditioner.embedders.0.model; it loads back without metadata."""
    state, _ = read_state_dict(refiner_file)
    assert "conditioner.embedders.0.model.text_projection" in state
    assert not any(k.startswith("conditioner.embedders.1.") for k in state)
    loaded = checkpoint_from_state_dict(state, {})
    assert loaded.family == "sdxl_refiner" and loaded.adm_in_channels == 128 + 5 * 256
    _same_weights(small_refiner.unet, loaded.unet)
    _same_weights(small_refiner.text_encoder_2, loaded.text_encoder_2)


def test_size_embedding_is_comfyui_timestep_embedding() -> None:
    """E(v) = [cos(v f_i), sin(v f_i)], f_i = exp(-ln(10000) i / 128), cosines first."""
    values = torch.tensor([0.0, 1.0, 512.0, 1024.0])
    got = size_embedding(values).double()
    i = torch.arange(128, dtype=torch.float64)
    args = values.double()[:, None] * torch.exp(-math.log(10000) * i / 128)[None]
    assert torch.allclose(got, torch.cat([args.cos(), args.sin()], dim=-1), atol=2e-4)
    from diffusers.models.embeddings import Timesteps

    diffusers_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert torch.equal(size_embedding(values), diffusers_proj(values))


def test_adm_vector_layout_and_numpy_twin() -> None:
    """y = [pooled, E(h), E(w), E(crop_h), E(crop_w), E(target_h), E(target_w)]."""
    pooled = torch.randn(2, 1280, generator=torch.Generator().manual_seed(0))
    y = adm_vector(pooled, "sdxl", **_BASE_IDS)
    assert y.shape == (2, 2816)
    assert torch.equal(y[:, :1280], pooled)
    for index, name in enumerate(("height", "width", "crop_h", "crop_w", "target_height",
                                  "target_width")):
        chunk = y[0, 1280 + 256 * index: 1280 + 256 * (index + 1)]
        assert torch.equal(chunk, size_embedding(torch.tensor([float(_BASE_IDS[name])]))[0])
    refiner = adm_vector(pooled, "sdxl_refiner", **_REFINER_IDS)
    assert refiner.shape == (2, 2560)
    assert torch.equal(refiner[:, -256:], size_embedding(torch.tensor([6.0])).repeat(2, 1))
    twin = adm_vector_numpy(pooled.numpy(), "sdxl", **_BASE_IDS)
    assert twin.dtype.name == "float32"
    # NOTE: v * f reaches ~1e3 rad, whose float32 spacing is 1e-4: exp/cos rounding shows there.
    assert torch.allclose(torch.from_numpy(twin), y, atol=2e-4, rtol=0)
    with pytest.raises(ValueError, match="missing \\['aesthetic_score'\\]"):
        adm_vector(pooled, "sdxl_refiner", height=1, width=1, crop_h=0, crop_w=0)


@pytest.mark.parametrize("refiner", [False, True])
def test_unet_on_y_equals_diffusers_added_cond(small_sdxl, small_refiner, refiner: bool) -> None:
    """SdxlUNet(x, t, context, y) == UNet(..., added_cond_kwargs={text_embeds, time_ids}) bit
    for bit when y is built the ComfyUI way, with the time ids in diffusers' pipeline order."""
    from diffusers import (
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    model = small_refiner if refiner else small_sdxl
    unet = model.unet
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    pooled = torch.randn(2, 128, generator=generator)
    if refiner:
        pipe = StableDiffusionXLImg2ImgPipeline(
            vae=model.vae, text_encoder=None, text_encoder_2=model.text_encoder_2,
            tokenizer=None, tokenizer_2=None, unet=unet, scheduler=None,
            requires_aesthetics_score=True, add_watermarker=False)
        time_ids, _ = pipe._get_add_time_ids(
            (1024, 768), (16, 8), (1024, 768), 6.0, 2.5, (1024, 768), (16, 8), (1024, 768),
            torch.float32, text_encoder_projection_dim=128)
        y = adm_vector(pooled, "sdxl_refiner", **_REFINER_IDS)
    else:
        pipe = StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
            tokenizer=None, tokenizer_2=None, unet=unet, scheduler=None, add_watermarker=False)
        time_ids = pipe._get_add_time_ids((1024, 768), (16, 8), (1024, 768), torch.float32,
                                          text_encoder_projection_dim=128)
        y = adm_vector(pooled, "sdxl", **_BASE_IDS)
    t = torch.tensor([999, 10])
    with torch.no_grad():
        want = unet(x, t, context, added_cond_kwargs={
            "text_embeds": pooled, "time_ids": time_ids.repeat(2, 1)}).sample
        wrapper = SdxlUNet(unet)
        assert torch.equal(wrapper(x, t, context, y), want)
        assert torch.equal(sdxl_unet_forward(unet, x, t, context, y), want)
        # The ldm formula: emb = time_embed(t_emb) + label_emb(y), written out by hand.
        t_emb = unet.time_proj(t)
        emb = unet.time_embedding(t_emb) + unet.add_embedding(y)
        assert not torch.equal(emb, unet.time_embedding(t_emb))
    # Weights are shared, not copied; the original UNet keeps its add_time_proj.
    assert wrapper.unet.conv_in.weight is unet.conv_in.weight
    assert type(unet.add_time_proj).__name__ == "Timesteps"
    assert set(wrapper.state_dict()) == {"unet." + k for k in unet.state_dict()}
    with pytest.raises(ValueError, match="y has width"):
        wrapper(x, t, context, y[:, :-1])


def test_wrapper_refuses_sd_unets(small_sd1) -> None:
    """SdxlUNet needs a text_time UNet."""
    with pytest.raises(ModelFormatError, match="expected an SDXL UNet"):
        SdxlUNet(small_sd1.unet)


def test_text_conditioning_matches_diffusers_encode_prompt(sdxl_file: Path, offline) -> None:
    """ComfyUI's SDXL encoding (penultimate, no final norm, l+g concat, bigG projected pooled)
    equals diffusers' StableDiffusionXLPipeline.encode_prompt on the same tokens."""
    from diffusers import StableDiffusionXLPipeline

    from comfyc.compiler.models.diffusers_folder import build_tokenizer

    loaded = load_checkpoint(sdxl_file)
    pipe = StableDiffusionXLPipeline(
        vae=loaded.vae, text_encoder=loaded.text_encoder, text_encoder_2=loaded.text_encoder_2,
        tokenizer=build_tokenizer(pad_token=49407), tokenizer_2=build_tokenizer(pad_token=0),
        unet=loaded.unet, scheduler=None, add_watermarker=False)
    prompt = "a photo of a cat"
    tokens = {
        "clip_l": torch.tensor([pipe.tokenizer(prompt, padding="max_length").input_ids]),
        "clip_g": torch.tensor([pipe.tokenizer_2(prompt, padding="max_length").input_ids]),
    }
    assert tokens["clip_g"][0, -1] == 0 and tokens["clip_l"][0, -1] == 49407
    with torch.no_grad():
        embeds, _, pooled_want, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
    context, pooled = text_conditioning(loaded, tokens)
    assert context.shape == (1, 77, 64 + 128)
    assert torch.allclose(context, embeds, atol=1e-6)
    assert torch.allclose(pooled, pooled_want, atol=1e-6)


def test_clip_layer_semantics(sdxl_file: Path, sd1_file: Path) -> None:
    """SDXL: layer -n is hidden_states[-n] without the final norm (even -1); SD1: with it."""
    loaded = load_checkpoint(sdxl_file)
    ids = _tokens(1)
    text = loaded.text_encoder_2
    with torch.no_grad():
        out = text(ids, output_hidden_states=True)
        last, pooled = clip_hidden_state(text, ids, -1, False)
        assert torch.equal(last, out.hidden_states[-1])
        assert not torch.allclose(last, out.last_hidden_state)
        assert torch.equal(pooled, out.text_embeds)
        assert torch.equal(clip_hidden_state(text, ids, -99, False)[0], out.last_hidden_state)
        assert torch.equal(clip_hidden_state(text, ids, 0, False)[0], out.hidden_states[1])
        context, pooled_2 = text_conditioning(loaded, ids, clip_layer=-3)
        assert torch.equal(context[..., 64:], out.hidden_states[-3])
        assert torch.equal(pooled_2, out.text_embeds)  # the pooled output ignores the layer
        sd1 = load_checkpoint(sd1_file)
        sd1_out = sd1.text_encoder(ids, output_hidden_states=True)
        final_norm = getattr(sd1.text_encoder, "text_model", sd1.text_encoder).final_layer_norm
        context, pooled_sd1 = text_conditioning(sd1, ids, clip_layer=-2)
        assert torch.equal(context, final_norm(sd1_out.hidden_states[-2]))
        assert pooled_sd1 is None
        assert torch.equal(text_conditioning(sd1, ids)[0], sd1_out.last_hidden_state)


def test_sdxl_folder_loads_in_diffusers(small_sdxl, sdxl_file: Path, tmp_path: Path,
                                        offline) -> None:
    """write_diffusers_folder -> StableDiffusionXLPipeline.from_pretrained offline, same weights,
    Euler scheduler, both tokenizers from the packaged vocabulary; it generates an image."""
    import json

    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    folder = write_diffusers_folder(load_checkpoint(sdxl_file), tmp_path / "sdxl-diffusers")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True)
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert pipe.scheduler.config.timestep_spacing == "leading"
    assert (pipe.tokenizer.pad_token_id, pipe.tokenizer_2.pad_token_id) == (49407, 0)
    assert pipe.tokenizer_2("a cat").input_ids == [49406, 320, 2368, 49407]
    for ours, theirs in ((small_sdxl.unet, pipe.unet), (small_sdxl.text_encoder,
                                                          pipe.text_encoder),
                         (small_sdxl.text_encoder_2, pipe.text_encoder_2),
                         (small_sdxl.vae, pipe.vae)):
        _same_weights(ours, theirs)
    image = pipe("a cat", num_inference_steps=1, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3)
    back = load_diffusers_folder(folder)
    assert (back.family, back.default_clip_layer, back.clip_layer_norm) == ("sdxl", -2, False)
    assert back.latent_scale == 0.13025 and back.adm_in_channels == 128 + 6 * 256


def test_refiner_folder_loads_in_img2img_pipeline(small_refiner, refiner_file: Path,
                                                  tmp_path: Path, offline) -> None:
    """The refiner folder has bigG only and requires_aesthetics_score, like the published one."""
    import json

    import numpy as np
    from diffusers import StableDiffusionXLImg2ImgPipeline

    folder = write_diffusers_folder(load_checkpoint(refiner_file), tmp_path / "refiner")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_encoder"] == [None, None] and index["requires_aesthetics_score"] is True
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(str(folder), local_files_only=True)
    assert pipe.text_encoder is None
    _same_weights(small_refiner.text_encoder_2, pipe.text_encoder_2)
    image = np.full((1, 64, 64, 3), 0.5, dtype=np.float32)
    out = pipe("a cat", image=image, strength=0.5, num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 64, 64, 3)
    back = load_diffusers_folder(folder)
    assert back.family == "sdxl_refiner" and back.text_encoder is None


def test_turbo_variant(small_sdxl, tmp_path: Path, offline) -> None:
    """Turbo is SDXL's architecture; metadata marks it; its folder uses Euler a, trailing."""
    from diffusers import EulerAncestralDiscreteScheduler

    path = save_single_file(tmp_path / "turbo.safetensors", small_sdxl.unet, small_sdxl.vae,
                            small_sdxl.text_encoder, text_encoder_2=small_sdxl.text_encoder_2,
                            variant="turbo")
    loaded = load_checkpoint(path)
    assert (loaded.family, loaded.variant) == ("sdxl", "turbo")
    state, _ = read_state_dict(path)
    # ComfyUI does not tell Turbo apart; neither do the shapes, only metadata does.
    assert checkpoint_from_state_dict(state, {}).variant is None
    spec = checkpoint_from_state_dict(state, {"modelspec.title": "SDXL Turbo"})
    assert spec.variant == "turbo" and spec.unet.config.sample_size == 64
    folder = write_diffusers_folder(loaded, tmp_path / "turbo")
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True)
    assert isinstance(pipe.scheduler, EulerAncestralDiscreteScheduler)
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    assert load_diffusers_folder(folder).variant == "turbo"


def test_sdxl_prediction_type_keys(small_sdxl) -> None:
    """ComfyUI's SDXL.model_type: a top-level v_pred key means v-prediction; EDM is refused."""
    state = diffusers_to_single_file(small_sdxl.unet, None, small_sdxl.text_encoder,
                                     text_encoder_2=small_sdxl.text_encoder_2)
    assert checkpoint_from_state_dict(state, {}).prediction_type == "epsilon"
    marked = {**state, "v_pred": torch.tensor([])}
    assert checkpoint_from_state_dict(marked, {}).prediction_type == "v_prediction"
    with pytest.raises(ModelFormatError, match="EDM"):
        checkpoint_from_state_dict({**state, "edm_mean": torch.zeros(1, 4, 1, 1),
                                    "edm_std": torch.ones(1, 4, 1, 1)}, {})


def test_fp16_sdxl_file_and_cli_info(small_sdxl, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """fp16 files load as float32; `comfyc model info` describes both encoders and the ADM."""
    import argparse

    from comfyc.cli.commands import model as cli

    path = save_single_file(tmp_path / "half.safetensors", small_sdxl.unet, small_sdxl.vae,
                            small_sdxl.text_encoder, torch.float16,
                            text_encoder_2=small_sdxl.text_encoder_2)
    loaded = load_checkpoint(path)
    want = small_sdxl.text_encoder_2.text_projection.weight.half().float()
    assert torch.equal(loaded.text_encoder_2.text_projection.weight, want)
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    assert cli.run(parser.parse_args(["model", "info", str(path)])) == 0
    text = capsys.readouterr().out
    assert "family:           sdxl" in text and "ADM input:        1664" in text
    assert "text encoder clip_g: width 128" in text and "pooled output" in text


def test_sdxl_errors_say_what_was_found(small_sdxl, small_sd1, tmp_path: Path) -> None:
    """Mixed layouts, inconsistent metadata and truncated files give ModelFormatError."""
    state = diffusers_to_single_file(small_sdxl.unet, None, small_sdxl.text_encoder,
                                     text_encoder_2=small_sdxl.text_encoder_2)
    with pytest.raises(ModelFormatError, match="says 'sd1'.*has an ADM input"):
        checkpoint_from_state_dict(state, {"comfyc.family": "sd1"})
    sd1 = diffusers_to_single_file(small_sd1.unet, None, small_sd1.text_encoder)
    clip_g = {k: v for k, v in state.items() if k.startswith("conditioner.")}
    with pytest.raises(ModelFormatError, match="conditioner.embedders.*no ADM input"):
        checkpoint_from_state_dict({**sd1, **clip_g}, {})
    no_projection = {k: v for k, v in state.items() if not k.endswith("text_projection")}
    with pytest.raises(ModelFormatError, match="no text_projection"):
        checkpoint_from_state_dict(no_projection, {})
    sd1_clip = diffusers_to_single_file(small_sdxl.unet, None, None)
    sd1_clip.update({k: v for k, v in sd1.items() if k.startswith("cond_stage_model.")})
    with pytest.raises(ModelFormatError, match="cond_stage_model.*conditioner.embedders"):
        checkpoint_from_state_dict(sd1_clip, {})
    path = save_single_file(tmp_path / "whole.safetensors", small_sdxl.unet, None, None)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_checkpoint(truncated)


def test_merge_into_copy_keeps_wrapper_in_sync(small_sdxl) -> None:
    """Weights changed in place after wrapping are seen by the wrapper (shared tensors)."""
    unet = copy.deepcopy(small_sdxl.unet)
    wrapper = SdxlUNet(unet)
    with torch.no_grad():
        unet.add_embedding.linear_1.weight.mul_(2)
    assert wrapper.unet.add_embedding.linear_1.weight is unet.add_embedding.linear_1.weight


@pytest.mark.parametrize(("marker", "name"), [
    ("joint_blocks.0.context_block.attn.qkv.weight", "Stable Diffusion 3"),
    ("double_blocks.0.img_attn.norm.key_norm.scale", "Flux"),
])
def test_other_architectures_are_named(marker: str, name: str) -> None:
    """A DiT checkpoint in the same wrapper says what it is and which loader reads it."""
    state = {f"model.diffusion_model.{marker}": torch.empty(4, device="meta"),
             "first_stage_model.encoder.conv_in.weight": torch.empty(1, device="meta")}
    with pytest.raises(ModelFormatError,
                       match=f"{name}.*reads SD1.x, SD2.x and SDXL.*load_flow_checkpoint"):
        checkpoint_from_state_dict(state)
    with pytest.raises(ModelFormatError, match="no weight 'input_blocks.0.0.weight'.*SDXL"):
        checkpoint_from_state_dict({"model.diffusion_model.something.weight": torch.empty(1)})


def test_cli_converts_sdxl_both_ways(small_sdxl, sdxl_file: Path, tmp_path: Path,
                                     offline) -> None:
    """`comfyc model convert` takes SDXL to a diffusers folder and back to a single file."""
    import argparse

    from comfyc.cli.commands import model as cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    folder = tmp_path / "xl"
    assert cli.run(parser.parse_args(["model", "convert", str(sdxl_file), "--to", "diffusers",
                                      "-o", str(folder)])) == 0
    single = tmp_path / "back.safetensors"
    assert cli.run(parser.parse_args(["model", "convert", str(folder), "--to", "single-file",
                                      "-o", str(single)])) == 0
    back = load_checkpoint(single)
    assert back.family == "sdxl"
    _same_weights(small_sdxl.text_encoder_2, back.text_encoder_2)
    _same_weights(small_sdxl.unet, back.unet)
