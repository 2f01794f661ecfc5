"""Shape inference recovers the real SD1.5, SD2.1-768, SDXL base/refiner/Turbo configs (meta
device, no weights)."""
from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from comfyc.compiler.models.configs import infer_unet_config  # noqa: E402
from comfyc.compiler.models.errors import ModelFormatError  # noqa: E402
from comfyc.compiler.models.keymap import (  # noqa: E402
    clip_hf_to_openclip,
    clip_openclip_to_hf,
    unet_diffusers_to_ldm_map,
    vae_diffusers_to_ldm_map,
)
from comfyc.compiler.models.single_file import (  # noqa: E402
    checkpoint_from_state_dict,
    detect_prediction_type,
    diffusers_to_single_file,
)

# The published diffusers configs of runwayml/stable-diffusion-v1-5 and
# stabilityai/stable-diffusion-2-1 (768-v), reduced to the fields that define the architecture.
SD15_UNET = {
    "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 768, "attention_head_dim": 8, "use_linear_projection": False,
    "norm_num_groups": 32, "sample_size": 64,
}
SD21_UNET = {
    **SD15_UNET, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True, "sample_size": 96, "upcast_attention": True,
}
SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD15_CLIP = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
}
# OpenCLIP ViT-H/14 text tower as stored in SD2 single files: all 24 layers.
SD21_CLIP = {
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
}


def _meta_modules(unet_cfg: dict, clip_cfg: dict) -> tuple[Any, Any, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**SD_VAE)
        text = CLIPTextModel(CLIPTextConfig(**clip_cfg))
    return unet, vae, text


def _assert_config(module: Any, expected: dict) -> None:
    for key, value in expected.items():
        got = module.config[key] if hasattr(module.config, "__getitem__") else getattr(
            module.config, key)
        got = list(got) if isinstance(got, tuple) else got
        assert got == value, f"{key}: {got} != {value}"


def _assert_clip(module: Any, expected: dict) -> None:
    for key, value in expected.items():
        assert getattr(module.config, key) == value, key


def test_sd15_architecture_from_shapes() -> None:
    """SD1.5: diffusers modules -> single-file keys -> inferred modules with the same config."""
    unet, vae, text = _meta_modules(SD15_UNET, SD15_CLIP)
    state = diffusers_to_single_file(unet, vae, text)
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in state
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in state
    assert "first_stage_model.decoder.up.3.block.0.conv1.weight" in state
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight" in state
    loaded = checkpoint_from_state_dict(state)
    _assert_config(loaded.unet, SD15_UNET)
    _assert_config(loaded.vae, SD_VAE)
    _assert_clip(loaded.text_encoder, SD15_CLIP)
    assert (loaded.family, loaded.prediction_type) == ("sd1", "epsilon")
    assert (loaded.clip_pad_token, loaded.default_clip_layer) == (49407, -1)
    assert loaded.in_channels == 4 and not loaded.is_inpainting
    assert loaded.latent_scale == 0.18215
    assert loaded.vae.config.scaling_factor == 0.18215


def test_sd21_architecture_from_shapes() -> None:
    """SD2.1-768: linear projections, 64-channel heads, OpenCLIP text encoder with q/k/v fused."""
    unet, vae, text = _meta_modules(SD21_UNET, SD21_CLIP)
    state = diffusers_to_single_file(unet, vae, text)
    assert "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight" in state
    assert state["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (
        3072, 1024)
    assert not any(k.startswith("cond_stage_model.transformer.") for k in state)
    loaded = checkpoint_from_state_dict(state, prediction_type="v_prediction")
    _assert_config(loaded.unet, SD21_UNET)
    _assert_config(loaded.vae, SD_VAE)
    _assert_clip(loaded.text_encoder, SD21_CLIP)
    assert (loaded.family, loaded.prediction_type) == ("sd2", "v_prediction")
    assert (loaded.clip_pad_token, loaded.default_clip_layer) == (0, -2)


