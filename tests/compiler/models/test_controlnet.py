"""ControlNet / T2I-Adapter loading (`comfyc.compiler.models.controlnet`) and synthetic files.

Published architectures are checked on the meta device from their diffusers configs (no
download); values on seeded tiny files in every layout. ComfyUI's own code is compared in
``test_controlnet_comfyui_reference.py`` (optional).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from comfyc.compiler.models.controlnet import (  # noqa: E402
    CONTROL_PREFIX,
    ControlNetStage,
    LoadedControlNet,
    LoadedT2IAdapter,
    check_adapter_fits,
    controlnet_diffusers_to_ldm_map,
    detect_control_model,
    load_controlnet,
    t2i_diffusers_to_ldm_map,
    uses_global_average_pooling,
)
from comfyc.compiler.models.controlnet_synthetic import (  # noqa: E402
    adapter_host_unet_config,
    controlnet_config,
    write_adapter_host_checkpoint,
    write_controlnet,
    write_t2i_adapter,
)
from comfyc.compiler.models.errors import ModelFormatError  # noqa: E402

torch.set_num_threads(1)

# -- published configs (diffusers config.json values; no download) -------------------------------

#: lllyasviel/sd-controlnet-* and control_v11*_sd15_* (361 M parameters).
SD15_CONTROLNET = {
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "cross_attention_dim": 768, "attention_head_dim": 8, "layers_per_block": 2,
    "use_linear_projection": False, "conditioning_embedding_out_channels": [16, 32, 96, 256],
}
#: thibaud/controlnet-sd21-* (SD2.1: OpenCLIP-H context, linear proj_in, 64 channels per head).
SD21_CONTROLNET = {**SD15_CONTROLNET, "cross_attention_dim": 1024,
                   "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True}
#: diffusers/controlnet-canny-sdxl-1.0 (1.25 B parameters).
SDXL_CONTROLNET = {
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048, "use_linear_projection": True, "layers_per_block": 2,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
#: diffusers/controlnet-canny-sdxl-1.0-mid and -small (ComfyUI's SDXL_mid_cnet / _small_cnet).
SDXL_MID_CONTROLNET = {**SDXL_CONTROLNET, "transformer_layers_per_block": [0, 0, 1]}
SDXL_SMALL_CONTROLNET = {**SDXL_CONTROLNET, "transformer_layers_per_block": [0, 0, 0]}
#: TencentARC/t2iadapter_*_sd14v1 / _sd15v2 (canny and sketch take 1 channel).
T2I_SD15 = {"in_channels": 3, "channels": [320, 640, 1280, 1280], "num_res_blocks": 2,
            "downscale_factor": 8, "adapter_type": "full_adapter"}
T2I_SD15_CANNY = {**T2I_SD15, "in_channels": 1}
#: TencentARC/t2iadapter_color_sd14v1 (light).
T2I_LIGHT = {"in_channels": 3, "channels": [320, 640, 1280], "num_res_blocks": 4,
             "downscale_factor": 8, "adapter_type": "light_adapter"}
#: TencentARC/t2i-adapter-*-sdxl-1.0.
T2I_SDXL = {**T2I_SD15, "downscale_factor": 16, "adapter_type": "full_adapter_xl"}

# ComfyUI's detection facts for them (comfy/model_detection.py: SD15 / SD21 / SDXL tables).
_SD15_FACTS = {"model_channels": 320, "channel_mult": [1, 2, 4, 4],
               "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
               "transformer_depth_middle": 1, "context_dim": 768,
               "use_linear_in_transformer": False, "adm_in_channels": None, "num_heads": 8,
               "num_head_channels": -1, "hint_channels": 3, "in_channels": 4}
_SD21_FACTS = {**_SD15_FACTS, "context_dim": 1024, "use_linear_in_transformer": True,
               "num_heads": -1, "num_head_channels": 64}
_SDXL_FACTS = {"model_channels": 320, "channel_mult": [1, 2, 4], "num_res_blocks": [2, 2, 2],
               "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
               "context_dim": 2048, "use_linear_in_transformer": True, "adm_in_channels": 2816,
               "num_heads": -1, "num_head_channels": 64, "hint_channels": 3, "in_channels": 4}


def _meta_controlnet(config: dict[str, Any]) -> Any:
    from diffusers import ControlNetModel

    with torch.device("meta"):
        return ControlNetModel(**config)


def _meta_adapter(config: dict[str, Any]) -> Any:
    from diffusers import T2IAdapter

    with torch.device("meta"):
        return T2IAdapter(**config)


def _heads(module: Any) -> list[tuple[str, int]]:
    """(name, heads) of every attention of a diffusers module (cross and self)."""
    return [(n, int(m.heads)) for n, m in module.named_modules() if hasattr(m, "heads")
            and type(m).__name__ == "Attention"]


def _ldm(module: Any, prefix: str = CONTROL_PREFIX) -> dict[str, Any]:
    state = module.state_dict()
    mapping = controlnet_diffusers_to_ldm_map(state.keys())
    return {prefix + mapping[k]: v for k, v in state.items()}


@pytest.mark.parametrize(("name", "config", "family", "facts", "params"), [
    ("sd15", SD15_CONTROLNET, "sd1", _SD15_FACTS, 361_279_120),
    ("sd21", SD21_CONTROLNET, "sd2", _SD21_FACTS, None),
    ("sdxl", SDXL_CONTROLNET, "sdxl", _SDXL_FACTS, 1_251_014_160),
])
def test_published_controlnets_detected(name: str, config: dict[str, Any], family: str,
                                        facts: dict[str, Any], params: int | None) -> None:
    """Both file layouts of a published ControlNet give its architecture and ComfyUI's facts."""
    published = _meta_controlnet(config)
    shapes = {k: tuple(v.shape) for k, v in published.state_dict().items()}
    if params is not None:
        assert sum(v.numel() for v in published.state_dict().values()) == params
    for state in (_ldm(published), _ldm(published, ""), published.state_dict()):
        detected = detect_control_model(state)
        assert detected.kind == "controlnet" and detected.variant is None
        assert detected.family == family
        assert {k: detected.facts[k] for k in facts} == facts
        rebuilt = _meta_controlnet(detected.config)
        assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes
        assert _heads(rebuilt) == _heads(published), name


