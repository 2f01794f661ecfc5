"""SD3/SD3.5 and Flux loading: all-in-one checkpoints, UNETLoader files (weight_dtype, fp8),
text-encoder files and CLIP loader types, VAEs, and ComfyUI's call signature."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from comfyc.compiler.models.errors import ModelFormatError  # noqa: E402
from comfyc.compiler.models.flow import (  # noqa: E402
    FLUX_LATENT_FORMAT,
    SD3_LATENT_FORMAT,
    checkpoint_family,
    diffusion_model_from_weights,
    load_any_checkpoint,
    load_diffusion_model,
    load_flow_checkpoint,
)
from comfyc.compiler.models.single_file import load_vae, read_state_dict  # noqa: E402
from comfyc.compiler.models.synthetic import model_spec  # noqa: E402
from comfyc.compiler.models.text_encoders import load_clip, load_text_encoder  # noqa: E402

_FACTS = {
    # family name: (family, variant, latent format, sampling settings, guidance, encoders)
    "sd3": ("sd3", "sd3_medium", SD3_LATENT_FORMAT, {"shift": 3.0}, False,
            ("clip_l", "clip_g", "t5xxl")),
    "sd35_medium": ("sd3", "sd35_medium", SD3_LATENT_FORMAT, {"shift": 3.0}, False,
                    ("clip_l", "clip_g", "t5xxl")),
    "sd35_large": ("sd3", "sd35_large", SD3_LATENT_FORMAT, {"shift": 3.0}, False,
                   ("clip_l", "clip_g", "t5xxl")),
    "flux_dev": ("flux", "flux_dev", FLUX_LATENT_FORMAT, {}, True, ("clip_l", "t5xxl")),
    "flux_schnell": ("flux_schnell", "flux_schnell", FLUX_LATENT_FORMAT,
                     {"multiplier": 1.0, "shift": 1.0}, False, ("clip_l", "t5xxl")),
}


def _same(a: Any, b: Any) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _call(model: Any, x: torch.Tensor, sigma: float, context: torch.Tensor,
          pooled: torch.Tensor) -> torch.Tensor:
    """ComfyUI's call of the model at noise level sigma (SD3: timestep = sigma * 1000)."""
    batch = x.shape[0]
    with torch.no_grad():
        if model.detected.kind == "sd3":
            return model.comfy_module(x, torch.full((batch,), sigma * 1000.0), context, pooled)
        guidance = torch.full((batch,), 3.5) if model.guidance_embed else None
        return model.comfy_module(x, torch.full((batch,), sigma), context, pooled, guidance)


