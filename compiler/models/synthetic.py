"""Seeded random-weight checkpoints for every supported family, at full and tiny size.

Nothing may be downloaded from a model hub, so tests, benchmarks and the diffusers oracle run on
checkpoints made here: the exact published architectures (``full``: SD1.5's 860M UNet + CLIP-L +
VAE; SDXL's 2.6B UNet + CLIP-L + bigG + VAE; the SDXL refiner; SDXL-Turbo) or small models of the
same structure (``tiny``: both SDXL text encoders, the ADM input, transformer depths > 0, small
widths; a 64x64 image is an 8x8 latent). Files are single ``.safetensors`` checkpoints in the
original layout that `load_checkpoint` (and ComfyUI, for the full sizes) reads, with comfyc's
config metadata; diffusers folders can be written beside them.

Weights are a pure function of ``(seed, component, weight name)``: each tensor has its own
generator seeded from a hash of the three, so a weight does not depend on the order of writing or
on other weights, and a single file and a diffusers folder written with one seed hold the same
values. Initialisation (chosen so that random models give finite, non-degenerate outputs):

* linear and convolution weights: ``normal(0, 1 / sqrt(fan_in))`` (fan_in = in x kh x kw);
* norm weights 1, all biases 0 (``jitter`` > 0 adds ``normal(0, jitter)`` to both, so that tests
  can tell a norm or bias apart from its neighbours);
* token embeddings ``normal(0, 0.02)``, position embeddings ``normal(0, 0.01)``.

Writing streams: the modules are built on the ``meta`` device (shapes only), the header of the
safetensors file is written from those shapes, then each tensor (or each OpenCLIP layer, whose
q/k/v are fused) is generated, cast and appended, so memory stays at about one layer whatever the
model size.

Families live in a registry (`FAMILIES`, `register_family`): a `SyntheticFamily` names its spec
per size, how to build its modules on meta, and how to lay them out in a single file and in a
diffusers folder; SD3, Flux or ControlNet writers can be added the same way.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from comfyc.compiler.models.configs import ADM_TIME_EMBED_DIM, LATENT_SCALE, SDXL_LATENT_SCALE
from comfyc.compiler.models.keymap import (
    CLIP_OPENAI_PREFIX,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    SDXL_REFINER_CLIP_G_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    clip_hf_to_openclip,
    unet_diffusers_to_ldm_map,
    vae_diffusers_to_ldm_map,
    vae_tensor_to_ldm,
)
from comfyc.compiler.models.single_file import (
    build_clip_text_model,
    canonical_text_encoder_state,
    single_file_metadata,
)
from comfyc.runtime.files import make_readable

__all__ = [
    "FAMILIES",
    "GENERATOR_VERSION",
    "SIZES",
    "InitRule",
    "ModelSpec",
    "SyntheticFamily",
    "TensorGroup",
    "build_modules",
    "family_names",
    "init_rules",
    "model_spec",
    "register_family",
    "single_file_layout",
    "synthetic_tensor",
    "tiny_checkpoint",
    "write_checkpoint",
    "write_diffusers_layout",
    "write_safetensors_stream",
    "write_split_files",
]

#: Bumped whenever the generated values change (part of the cached tiny files' names).
GENERATOR_VERSION = 1
#: ``full``: the published architecture; ``large``: the published widths with fewer blocks (for
#: models that do not fit this machine at full depth); ``tiny``: same structure, small widths.
SIZES = ("full", "large", "tiny")
_TOKEN_STD = 0.02
# Norms with a gain only (diffusers' and torch's RMSNorm, T5's layer norm): gain 1.
_NORM_CLASSES = frozenset({"RMSNorm", "T5LayerNorm"})
_POSITION_STD = 0.01
_SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


# -- specs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The architecture of one checkpoint: module configs per component and the facts.

    Attributes:
        family: `LoadedCheckpoint.family` of the result (``sd1``, ``sdxl``, ``sdxl_refiner``).
        components: Component name -> constructor config: ``unet``
            (`UNet2DConditionModel`), ``vae`` (`AutoencoderKL`), ``text_encoder`` and
            ``text_encoder_2`` (`CLIPTextConfig`; the latter with a projection).
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        variant: ``"turbo"`` for SDXL-Turbo, else None.
    """

    family: str
    components: Mapping[str, Mapping[str, Any]]
    prediction_type: str = "epsilon"
    variant: str | None = None


