"""Detection recovers the published SD3 medium, SD3.5 medium/large, Flux dev/schnell transformer,
VAE and text-encoder configs from full-size meta-device key/shape tables (no weights)."""
from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from comfyc.compiler.models.dit_configs import detect_transformer  # noqa: E402
from comfyc.compiler.models.dit_keymap import (  # noqa: E402
    KeyPlan,
    flux_key_plans,
    fuse_parts,
    sd3_key_plans,
    split_original,
)
from comfyc.compiler.models.errors import ModelFormatError  # noqa: E402

# The published diffusers configs (transformer/config.json of stabilityai/stable-diffusion-3-
# medium-diffusers, stable-diffusion-3.5-medium, stable-diffusion-3.5-large and black-forest-labs/
# FLUX.1-dev, FLUX.1-schnell), written out here, not downloaded.
SD3_MEDIUM = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24,
    "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "out_channels": 16,
    "pos_embed_max_size": 192,
}
SD35_MEDIUM = {**SD3_MEDIUM, "pos_embed_max_size": 384,
               "dual_attention_layers": list(range(13)), "qk_norm": "rms_norm"}
SD35_LARGE = {**SD3_MEDIUM, "num_layers": 38, "num_attention_heads": 38,
              "caption_projection_dim": 2432, "qk_norm": "rms_norm"}
FLUX_DEV = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
}
FLUX_SCHNELL = {**FLUX_DEV, "guidance_embeds": False}
# vae/config.json of the SD3/SD3.5 and FLUX.1 repositories.
SD3_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_quant_conv": False, "use_post_quant_conv": False, "scaling_factor": 1.5305,
    "shift_factor": 0.0609, "sample_size": 1024, "force_upcast": True,
}
FLUX_VAE = {**SD3_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}
# google/t5-v1_1-xxl (text_encoder_3 of SD3, text_encoder_2 of Flux), encoder fields.
T5_XXL = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
          "num_heads": 64, "relative_attention_num_buckets": 32}


def _table(config: dict[str, Any], kind: str) -> dict[str, Any]:
    """The original-layout meta shape table of a published diffusers config."""
    from comfyc.compiler.models.flow import build_transformer

    module = build_transformer(config, kind)
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    plans = (sd3_key_plans if kind == "sd3" else flux_key_plans)(shapes)
    return {p.original: torch.empty((sum(shapes[x][0] for x in p.parts),
                                     *shapes[p.parts[0]][1:]), device="meta") for p in plans}