@pytest.mark.parametrize("name", list(_FACTS))
def test_tiny_checkpoints_load_with_facts(flow_files: dict[str, Path], name: str) -> None:
    """Each tiny all-in-one file loads with ComfyUI's family facts and gives finite,
    prompt-dependent outputs for a 64x64 image (8x8 latent) in well under a second."""
    family, variant, latent, settings, guidance, encoders = _FACTS[name]
    path = flow_files[name]
    assert checkpoint_family(path) == family
    checkpoint = load_any_checkpoint(path)
    model = checkpoint.model
    assert (model.family, model.variant, model.guidance_embed) == (family, variant, guidance)
    assert model.latent_format == latent and checkpoint.latent_format == latent
    assert model.sampling_settings == settings
    sampling = model.model_sampling()
    if family == "flux":
        assert type(sampling).__name__ == "FluxModelSampling" and sampling.shift == 1.15
    else:
        assert type(sampling).__name__ == "FlowModelSampling"
        assert (sampling.shift, sampling.multiplier) == (settings["shift"],
                                                         settings.get("multiplier", 1000.0))
    assert checkpoint.text_encoders.present == encoders
    assert checkpoint.text_encoders.clip_type == ("sd3" if family == "sd3" else "flux")
    spec = model_spec(name, "tiny")
    for key, value in spec.components["transformer"].items():
        assert model.transformer.config[key] == value, key
    vae = checkpoint.vae
    assert (vae.config.scaling_factor, vae.config.shift_factor) == (latent.scale, latent.shift)
    assert not vae.config.use_quant_conv and vae.config.latent_channels == 16
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 8, 8, generator=generator)
    context = torch.randn(1, 80, model.context_dim, generator=generator).repeat(2, 1, 1)
    context[1, :4] += 1.0
    pooled = torch.randn(2, model.pooled_dim, generator=generator)
    torch.set_num_threads(1)
    start = time.perf_counter()
    out = _call(model, x, 0.7, context, pooled)
    seconds = time.perf_counter() - start
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert 0.05 < float(out.std()) < 20 and not torch.allclose(out[0], out[1])
    assert seconds < 1.0, seconds
    with torch.no_grad():
        image = vae.decode(latent.process_out(x[:1])).sample
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_wrappers_equal_diffusers_calls(flow_files: dict[str, Path]) -> None:
    """The ComfyUI-signature wrappers equal diffusers' own calls: SD3 directly; Flux with the
    pipeline's packing and position ids. Odd latent sizes are padded and cropped."""
    from diffusers import FluxPipeline

    generator = torch.Generator().manual_seed(1)
    sd3 = load_flow_checkpoint(flow_files["sd35_medium"]).model
    x = torch.randn(1, 16, 8, 12, generator=generator)
    context = torch.randn(1, 90, sd3.context_dim, generator=generator)
    pooled = torch.randn(1, sd3.pooled_dim, generator=generator)
    with torch.no_grad():
        want = sd3.transformer(hidden_states=x, encoder_hidden_states=context,
                               pooled_projections=pooled, timestep=torch.tensor([640.0])).sample
    assert torch.equal(_call(sd3, x, 0.64, context, pooled), want)
    flux = load_flow_checkpoint(flow_files["flux_dev"]).model
    context = torch.randn(1, 256, flux.context_dim, generator=generator)
    pooled = torch.randn(1, flux.pooled_dim, generator=generator)
    packed = FluxPipeline._pack_latents(x, 1, 16, 8, 12)
    ids = FluxPipeline._prepare_latent_image_ids(1, 4, 6, x.device, x.dtype)
    with torch.no_grad():
        out = flux.transformer(hidden_states=packed, encoder_hidden_states=context,
                               pooled_projections=pooled, timestep=torch.tensor([0.64]),
                               guidance=torch.tensor([3.5]), img_ids=ids,
                               txt_ids=torch.zeros(256, 3)).sample
    want = FluxPipeline._unpack_latents(out, 64, 96, 8)
    assert torch.allclose(_call(flux, x, 0.64, context, pooled), want, atol=1e-6)
    odd = torch.randn(1, 16, 7, 9, generator=generator)
    assert _call(flux, odd, 0.5, context, pooled).shape == odd.shape
    assert _call(sd3, odd, 0.5, torch.randn(1, 5, sd3.context_dim), torch.randn(
        1, sd3.pooled_dim)).shape == odd.shape
    with pytest.raises(ValueError, match="guidance"):
        flux.comfy_module(x, torch.tensor([0.5]), context, pooled)