@pytest.mark.parametrize(("config", "depths", "middle"), [
    (SDXL_MID_CONTROLNET, [0, 0, 0, 0, 1, 1], 1),
    (SDXL_SMALL_CONTROLNET, [0, 0, 0, 0, 0, 0], 0),
])
def test_sdxl_mid_and_small_controlnets(config: dict[str, Any], depths: list[int],
                                        middle: int) -> None:
    """Attention blocks without transformer blocks are dropped, as ComfyUI builds them."""
    published = _meta_controlnet(config)
    detected = detect_control_model(published.state_dict())
    assert detected.facts["transformer_depth"] == depths
    assert detected.facts["transformer_depth_middle"] == middle
    rebuilt = _meta_controlnet(detected.config)
    names = list(published.state_dict())
    with_blocks = {k.split(".transformer_blocks.")[0] for k in names if ".transformer_blocks." in k}
    kept = {k for k in names if ".attentions." not in k or k.startswith("mid_block.")
            or k.split(".attentions.")[0] + ".attentions." + k.split(".")[3] in with_blocks}
    assert set(rebuilt.state_dict()) == kept


@pytest.mark.parametrize(("config", "facts"), [
    (T2I_SD15, {"cin": 192, "xl": False, "unshuffle_amount": 8, "ksize": 1}),
    (T2I_SD15_CANNY, {"cin": 64, "xl": False, "unshuffle_amount": 8}),
    (T2I_LIGHT, {"cin": 192, "xl": False, "channels": [320, 640, 1280, 1280], "nums_rb": 4}),
    (T2I_SDXL, {"cin": 768, "xl": True, "unshuffle_amount": 16, "nums_rb": 2}),
])
def test_published_t2i_adapters_detected(config: dict[str, Any], facts: dict[str, Any]) -> None:
    """TencentARC and diffusers names of a published adapter give its diffusers config."""
    published = _meta_adapter(config)
    state = published.state_dict()
    mapping = t2i_diffusers_to_ldm_map(state.keys(), config["adapter_type"])
    for layout, weights in (("comfy", {mapping[k]: v for k, v in state.items()}),
                            ("diffusers", state)):
        if layout == "diffusers" and config["adapter_type"] == "light_adapter":
            continue  # NOTE: ComfyUI has no diffusers-name light adapters; covered by the folder
        detected = detect_control_model(weights)
        assert detected.kind == "t2i_adapter" and detected.layout == layout
        assert detected.config == config
        assert {k: detected.facts[k] for k in facts} == facts
        assert detected.family == ("sdxl" if facts["xl"] else "sd1")


