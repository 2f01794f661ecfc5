"""LoRA key formats, factor extraction and exact merging."""
from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from comfyc.compiler.models.errors import ModelFormatError  # noqa: E402
from comfyc.compiler.models.keymap import unet_diffusers_to_ldm_map  # noqa: E402
from comfyc.compiler.models.lora import (  # noqa: E402
    extract_lora_factors,
    load_lora,
    lora_key_aliases,
    make_random_lora,
    merge_lora,
    round_text_weights,
)
from comfyc.compiler.models.single_file import canonical_text_encoder_state  # noqa: E402


def _expected(base: torch.Tensor, up: torch.Tensor, down: torch.Tensor, strength: float,
              scale: float) -> torch.Tensor:
    """base + strength * scale * up @ down, written out independently of the implementation."""
    product = (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(base.shape)
    return base + (strength * scale) * product


def _as_comfyui_text(value: torch.Tensor) -> torch.Tensor:
    """A patched text-encoder weight as ComfyUI keeps it: rounded to float16 precision."""
    return value.to(torch.float16).to(value.dtype)


@pytest.fixture()
def model(small_sd1):
    """A private copy of the small SD1 model (merging changes weights)."""
    return copy.deepcopy(small_sd1)


@pytest.mark.parametrize("key_format", ["kohya", "comfy", "peft"])
def test_merge_is_exact(model, key_format: str) -> None:
    """Every targeted weight equals base + strength * (alpha/rank) * up @ down exactly."""
    lora = make_random_lora(model.unet, model.text_encoder, rank=4, key_format=key_format)
    base_unet = {k: v.clone() for k, v in model.unet.state_dict().items()}
    base_text = {k: v.clone() for k, v in canonical_text_encoder_state(model.text_encoder).items()}
    factors = merge_lora(model, lora, strength_model=0.8, strength_clip=1.3)
    assert factors.unmatched == []
    scale = 1.0 if key_format == "peft" else 2.0 / 4
    assert len(factors.unet) > 20 and len(factors.text_encoder) == 12
    kernels = {tuple(f.down.shape[2:]) for f in factors.unet.values()}
    assert {(), (1, 1), (3, 3)} <= kernels  # linear, 1x1 conv (SD1 proj_in) and 3x3 conv
    unet_now = model.unet.state_dict()
    for target, factor in factors.unet.items():
        assert factor.scale == scale
        want = _expected(base_unet[target], factor.up, factor.down, 0.8, scale)
        assert torch.equal(unet_now[target], want), target
    text_now = canonical_text_encoder_state(model.text_encoder)
    for target, factor in factors.text_encoder.items():
        want = _as_comfyui_text(_expected(base_text[target], factor.up, factor.down, 1.3, scale))
        assert torch.equal(text_now[target], want), target
        assert text_now[target].dtype == torch.float32
    untouched = [k for k in unet_now if k not in factors.unet]
    assert all(torch.equal(unet_now[k], base_unet[k]) for k in untouched)


def test_strengths_are_separate(model) -> None:
    """strength_clip 0 leaves the text encoder alone; strength_model 0 leaves the UNet alone."""
    lora = make_random_lora(model.unet, model.text_encoder)
    text_before = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    unet_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    merge_lora(model, lora, strength_model=1.0, strength_clip=0.0)
    assert all(torch.equal(v, text_before[k]) for k, v in model.text_encoder.state_dict().items())
    assert not all(torch.equal(v, unet_before[k]) for k, v in model.unet.state_dict().items())
    unet_after = {k: v.clone() for k, v in model.unet.state_dict().items()}
    merge_lora(model, lora, strength_model=0.0, strength_clip=1.0)
    assert all(torch.equal(v, unet_after[k]) for k, v in model.unet.state_dict().items())
    assert not all(torch.equal(v, text_before[k])
                   for k, v in model.text_encoder.state_dict().items())


def test_merge_into_state_dicts(small_sd1) -> None:
    """State dicts (diffusers names) are patched with new tensors; the originals stay intact."""
    lora = make_random_lora(small_sd1.unet, small_sd1.text_encoder, seed=5)
    unet_sd = dict(small_sd1.unet.state_dict())
    text_sd = dict(small_sd1.text_encoder.state_dict())
    factors = merge_lora({"unet": unet_sd, "text_encoder": text_sd}, lora, 0.5, 0.5)
    target = next(iter(factors.unet))
    factor = factors.unet[target]
    original = small_sd1.unet.state_dict()[target]
    assert torch.equal(unet_sd[target], _expected(original, factor.up, factor.down, 0.5,
                                                  factor.scale))
    assert not torch.equal(unet_sd[target], original)
    text_target = next(iter(factors.text_encoder))
    local = text_target if text_target in text_sd else text_target[len("text_model."):]
    assert not torch.equal(text_sd[local], small_sd1.text_encoder.state_dict()[local])


def test_original_names_and_old_diffusers_names(small_sd1) -> None:
    """kohya names built from original (LDM) names and diffusers attn-processor names resolve."""
    ldm = unet_diffusers_to_ldm_map(small_sd1.unet.state_dict())
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    out_key = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.weight"
    up, down = torch.randn(32, 2), torch.randn(2, 32)
    lora = {
        "lora_unet_" + ldm[key][:-7].replace(".", "_") + ".lora_up.weight": up,
        "lora_unet_" + ldm[key][:-7].replace(".", "_") + ".lora_down.weight": down,
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight":
            torch.randn(64, 2),
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight":
            torch.randn(2, 64),
        "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_linear_layer.up.weight":
            torch.randn(256, 2),
        "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_linear_layer.down.weight":
            torch.randn(2, 128),
    }
    factors = extract_lora_factors(small_sd1, lora)
    assert set(factors.unet) == {key, out_key}
    assert factors.unet[key].alpha is None and factors.unet[key].scale == 1.0
    assert set(factors.text_encoder) == {"text_model.encoder.layers.1.mlp.fc1.weight"}


def test_unmatched_keys_are_reported(small_sd1, caplog: pytest.LogCaptureFixture) -> None:
    """Names that fit no weight are listed (and ignored, as ComfyUI does)."""
    lora = {
        "lora_unet_not_a_layer.lora_up.weight": torch.zeros(4, 1),
        "lora_unet_not_a_layer.lora_down.weight": torch.zeros(1, 4),
        "lora_unet_not_a_layer.alpha": torch.tensor(1.0),
        "stray_tensor": torch.zeros(1),
    }
    factors = extract_lora_factors(small_sd1, lora)
    assert factors.unmatched == ["lora_unet_not_a_layer", "stray_tensor"]
    assert "match no weight" in caplog.text


@pytest.mark.parametrize(
    ("key", "kind"),
    [("lora_unet_x.hada_w1_a", "LoHa"), ("lora_unet_x.lokr_w1", "LoKr"),
     ("lora_unet_x.dora_scale", "DoRA"), ("lora_unet_x.lora_mid.weight", "mid")],
)
def test_unsupported_lora_types(small_sd1, key: str, kind: str) -> None:
    """LoHa, LoKr, DoRA and LoCon-mid files are refused, naming the type."""
    with pytest.raises(ModelFormatError, match=kind):
        extract_lora_factors(small_sd1, {key: torch.zeros(1)})


def test_wrong_model_is_a_clear_error(small_sd1, small_sd2) -> None:
    """A LoRA whose factor shapes do not fit the weights says so."""
    lora = make_random_lora(small_sd2.unet, None)
    target = copy.deepcopy(small_sd1)
    with pytest.raises(ModelFormatError, match="made for another model"):
        merge_lora(target, lora)


def test_incomplete_lora(small_sd1) -> None:
    """An up factor without its down factor is refused."""
    with pytest.raises(ModelFormatError, match="no 'lora_unet_x.lora_down.weight'"):
        extract_lora_factors(small_sd1, {"lora_unet_x.lora_up.weight": torch.zeros(2, 2)})


def test_aliases_cover_both_unet_namings(small_sd1) -> None:
    """Alias table maps kohya diffusers/original names and ComfyUI names to one weight."""
    aliases = lora_key_aliases(small_sd1.unet.state_dict(), small_sd1.text_encoder.state_dict())
    key = "mid_block.attentions.0.proj_in.weight"
    assert aliases["lora_unet_mid_block_attentions_0_proj_in"] == ("unet", key)
    assert aliases["lora_unet_middle_block_1_proj_in"] == ("unet", key)
    assert aliases["diffusion_model.middle_block.1.proj_in"] == ("unet", key)
    assert aliases["lora_te_text_model_encoder_layers_0_self_attn_q_proj"] == (
        "text_encoder", "text_model.encoder.layers.0.self_attn.q_proj.weight")


def test_load_lora_file(small_sd1, tmp_path) -> None:
    """LoRA files load through the safe readers."""
    from safetensors.torch import save_file

    lora = make_random_lora(small_sd1.unet, small_sd1.text_encoder, rank=2)
    save_file(lora, tmp_path / "lora.safetensors")
    loaded = load_lora(tmp_path / "lora.safetensors")
    assert loaded.keys() == lora.keys()
    assert all(torch.equal(loaded[k], lora[k]) for k in lora)


@pytest.fixture()
def sdxl_model(small_sdxl):
    """A private copy of the small SDXL base model."""
    return copy.deepcopy(small_sdxl)


def _snapshot(module) -> dict:
    return {k: v.clone() for k, v in canonical_text_encoder_state(module).items()}


@pytest.mark.parametrize("key_format", ["kohya", "comfy", "peft"])
def test_sdxl_merge_is_exact(sdxl_model, key_format: str) -> None:
    """SDXL LoRAs patch the UNet and both text encoders exactly; the CLIP strength covers both."""
    lora = make_random_lora(sdxl_model.unet, sdxl_model.text_encoder, key_format=key_format,
                            text_encoder_2=sdxl_model.text_encoder_2, seed=3)
    if key_format == "kohya":
        assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q.lora_up.weight" in lora
        assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha" in lora
        assert "lora_te2_text_model_encoder_layers_3_mlp_fc2.lora_down.weight" in lora
    base = {"unet": {k: v.clone() for k, v in sdxl_model.unet.state_dict().items()},
            "text_encoder": _snapshot(sdxl_model.text_encoder),
            "text_encoder_2": _snapshot(sdxl_model.text_encoder_2)}
    factors = merge_lora(sdxl_model, lora, strength_model=0.7, strength_clip=1.2)
    assert factors.unmatched == []
    assert len(factors.text_encoder) == 3 * 6 and len(factors.text_encoder_2) == 4 * 6
    now = {"unet": sdxl_model.unet.state_dict(),
           "text_encoder": canonical_text_encoder_state(sdxl_model.text_encoder),
           "text_encoder_2": canonical_text_encoder_state(sdxl_model.text_encoder_2)}
    for component, strength in (("unet", 0.7), ("text_encoder", 1.2), ("text_encoder_2", 1.2)):
        chosen = getattr(factors, component)
        assert chosen
        for target, factor in chosen.items():
            want = _expected(base[component][target], factor.up, factor.down, strength,
                             factor.scale)
            if component != "unet":
                want = _as_comfyui_text(want)
            assert torch.equal(now[component][target], want), (component, target)


def test_refiner_lora_te_is_bigg(small_refiner) -> None:
    """The refiner's only encoder answers to lora_te_ / text_encoder. / clip_g. (ComfyUI)."""
    model = copy.deepcopy(small_refiner)
    lora = make_random_lora(model.unet, None, text_encoder_2=model.text_encoder_2, rank=2)
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in lora)
    factors = extract_lora_factors(model, lora)
    assert factors.unmatched == [] and not factors.text_encoder
    assert len(factors.text_encoder_2) == 4 * 6
    comfy = make_random_lora(model.unet, None, text_encoder_2=model.text_encoder_2,
                             key_format="comfy", include_convs=False)
    assert any(k.startswith("clip_g.transformer.text_model.") for k in comfy)
    assert extract_lora_factors(model, comfy).unmatched == []