@dataclass(frozen=True, slots=True)
class TensorGroup:
    """Tensors written together: their output names and shapes, and how to make them.

    Attributes:
        shapes: Output name -> shape, in file order.
        produce: Returns ``{output name: tensor}`` for exactly these names (float32 or int64).
        dtypes: Output names whose dtype is fixed (e.g. ``position_ids`` -> int64).
    """

    shapes: dict[str, tuple[int, ...]]
    produce: Callable[[], Mapping[str, torch.Tensor]]
    dtypes: Mapping[str, torch.dtype] = field(default_factory=dict)


Layout = Callable[[Mapping[str, Any], ModelSpec, int, float], list[TensorGroup]]


@dataclass(frozen=True, slots=True)
class SyntheticFamily:
    """A family the writer knows (see the module docstring).

    Attributes:
        name: The CLI name (``sd15``, ``sdxl``, ``flux_dev``, ...).
        specs: Size (``full``, ``large``, ``tiny``) -> function returning the `ModelSpec`.
        description: One line for ``--list``.
        build: Builds the modules of a spec on the meta device (component -> module).
        layout: Single-file layout: ``(modules, spec, seed, jitter) -> [TensorGroup]``.
        write_folder: Writes a diffusers folder ``(modules, spec, seed, jitter, dtype, dir)``,
            or None when the family has none.
        metadata: The single file's safetensors metadata ``(modules, spec) -> dict``; None
            uses the Stable Diffusion writer's (`single_file_metadata`).
        split: The separate files users keep (UNETLoader diffusion model, text encoders, VAE):
            ``(modules, spec, seed, jitter, stem) -> {role: (relative path, groups,
            metadata)}``, or None.
    """

    name: str
    specs: Mapping[str, Callable[[], ModelSpec]]
    description: str
    build: Callable[[ModelSpec], dict[str, Any]]
    layout: Layout
    write_folder: Callable[..., None] | None = None
    metadata: Callable[[Mapping[str, Any], ModelSpec], dict[str, str]] | None = None
    split: Callable[..., dict[str, tuple[str, list[TensorGroup], dict[str, str]]]] | None = None


#: The registry: family name -> `SyntheticFamily`.
FAMILIES: dict[str, SyntheticFamily] = {}


def register_family(family: SyntheticFamily) -> None:
    """Adds (or replaces) a family in `FAMILIES`."""
    FAMILIES[family.name] = family


def family_names() -> list[str]:
    """The registered family names, in registration order."""
    return list(FAMILIES)


def model_spec(family: str, size: str = "tiny") -> ModelSpec:
    """The `ModelSpec` of a registered family at a size.

    Raises:
        ValueError: Unknown family or size (the message lists the known ones).
    """
    entry = FAMILIES.get(family)
    if entry is None:
        raise ValueError(f"unknown family {family!r}; expected one of {family_names()}")
    if size not in entry.specs:
        raise ValueError(f"{family} has sizes {sorted(entry.specs)}, not {size!r}")
    return entry.specs[size]()


# -- the published architectures and their tiny counterparts -------------------------------------

_SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "act_fn": "silu", "sample_size": 512, "scaling_factor": LATENT_SCALE,
}
_SDXL_VAE = {**_SD_VAE, "sample_size": 1024, "scaling_factor": SDXL_LATENT_SCALE,
             "force_upcast": True}
_TINY_VAE = {
    **_SD_VAE, "layers_per_block": 1, "block_out_channels": [32, 32, 64, 64], "sample_size": 64,
}
_CLIP_COMMON = {
    "vocab_size": 49408, "max_position_embeddings": 77, "layer_norm_eps": 1e-5,
    "bos_token_id": 49406, "eos_token_id": 49407,
}
_CLIP_L = {
    **_CLIP_COMMON, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "hidden_act": "quick_gelu", "projection_dim": 768,
    "pad_token_id": 49407,
}
_CLIP_BIGG = {
    **_CLIP_COMMON, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
    "num_attention_heads": 20, "hidden_act": "gelu", "projection_dim": 1280, "pad_token_id": 0,
}
_TINY_CLIP_L = {
    **_CLIP_L, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 3,
    "num_attention_heads": 1, "projection_dim": 64,
}
_TINY_CLIP_BIGG = {
    **_CLIP_BIGG, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
    "num_attention_heads": 2, "projection_dim": 128,
}
_SD15_UNET = {
    "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 768, "attention_head_dim": 8, "use_linear_projection": False,
    "norm_num_groups": 32, "sample_size": 64,
}
_TINY_SD15_UNET = {
    **_SD15_UNET, "layers_per_block": 1, "block_out_channels": [32, 64, 64],
    "down_block_types": ["CrossAttnDownBlock2D"] * 2 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 2,
    "cross_attention_dim": _TINY_CLIP_L["hidden_size"], "sample_size": 8,
}