def test_comfyui_names_of_published_adapter() -> None:
    """The full adapter's TencentARC names are ComfyUI's (body.{2i+j}, in_conv on body.{2i})."""
    names = set(t2i_diffusers_to_ldm_map(_meta_adapter(T2I_SD15).state_dict().keys(),
                                         "full_adapter").values())
    assert {"conv_in.weight", "body.0.block1.weight", "body.1.block2.weight",
            "body.2.in_conv.weight", "body.7.block2.bias"} <= names
    assert "body.1.in_conv.weight" not in names and "body.0.in_conv.weight" not in names


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "words"), [
    ("task_embedding", "union ControlNet"),
    ("control_add_embedding.linear_1.bias", "SetUnionControlNetType"),
    ("style_embedding", "StyleModelLoader"),
    ("pos_embed_input.proj.weight", "SD3"),
    ("controlnet_x_embedder.weight", "Flux"),
    ("double_blocks.0.img_attn.norm.key_norm.scale", "Flux"),
    ("backbone.0.0.weight", "Stable Cascade"),
    ("after_proj_list.18.bias", "HunyuanDiT"),
    ("model.diffusion_model.input_blocks.0.0.weight", "cannot tell"),
])
def test_other_files_refused(key: str, words: str) -> None:
    """Control models comfyc does not support are named in the error."""
    state = {key: torch.empty(4, 4, device="meta")}
    if words == "SD3":
        state["controlnet_blocks.0.weight"] = torch.empty(4, 4, device="meta")
    with pytest.raises(ModelFormatError, match=words):
        detect_control_model(state)


def test_heads_that_do_not_fit_need_metadata() -> None:
    """A 32-wide attention level fits neither SD1.5's 8 heads rule nor 64 channels per head."""
    state = _ldm(_meta_controlnet(controlnet_config("sd1", "tiny")))
    with pytest.raises(ModelFormatError, match="64 channels per head"):
        detect_control_model(state)
    exact = {"comfyc.config": json.dumps(controlnet_config("sd1", "tiny"))}
    assert detect_control_model(state, metadata=exact).config["attention_head_dim"] == 8


def test_global_average_pooling_from_the_name() -> None:
    """ComfyUI's rule: the name without extension ends with _shuffle or _shuffle_fp16."""
    assert uses_global_average_pooling("models/control_v11e_sd15_shuffle.safetensors")
    assert uses_global_average_pooling("control_v11e_sd15_shuffle_fp16.pth")
    assert not uses_global_average_pooling("shuffle_control.safetensors")
    assert not uses_global_average_pooling("control_shuffled.safetensors")


# -- tiny files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny ControlNets and adapters (float32) in every layout, and their checkpoints."""
    from comfyc.compiler.models.synthetic import tiny_checkpoint

    root = tmp_path_factory.mktemp("control")
    out: dict[str, Path] = {}
    for family in ("sd1", "sdxl"):
        for layout in ("comfy", "diffusers", "folder"):
            suffix = "" if layout == "folder" else ".safetensors"
            out[f"cn_{family}_{layout}"] = write_controlnet(
                root / f"cn_{family}_{layout}{suffix}", family, "tiny", seed=3, layout=layout,
                dtype=torch.float32, jitter=0.05)
        kinds = ("full", "light") if family == "sd1" else ("full",)
        for kind in kinds:
            for layout in ("comfy", "diffusers", "folder"):
                suffix = "" if layout == "folder" else ".safetensors"
                out[f"t2i_{family}_{kind}_{layout}"] = write_t2i_adapter(
                    root / f"t2i_{family}_{kind}_{layout}{suffix}", family, "tiny", seed=4,
                    layout=layout, kind=kind, dtype=torch.float32, jitter=0.05)
        out[f"ckpt_{family}"] = tiny_checkpoint("sd15" if family == "sd1" else "sdxl",
                                                directory=root)
    return out