def test_sdxl_aliases(small_sdxl) -> None:
    """lora_te1_/lora_te_ -> CLIP-L, lora_te2_ and text_projection -> bigG, ldm UNet names."""
    aliases = lora_key_aliases(small_sdxl.unet.state_dict(), small_sdxl.text_encoder.state_dict(),
                               small_sdxl.text_encoder_2.state_dict())
    q = "text_model.encoder.layers.0.self_attn.q_proj.weight"
    assert aliases["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"] == ("text_encoder", q)
    assert aliases["lora_te_text_model_encoder_layers_0_self_attn_q_proj"] == ("text_encoder", q)
    assert aliases["lora_te2_text_model_encoder_layers_0_self_attn_q_proj"] == (
        "text_encoder_2", q)
    assert aliases["text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj"] == (
        "text_encoder_2", q)
    assert aliases["lora_te2_text_projection"] == ("text_encoder_2", "text_projection.weight")
    assert aliases["lora_unet_label_emb_0_0"] == ("unet", "add_embedding.linear_1.weight")
    assert aliases["lora_unet_middle_block_1_transformer_blocks_1_attn2_to_k"] == (
        "unet", "mid_block.attentions.0.transformer_blocks.1.attn2.to_k.weight")


def test_sdxl_lora_on_loaded_checkpoint(sdxl_file) -> None:
    """A LoadedCheckpoint is a merge target with all three components; strength_clip 0 leaves
    both encoders alone."""
    from comfyc.compiler.models.single_file import load_checkpoint

    loaded = load_checkpoint(sdxl_file)
    lora = make_random_lora(loaded.unet, loaded.text_encoder,
                            text_encoder_2=loaded.text_encoder_2)
    lora["lora_te2_text_projection.lora_up.weight"] = torch.randn(128, 2)
    lora["lora_te2_text_projection.lora_down.weight"] = torch.randn(2, 128)
    before = (_snapshot(loaded.text_encoder), _snapshot(loaded.text_encoder_2))
    factors = merge_lora(loaded, lora, strength_model=1.0, strength_clip=0.0)
    assert "text_projection.weight" in factors.text_encoder_2
    assert all(torch.equal(v, before[0][k]) for k, v in _snapshot(loaded.text_encoder).items())
    assert all(torch.equal(v, before[1][k]) for k, v in _snapshot(loaded.text_encoder_2).items())
    merge_lora(loaded, lora, strength_model=0.0, strength_clip=1.0)
    after = _snapshot(loaded.text_encoder_2)
    assert not torch.equal(after["text_projection.weight"],
                           before[1]["text_projection.weight"])


