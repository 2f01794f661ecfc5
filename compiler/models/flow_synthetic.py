"""Seeded random-weight SD3/SD3.5 and Flux models for `comfyc.compiler.models.synthetic`.

Families (all with their VAE and text encoders; the sizes each family registers):

* ``sd3`` - SD3 medium (2.0 B MMDiT, 24 joint blocks at 1536): ``full``, ``tiny``.
* ``sd35_medium`` - SD3.5 medium (dual-attention blocks 0..12, q/k RMS norm, 384 positions):
  ``full``, ``tiny``.
* ``sd35_large`` - SD3.5 large (8.1 B, 38 blocks at 2432, q/k norm): ``full`` (the published
  config; 32 GB in fp32, for detection and meta-device tests), ``large`` (the real width 2432,
  38 heads, 4 joint blocks), ``tiny``.
* ``flux_dev`` / ``flux_schnell`` - Flux.1 (11.9 B, 19 double + 38 single blocks at 3072;
  dev has the guidance embedding): ``full``, ``large`` (the real width 3072, 24 heads,
  2 double + 4 single blocks), ``tiny``.

Text encoders: CLIP-L (123 M) and OpenCLIP bigG (695 M) at their real size for ``full`` and
``large``; T5-XXL v1.1 at full depth (24 layers, 4.8 B) for ``full`` and at the real width with
2 layers (518 M) for ``large``. ``tiny`` shares the structure at small widths: MMDiT 2 blocks at
128 (2 heads of 64; the second block context-"pre-only"), Flux 2 double + 2 single blocks at 256
(2 heads of 128, the rotary axes (16, 56, 56) kept), CLIP-L 64 / bigG 128 wide, T5 256 wide with
2 gated layers (vocabulary 32128), and a 16-channel VAE without quant convolutions; a 64x64
image is an 8x8 latent. SD3's CLIP-L has an identity ``text_projection`` so that diffusers'
pipeline (which projects CLIP-L's pooled output) and ComfyUI (which does not) agree.

Layouts: the single file is ComfyUI's all-in-one checkpoint (``model.diffusion_model.*``,
``first_stage_model.*`` for SD3 / ``vae.*`` for Flux, ``text_encoders.<name>.transformer.*``);
the split files are what UNETLoader, CLIPLoader/DualCLIPLoader/TripleCLIPLoader and VAELoader
read (bare transformer keys, bare text-encoder keys with a ``comfyc.text_encoder`` entry naming
the encoder, bare LDM VAE keys); the diffusers folder opens in ``StableDiffusion3Pipeline`` /
``FluxPipeline``. Every layout holds the same values for one seed (weights are generated per
diffusers name; fused tensors are concatenated from them). comfyc's metadata (``comfyc.config``
with each component's exact config, ``comfyc.family``, ``comfyc.variant``) lets the tiny and
large models load exactly; ComfyUI loads the ``full`` and ``tiny`` single files by shape (the
``large`` MMDiT has fewer blocks than hidden / 64, which ComfyUI's MMDiT cannot express).
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from comfyc.compiler.models.dit_keymap import fuse_parts, plans_for
from comfyc.compiler.models.keymap import VAE_PREFIX, vae_diffusers_to_ldm_map, vae_tensor_to_ldm
from comfyc.compiler.models.synthetic import (
    _CLIP_BIGG,
    _CLIP_L,
    _SD_VAE,
    _TINY_CLIP_BIGG,
    _TINY_CLIP_L,
    _TINY_VAE,
    InitRule,
    ModelSpec,
    SyntheticFamily,
    TensorGroup,
    _component_file,
    _one_to_one,
    _Source,
    register_family,
    write_safetensors_stream,
)
from comfyc.compiler.models.t5 import T5XXL_CONFIG

__all__ = [
    "FLOW_SYNTHETIC_FAMILIES",
    "build_flow_modules",
    "encoder_names",
    "flow_metadata",
    "flow_single_file_layout",
    "flow_split_layout",
    "register_flow_families",
    "transformer_groups",
    "write_flow_diffusers_layout",
]

#: The registry names this module adds.
FLOW_SYNTHETIC_FAMILIES = ("sd3", "sd35_medium", "sd35_large", "flux_dev", "flux_schnell")
_TEXT_PREFIX = "text_encoders.{}.transformer."
_FLUX_VAE_PREFIX = "vae."
_UNET_PREFIX = "model.diffusion_model."

# -- published and reduced configs ---------------------------------------------------------------

_SD3_MEDIUM = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24,
    "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "out_channels": 16,
    "pos_embed_max_size": 192, "dual_attention_layers": [], "qk_norm": None,
}
_SD35_MEDIUM = {**_SD3_MEDIUM, "pos_embed_max_size": 384,
                "dual_attention_layers": list(range(13)), "qk_norm": "rms_norm"}
_SD35_LARGE = {**_SD3_MEDIUM, "num_layers": 38, "num_attention_heads": 38,
               "caption_projection_dim": 2432, "qk_norm": "rms_norm"}
_SD35_LARGE_REDUCED = {**_SD35_LARGE, "num_layers": 4}
_TINY_SD3 = {
    **_SD3_MEDIUM, "sample_size": 8, "num_layers": 2, "num_attention_heads": 2,
    "caption_projection_dim": 128, "joint_attention_dim": 256,
    "pooled_projection_dim": _TINY_CLIP_L["hidden_size"] + _TINY_CLIP_BIGG["hidden_size"],
    "pos_embed_max_size": 32,
}
_TINY_SD35_MEDIUM = {**_TINY_SD3, "dual_attention_layers": [0], "qk_norm": "rms_norm"}
_TINY_SD35_LARGE = {**_TINY_SD3, "qk_norm": "rms_norm"}
_FLUX_DEV = {
    "patch_size": 1, "in_channels": 64, "out_channels": None, "num_layers": 19,
    "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24,
    "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}
_FLUX_DEV_REDUCED = {**_FLUX_DEV, "num_layers": 2, "num_single_layers": 4}
_TINY_FLUX_DEV = {**_FLUX_DEV, "num_layers": 2, "num_single_layers": 2,
                  "num_attention_heads": 2, "joint_attention_dim": 256,
                  "pooled_projection_dim": _TINY_CLIP_L["hidden_size"]}
_FLOW_VAE = {**_SD_VAE, "latent_channels": 16, "sample_size": 1024, "force_upcast": True,
             "use_quant_conv": False, "use_post_quant_conv": False}
_TINY_FLOW_VAE = {**_TINY_VAE, "latent_channels": 16, "force_upcast": True,
                  "use_quant_conv": False, "use_post_quant_conv": False}
_T5_REDUCED = {**T5XXL_CONFIG, "num_layers": 2}
_TINY_T5 = {**T5XXL_CONFIG, "d_model": 256, "d_kv": 64, "num_heads": 4, "d_ff": 512,
            "num_layers": 2}
# Folder component -> encoder name, per transformer kind (diffusers' pipeline components).
_ENCODERS = {
    "sd3": {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl"},
    "flux": {"text_encoder": "clip_l", "text_encoder_2": "t5xxl"},
}


def _kind(spec: ModelSpec) -> str:
    return "sd3" if spec.family == "sd3" else "flux"


def encoder_names(spec: ModelSpec) -> Mapping[str, str]:
    """Component -> encoder name (``clip_l``, ``clip_g``, ``t5xxl``) of a flow spec."""
    return _ENCODERS[_kind(spec)]


def _vae(base: Mapping[str, Any], family: str) -> dict[str, Any]:
    from comfyc.compiler.models.single_file import vae_family_config

    return {**base, **vae_family_config(family)}


def _sd3_spec(transformer: Mapping[str, Any], vae: Mapping[str, Any], clip_l: Mapping[str, Any],
              clip_g: Mapping[str, Any], t5: Mapping[str, Any], variant: str) -> ModelSpec:
    return ModelSpec("sd3", {
        "transformer": transformer, "vae": _vae(vae, "sd3"), "text_encoder": clip_l,
        "text_encoder_2": clip_g, "text_encoder_3": t5}, prediction_type="flow", variant=variant)


def _flux_spec(transformer: Mapping[str, Any], vae: Mapping[str, Any],
               clip_l: Mapping[str, Any], t5: Mapping[str, Any], schnell: bool) -> ModelSpec:
    family = "flux_schnell" if schnell else "flux"
    if schnell:
        transformer = {**transformer, "guidance_embeds": False}
    return ModelSpec(family, {
        "transformer": transformer, "vae": _vae(vae, family), "text_encoder": clip_l,
        "text_encoder_2": t5}, prediction_type="flow",
        variant="flux_schnell" if schnell else "flux_dev")


# -- modules and weights -------------------------------------------------------------------------


def build_flow_modules(spec: ModelSpec) -> dict[str, Any]:
    """Builds the modules of an SD3/Flux spec on the meta device (component -> module)."""
    from diffusers import AutoencoderKL

    from comfyc.compiler.models.flow import build_transformer
    from comfyc.compiler.models.single_file import build_clip_text_model
    from comfyc.compiler.models.t5 import build_t5_encoder

    kind = _kind(spec)
    modules: dict[str, Any] = {
        "transformer": build_transformer(spec.components["transformer"], kind)}
    with torch.device("meta"):
        modules["vae"] = AutoencoderKL.from_config(dict(spec.components["vae"]))
    for component, name in _ENCODERS[kind].items():
        config = dict(spec.components[component])
        if name == "t5xxl":
            modules[component] = build_t5_encoder(config)
        else:
            # NOTE: SD3's pipeline takes both CLIPs with projections; Flux's CLIP-L has none.
            modules[component] = build_clip_text_model(config, with_projection=kind == "sd3")
    return modules


def _sources(modules: Mapping[str, Any], spec: ModelSpec, seed: int, jitter: float) -> dict[
        str, _Source]:
    sources = {}
    for component, module in modules.items():
        overrides = None
        if _kind(spec) == "sd3" and component == "text_encoder":
            overrides = {"text_projection.weight": InitRule("eye")}
        sources[component] = _Source(component, module, seed, jitter, overrides)
    return sources


def transformer_groups(source: _Source, kind: str, prefix: str) -> Iterator[TensorGroup]:
    """The transformer in the original layout, one group per original tensor (fused parts)."""
    for plan in plans_for(kind)(source.shapes):
        shapes = [source.shapes[p] for p in plan.parts]
        shape = (sum(s[0] for s in shapes), *shapes[0][1:])
        name = prefix + plan.original

        def produce(plan: Any = plan, name: str = name) -> dict[str, torch.Tensor]:
            return {name: fuse_parts(plan, {p: source(p) for p in plan.parts})}

        yield TensorGroup({name: shape}, produce)


def _vae_groups(source: _Source, prefix: str) -> Iterator[TensorGroup]:
    ldm = vae_diffusers_to_ldm_map(source.shapes)
    yield from _one_to_one(source, {k: prefix + v for k, v in ldm.items()}, vae_tensor_to_ldm)


def _text_groups(source: _Source, prefix: str) -> Iterator[TensorGroup]:
    yield from _one_to_one(source, {k: prefix + k for k in source.shapes})


def flow_single_file_layout(modules: Mapping[str, Any], spec: ModelSpec, seed: int,
                            jitter: float = 0.0) -> list[TensorGroup]:
    """The all-in-one checkpoint: transformer, VAE, text encoders (ComfyUI's prefixes)."""
    kind = _kind(spec)
    sources = _sources(modules, spec, seed, jitter)
    groups = list(transformer_groups(sources["transformer"], kind, _UNET_PREFIX))
    groups += _vae_groups(sources["vae"], VAE_PREFIX if kind == "sd3" else _FLUX_VAE_PREFIX)
    for component, name in _ENCODERS[kind].items():
        groups += _text_groups(sources[component], _TEXT_PREFIX.format(name))
    return groups


def _json_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(config)))