def _values(loaded: Any) -> dict[str, Any]:
    return loaded.module.state_dict()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_controlnet_layouts_hold_the_same_values(files: dict[str, Path], family: str) -> None:
    """ComfyUI names (control_model. and bare), diffusers names and the folder load equal."""
    from safetensors.torch import load_file, save_file

    reference = load_controlnet(files[f"cn_{family}_comfy"])
    assert isinstance(reference, LoadedControlNet) and reference.family == family
    assert reference.detected.layout == "comfy"
    want = _values(reference)
    for layout in ("diffusers", "folder"):
        other = load_controlnet(files[f"cn_{family}_{layout}"])
        assert other.detected.layout == layout
        got = _values(other)
        assert all(torch.equal(want[k], got[k]) for k in want), layout
    # NOTE: bare names (no control_model.) with the same metadata load the same weights too.
    path = files[f"cn_{family}_comfy"]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    bare = path.with_name(f"bare_{family}.safetensors")
    save_file({k[len(CONTROL_PREFIX):]: v for k, v in load_file(str(path)).items()}, str(bare),
              metadata)
    got = _values(load_controlnet(bare))
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_comfy_layout_names(files: dict[str, Path]) -> None:
    """The ComfyUI layout holds exactly ComfyUI's ControlNet names."""
    from safetensors.torch import load_file

    names = set(load_file(str(files["cn_sdxl_comfy"])))
    assert {"control_model.input_hint_block.0.weight", "control_model.input_hint_block.14.bias",
            "control_model.zero_convs.0.0.weight", "control_model.middle_block_out.0.weight",
            "control_model.label_emb.0.0.weight", "control_model.time_embed.2.bias",
            "control_model.middle_block.1.transformer_blocks.1.attn2.to_k.weight"} <= names
    zero_convs = {n for n in names if ".zero_convs." in n and n.endswith(".weight")}
    assert len(zero_convs) == load_controlnet(files["cn_sdxl_comfy"]).residual_count == 6


@pytest.mark.parametrize(("family", "kind"), [("sd1", "full"), ("sd1", "light"),
                                              ("sdxl", "full")])
def test_adapter_layouts_hold_the_same_values(files: dict[str, Path], family: str,
                                              kind: str) -> None:
    """TencentARC names, diffusers names (ComfyUI: full adapters only), a {"adapter": ...}
    pickle and the folder load equal."""
    reference = load_controlnet(files[f"t2i_{family}_{kind}_comfy"])
    assert isinstance(reference, LoadedT2IAdapter) and reference.family == family
    want = _values(reference)
    paths = [files[f"t2i_{family}_{kind}_folder"], files[f"t2i_{family}_{kind}_diffusers"]]
    from safetensors.torch import load_file

    pickle = files[f"t2i_{family}_{kind}_comfy"].with_suffix(".pth")
    torch.save({"adapter": load_file(str(files[f"t2i_{family}_{kind}_comfy"]))}, pickle)
    paths.append(pickle)
    for path in paths:
        got = _values(load_controlnet(path))
        assert all(torch.equal(want[k], got[k]) for k in want), path.name


def test_synthetic_files_are_deterministic(tmp_path: Path) -> None:
    """Same seed -> same bytes; another seed -> other values."""
    a = write_controlnet(tmp_path / "a.safetensors", "sd1", seed=7)
    b = write_controlnet(tmp_path / "b.safetensors", "sd1", seed=7)
    c = write_t2i_adapter(tmp_path / "c.safetensors", "sdxl", seed=7)
    d = write_t2i_adapter(tmp_path / "d.safetensors", "sdxl", seed=7)
    e = write_t2i_adapter(tmp_path / "e.safetensors", "sdxl", seed=8)
    assert a.read_bytes() == b.read_bytes() and c.read_bytes() == d.read_bytes()
    assert c.read_bytes() != e.read_bytes()


# -- the stages ----------------------------------------------------------------------------------


def _inputs(loaded: LoadedControlNet, batch: int = 2, height: int = 5, width: int = 7,
            seed: int = 0) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "x": torch.randn(batch, 4, height, width, generator=generator),
        "hint": torch.rand(1, 3, 8 * height, 8 * width, generator=generator),
        "timestep": torch.tensor([981.0, 41.0][:batch]),
        "context": torch.randn(batch, 9, loaded.context_dim, generator=generator),
    }
    if loaded.adm_in_channels is not None:
        inputs["y"] = torch.randn(batch, loaded.adm_in_channels, generator=generator)
    return inputs


