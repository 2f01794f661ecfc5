"""Exported ONNX stages compute what the PyTorch stages compute (tiny random models, CPU ORT).

Tolerances (max abs difference against the PyTorch stage on the same inputs): fp32 1e-4
(measured ≤ 3e-6 on outputs of magnitude ~1.5); fp16 2e-2 (measured ~1.5e-3).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from comfyc.compiler.errors import ExportError
from comfyc.compiler.lowering import onnx_export
from comfyc.compiler.lowering.onnx_export import (
    export_text_encoder,
    export_unet,
    export_vae_decoder,
    export_vae_encoder,
    initializer_names,
    optimize_offline,
)
from comfyc.runtime.backends.ort import (
    OrtTextEncoder,
    OrtUNet,
    OrtVaeDecoder,
    OrtVaeEncoder,
)
from comfyc.runtime.backends.torch import (
    TorchTextEncoder,
    TorchUNet,
    TorchVaeDecoder,
    TorchVaeEncoder,
)

FP32_TOL = 1e-4
FP16_TOL = 2e-2
ORT = {"intra_op_threads": 1}


# --------------------------------------------------------------------------- tiny models
def make_unet() -> Any:
    """A 0.8M-parameter SD1.x-shaped UNet (two levels, one upsampler)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32).eval()


def make_clip() -> Any:
    """A 2-layer CLIP text model with the real vocabulary size."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407)
    return CLIPTextModel(config).eval()


def make_vae() -> Any:
    """A 4-block AutoencoderKL (scale factor 8) with small channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=8,
        latent_channels=4).eval()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models trace fastest on one thread; two spin against other work on a 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet() -> Any:
    return make_unet()


@pytest.fixture(scope="module")
def clip() -> Any:
    return make_clip()


@pytest.fixture(scope="module")
def vae() -> Any:
    return make_vae()


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def dynamic_unet(unet: Any, out: Path) -> dict[str, Any]:
    return export_unet(unet, out / "unet_dyn.onnx", batch=1, height=8, width=8, dynamic=True)


def unet_inputs(batch: int, h: int, w: int, tokens: int = 77, seed: int = 1
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, 4, h, w), dtype=np.float32),
            np.linspace(999.0, 1.0, batch, dtype=np.float32),
            rng.standard_normal((batch, tokens, 32), dtype=np.float32))


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    return float(np.abs(a - b).max())


# --------------------------------------------------------------------------- unet
@pytest.mark.parametrize("size", [(8, 8), (9, 11)], ids=["even-8x8", "odd-9x11"])
def test_unet_static_matches_torch(unet: Any, out: Path, size: tuple[int, int]) -> None:
    """A static UNet export at an even and at an odd latent size matches TorchUNet."""
    h, w = size
    facts = export_unet(unet, out / f"unet_{h}x{w}.onnx", batch=2, height=h, width=w)
    assert facts["inputs"] == [
        {"name": "sample", "shape": [2, 4, h, w], "dtype": "float32"},
        {"name": "timestep", "shape": [2], "dtype": "float32"},
        {"name": "encoder_hidden_states", "shape": [2, 77, 32], "dtype": "float32"}]
    assert facts["outputs"] == [{"name": "out_sample", "shape": [2, 4, h, w],
                                 "dtype": "float32"}]
    assert facts["data_path"] is None and not Path(facts["path"] + ".data").exists()
    args = unet_inputs(2, h, w)
    got = OrtUNet("unet", facts["path"], **ORT)(*args)
    assert max_diff(got, TorchUNet("unet", unet)(*args)) < FP32_TOL


def test_unet_dynamic_runs_at_other_sizes(unet: Any, dynamic_unet: dict[str, Any]) -> None:
    """One dynamic export runs at even and odd sizes, other batches and two prompt chunks."""
    assert dynamic_unet["inputs"][0]["shape"] == ["batch", 4, "height", "width"]
    assert dynamic_unet["inputs"][2]["shape"] == ["batch", "context_len", 32]
    stage = OrtUNet("unet", dynamic_unet["path"], **ORT)
    reference = TorchUNet("unet", unet)
    for batch, h, w, tokens in [(1, 8, 8, 77), (3, 13, 10, 154), (2, 16, 12, 77)]:
        args = unet_inputs(batch, h, w, tokens)
        assert max_diff(stage(*args), reference(*args)) < FP32_TOL, (batch, h, w, tokens)