def _adm(pooled: int, ids: int) -> int:
    return pooled + ids * ADM_TIME_EMBED_DIM


_SDXL_UNET = {
    "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048, "use_linear_projection": True, "norm_num_groups": 32,
    "addition_embed_type": "text_time", "addition_time_embed_dim": ADM_TIME_EMBED_DIM,
    "projection_class_embeddings_input_dim": _adm(1280, 6), "sample_size": 128,
}
_SDXL_REFINER_UNET = {
    **_SDXL_UNET, "block_out_channels": [384, 768, 1536, 1536],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": 4, "attention_head_dim": [6, 12, 24, 24],
    "cross_attention_dim": 1280, "projection_class_embeddings_input_dim": _adm(1280, 5),
}
_TINY_WIDTHS = [64, 128, 128]  # 64 channels per head, as SDXL's convention
_TINY_SDXL_UNET = {
    **_SDXL_UNET, "layers_per_block": 1, "block_out_channels": _TINY_WIDTHS,
    "transformer_layers_per_block": [1, 1, 2], "attention_head_dim": [c // 64 for c in
                                                                      _TINY_WIDTHS],
    "cross_attention_dim": _TINY_CLIP_L["hidden_size"] + _TINY_CLIP_BIGG["hidden_size"],
    "projection_class_embeddings_input_dim": _adm(_TINY_CLIP_BIGG["projection_dim"], 6),
    "sample_size": 8,
}
_TINY_SDXL_REFINER_UNET = {
    **_SDXL_REFINER_UNET, "layers_per_block": 1, "block_out_channels": [64, 128, 128, 128],
    "transformer_layers_per_block": 2, "attention_head_dim": [1, 2, 2, 2],
    "cross_attention_dim": _TINY_CLIP_BIGG["hidden_size"],
    "projection_class_embeddings_input_dim": _adm(_TINY_CLIP_BIGG["projection_dim"], 5),
    "sample_size": 8,
}


def _sd15(unet: dict[str, Any], vae: dict[str, Any], clip: dict[str, Any]) -> ModelSpec:
    return ModelSpec("sd1", {"unet": unet, "vae": vae, "text_encoder": clip})


def _sdxl(unet: dict[str, Any], vae: dict[str, Any], clip_l: dict[str, Any] | None,
          clip_g: dict[str, Any], variant: str | None = None) -> ModelSpec:
    components: dict[str, Mapping[str, Any]] = {"unet": unet, "vae": vae}
    if clip_l is not None:
        components["text_encoder"] = clip_l
    components["text_encoder_2"] = clip_g
    return ModelSpec("sdxl" if clip_l is not None else "sdxl_refiner", components,
                     variant=variant)


# -- building on meta and initialising -----------------------------------------------------------