def test_sd1_stage_is_the_diffusers_module(files: dict[str, Path]) -> None:
    """ControlNetStage returns diffusers' down residuals then the mid residual, unchanged."""
    loaded = load_controlnet(files["cn_sd1_comfy"])
    stage = loaded.stage()
    assert isinstance(stage, ControlNetStage)
    inputs = _inputs(loaded)
    with torch.no_grad():
        ours = stage(**inputs)
        down, mid = loaded.module(inputs["x"], inputs["timestep"],
                                  encoder_hidden_states=inputs["context"],
                                  controlnet_cond=inputs["hint"], return_dict=False)
    assert len(ours) == loaded.residual_count + 1 == len(stage.output_names())
    assert all(torch.equal(a, b) for a, b in zip(ours, (*down, mid)))
    assert [tuple(r.shape) for r in ours] == loaded.residual_shapes(2, 5, 7)
    assert float(ours[-1].abs().mean()) > 0.01


def test_sdxl_stage_takes_comfyui_adm_vector(files: dict[str, Path]) -> None:
    """y = [pooled | E(ids)] gives what diffusers computes from text_embeds and time_ids."""
    from comfyc.compiler.models.sdxl import adm_vector

    loaded = load_controlnet(files["cn_sdxl_comfy"])
    inputs = _inputs(loaded)
    pooled = torch.randn(2, 128, generator=torch.Generator().manual_seed(1))
    ids = dict(height=40, width=56, crop_h=0, crop_w=8, target_height=40, target_width=56)
    inputs["y"] = adm_vector(pooled, "sdxl", **ids)
    time_ids = torch.tensor([list(ids.values())] * 2, dtype=torch.float32)
    with torch.no_grad():
        ours = loaded.stage()(**inputs)
        down, mid = loaded.module(inputs["x"], inputs["timestep"],
                                  encoder_hidden_states=inputs["context"],
                                  controlnet_cond=inputs["hint"],
                                  added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
                                  return_dict=False)
    assert max(float((a - b).abs().max()) for a, b in zip(ours, (*down, mid))) < 1e-5
    with pytest.raises(ValueError, match="ADM vector"):
        loaded.stage()(inputs["x"], inputs["hint"], inputs["timestep"], inputs["context"])


def test_global_average_pooling_stage(files: dict[str, Path], tmp_path: Path) -> None:
    """A *_shuffle file's residuals are their spatial means at full size (ComfyUI's repeat)."""
    import shutil

    shuffle = tmp_path / "control_sd15_shuffle.safetensors"
    shutil.copy(files["cn_sd1_comfy"], shuffle)
    pooled = load_controlnet(shuffle)
    plain = load_controlnet(files["cn_sd1_comfy"])
    assert pooled.global_average_pooling and not plain.global_average_pooling
    inputs = _inputs(plain)
    with torch.no_grad():
        want = plain.stage()(**inputs)
        got = pooled.stage()(**inputs)
    for a, b in zip(want, got):
        assert b.shape == a.shape
        assert torch.allclose(b, a.mean(dim=(2, 3), keepdim=True).expand_as(a), atol=1e-6)
    assert not load_controlnet(shuffle, global_average_pooling=False).global_average_pooling


def _comfy_adapter_reference(adapter: Any, hint: Any) -> list[Any]:
    """TencentARC/ComfyUI's adapter forward written out: 2x2 average pooling with padding
    (h % 2, w % 2) (torch's count_include_pad) where diffusers uses ceil_mode."""
    inner = adapter.module.adapter
    x = inner.unshuffle(hint)
    if adapter.adapter_type != "light_adapter":
        x = inner.conv_in(x)
    features = []
    for block in inner.body:
        if block.downsample is not None:
            x = torch.nn.functional.avg_pool2d(x, 2, 2, padding=(x.shape[2] % 2, x.shape[3] % 2))
        if block.in_conv is not None:
            x = block.in_conv(x)
        x = block.resnets(x)
        if adapter.adapter_type == "light_adapter":
            x = block.out_conv(x)
        features.append(x)
    return features