def test_inpainting_in_channels() -> None:
    """A 9-channel UNet (SD1.5 inpainting) is recognised."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**{**SD15_UNET, "in_channels": 9})
    loaded = checkpoint_from_state_dict(diffusers_to_single_file(unet, None, None))
    assert loaded.in_channels == 9 and loaded.is_inpainting
    assert loaded.unet.config.out_channels == 4


def test_v_prediction_heuristic() -> None:
    """ComfyUI's rule: SD2, 4 input channels, std(norm1.bias of output block 11) > 0.09."""
    key = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    wide = {key: torch.linspace(-0.5, 0.5, 320)}
    narrow = {key: torch.linspace(-0.05, 0.05, 320)}
    assert detect_prediction_type(wide, "sd2", 4) == "v_prediction"
    assert detect_prediction_type(narrow, "sd2", 4) == "epsilon"
    assert detect_prediction_type(wide, "sd2", 9) == "epsilon"
    assert detect_prediction_type(wide, "sd1", 4) == "epsilon"
    assert detect_prediction_type({}, "sd2", 4) == "epsilon"


def test_openclip_round_trip() -> None:
    """OpenCLIP <-> transformers conversion splits and re-fuses q/k/v exactly."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=1, hidden_act="gelu"))
    from comfyc.compiler.models.single_file import canonical_text_encoder_state

    hf = canonical_text_encoder_state(text)
    projection = torch.randn(64, 32)
    openclip = clip_hf_to_openclip(hf, projection)
    assert openclip["transformer.resblocks.1.attn.in_proj_bias"].shape == (192,)
    back, back_projection = clip_openclip_to_hf(openclip)
    assert back_projection is projection
    assert set(back) == {k for k in hf if not k.endswith("position_ids")}
    assert all(torch.equal(back[k], hf[k]) for k in back)


def test_key_maps_are_bijective() -> None:
    """Every diffusers weight maps to a distinct original name."""
    unet, vae, _ = _meta_modules(SD15_UNET, SD15_CLIP)
    for mapping in (unet_diffusers_to_ldm_map(unet.state_dict()),
                    vae_diffusers_to_ldm_map(vae.state_dict())):
        assert len(set(mapping.values())) == len(mapping)


def test_unsupported_unet_keys_are_named() -> None:
    """A weight outside the SD1/SD2/SDXL layout (e.g. a class embedding) is a clear error."""
    with pytest.raises(ModelFormatError, match="class_embedding.linear_1.weight"):
        unet_diffusers_to_ldm_map(["down_blocks.0.resnets.0.conv1.weight",
                                   "class_embedding.linear_1.weight"])
    mapping = unet_diffusers_to_ldm_map(["down_blocks.0.resnets.0.conv1.weight",
                                         "add_embedding.linear_2.bias"])
    assert mapping["add_embedding.linear_2.bias"] == "label_emb.0.2.bias"


def test_not_a_unet_is_a_clear_error() -> None:
    """Inference on something that is not an SD UNet says what was expected."""
    with pytest.raises(ModelFormatError, match="SD1.x/SD2.x"):
        infer_unet_config({"foo.weight": torch.empty(1)})
    with pytest.raises(ModelFormatError, match="no UNet weights.*found top-level names"):
        checkpoint_from_state_dict({"encoder.conv_in.weight": torch.empty(1)})


def test_class_conditioned_unets_are_named() -> None:
    """A class-label UNet, or an ADM UNet whose widths are not SDXL's, is refused clearly."""
    unet, _, _ = _meta_modules(SD15_UNET, SD15_CLIP)
    state = diffusers_to_single_file(unet, None, None)
    with pytest.raises(ModelFormatError, match="class-label embedding"):
        checkpoint_from_state_dict({**state, "model.diffusion_model.label_emb.0.weight":
                                    torch.empty(10, 1280, device="meta")})
    # An SD2 unCLIP-like ADM (1536 wide, context 768): neither SDXL nor the refiner.
    adm = {"model.diffusion_model.label_emb.0.0.weight": torch.empty(1280, 1536, device="meta"),
           "model.diffusion_model.label_emb.0.2.weight": torch.empty(1280, 1280, device="meta")}
    with pytest.raises(ModelFormatError, match="ADM vector of width 1536.*expected SDXL"):
        checkpoint_from_state_dict({**state, **adm})