@pytest.mark.parametrize("name", ["sd3", "flux_dev"])
def test_split_files_hold_the_checkpoint(flow_files: dict[str, Path],
                                         flow_split: dict[str, dict[str, Path]],
                                         name: str) -> None:
    """UNETLoader, CLIP loaders and VAELoader on the separate files give the checkpoint's
    modules, with the encoders detected per file and the VAE's latent format from metadata."""
    checkpoint = load_flow_checkpoint(flow_files[name])
    files = flow_split[name]
    assert files["diffusion_model"].parent.name == "diffusion_models"
    model = load_diffusion_model(files["diffusion_model"])
    assert _same(model.transformer, checkpoint.model.transformer)
    assert model.family == checkpoint.family
    names = ("clip_l", "clip_g", "t5xxl") if name == "sd3" else ("clip_l", "t5xxl")
    for encoder in names:
        loaded = load_text_encoder(files[encoder])
        assert loaded.kind == encoder
        assert _same(loaded.module, getattr(checkpoint.text_encoders, encoder).module)
    clip_type = "sd3" if name == "sd3" else "flux"
    paths = [files[n] for n in reversed(names)]  # NOTE: the order of files does not matter
    encoders = load_clip(paths, clip_type)
    assert encoders.clip_type == clip_type and encoders.present == names
    vae = load_vae(files["vae"])
    assert _same(vae, checkpoint.vae)
    assert vae.config.scaling_factor == checkpoint.latent_format.scale
    assert load_vae(flow_files[name]).config.shift_factor == checkpoint.latent_format.shift


def test_clip_loader_types(flow_split: dict[str, dict[str, Path]]) -> None:
    """CLIPLoader with one SD3 encoder; type checks as ComfyUI's recipes."""
    sd3 = flow_split["sd3"]
    only_t5 = load_clip(sd3["t5xxl"], "sd3")
    assert only_t5.present == ("t5xxl",) and only_t5.t5_min_length == 77
    assert load_clip([sd3["clip_l"], sd3["clip_g"]], "sdxl").present == ("clip_l", "clip_g")
    with pytest.raises(ModelFormatError, match="type 'flux' takes"):
        load_clip([sd3["clip_g"], sd3["t5xxl"]], "flux")
    with pytest.raises(ModelFormatError, match="not supported"):
        load_clip(sd3["t5xxl"], "wan")
    with pytest.raises(ModelFormatError, match="repeat"):
        load_clip([sd3["t5xxl"], sd3["t5xxl"]], "sd3")