def flow_metadata(modules: Mapping[str, Any], spec: ModelSpec) -> dict[str, str]:
    """The all-in-one file's metadata: exact configs, family and variant."""
    configs: dict[str, Any] = {"transformer": _json_config(spec.components["transformer"]),
                               "vae": _json_config(spec.components["vae"])}
    for component, name in _ENCODERS[_kind(spec)].items():
        configs[f"text_encoders.{name}"] = _json_config(spec.components[component])
    return {"format": "pt", "comfyc.config": json.dumps(configs, sort_keys=True),
            "comfyc.family": spec.family, "comfyc.variant": spec.variant or ""}


def flow_split_layout(modules: Mapping[str, Any], spec: ModelSpec, seed: int, jitter: float,
                      stem: str) -> dict[str, tuple[str, list[TensorGroup], dict[str, str]]]:
    """The separate files (see the module docstring), named after `stem`."""
    kind = _kind(spec)
    sources = _sources(modules, spec, seed, jitter)
    base = {"format": "pt", "comfyc.family": spec.family}
    out: dict[str, tuple[str, list[TensorGroup], dict[str, str]]] = {}
    transformer = {**base, "comfyc.variant": spec.variant or "", "comfyc.config": json.dumps(
        {"transformer": _json_config(spec.components["transformer"])}, sort_keys=True)}
    out["diffusion_model"] = (f"diffusion_models/{stem}.safetensors",
                              list(transformer_groups(sources["transformer"], kind, "")),
                              transformer)
    for component, name in _ENCODERS[kind].items():
        metadata = {"format": "pt", "comfyc.text_encoder": name, "comfyc.config": json.dumps(
            {"text_encoder": _json_config(spec.components[component])}, sort_keys=True)}
        out[name] = (f"text_encoders/{stem}-{name}.safetensors",
                     list(_text_groups(sources[component], "")), metadata)
    vae = {**base, "comfyc.config": json.dumps({"vae": _json_config(spec.components["vae"])},
                                               sort_keys=True)}
    out["vae"] = (f"vae/{stem}-vae.safetensors", list(_vae_groups(sources["vae"], "")), vae)
    return out