# The published diffusers configs of stabilityai/stable-diffusion-xl-base-1.0,
# stable-diffusion-xl-refiner-1.0 and sdxl-turbo (unet/, vae/, text_encoder/, text_encoder_2/),
# reduced to the fields that define the architecture.
SDXL_UNET = {
    "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048, "use_linear_projection": True, "norm_num_groups": 32,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
    "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "norm_eps": 1e-05,
}
SDXL_REFINER_UNET = {
    **SDXL_UNET, "block_out_channels": [384, 768, 1536, 1536],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": 4, "attention_head_dim": [6, 12, 24, 24],
    "cross_attention_dim": 1280, "projection_class_embeddings_input_dim": 2560,
}
SDXL_TURBO_UNET = {**SDXL_UNET, "sample_size": 64}
SDXL_VAE = {**SD_VAE, "scaling_factor": 0.13025, "sample_size": 1024, "force_upcast": True}
SDXL_CLIP_L = SD15_CLIP
SDXL_CLIP_G = {
    "vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
    "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu",
    "projection_dim": 1280,
}


def _meta_sdxl(unet_cfg: dict, with_clip_l: bool = True) -> tuple[Any, Any, Any, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**{k: v for k, v in SDXL_VAE.items() if k != "sample_size"})
        text = CLIPTextModel(CLIPTextConfig(**SDXL_CLIP_L)) if with_clip_l else None
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_CLIP_G))
    return unet, vae, text, text_2


def _comfy_depths(state: dict, prefix: str = "model.diffusion_model.") -> tuple[list, list, int]:
    """ComfyUI's transformer_depth / transformer_depth_output / middle depth from the keys."""
    def depth(block: str) -> int:
        head = f"{prefix}{block}.1.transformer_blocks."
        return len({k[len(head):].split(".")[0] for k in state if k.startswith(head)})

    inputs = sorted({int(k.split(".")[3]) for k in state if k.startswith(prefix + "input_blocks.")})
    outputs = sorted({int(k.split(".")[3]) for k in state
                      if k.startswith(prefix + "output_blocks.")})
    down = [depth(f"input_blocks.{i}") for i in inputs
            if f"{prefix}input_blocks.{i}.0.in_layers.0.weight" in state]
    # NOTE: ComfyUI walks the output blocks from the last one (mirroring the input blocks).
    up = [depth(f"output_blocks.{i}") for i in reversed(outputs)]
    return down, up, depth("middle_block")


def test_sdxl_base_architecture_from_shapes() -> None:
    """SDXL base 1.0: ldm key table -> the published UNet, VAE, CLIP-L and bigG configs; the
    depths are ComfyUI's supported_models.SDXL ones."""
    unet, vae, text, text_2 = _meta_sdxl(SDXL_UNET)
    state = diffusers_to_single_file(unet, vae, text, text_encoder_2=text_2)
    assert state["model.diffusion_model.label_emb.0.0.weight"].shape == (1280, 2816)
    assert state["model.diffusion_model.label_emb.0.2.weight"].shape == (1280, 1280)
    assert state["model.diffusion_model.input_blocks.0.0.weight"].shape == (320, 4, 3, 3)
    assert "model.diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_k.weight" in state
    assert state["conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"
                 ].shape == (3840, 1280)
    assert state["conditioner.embedders.1.model.text_projection"].shape == (1280, 1280)
    assert state["conditioner.embedders.1.model.positional_embedding"].shape == (77, 1280)
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight" in (
        state)
    assert _comfy_depths(state) == ([0, 0, 2, 2, 10, 10], [0, 0, 0, 2, 2, 2, 10, 10, 10], 10)
    loaded = checkpoint_from_state_dict(state)
    _assert_config(loaded.unet, SDXL_UNET)
    _assert_config(loaded.vae, SDXL_VAE)
    _assert_clip(loaded.text_encoder, SDXL_CLIP_L)
    _assert_clip(loaded.text_encoder_2, SDXL_CLIP_G)
    assert (loaded.family, loaded.prediction_type, loaded.adm_in_channels) == (
        "sdxl", "epsilon", 2816)
    assert loaded.latent_scale == 0.13025 and loaded.variant is None
    unet_params = sum(p.numel() for p in loaded.unet.parameters())
    assert 2.55e9 < unet_params < 2.58e9  # "2.6B"
    g_params = sum(p.numel() for p in loaded.text_encoder_2.parameters())
    assert 6.9e8 < g_params < 7.0e8