def test_unet_fp16(unet: Any, out: Path) -> None:
    """The fp16 export stores float16 weights, keeps float32 I/O and matches within 2e-2."""
    facts = export_unet(unet, out / "unet16.onnx", batch=1, height=8, width=8, fp16=True)
    assert facts["weights_dtype"] == "float16"
    assert {io["dtype"] for io in facts["inputs"] + facts["outputs"]} == {"float32"}
    model = onnx.load(facts["path"])
    assert {t.data_type for t in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert next(unet.parameters()).dtype == torch.float32  # the caller's module is untouched
    args = unet_inputs(1, 8, 8)
    stage = OrtUNet("unet", facts["path"], **ORT)
    assert stage.info["weights_dtype"] == "float16"
    assert max_diff(stage(*args), TorchUNet("unet", unet)(*args)) < FP16_TOL


def test_unet_initializers_are_torch_parameter_names(unet: Any,
                                                     dynamic_unet: dict[str, Any]) -> None:
    """Every UNet parameter is an initializer under its own state_dict name."""
    names = initializer_names(dynamic_unet["path"])
    params = {name for name, _ in unet.named_parameters()}
    assert params <= names
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight" in names
    assert dynamic_unet["missing_parameters"] == []
    assert dynamic_unet["parameters"] == len(params)


# --------------------------------------------------------------------------- text encoder
def clip_reference(module: Any, layer: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TorchTextEncoder's output, or the same function written here where it cannot run.

    NOTE: TorchTextEncoder reads ``module.text_model.final_layer_norm``; transformers 5.x
    dropped the ``text_model`` level of CLIPTextModel, so it raises AttributeError there.
    """
    try:
        return TorchTextEncoder("clip", module, layer=layer)(ids)
    except AttributeError:
        with torch.inference_mode():
            result = module(input_ids=torch.from_numpy(ids), output_hidden_states=True)
            layers = len(result.hidden_states) - 1
            index = layer if -layers <= layer < 0 else -1
            norm = getattr(module, "text_model", module).final_layer_norm
            return (norm(result.hidden_states[index]).numpy(),
                    result.pooler_output.numpy())


def prompt_ids(batch: int) -> np.ndarray:
    ids = np.full((batch, 77), 49407, dtype=np.int64)
    ids[:, 0] = 49406
    ids[0, 1:6] = [320, 1125, 539, 320, 2368]  # "a photo of a cat"
    if batch > 1:
        ids[1, 1:3] = [1929, 4353]
    return ids


def test_text_encoder_layers(clip: Any, out: Path) -> None:
    """CLIP layers -1 and -2 give different hidden states, each equal to the torch stage."""
    ids = prompt_ids(3)
    hidden = {}
    for layer in (-1, -2):
        facts = export_text_encoder(clip, out / f"clip{layer}.onnx", layer=layer)
        assert facts["layer"] == layer
        assert facts["inputs"] == [
            {"name": "input_ids", "shape": ["batch", 77], "dtype": "int64"},
            {"name": "embeds", "shape": ["batch", 77, 32], "dtype": "float32"}]
        assert [o["shape"] for o in facts["outputs"]] == [["batch", 77, 32], ["batch", 32]]
        stage = OrtTextEncoder("clip", facts["path"], **ORT)
        assert stage.info["clip_layer"] == str(layer)
        got, pooled = stage(ids)
        want, want_pooled = clip_reference(clip, layer, ids)
        assert max_diff(got, want) < FP32_TOL and max_diff(pooled, want_pooled) < FP32_TOL
        hidden[layer] = got
    assert np.abs(hidden[-1] - hidden[-2]).max() > 0.1


def test_text_encoder_splices_textual_inversion_vectors(clip: Any, out: Path) -> None:
    """Where an id is -1 the exported encoder takes the ``embeds`` vector instead of the
    token embedding: a vector equal to a token's embedding row gives that token's output
    (last and pooled), another vector changes it, and ONNX equals the torch stage."""
    facts = export_text_encoder(clip, out / "clip_ti.onnx", layer=-1)
    stage = OrtTextEncoder("clip", facts["path"], **ORT)
    torch_stage = TorchTextEncoder("clip", clip, layer=-1)
    table = clip.get_input_embeddings().weight.detach().numpy()
    ids = prompt_ids(2)
    spliced = ids.copy()
    spliced[:, 2] = -1  # "photo" and the second prompt's token at 2 come from embeds
    embeds = np.zeros((2, 77, 32), np.float32)
    embeds[:, 2] = table[ids[:, 2]]
    plain, plain_pooled = stage(ids)
    got, got_pooled = stage(spliced, embeds)
    assert max_diff(got, plain) < FP32_TOL and max_diff(got_pooled, plain_pooled) < FP32_TOL
    want, want_pooled = torch_stage(spliced, embeds)
    assert max_diff(got, want) < FP32_TOL and max_diff(got_pooled, want_pooled) < FP32_TOL
    embeds[0, 2] = table[2368]  # "cat" in place of "photo" in the first row only
    other, _ = stage(spliced, embeds)
    assert np.abs(other[0, 2:] - plain[0, 2:]).max() > 1e-3  # later tokens attend to it
    assert max_diff(other[0, :2], plain[0, :2]) < FP32_TOL  # causal: earlier ones do not
    assert max_diff(other[1], plain[1]) < FP32_TOL


def test_text_encoder_fp16(clip: Any, out: Path) -> None:
    """The fp16 text encoder (eager attention in the half copy) loads and matches within 2e-2."""
    facts = export_text_encoder(clip, out / "clip16.onnx", layer=-2, fp16=True)
    assert facts["weights_dtype"] == "float16"
    assert clip.config._attn_implementation == "sdpa"  # the caller's module is untouched
    ids = prompt_ids(2)
    got, pooled = OrtTextEncoder("clip", facts["path"], **ORT)(ids)
    want, want_pooled = clip_reference(clip, -2, ids)
    assert max_diff(got, want) < FP16_TOL and max_diff(pooled, want_pooled) < FP16_TOL


# --------------------------------------------------------------------------- vae
def test_vae_decoder_dynamic(vae: Any, out: Path) -> None:
    """A dynamic VAE decoder export matches TorchVaeDecoder at even and odd latent sizes."""
    facts = export_vae_decoder(vae, out / "vae_decoder.onnx", height=8, width=8, dynamic=True)
    assert facts["outputs"][0]["shape"] == ["batch", 3, "image_height", "image_width"]
    stage, reference = OrtVaeDecoder("vd", facts["path"], **ORT), TorchVaeDecoder("vd", vae)
    rng = np.random.default_rng(2)
    for shape in [(1, 4, 8, 8), (2, 4, 9, 11)]:
        latent = rng.standard_normal(shape, dtype=np.float32)
        got = stage(latent)
        assert got.shape == (shape[0], 3, shape[2] * 8, shape[3] * 8)
        assert max_diff(got, reference(latent)) < FP32_TOL


def test_vae_encoder_static_and_dynamic(vae: Any, out: Path) -> None:
    """Static and dynamic VAE encoder exports give TorchVaeEncoder's posterior mean; progress."""
    lines: list[str] = []
    start = time.perf_counter()
    static = export_vae_encoder(vae, out / "vae_encoder.onnx", height=64, width=64,
                                progress=lines.append)
    assert lines[0].startswith("exporting vae_encoder (static, fp32, example 1x3x64x64)")
    assert any("checking" in line for line in lines) and lines[-1].startswith("vae_encoder done")
    assert 0 < static["export_s"] <= static["seconds"] <= time.perf_counter() - start
    dynamic = export_vae_encoder(vae, out / "vae_encoder_dyn.onnx", height=64, width=64,
                                 dynamic=True)
    assert static["inputs"][0]["shape"] == [1, 3, 64, 64]
    assert static["outputs"][0]["shape"] == [1, 4, 8, 8]
    reference = TorchVaeEncoder("ve", vae)
    rng = np.random.default_rng(3)
    image = rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    assert max_diff(OrtVaeEncoder("ve", static["path"], **ORT)(image), reference(image)) < FP32_TOL
    stage = OrtVaeEncoder("ve", dynamic["path"], **ORT)
    for shape in [(1, 3, 64, 64), (2, 3, 72, 88)]:
        image = rng.uniform(-1, 1, shape).astype(np.float32)
        assert max_diff(stage(image), reference(image)) < FP32_TOL


# --------------------------------------------------------------------------- files
def test_external_data_by_size_and_by_request(vae: Any, out: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights over the threshold go to NAME.onnx.data (also when optimized offline);
    external_data=False makes one file.

    (external_data=True is exercised by the UNet of tests/runtime/backends/test_ort.py.)
    """
    path = out / "ext" / "vae_decoder.onnx"
    data = path.with_name("vae_decoder.onnx.data")
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1000)
    facts = export_vae_decoder(vae, path, height=8, width=8)
    assert facts["data_path"] == str(data) and data.is_file()
    assert path.stat().st_size < 200_000 < data.stat().st_size
    assert facts["file_bytes"] == path.stat().st_size + data.stat().st_size
    onnx.checker.check_model(str(path))
    latent = np.random.default_rng(4).standard_normal((1, 4, 8, 8), dtype=np.float32)
    got = OrtVaeDecoder("vd", path, **ORT)(latent)
    assert max_diff(got, TorchVaeDecoder("vd", vae)(latent)) < FP32_TOL
    optimized = path.with_name("vae_decoder.opt.onnx")
    assert optimize_offline(path, optimized).get("dst") == str(optimized)
    assert path.with_name("vae_decoder.opt.onnx.data").is_file()
    got = OrtVaeDecoder("vd", optimized, optimization_level="disable", **ORT)(latent)
    assert max_diff(got, TorchVaeDecoder("vd", vae)(latent)) < FP32_TOL
    # Re-exporting as one file removes the stale data file.
    facts = export_vae_decoder(vae, path, height=8, width=8, external_data=False)
    assert facts["data_path"] is None and not data.exists()
    assert facts["file_bytes"] == path.stat().st_size


def test_optimize_offline(unet: Any, dynamic_unet: dict[str, Any], out: Path) -> None:
    """The EXTENDED-optimized file loads without optimization and gives the same output."""
    dst = out / "unet_dyn.opt.onnx"
    facts = optimize_offline(dynamic_unet["path"], dst, "extended")
    assert dst.is_file() and facts["level"] == "extended"
    assert isinstance(facts["helped"], bool) and bool(facts) is facts["helped"]
    assert facts["online_create_s"] > 0 and facts["offline_create_s"] > 0
    stage = OrtUNet("unet", dst, optimization_level="disable", **ORT)
    args = unet_inputs(2, 9, 11)
    assert max_diff(stage(*args), TorchUNet("unet", unet)(*args)) < FP32_TOL
    with pytest.raises(ExportError, match="expected one of basic, extended, all"):
        optimize_offline(dynamic_unet["path"], dst, "max")


def test_bad_inputs_raise_export_error(unet: Any, clip: Any, vae: Any, out: Path) -> None:
    """Wrong modules and sizes fail before tracing, saying what was expected."""
    with pytest.raises(ExportError, match="expected a diffusers UNet2DConditionModel"):
        export_unet(vae, out / "x.onnx", batch=1, height=8, width=8)
    with pytest.raises(ExportError, match="expected a transformers CLIPTextModel"):
        export_text_encoder(unet, out / "x.onnx")
    with pytest.raises(ExportError, match="expected a diffusers AutoencoderKL"):
        export_vae_decoder(clip, out / "x.onnx", height=8, width=8)
    with pytest.raises(ExportError, match="65x64 px, expected multiples"):
        export_vae_encoder(vae, out / "x.onnx", height=65, width=64)
    with pytest.raises(ExportError, match="height=0, expected a positive integer"):
        export_unet(unet, out / "x.onnx", batch=1, height=0, width=8)
    assert not (out / "x.onnx").exists()