def write_flow_diffusers_layout(modules: Mapping[str, Any], spec: ModelSpec, seed: int,
                                jitter: float, dtype: torch.dtype, directory: Path) -> None:
    """Writes a ``StableDiffusion3Pipeline`` / ``FluxPipeline`` folder, streaming the weights.
    """
    from comfyc.compiler.models.flow_folder import write_folder_files
    from comfyc.compiler.models.single_file import canonical_text_key

    kind = _kind(spec)
    directory.mkdir(parents=True, exist_ok=True)
    for component, source in _sources(modules, spec, seed, jitter).items():
        folder = directory / component
        folder.mkdir(exist_ok=True)
        names = {k: k for k in source.shapes}
        if _ENCODERS[kind].get(component, "t5xxl") != "t5xxl":
            names = {k: canonical_text_key(k) for k in source.shapes}
        write_safetensors_stream(folder / _component_file(component),
                                 list(_one_to_one(source, names)), dtype=dtype,
                                 metadata={"format": "pt"})
        module = modules[component]
        if component.startswith("text_encoder"):
            config = module.config
            config.architectures = [type(module).__name__]
            config.save_pretrained(str(folder))
        else:
            module.save_config(str(folder))
    write_folder_files(directory, kind, spec.family)


# -- registration --------------------------------------------------------------------------------