def test_sdxl_refiner_architecture_from_shapes() -> None:
    """SDXL refiner 1.0: bigG only as embedders.0, context 1280, ADM 2560, depth 4."""
    unet, vae, _, text_2 = _meta_sdxl(SDXL_REFINER_UNET, with_clip_l=False)
    state = diffusers_to_single_file(unet, vae, None, text_encoder_2=text_2)
    assert state["model.diffusion_model.label_emb.0.0.weight"].shape == (1536, 2560)
    assert "conditioner.embedders.0.model.transformer.resblocks.31.ln_2.weight" in state
    assert not any(k.startswith("conditioner.embedders.1.") for k in state)
    assert _comfy_depths(state) == ([0, 0, 4, 4, 4, 4, 0, 0], [0, 0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0],
                                    4)
    loaded = checkpoint_from_state_dict(state)
    _assert_config(loaded.unet, SDXL_REFINER_UNET)
    _assert_config(loaded.vae, SDXL_VAE)
    _assert_clip(loaded.text_encoder_2, SDXL_CLIP_G)
    assert loaded.text_encoder is None
    assert (loaded.family, loaded.adm_in_channels, loaded.clip_pad_token) == (
        "sdxl_refiner", 2560, 0)


def test_sdxl_turbo_is_sdxl_base() -> None:
    """SDXL-Turbo has the base architecture; ComfyUI loads it as SDXL. Its model-spec metadata
    makes comfyc say variant="turbo" (and the published 512 px sample size)."""
    unet, vae, text, text_2 = _meta_sdxl(SDXL_TURBO_UNET)
    state = diffusers_to_single_file(unet, vae, text, text_encoder_2=text_2)
    base = checkpoint_from_state_dict(state)
    assert base.family == "sdxl" and base.variant is None
    loaded = checkpoint_from_state_dict(state, {"modelspec.title": "SDXL Turbo"})
    _assert_config(loaded.unet, SDXL_TURBO_UNET)
    assert (loaded.family, loaded.variant) == ("sdxl", "turbo")


@pytest.mark.parametrize(("family", "unet_cfg", "clips"), [
    ("sd15", SD15_UNET, {"text_encoder": SD15_CLIP}),
    ("sdxl", SDXL_UNET, {"text_encoder": SDXL_CLIP_L, "text_encoder_2": SDXL_CLIP_G}),
    ("sdxl_refiner", SDXL_REFINER_UNET, {"text_encoder_2": SDXL_CLIP_G}),
    ("sdxl_turbo", SDXL_TURBO_UNET, {"text_encoder": SDXL_CLIP_L, "text_encoder_2": SDXL_CLIP_G}),
])
def test_synthetic_full_sizes_are_the_published_architectures(family: str, unet_cfg: dict,
                                                              clips: dict) -> None:
    """The random-weight writer's full sizes detect as the published configs (shapes only)."""
    from comfyc.compiler.models.synthetic import build_modules, model_spec, single_file_layout

    spec = model_spec(family, "full")
    modules = build_modules(spec)
    state = {name: torch.empty(shape, device="meta")
             for group in single_file_layout(modules, spec, seed=0)
             for name, shape in group.shapes.items()}
    metadata = {"modelspec.title": "SDXL Turbo"} if family == "sdxl_turbo" else {}
    loaded = checkpoint_from_state_dict(state, metadata)
    _assert_config(loaded.unet, unet_cfg)
    for attribute, expected in clips.items():
        _assert_clip(getattr(loaded, attribute), expected)
    reference = diffusers_to_single_file(
        modules["unet"], modules["vae"], modules.get("text_encoder"),
        text_encoder_2=modules.get("text_encoder_2"))
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(v.shape) for k, v in reference.items()}