def build_modules(spec: ModelSpec) -> dict[str, Any]:
    """Builds the diffusers/transformers modules of a Stable Diffusion spec on the meta device.

    Returns:
        Component name -> module (no memory allocated).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    modules: dict[str, Any] = {}
    with torch.device("meta"):
        modules["unet"] = UNet2DConditionModel.from_config(dict(spec.components["unet"]))
        if "vae" in spec.components:
            modules["vae"] = AutoencoderKL.from_config(dict(spec.components["vae"]))
    for name in ("text_encoder", "text_encoder_2"):
        if name in spec.components:
            modules[name] = build_clip_text_model(
                dict(spec.components[name]), with_projection=name == "text_encoder_2")
    return modules


@dataclass(frozen=True, slots=True)
class InitRule:
    """How one parameter is filled.

    Attributes:
        kind: ``"fan_in"`` (``normal(0, 1/sqrt(fan_in))``), ``"normal"`` (``normal(0, std)``),
            ``"ones"``, ``"zeros"``, ``"eye"`` (an identity matrix: SD3's CLIP-L projection) or
            ``"sincos"`` (SD3's 2D sin-cos position table ``[1, n * n, dim]``).
        std: The standard deviation for ``"normal"``.
    """

    kind: str
    std: float = 0.0


def init_rules(module: Any, *, canonical_text: bool = False) -> dict[str, InitRule]:
    """How each parameter of a module is initialised, from the type of the module holding it.

    Args:
        module: A module (meta is fine).
        canonical_text: Name parameters as ``text_model.*`` (text encoders; see
            `canonical_text_encoder_state`).

    Returns:
        Parameter name -> rule.

    Raises:
        TypeError: A parameter held by a module type without a rule (register one).
    """
    from comfyc.compiler.models.single_file import canonical_text_key

    rules: dict[str, InitRule] = {}
    for owner_name, owner in module.named_modules():
        for leaf, _ in owner.named_parameters(recurse=False):
            name = f"{owner_name}.{leaf}" if owner_name else leaf
            name = canonical_text_key(name) if canonical_text else name
            if isinstance(owner, (torch.nn.Linear, torch.nn.Conv2d)):
                rule = InitRule("fan_in") if leaf == "weight" else InitRule("zeros")
            elif isinstance(owner, (torch.nn.GroupNorm, torch.nn.LayerNorm)) or type(
                    owner).__name__ in _NORM_CLASSES:
                rule = InitRule("ones") if leaf == "weight" else InitRule("zeros")
            elif isinstance(owner, torch.nn.Embedding):
                std = _POSITION_STD if "position" in owner_name else _TOKEN_STD
                rule = InitRule("normal", std)
            else:
                raise TypeError(f"no initialisation rule for {name!r} held by "
                                f"{type(owner).__name__}")
            rules[name] = rule
        for leaf, _ in owner.named_buffers(recurse=False):
            # NOTE: SD3's PatchEmbed keeps its position table as a persistent buffer.
            if type(owner).__name__ == "PatchEmbed" and leaf == "pos_embed":
                rules[f"{owner_name}.{leaf}" if owner_name else leaf] = InitRule("sincos")
    return rules


def _seed_of(seed: int, component: str, name: str) -> int:
    digest = hashlib.sha256(f"{seed}/{component}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def synthetic_tensor(
    seed: int, component: str, name: str, shape: Sequence[int], rule: InitRule, jitter: float = 0.0
) -> torch.Tensor:
    """The float32 value of one weight (a pure function of its arguments).

    Args:
        seed: The checkpoint seed.
        component: ``unet``, ``vae``, ``text_encoder``, ``text_encoder_2``.
        name: The weight's diffusers/transformers name (``text_model.*`` for text encoders).
        shape: Its shape.
        rule: From `init_rules`.
        jitter: Std of noise added to norm weights and biases (0: exactly 1 and 0).
    """
    generator = torch.Generator().manual_seed(_seed_of(seed, component, name))
    shape = tuple(int(d) for d in shape)
    if rule.kind == "fan_in":
        fan_in = math.prod(shape[1:]) or 1
        return torch.randn(shape, generator=generator).mul_(1.0 / math.sqrt(fan_in))
    if rule.kind == "normal":
        return torch.randn(shape, generator=generator).mul_(rule.std)
    if rule.kind == "eye":
        return torch.eye(shape[0], shape[1])
    if rule.kind == "sincos":
        return _sincos_table(shape)
    base = torch.ones(shape) if rule.kind == "ones" else torch.zeros(shape)
    if jitter:
        base.add_(torch.randn(shape, generator=generator).mul_(jitter))
    return base


def _sincos_table(shape: Sequence[int]) -> torch.Tensor:
    """diffusers' 2D sin-cos position table ``[1, n * n, dim]`` (base size n, scale 1)."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    grid = round(math.sqrt(shape[1]))
    table = get_2d_sincos_pos_embed(int(shape[2]), grid, base_size=grid, interpolation_scale=1.0,
                                    output_type="pt")
    return table.float().reshape(tuple(shape))


def _is_clip_text(component: str, module: Any) -> bool:
    """CLIP text encoders are named ``text_model.*`` (T5 encoders keep their own names)."""
    return component.startswith("text_encoder") and hasattr(module, "config") and (
        getattr(module.config, "model_type", "").startswith("clip"))


class _Source:
    """Generates one component's weights by diffusers name."""

    def __init__(self, component: str, module: Any, seed: int, jitter: float,
                 overrides: Mapping[str, InitRule] | None = None) -> None:
        text = _is_clip_text(component, module)
        self.component = component
        self.seed = seed
        self.jitter = jitter
        self.rules = {**init_rules(module, canonical_text=text), **(overrides or {})}
        state = canonical_text_encoder_state(module) if text else module.state_dict()
        self.shapes = {k: tuple(v.shape) for k, v in state.items() if k in self.rules}

    def __call__(self, name: str) -> torch.Tensor:
        return synthetic_tensor(self.seed, self.component, name, self.shapes[name],
                                self.rules[name], self.jitter)


# -- single-file layout --------------------------------------------------------------------------


def _one_to_one(
    source: _Source, names: Mapping[str, str],
    convert: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[TensorGroup]:
    """One group per weight: ``names`` maps diffusers name -> output name."""
    for key, out in names.items():
        def produce(key: str = key, out: str = out) -> dict[str, torch.Tensor]:
            value = source(key)
            return {out: convert(key, value) if convert else value}

        shape = source.shapes[key]
        if convert is not None:
            shape = tuple(convert(key, torch.empty(shape, device="meta")).shape)
        yield TensorGroup({out: shape}, produce)


def _position_ids(prefix: str, positions: int) -> TensorGroup:
    name = prefix + "text_model.embeddings.position_ids"
    return TensorGroup({name: (1, positions)},
                       lambda: {name: torch.arange(positions, dtype=torch.int64)[None]},
                       {name: torch.int64})


def _openclip_groups(source: _Source, prefix: str, projection: bool) -> Iterator[TensorGroup]:
    """An OpenCLIP text tower, one group per layer (q/k/v fused into ``in_proj``)."""
    groups: dict[str, list[str]] = {}
    for key in source.shapes:
        if key == "text_projection.weight":
            continue
        parts = key.split(".")
        layer = parts[3] if key.startswith("text_model.encoder.layers.") else "rest"
        groups.setdefault(layer, []).append(key)

    def convert(keys: list[str], make: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        return {prefix + k: v for k, v in clip_hf_to_openclip({k: make(k) for k in keys}).items()}

    for keys in groups.values():
        meta = convert(keys, lambda k: torch.empty(source.shapes[k], device="meta"))
        yield TensorGroup({k: tuple(v.shape) for k, v in meta.items()},
                          lambda keys=keys: convert(keys, source))
    if projection:
        name = prefix + "text_projection"
        rows, cols = source.shapes["text_projection.weight"]
        # NOTE: OpenCLIP stores x @ P ([hidden, dim]); transformers' linear holds P transposed.
        yield TensorGroup({name: (cols, rows)},
                          lambda: {name: source("text_projection.weight").t().contiguous()})


def single_file_layout(
    modules: Mapping[str, Any], spec: ModelSpec, seed: int, jitter: float = 0.0
) -> list[TensorGroup]:
    """The tensor groups of a Stable Diffusion single file (SD1, SDXL, refiner layouts).

    Args:
        modules: From `build_modules`.
        spec: The spec.
        seed: Checkpoint seed.
        jitter: See `synthetic_tensor`.

    Returns:
        Groups in file order: UNet, VAE, text encoders.
    """
    sources = {name: _Source(name, module, seed, jitter) for name, module in modules.items()}
    groups: list[TensorGroup] = []
    unet = sources["unet"]
    ldm = unet_diffusers_to_ldm_map(unet.shapes)
    groups += _one_to_one(unet, {k: UNET_PREFIX + v for k, v in ldm.items()})
    if "vae" in sources:
        vae = sources["vae"]
        ldm = vae_diffusers_to_ldm_map(vae.shapes)
        groups += _one_to_one(vae, {k: VAE_PREFIX + v for k, v in ldm.items()},
                              vae_tensor_to_ldm)
    clip_l = sources.get("text_encoder")
    clip_g = sources.get("text_encoder_2")
    sdxl = spec.family in ("sdxl", "sdxl_refiner")
    if clip_l is not None:
        prefix = SDXL_CLIP_L_PREFIX if sdxl else CLIP_OPENAI_PREFIX
        if not sdxl and modules["text_encoder"].config.hidden_act == "gelu":
            raise NotImplementedError("SD2 (OpenCLIP-H) synthetic files are not registered yet")
        groups += _one_to_one(clip_l, {k: prefix + k for k in clip_l.shapes})
        groups.append(_position_ids(prefix, clip_l.shapes[
            "text_model.embeddings.position_embedding.weight"][0]))
    if clip_g is not None:
        prefix = SDXL_CLIP_G_PREFIX if clip_l is not None else SDXL_REFINER_CLIP_G_PREFIX
        groups += _openclip_groups(clip_g, prefix, projection=True)
    return groups


# -- streaming safetensors -----------------------------------------------------------------------


def write_safetensors_stream(
    path: str | os.PathLike[str],
    groups: Sequence[TensorGroup],
    *,
    dtype: torch.dtype = torch.float16,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Writes a safetensors file group by group (header first), atomically.

    Only one group's tensors exist at a time. Floating tensors are cast to `dtype` unless the
    group fixes their dtype. The bytes are a pure function of the groups' values and order.

    Args:
        path: Destination file (its folder is created).
        groups: Tensor groups in file order.
        dtype: Floating dtype written (float32, float16, bfloat16, or fp8 as ComfyUI's fp8 files).
        metadata: String metadata for the header.

    Returns:
        The path.

    Raises:
        ValueError: A group produced other names or shapes than it declared, or a name twice.
    """
    target = Path(path)
    entries: dict[str, dict[str, Any]] = {}
    offset = 0
    for group in groups:
        for name, shape in group.shapes.items():
            if name in entries:
                raise ValueError(f"tensor {name!r} is written twice")
            kind = group.dtypes.get(name, dtype)
            size = math.prod(shape) * torch.empty((), dtype=kind).element_size()
            entries[name] = {"dtype": _SAFETENSORS_DTYPES[kind], "shape": list(shape),
                             "data_offsets": [offset, offset + size]}
            offset += size
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    header.update(entries)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # NOTE: safetensors aligns the data start to 8 bytes
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp",
                                         dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(struct.pack("<Q", len(text)))
            out.write(text)
            for group in groups:
                values = group.produce()
                if list(values) != list(group.shapes):
                    raise ValueError(f"a group produced {list(values)[:3]}, declared "
                                     f"{list(group.shapes)[:3]}")
                for name, value in values.items():
                    if tuple(value.shape) != tuple(group.shapes[name]):
                        raise ValueError(f"{name!r} is {tuple(value.shape)}, declared "
                                         f"{group.shapes[name]}")
                    kind = group.dtypes.get(name, dtype)
                    data = value.to(kind).contiguous().reshape(-1)
                    out.write(data.view(torch.uint8).numpy().tobytes())
                del values
        make_readable(temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


# -- diffusers folders ---------------------------------------------------------------------------


def _component_file(component: str) -> str:
    return "model.safetensors" if component.startswith("text_encoder") else (
        "diffusion_pytorch_model.safetensors")


def write_diffusers_layout(
    modules: Mapping[str, Any],
    spec: ModelSpec,
    seed: int,
    jitter: float,
    dtype: torch.dtype,
    directory: Path,
) -> None:
    """Writes a diffusers pipeline folder for a Stable Diffusion spec, streaming the weights.

    The pipeline object is built from the meta modules only to write ``model_index.json``; the
    weights are generated per tensor under their diffusers names (same values as the single
    file of the same seed).
    """
    from comfyc.compiler.models.diffusers_folder import build_scheduler, write_tokenizer_files

    directory.mkdir(parents=True, exist_ok=True)
    for component, module in modules.items():
        folder = directory / component
        folder.mkdir(exist_ok=True)
        source = _Source(component, module, seed, jitter)
        groups = list(_one_to_one(source, {k: k for k in source.shapes}))
        write_safetensors_stream(folder / _component_file(component), groups, dtype=dtype,
                                 metadata={"format": "pt"})
        if component.startswith("text_encoder"):
            config = module.config
            config.architectures = [type(module).__name__]
            config.save_pretrained(str(folder))
        else:
            module.save_config(str(folder))
    if "text_encoder" in modules:
        write_tokenizer_files(directory / "tokenizer", pad_token=49407)
    if "text_encoder_2" in modules:
        write_tokenizer_files(directory / "tokenizer_2", pad_token=0)
    scheduler = build_scheduler(spec.family, spec.prediction_type, spec.variant)
    scheduler.save_pretrained(str(directory / "scheduler"))
    from comfyc.compiler.models.diffusers_folder import _pipeline
    from comfyc.compiler.models.single_file import LoadedCheckpoint

    # NOTE: a LoadedCheckpoint of meta modules gives the same pipeline class and options as
    # write_diffusers_folder; only its model_index.json is saved.
    stand_in = LoadedCheckpoint(
        unet=modules["unet"], vae=modules.get("vae"), text_encoder=modules.get("text_encoder"),
        family=spec.family, prediction_type=spec.prediction_type, clip_pad_token=49407,
        default_clip_layer=-1, in_channels=4, text_encoder_2=modules.get("text_encoder_2"),
        variant=spec.variant,
    )
    _pipeline(stand_in, modules.get("text_encoder")).save_config(str(directory))


# -- writing checkpoints -------------------------------------------------------------------------


def _synthetic_metadata(family: str, size: str, seed: int, jitter: float) -> str:
    return json.dumps({"family": family, "size": size, "seed": seed, "jitter": jitter,
                       "generator": GENERATOR_VERSION}, sort_keys=True)


def write_checkpoint(
    path: str | os.PathLike[str],
    family: str = "sdxl",
    size: str = "tiny",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    jitter: float = 0.0,
    diffusers_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Writes a seeded random-weight single-file checkpoint (and optionally a diffusers folder).

    Args:
        path: Destination ``.safetensors`` file.
        family: A registered family (`family_names`): ``sd15``, ``sdxl``, ``sdxl_refiner``,
            ``sdxl_turbo``, ``sd3``, ``sd35_medium``, ``sd35_large``, ``flux_dev``,
            ``flux_schnell``.
        size: ``"full"`` (the published architecture), ``"large"`` (published widths, fewer
            blocks; where registered) or ``"tiny"``.
        seed: Weights are a pure function of the seed (same seed -> same bytes).
        dtype: Floating dtype of the file (``torch.float16`` halves the size).
        jitter: Std of noise on norm weights and biases (default 0: exactly 1 and 0).
        diffusers_dir: Also write a diffusers folder here (same weights), if given.

    Returns:
        The written file.
    """
    spec = model_spec(family, size)
    entry = FAMILIES[family]
    modules = entry.build(spec)
    if entry.metadata is not None:
        metadata = entry.metadata(modules, spec)
    else:
        metadata = single_file_metadata(
            modules["unet"], modules.get("vae"), modules.get("text_encoder"),
            text_encoder_2=modules.get("text_encoder_2"), prediction_type=spec.prediction_type,
            variant=spec.variant, family=spec.family,
        )
    metadata["comfyc.synthetic"] = _synthetic_metadata(family, size, seed, jitter)
    groups = entry.layout(modules, spec, seed, jitter)
    written = write_safetensors_stream(path, groups, dtype=dtype, metadata=metadata)
    if diffusers_dir is not None:
        if entry.write_folder is None:
            raise ValueError(f"{family} has no diffusers-folder writer")
        entry.write_folder(modules, spec, seed, jitter, dtype, Path(diffusers_dir))
    return written


def write_split_files(
    directory: str | os.PathLike[str],
    family: str,
    size: str = "tiny",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    jitter: float = 0.0,
    stem: str | None = None,
) -> dict[str, Path]:
    """Writes a model as the separate files users keep, in ComfyUI's ``models/`` layout.

    For SD3 and Flux: ``diffusion_models/<stem>.safetensors`` (UNETLoader; bare original keys),
    ``text_encoders/<stem>-clip_l.safetensors``, ``-clip_g`` (SD3), ``-t5xxl`` (CLIPLoader /
    DualCLIPLoader / TripleCLIPLoader) and ``vae/<stem>-vae.safetensors`` (VAELoader; bare LDM
    names like Flux's ``ae.safetensors``). The weights equal the single file's of the same seed.

    Args:
        directory: The models folder (subfolders are created).
        family: A registered family with a split layout.
        size: ``"full"``, ``"large"`` or ``"tiny"``.
        seed: Weight seed.
        dtype: Floating dtype of the files.
        jitter: See `write_checkpoint`.
        stem: File-name stem (default ``<family>-<size>``): ``diffusion_models/<stem>.
            safetensors``, ``text_encoders/<stem>-clip_l.safetensors``, ...

    Returns:
        Role (``"diffusion_model"``, ``"clip_l"``, ``"clip_g"``, ``"t5xxl"``, ``"vae"``) -> path.

    Raises:
        ValueError: The family has no split layout.
    """
    spec = model_spec(family, size)
    entry = FAMILIES[family]
    if entry.split is None:
        raise ValueError(f"{family} has no split-file layout; write a checkpoint instead")
    modules = entry.build(spec)
    synthetic = _synthetic_metadata(family, size, seed, jitter)
    written: dict[str, Path] = {}
    parts = entry.split(modules, spec, seed, jitter, stem or f"{family}-{size}")
    for role, (relative, groups, metadata) in parts.items():
        metadata = {**metadata, "comfyc.synthetic": synthetic}
        written[role] = write_safetensors_stream(Path(directory) / relative, groups, dtype=dtype,
                                                 metadata=metadata)
    return written


def tiny_checkpoint(
    family: str = "sdxl",
    *,
    seed: int = 0,
    directory: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """The tiny checkpoint of a family, written once and reused (for tests).

    The file name carries the family, seed, dtype, generator version and a digest of the spec,
    so a cached file is never stale.

    Args:
        family: A registered family.
        seed: Weight seed.
        directory: Where to keep it (default: ``comfyc-synthetic`` in the temp folder).
        dtype: Floating dtype (float32 by default: exact comparisons in tests).

    Returns:
        The path of the ``.safetensors`` file.
    """
    spec = model_spec(family, "tiny")
    digest = hashlib.sha256(json.dumps(
        {"spec": {k: dict(v) for k, v in spec.components.items()}, "family": spec.family,
         "variant": spec.variant, "dtype": str(dtype)}, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(directory) if directory is not None else (
        Path(tempfile.gettempdir()) / "comfyc-synthetic")
    name = f"{family}-tiny-s{seed}-g{GENERATOR_VERSION}-{digest}.safetensors"
    path = folder / name
    if not path.is_file():
        write_checkpoint(path, family, "tiny", seed=seed, dtype=dtype)
    return path


# -- the registered families ---------------------------------------------------------------------


def _register_flow() -> None:
    """SD3/SD3.5 and Flux families (`comfyc.compiler.models.flow_synthetic`)."""
    import sys

    importing = sys.modules.get("comfyc.compiler.models.flow_synthetic")
    if importing is not None and not hasattr(importing, "register_flow_families"):
        return  # NOTE: flow_synthetic is importing this module; it registers itself when done
    from comfyc.compiler.models.flow_synthetic import register_flow_families

    register_flow_families()


def _register_stable_diffusion() -> None:
    common = {"build": build_modules, "layout": single_file_layout,
              "write_folder": write_diffusers_layout}
    register_family(SyntheticFamily(
        "sd15", {"full": lambda: _sd15(_SD15_UNET, _SD_VAE, _CLIP_L),
                 "tiny": lambda: _sd15(_TINY_SD15_UNET, _TINY_VAE, _TINY_CLIP_L)},
        "SD1.5: 860M UNet, CLIP ViT-L, VAE", **common))
    tiny_xl_vae = {**_TINY_VAE, "scaling_factor": SDXL_LATENT_SCALE, "force_upcast": True}
    register_family(SyntheticFamily(
        "sdxl", {"full": lambda: _sdxl(_SDXL_UNET, _SDXL_VAE, _CLIP_L, _CLIP_BIGG),
                 "tiny": lambda: _sdxl(_TINY_SDXL_UNET, tiny_xl_vae, _TINY_CLIP_L,
                                       _TINY_CLIP_BIGG)},
        "SDXL base 1.0: 2.6B UNet, CLIP ViT-L + OpenCLIP ViT-bigG, VAE", **common))
    register_family(SyntheticFamily(
        "sdxl_refiner",
        {"full": lambda: _sdxl(_SDXL_REFINER_UNET, _SDXL_VAE, None, _CLIP_BIGG),
         "tiny": lambda: _sdxl(_TINY_SDXL_REFINER_UNET, tiny_xl_vae, None, _TINY_CLIP_BIGG)},
        "SDXL refiner 1.0: 2.3B UNet, OpenCLIP ViT-bigG, VAE", **common))
    register_family(SyntheticFamily(
        "sdxl_turbo",
        {"full": lambda: _sdxl({**_SDXL_UNET, "sample_size": 64}, _SDXL_VAE, _CLIP_L,
                               _CLIP_BIGG, variant="turbo"),
         "tiny": lambda: _sdxl(_TINY_SDXL_UNET, tiny_xl_vae, _TINY_CLIP_L, _TINY_CLIP_BIGG,
                               variant="turbo")},
        "SDXL-Turbo: SDXL base architecture, 512 px, marked comfyc.variant=turbo", **common))


_register_stable_diffusion()
_register_flow()