@pytest.mark.parametrize(("config", "kind", "family", "variant", "comfy"), [
    (SD3_MEDIUM, "sd3", "sd3", "sd3_medium",
     {"depth": 24, "num_heads": 24, "hidden_size": 1536, "pos_embed_max_size": 192,
      "qk_norm": None, "x_block_self_attn_layers": [], "adm_in_channels": 2048,
      "context_in_dim": 4096}),
    (SD35_MEDIUM, "sd3", "sd3", "sd35_medium",
     {"depth": 24, "pos_embed_max_size": 384, "qk_norm": "rms",
      "x_block_self_attn_layers": list(range(13))}),
    (SD35_LARGE, "sd3", "sd3", "sd35_large",
     {"depth": 38, "num_heads": 38, "hidden_size": 2432, "num_blocks": 38, "qk_norm": "rms"}),
    (FLUX_DEV, "flux", "flux", "flux_dev",
     {"hidden_size": 3072, "num_heads": 24, "depth": 19, "depth_single_blocks": 38,
      "guidance_embed": True, "in_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096}),
    (FLUX_SCHNELL, "flux", "flux_schnell", "flux_schnell",
     {"guidance_embed": False, "depth": 19}),
])
def test_published_transformers_from_shapes(config: dict[str, Any], kind: str, family: str,
                                             variant: str, comfy: dict[str, Any]) -> None:
    """Family, variant, ComfyUI's detected fields and the full diffusers config come back."""
    detected = detect_transformer(_table(config, kind))
    assert (detected.family, detected.variant, detected.published) == (family, variant, True)
    for key, value in comfy.items():
        assert detected.comfy_config[key] == value, key
    for key, value in config.items():
        assert detected.diffusers_config[key] == value, key
    assert not detected.notes


def test_synthetic_full_sizes_are_the_published_models() -> None:
    """The synthetic writer's full sizes are the published architectures; large keeps widths."""
    from comfyc.compiler.models.synthetic import model_spec

    pairs = {"sd3": SD3_MEDIUM, "sd35_medium": SD35_MEDIUM, "sd35_large": SD35_LARGE,
             "flux_dev": FLUX_DEV, "flux_schnell": FLUX_SCHNELL}
    for name, published in pairs.items():
        spec = model_spec(name, "full")
        for key, value in published.items():
            assert spec.components["transformer"][key] == value, (name, key)
        vae = SD3_VAE if name.startswith("sd3") else FLUX_VAE
        for key, value in vae.items():
            assert spec.components["vae"][key] == value, (name, key)
    large = model_spec("flux_dev", "large").components["transformer"]
    assert (large["num_attention_heads"], large["num_layers"], large["num_single_layers"]) == (
        24, 2, 4)
    large = model_spec("sd35_large", "large").components["transformer"]
    assert (large["caption_projection_dim"], large["num_layers"]) == (2432, 4)


def test_reduced_depth_is_reported() -> None:
    """A large model with fewer joint blocks than hidden/64 is detected, with a note saying
    ComfyUI could not load it."""
    detected = detect_transformer(_table({**SD35_LARGE, "num_layers": 4}, "sd3"))
    assert detected.variant == "sd35_large" and not detected.published
    assert detected.diffusers_config["num_layers"] == 4
    assert detected.comfy_config["depth"] == 38 and "ComfyUI" in detected.notes[0]


@pytest.mark.parametrize(("vae", "family"), [(SD3_VAE, "sd3"), (FLUX_VAE, "flux")])
def test_published_vaes_from_shapes(vae: dict[str, Any], family: str) -> None:
    """16-channel VAEs without quant convs: the LDM key table gives the published config."""
    from diffusers import AutoencoderKL

    from comfyc.compiler.models.configs import infer_vae_config
    from comfyc.compiler.models.keymap import vae_diffusers_to_ldm_map
    from comfyc.compiler.models.single_file import vae_family_config

    with torch.device("meta"):
        module = AutoencoderKL(**vae)
    state = module.state_dict()
    ldm = {new: torch.empty(state[old].shape, device="meta")
           for old, new in vae_diffusers_to_ldm_map(state).items()}
    assert "quant_conv.weight" not in ldm
    config = {**infer_vae_config(ldm), **vae_family_config(family)}
    for key, value in vae.items():
        assert config[key] == value, key


def test_published_text_encoders_from_shapes() -> None:
    """T5-XXL v1.1 (gated) and the original T5 (ReLU), CLIP-L and CLIP-G (transformers and
    OpenCLIP names) are told apart by shapes as ComfyUI's detect_te_model does."""
    from comfyc.compiler.models.keymap import clip_hf_to_openclip
    from comfyc.compiler.models.single_file import build_clip_text_model
    from comfyc.compiler.models.synthetic import _CLIP_BIGG, _CLIP_L
    from comfyc.compiler.models.t5 import build_t5_encoder, infer_t5_config, t5_state_dict
    from comfyc.compiler.models.text_encoders import clip_state_dict, detect_text_encoder

    t5 = build_t5_encoder({**T5_XXL, "feed_forward_proj": "gated-gelu"})
    shapes = t5_state_dict(t5)
    inferred = infer_t5_config(shapes)
    assert {k: inferred[k] for k in T5_XXL} == T5_XXL
    assert inferred["feed_forward_proj"] == "gated-gelu_pytorch_tanh"
    assert detect_text_encoder(shapes) == "t5xxl"
    old = build_t5_encoder({"vocab_size": 32128, "d_model": 1024, "d_kv": 128, "d_ff": 65536,
                            "num_layers": 24, "num_heads": 128, "feed_forward_proj": "relu"})
    assert detect_text_encoder(t5_state_dict(old)) == "t5_old"
    assert infer_t5_config(t5_state_dict(old))["num_heads"] == 128
    clip_l = clip_state_dict(build_clip_text_model(_CLIP_L, with_projection=True))
    clip_g = clip_state_dict(build_clip_text_model(_CLIP_BIGG, with_projection=True))
    assert detect_text_encoder(clip_l) == "clip_l"
    assert detect_text_encoder(clip_g) == "clip_g"
    openclip = clip_hf_to_openclip({k: v for k, v in clip_g.items()
                                    if k != "text_projection.weight"})
    assert detect_text_encoder(openclip) == "clip_g"
    assert detect_text_encoder(clip_l, {"comfyc.text_encoder": "clip_g"}) == "clip_g"
    with pytest.raises(ModelFormatError, match="not a CLIP or T5"):
        detect_text_encoder({"foo.weight": torch.empty(1, device="meta")})
    umt5 = dict(shapes)
    umt5["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = torch.empty(
        32, 64, device="meta")
    with pytest.raises(ModelFormatError, match="UMT5"):
        infer_t5_config(umt5)


@pytest.mark.parametrize(("marker", "name"), [
    ("double_stream_modulation_img.lin.weight", "Flux 2"),
    ("distilled_guidance_layer.norms.0.scale", "Chroma"),
    ("txt_norm.scale", "text norm"),
])
def test_flux_relatives_are_refused(marker: str, name: str) -> None:
    """Models in ComfyUI's Flux branch that comfyc does not run are named."""
    table = _table({**FLUX_SCHNELL, "num_layers": 1, "num_single_layers": 1}, "flux")
    table[marker] = torch.empty(4, device="meta")
    with pytest.raises(ModelFormatError, match=name):
        detect_transformer(table)


def test_flux_fill_and_errors() -> None:
    """96 input channels = Flux Fill (flux_inpaint); other layouts are clear errors."""
    fill = detect_transformer(_table({**FLUX_DEV, "in_channels": 384, "out_channels": 64,
                                      "num_layers": 19}, "flux"))
    assert (fill.family, fill.variant, fill.published) == ("flux_inpaint", "flux_fill", True)
    assert fill.comfy_config["in_channels"] == 96 and fill.comfy_config["out_channels"] == 16
    with pytest.raises(ModelFormatError, match="neither SD3"):
        detect_transformer({"input_blocks.0.0.weight": torch.empty(1, device="meta")})
    table = _table({**SD3_MEDIUM, "num_layers": 2}, "sd3")
    del table["pos_embed"]
    with pytest.raises(ModelFormatError, match="pos_embed"):
        detect_transformer(table)


def test_key_plans_split_and_fuse_are_inverse() -> None:
    """Fused q/k/v (and Flux's linear1) split by the diffusers shapes and fuse back; the final
    modulations swap (shift, scale) halves, others keep their order."""
    plans = {p.original: p for p in flux_key_plans(
        _table_shapes({**FLUX_DEV, "num_layers": 1, "num_single_layers": 1}))}
    linear1 = plans["single_blocks.0.linear1.weight"]
    assert linear1.parts == tuple(f"single_transformer_blocks.0.{n}.weight" for n in
                                  ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))
    assert plans["final_layer.adaLN_modulation.1.weight"].swap
    assert not plans["double_blocks.0.img_mod.lin.weight"].swap
    assert "double_blocks.0.img_attn.norm.query_norm.scale" in plans
    sd3 = {p.original: p for p in sd3_key_plans(_table_shapes({**SD3_MEDIUM, "num_layers": 2},
                                                              "sd3"))}
    assert sd3["joint_blocks.1.context_block.adaLN_modulation.1.weight"].swap  # pre-only block
    assert not sd3["joint_blocks.0.context_block.adaLN_modulation.1.weight"].swap
    assert "joint_blocks.1.context_block.attn.proj.weight" not in sd3
    plan = KeyPlan("x", ("a", "b", "c"))
    parts = {"a": torch.randn(2, 3), "b": torch.randn(4, 3), "c": torch.randn(1, 3)}
    fused = fuse_parts(plan, parts)
    back = split_original(plan, fused, {k: v.shape for k, v in parts.items()})
    assert all(torch.equal(back[k], parts[k]) for k in parts)
    swap = KeyPlan("y", ("a",), swap=True)
    value = torch.arange(4.0)
    assert fuse_parts(swap, {"a": value}).tolist() == [2.0, 3.0, 0.0, 1.0]
    assert split_original(swap, fuse_parts(swap, {"a": value}), {"a": (4,)})["a"].tolist() == (
        value.tolist())
    with pytest.raises(ModelFormatError, match="rows"):
        split_original(plan, torch.zeros(5, 3), {k: v.shape for k, v in parts.items()})


def _table_shapes(config: dict[str, Any], kind: str = "flux") -> dict[str, tuple[int, ...]]:
    from comfyc.compiler.models.flow import build_transformer

    return {k: tuple(v.shape) for k, v in build_transformer(config, kind).state_dict().items()}


@pytest.mark.parametrize(("config", "kind"), [(SD35_LARGE, "sd3"), (FLUX_DEV, "flux")])
def test_full_size_load_path_on_meta(config: dict[str, Any], kind: str) -> None:
    """The whole UNETLoader path (prefix, key plans, splitting, module build) runs on the full
    published shapes with meta tensors: the module has the published parameter count."""
    from comfyc.compiler.models.flow import diffusion_model_from_weights

    table = {"model.diffusion_model." + k: v for k, v in _table(config, kind).items()}
    model = diffusion_model_from_weights(table)
    assert model.detected.published and model.transformer.device.type == "meta"
    count = sum(p.numel() for p in model.transformer.parameters())
    assert round(count / 1e9, 1) == (8.1 if kind == "sd3" else 11.9)