def register_flow_families() -> None:
    """Adds the SD3/SD3.5 and Flux families to the synthetic registry."""
    common: dict[str, Any] = {
        "build": build_flow_modules, "layout": flow_single_file_layout,
        "write_folder": write_flow_diffusers_layout, "metadata": flow_metadata,
        "split": flow_split_layout,
    }
    full_vae, tiny_vae = _FLOW_VAE, _TINY_FLOW_VAE
    register_family(SyntheticFamily(
        "sd3", {"full": lambda: _sd3_spec(_SD3_MEDIUM, full_vae, _CLIP_L, _CLIP_BIGG,
                                          T5XXL_CONFIG, "sd3_medium"),
                "tiny": lambda: _sd3_spec(_TINY_SD3, tiny_vae, _TINY_CLIP_L, _TINY_CLIP_BIGG,
                                          _TINY_T5, "sd3_medium")},
        "SD3 medium: 2.0B MMDiT, CLIP-L + CLIP-G + T5-XXL, 16-channel VAE", **common))
    register_family(SyntheticFamily(
        "sd35_medium",
        {"full": lambda: _sd3_spec(_SD35_MEDIUM, full_vae, _CLIP_L, _CLIP_BIGG, T5XXL_CONFIG,
                                   "sd35_medium"),
         "tiny": lambda: _sd3_spec(_TINY_SD35_MEDIUM, tiny_vae, _TINY_CLIP_L, _TINY_CLIP_BIGG,
                                   _TINY_T5, "sd35_medium")},
        "SD3.5 medium: 2.5B MMDiT-X (dual attention 0..12, q/k norm), 3 text encoders, VAE",
        **common))
    register_family(SyntheticFamily(
        "sd35_large",
        {"full": lambda: _sd3_spec(_SD35_LARGE, full_vae, _CLIP_L, _CLIP_BIGG, T5XXL_CONFIG,
                                   "sd35_large"),
         "large": lambda: _sd3_spec(_SD35_LARGE_REDUCED, full_vae, _CLIP_L, _CLIP_BIGG,
                                    _T5_REDUCED, "sd35_large"),
         "tiny": lambda: _sd3_spec(_TINY_SD35_LARGE, tiny_vae, _TINY_CLIP_L, _TINY_CLIP_BIGG,
                                   _TINY_T5, "sd35_large")},
        "SD3.5 large: 8.1B MMDiT (large: real width, 4 of 38 blocks; T5 2 of 24 layers)",
        **common))
    for name, schnell in (("flux_dev", False), ("flux_schnell", True)):
        register_family(SyntheticFamily(
            name,
            {"full": lambda s=schnell: _flux_spec(_FLUX_DEV, full_vae, _CLIP_L, T5XXL_CONFIG, s),
             "large": lambda s=schnell: _flux_spec(_FLUX_DEV_REDUCED, full_vae, _CLIP_L,
                                                   _T5_REDUCED, s),
             "tiny": lambda s=schnell: _flux_spec(_TINY_FLUX_DEV, tiny_vae, _TINY_CLIP_L,
                                                  _TINY_T5, s)},
            f"Flux.1 {'schnell' if schnell else 'dev'}: 11.9B transformer (large: real width, "
            "2+4 of 19+38 blocks; T5 2 of 24 layers), CLIP-L + T5-XXL, 16-channel VAE",
            **common))


# NOTE: importing this module before `synthetic` registers the families here (synthetic's own
# registration skips a half-imported module); registering twice replaces equal entries.
register_flow_families()