@pytest.mark.parametrize(("name", "sizes"), [
    ("t2i_sd1_full_comfy", [(64, 64), (72, 88), (40, 56)]),
    ("t2i_sd1_light_comfy", [(64, 64), (72, 88)]),
    ("t2i_sdxl_full_comfy", [(64, 64), (80, 112), (48, 48)]),
])
def test_adapter_stage(files: dict[str, Path], name: str, sizes: list[tuple[int, int]]) -> None:
    """Features equal diffusers' at even sizes and ComfyUI's pooling at odd ones."""
    adapter = load_controlnet(files[name])
    stage = adapter.stage()
    generator = torch.Generator().manual_seed(2)
    for height, width in sizes:
        hint = torch.rand(1, 3, height, width, generator=generator)
        with torch.no_grad():
            ours = stage(hint)
            want = _comfy_adapter_reference(adapter, hint)
            theirs = adapter.module(hint)
        assert [f.shape[1] for f in ours] == adapter.feature_channels
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, want)), (height, width)
        latent = (height // 8, width // 8)
        if all(n % 16 == 0 for n in latent):
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_one_channel_adapter_averages_rgb(tmp_path: Path) -> None:
    """A canny/sketch adapter (1 input channel) reads the mean of an RGB hint, as ComfyUI."""
    path = write_t2i_adapter(tmp_path / "canny.safetensors", "sd1", in_channels=1,
                             dtype=torch.float32)
    adapter = load_controlnet(path)
    assert adapter.input_channels == 1
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = adapter.stage()(hint)
        want = adapter.module(hint.mean(dim=1, keepdim=True))
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_adapter_stage_trace_keeps_odd_sizes(files: dict[str, Path]) -> None:
    """A trace at one size pads odd sizes right at others (the pad amounts are traced)."""
    import warnings

    stage = load_controlnet(files["t2i_sd1_full_comfy"]).stage()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NOTE: the tracer's shape-to-int warnings
        traced = torch.jit.trace(stage, (torch.rand(1, 3, 72, 88),), check_trace=False)
    for height, width in ((64, 64), (40, 104)):
        hint = torch.rand(1, 3, height, width)
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(traced(hint), stage(hint)))


def test_adapter_hint_size() -> None:
    """T2IAdapter.scale_image_to: latent x 8 rounded up to the unshuffle factor."""
    sd1 = LoadedT2IAdapter(_meta_adapter(T2I_SD15), None)  # type: ignore[arg-type]
    xl = LoadedT2IAdapter(_meta_adapter(T2I_SDXL), None)  # type: ignore[arg-type]
    assert sd1.hint_size(61, 60) == (488, 480)
    assert xl.hint_size(61, 60) == (496, 480)
    assert xl.feature_channels == [320, 640, 1280, 1280]
    assert LoadedT2IAdapter(_meta_adapter(T2I_LIGHT), None).feature_channels == [  # type: ignore
        320, 640, 1280, 1280]


# -- with a UNet ---------------------------------------------------------------------------------


def test_residuals_fit_the_tiny_unets(files: dict[str, Path]) -> None:
    """The tiny ControlNets' residuals have the tiny UNets' skip shapes (odd latent sizes too)."""
    from comfyc.compiler.models.sdxl import SdxlUNet
    from comfyc.compiler.models.single_file import load_checkpoint

    for family in ("sd1", "sdxl"):
        checkpoint = load_checkpoint(files[f"ckpt_{family}"])
        controlnet = load_controlnet(files[f"cn_{family}_comfy"])
        inputs = _inputs(controlnet, height=5, width=7)
        with torch.no_grad():
            residuals = controlnet.stage()(**inputs)
            extra = {"down_block_additional_residuals": residuals[:-1],
                     "mid_block_additional_residual": residuals[-1]}
            if family == "sdxl":
                out = SdxlUNet(checkpoint.unet)(inputs["x"], inputs["timestep"],
                                                inputs["context"], inputs["y"], **extra)
                plain = SdxlUNet(checkpoint.unet)(inputs["x"], inputs["timestep"],
                                                  inputs["context"], inputs["y"])
            else:
                out = checkpoint.unet(inputs["x"], inputs["timestep"], inputs["context"],
                                      **extra).sample
                plain = checkpoint.unet(inputs["x"], inputs["timestep"],
                                        inputs["context"]).sample
        assert out.shape == inputs["x"].shape and not torch.allclose(out, plain)