def test_text_weights_rounded_once_after_a_chain(model) -> None:
    """ComfyUI sums every LoRA of a chain on a text-encoder weight in float32 and rounds to
    float16 once: merging with ``round_text=False`` and rounding at the end gives that; the
    UNet (float32 in ComfyUI on a CPU) is never rounded."""
    first = make_random_lora(model.unet, model.text_encoder, seed=11)
    second = make_random_lora(model.unet, model.text_encoder, seed=12)
    base_text = _snapshot(model.text_encoder)
    base_unet = {k: v.clone() for k, v in model.unet.state_dict().items()}
    f1 = merge_lora(model, first, 0.6, 0.9, round_text=False)
    f2 = merge_lora(model, second, 0.4, 1.1, round_text=False)
    round_text_weights(model, {"text_encoder": list(f1.text_encoder) + list(f2.text_encoder)})
    text_now = canonical_text_encoder_state(model.text_encoder)
    rounded_each = 0
    for target in f1.text_encoder:
        a, b = f1.text_encoder[target], f2.text_encoder[target]
        exact = _expected(_expected(base_text[target], a.up, a.down, 0.9, a.scale), b.up, b.down,
                          1.1, b.scale)
        assert torch.equal(text_now[target], _as_comfyui_text(exact)), target
        twice = _as_comfyui_text(_expected(_as_comfyui_text(
            _expected(base_text[target], a.up, a.down, 0.9, a.scale)), b.up, b.down, 1.1, b.scale))
        rounded_each += int(not torch.equal(twice, text_now[target]))
    assert rounded_each > 0  # rounding after each LoRA would give other bits
    unet_now = model.unet.state_dict()
    target = next(iter(f1.unet))
    a, b = f1.unet[target], f2.unet[target]
    exact = _expected(_expected(base_unet[target], a.up, a.down, 0.6, a.scale), b.up, b.down, 0.4,
                      b.scale)
    assert torch.equal(unet_now[target], exact)
    assert not torch.equal(exact, _as_comfyui_text(exact))