def test_unetloader_layouts(flow_files: dict[str, Path], tmp_path: Path) -> None:
    """A prefixed diffusion-model file and ComfyUI's '*_norm.weight' Flux names load the same;
    UNet files, extra and missing weights are clear errors."""
    from safetensors.torch import save_file

    state, metadata = read_state_dict(flow_files["flux_dev"])
    reference = load_flow_checkpoint(flow_files["flux_dev"]).model
    prefixed = {k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    save_file(prefixed, str(tmp_path / "prefixed.safetensors"), metadata=metadata)
    assert _same(load_diffusion_model(tmp_path / "prefixed.safetensors").transformer,
                 reference.transformer)
    bare = {k[len("model.diffusion_model."):]: v for k, v in prefixed.items()}
    comfy = {k.replace("_norm.scale", "_norm.weight"): v for k, v in bare.items()}
    assert any(k.endswith("query_norm.weight") for k in comfy)
    model = diffusion_model_from_weights(comfy, metadata)
    assert _same(model.transformer, reference.transformer)
    with pytest.raises(ModelFormatError, match="does not use"):
        diffusion_model_from_weights({**bare, "extra.weight": torch.zeros(1)}, metadata)
    missing = dict(bare)
    del missing["txt_in.bias"]
    with pytest.raises(ModelFormatError, match="lacks weight 'txt_in.bias'"):
        diffusion_model_from_weights(missing, metadata)
    with pytest.raises(ModelFormatError, match="neither SD3/SD3.5 nor Flux"):
        diffusion_model_from_weights({"input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)})
    with pytest.raises(ModelFormatError, match="weight_dtype"):
        diffusion_model_from_weights(bare, metadata, weight_dtype="int8")


def test_fp8_files_and_weight_dtype(flow_files: dict[str, Path], tmp_path: Path) -> None:
    """fp8 files are read and upcast; weight_dtype rounds through fp8 as ComfyUI stores weights;
    ComfyUI's scaled fp8 (scale_weight, _quantization_metadata) is dequantized."""
    from safetensors.torch import save_file

    from comfyc.compiler.models.synthetic import write_checkpoint

    fp8 = write_checkpoint(tmp_path / "fp8.safetensors", "flux_dev", "tiny",
                           dtype=torch.float8_e4m3fn, jitter=0.05)
    from_fp8 = load_flow_checkpoint(fp8)
    assert "float8_e4m3fn" in from_fp8.model.file_dtypes
    rounded = load_diffusion_model(flow_files["flux_dev"], weight_dtype="fp8_e4m3fn")
    assert rounded.weight_dtype == "fp8_e4m3fn"
    assert _same(from_fp8.model.transformer, rounded.transformer)
    assert _same(load_diffusion_model(flow_files["flux_dev"],
                                      weight_dtype="fp8_e4m3fn_fast").transformer,
                 rounded.transformer)
    e5m2 = load_diffusion_model(flow_files["flux_dev"], weight_dtype="fp8_e5m2")
    assert not _same(e5m2.transformer, rounded.transformer)
    t5 = from_fp8.text_encoders.t5xxl
    assert t5.file_dtypes == frozenset({"float8_e4m3fn"})
    assert t5.module.shared.weight.dtype == torch.float32

    state, metadata = read_state_dict(flow_files["sd3"])
    bare = {k[len("model.diffusion_model."):]: v for k, v in state.items()
            if k.startswith("model.diffusion_model.")}
    scaled: dict[str, torch.Tensor] = {"scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn)}
    want = dict(bare)
    for key, value in bare.items():
        if key.endswith(".weight") and value.ndim == 2:
            scale = value.abs().max() / 448.0
            quantized = (value / scale).to(torch.float8_e4m3fn)
            layer = key[: -len(".weight")]
            scaled[key] = quantized
            scaled[f"{layer}.scale_weight"] = scale.reshape(())
            scaled[f"{layer}.scale_input"] = torch.ones(())
            want[key] = quantized.float() * scale
        else:
            scaled[key] = value
    save_file(scaled, str(tmp_path / "scaled.safetensors"), metadata=metadata)
    expected = diffusion_model_from_weights(want, metadata)
    assert _same(load_diffusion_model(tmp_path / "scaled.safetensors").transformer,
                 expected.transformer)
    layers = {}
    modern = {}
    for key, value in scaled.items():
        if key.endswith(".scale_weight"):
            layer = key[: -len(".scale_weight")]
            modern[f"{layer}.weight_scale"] = value
            layers[layer] = {"format": "float8_e4m3fn"}
        elif key not in ("scaled_fp8",) and not key.endswith(".scale_input"):
            modern[key] = value
    quant = {**metadata, "_quantization_metadata": json.dumps({"layers": layers})}
    save_file(modern, str(tmp_path / "modern.safetensors"), metadata=quant)
    assert _same(load_diffusion_model(tmp_path / "modern.safetensors").transformer,
                 expected.transformer)
    first = next(iter(layers))
    bad = {**quant, "_quantization_metadata": json.dumps(
        {"layers": {**layers, first: {"format": "nvfp4"}}})}
    save_file(modern, str(tmp_path / "bad.safetensors"), metadata=bad)
    with pytest.raises(ModelFormatError, match="nvfp4"):
        load_diffusion_model(tmp_path / "bad.safetensors")


def test_load_checkpoint_points_to_flow_loader(flow_files: dict[str, Path]) -> None:
    """The SD1/SD2/SDXL loader names the SD3/Flux loader; a UNet file goes the other way."""
    from comfyc.compiler.models.single_file import load_checkpoint

    with pytest.raises(ModelFormatError, match="load_flow_checkpoint"):
        load_checkpoint(flow_files["sd3"])
    with pytest.raises(ModelFormatError, match="load_diffusion_model"):
        from comfyc.compiler.models.flow import flow_checkpoint_from_weights

        state, metadata = read_state_dict(flow_files["sd3"])
        flow_checkpoint_from_weights({k: v for k, v in state.items()
                                      if not k.startswith("model.")}, metadata)