def test_adapters_fit_host_unets(tmp_path: Path, files: dict[str, Path]) -> None:
    """The tiny adapters fit the host UNets (2 resnets per level), not the tiny UNets."""
    from diffusers import UNet2DConditionModel

    from comfyc.compiler.models.single_file import load_checkpoint

    for family, name in (("sd1", "t2i_sd1_full_comfy"), ("sdxl", "t2i_sdxl_full_comfy")):
        adapter = load_controlnet(files[name])
        assert isinstance(adapter, LoadedT2IAdapter)
        with pytest.raises(ModelFormatError, match="2 resnets"):
            check_adapter_fits(adapter, load_checkpoint(files[f"ckpt_{family}"]).unet)
        host = UNet2DConditionModel.from_config(adapter_host_unet_config(family))
        check_adapter_fits(adapter, host)
    light = load_controlnet(files["t2i_sd1_light_comfy"])
    assert isinstance(light, LoadedT2IAdapter)
    check_adapter_fits(light, UNet2DConditionModel.from_config(adapter_host_unet_config("sd1")))
    path = write_adapter_host_checkpoint(tmp_path / "host.safetensors", "sd1",
                                         dtype=torch.float32)
    unet = load_checkpoint(path).unet
    features = load_controlnet(files["t2i_sd1_full_comfy"]).stage()(torch.rand(1, 3, 40, 56))
    context = torch.randn(1, 7, unet.config.cross_attention_dim)
    with torch.no_grad():
        out = unet(torch.randn(1, 4, 5, 7), 10.0, context,
                   down_intrablock_additional_residuals=list(features)).sample
    assert out.shape == (1, 4, 5, 7)


def test_diff_controlnet_adds_the_model(files: dict[str, Path], tmp_path: Path) -> None:
    """DiffControlNetLoader: deltas + the MODEL's UNet weights = the plain ControlNet."""
    from comfyc.compiler.models.single_file import load_checkpoint

    path = write_controlnet(tmp_path / "diff.safetensors", "sd1", seed=3, jitter=0.05,
                            dtype=torch.float32, variant="diff", base=files["ckpt_sd1"])
    with pytest.raises(ModelFormatError, match="DiffControlNetLoader"):
        load_controlnet(path)
    unet = load_checkpoint(files["ckpt_sd1"]).unet
    loaded = load_controlnet(path, unet=unet)
    assert loaded.detected.variant == "diff"
    want = _values(load_controlnet(files["cn_sd1_comfy"]))
    got = _values(loaded)
    assert max(float((want[k] - got[k]).abs().max()) for k in want) < 1e-5


def test_control_lora(files: dict[str, Path], tmp_path: Path) -> None:
    """A Control-LoRA is the MODEL's UNet + the file's weights + up @ down per layer."""
    from safetensors.torch import load_file

    from comfyc.compiler.models.keymap import unet_diffusers_to_ldm_map
    from comfyc.compiler.models.single_file import load_checkpoint

    path = write_controlnet(tmp_path / "lora.safetensors", "sdxl", seed=3, dtype=torch.float32,
                            variant="control_lora", base=files["ckpt_sdxl"], rank=2)
    with pytest.raises(ModelFormatError, match="Control-LoRA"):
        load_controlnet(path)
    unet = load_checkpoint(files["ckpt_sdxl"]).unet
    loaded = load_controlnet(path, unet=unet)
    assert loaded.detected.variant == "control_lora" and loaded.adm_in_channels == 1664
    assert loaded.family == "sdxl" and loaded.detected.config is not None
    state = load_file(str(path))
    base = {unet_diffusers_to_ldm_map(unet.state_dict().keys())[k]: v
            for k, v in unet.state_dict().items()}
    mapping = controlnet_diffusers_to_ldm_map(loaded.module.state_dict().keys())
    checked = 0
    for key, value in loaded.module.state_dict().items():
        name = mapping[key]
        layer = name[: -len(".weight")]
        if layer + ".up" in state:
            up, down = state[layer + ".up"].flatten(1), state[layer + ".down"].flatten(1)
            want = base[name] + (up @ down).reshape(base[name].shape)
            checked += 1
        else:
            want = state.get(name, base.get(name))
        assert torch.allclose(value, want, atol=1e-6), name
    assert checked > 20
    assert float(loaded.stage()(**_inputs(loaded))[0].abs().mean()) > 0


def test_sdxl_adapter_features_need_the_unet_batch(tmp_path: Path, files: dict[str, Path]) -> None:
    """diffusers adds the SDXL adapter's mid feature only at the UNet's batch (docstring, 8)."""
    from comfyc.compiler.models.sdxl import SdxlUNet
    from comfyc.compiler.models.single_file import load_checkpoint

    path = write_adapter_host_checkpoint(tmp_path / "host_xl.safetensors", "sdxl",
                                         dtype=torch.float32)
    unet = SdxlUNet(load_checkpoint(path).unet)
    generator = torch.Generator().manual_seed(5)
    x, context = torch.randn(2, 4, 5, 7, generator=generator), torch.randn(2, 9, 192)
    y, t = torch.randn(2, 1664, generator=generator), torch.tensor([500.0, 20.0])
    features = load_controlnet(files["t2i_sdxl_full_comfy"]).stage()(torch.rand(1, 3, 48, 64))
    with torch.no_grad():
        expanded = unet(x, t, context, y, down_intrablock_additional_residuals=[
            f.expand(2, -1, -1, -1) for f in features])
        no_mid = unet(x, t, context, y, down_intrablock_additional_residuals=[
            *(f.expand(2, -1, -1, -1) for f in features[:3]), torch.zeros(1)])
        batch_one = unet(x, t, context, y, down_intrablock_additional_residuals=list(features))
    assert not torch.allclose(expanded, no_mid)
    assert torch.equal(batch_one, no_mid)


def test_stages_export_to_onnx(files: dict[str, Path], tmp_path: Path) -> None:
    """Both stages export (legacy exporter, dynamic sizes) and run at other sizes in ORT."""
    import warnings

    ort = pytest.importorskip("onnxruntime")
    controlnet = load_controlnet(files["cn_sd1_comfy"])
    adapter = load_controlnet(files["t2i_sd1_full_comfy"])
    cases = [
        (controlnet.stage(), ["x", "hint", "timestep", "context"],
         lambda h, w: list(_inputs(controlnet, height=h, width=w, seed=h).values())),
        (adapter.stage(), ["hint"], lambda h, w: [torch.rand(1, 3, 8 * h, 8 * w)]),
    ]
    for stage, names, make in cases:
        outputs = stage.output_names()
        axes = {n: {0: f"{n}_b", 2: f"{n}_h", 3: f"{n}_w"} for n in (*names, *outputs)
                if n not in ("timestep", "context")}
        axes["context"] = {0: "context_b"}
        axes["timestep"] = {0: "timestep_b"}
        path = tmp_path / f"{names[0]}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(stage, tuple(make(5, 7)), str(path), dynamo=False,
                              opset_version=18, input_names=names, output_names=outputs,
                              dynamic_axes={k: v for k, v in axes.items() if k in
                                            (*names, *outputs)})
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for height, width in ((5, 7), (8, 6)):
            args = make(height, width)
            with torch.no_grad():
                want = stage(*args)
            got = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
            assert max(float(abs(g - w.numpy()).max()) for g, w in zip(got, want)) < 1e-4


def test_make_checkpoints_control(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bench/make_checkpoints.py --control writes ControlNets and adapters that load."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_checkpoints", Path(__file__).parents[3] / "bench" / "make_checkpoints.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["sd1", "sdxl", "--control", "controlnet", "-o", str(tmp_path),
                        "--json"]) == 0
    out = capsys.readouterr().out
    results = json.loads(out[out.index("["):])
    assert [r["family"] for r in results] == ["sd1", "sdxl"]
    assert load_controlnet(results[1]["path"]).family == "sdxl"
    assert module.main(["sd1", "--control", "t2i", "--layout", "folder", "-o",
                        str(tmp_path / "t2i")]) == 0
    assert isinstance(load_controlnet(tmp_path / "t2i"), LoadedT2IAdapter)
    assert module.main(["sd15", "--control", "controlnet"]) == 2
    assert "--control takes the families" in capsys.readouterr().err
