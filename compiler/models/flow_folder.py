"""diffusers folders of SD3/SD3.5 (``StableDiffusion3Pipeline``) and Flux (``FluxPipeline``).

Reading: `load_flow_folder` loads ``transformer/``, ``vae/``, ``text_encoder*/`` into a
`comfyc.compiler.models.flow.FlowCheckpoint` (the family is detected from the transformer's
weight shapes, as for single files). Writing: `write_flow_folder` turns loaded modules into a
folder that diffusers' own pipelines open offline - the team's image oracle on the same weights:

* SD3: ``text_encoder`` (CLIP-L) and ``text_encoder_2`` (CLIP-G) as
  ``CLIPTextModelWithProjection``, ``text_encoder_3`` T5, ``tokenizer``/``tokenizer_2`` built
  from comfyc's packaged CLIP vocabulary (pad ``<|endoftext|>`` and ``!`` = 0, as ComfyUI pads
  them), ``tokenizer_3`` from the packaged T5 vocabulary. CLIP-L's pooled output conditions SD3
  *unprojected* in ComfyUI (``return_projected_pooled=False``) while the pipeline uses
  ``text_embeds``; a CLIP-L without a projection is written with an identity projection, so
  the two agree (comfyc's synthetic SD3 models have an identity projection throughout).
* Flux: ``text_encoder`` CLIP-L (``CLIPTextModel``, pooled output unprojected in both),
  ``text_encoder_2`` T5, ``tokenizer`` (pad ``<|endoftext|>``), ``tokenizer_2`` (T5).
* Schedulers as the published repositories: ``FlowMatchEulerDiscreteScheduler`` with shift 3.0
  (SD3), dynamic shifting between 0.5 and 1.15 over 256..4096 image tokens (Flux dev/fill),
  shift 1.0 without dynamic shifting (Flux schnell).
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from comfyc.compiler.models.dit_configs import DetectedTransformer, detect_transformer
from comfyc.compiler.models.dit_keymap import plans_for
from comfyc.compiler.models.errors import ModelFormatError

__all__ = [
    "FLOW_PIPELINES",
    "build_flow_scheduler",
    "detect_module",
    "flow_model_index",
    "folder_family",
    "load_flow_folder",
    "write_flow_folder",
    "write_folder_files",
    "write_t5_tokenizer_files",
]

#: Pipeline class per transformer kind.
FLOW_PIPELINES = {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
_T5_EXTRA_IDS = 100


def write_t5_tokenizer_files(directory: str | os.PathLike[str]) -> Path:
    """Writes a transformers T5 tokenizer folder from comfyc's packaged T5 vocabulary.

    Args:
        directory: Folder to write into (created).

    Returns:
        The folder (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``).
    """
    from comfyc.runtime.t5_tokenizer import DEFAULT_T5_VOCAB_PATH

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_bytes(gzip.decompress(DEFAULT_T5_VOCAB_PATH.read_bytes()))
    extra = [f"<extra_id_{i}>" for i in range(_T5_EXTRA_IDS)]
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
               "additional_special_tokens": extra}
    config = {**special, "tokenizer_class": "T5Tokenizer", "extra_ids": _T5_EXTRA_IDS,
              "model_max_length": 512, "legacy": False, "clean_up_tokenization_spaces": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), "utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), "utf-8")
    return folder


def build_flow_scheduler(family: str) -> Any:
    """The published ``FlowMatchEulerDiscreteScheduler`` of a family (see the module docstring).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    if family == "sd3":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    if family == "flux_schnell":
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5,
            max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    if family in ("flux", "flux_inpaint"):
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
            max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    raise ValueError(f"family {family!r} has no flow-matching scheduler")


def flow_model_index(kind: str, *, clip_l_projection: bool = True) -> dict[str, Any]:
    """``model_index.json`` of a ``StableDiffusion3Pipeline`` / ``FluxPipeline`` folder."""
    import diffusers

    index: dict[str, Any] = {"_class_name": FLOW_PIPELINES[kind],
                             "_diffusers_version": diffusers.__version__}
    index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    index["vae"] = ["diffusers", "AutoencoderKL"]
    if kind == "sd3":
        index["transformer"] = ["diffusers", "SD3Transformer2DModel"]
        clip = "CLIPTextModelWithProjection" if clip_l_projection else "CLIPTextModel"
        index["text_encoder"] = ["transformers", clip]
        index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
        index["text_encoder_3"] = ["transformers", "T5EncoderModel"]
        index["tokenizer"] = ["transformers", "CLIPTokenizer"]
        index["tokenizer_2"] = ["transformers", "CLIPTokenizer"]
        index["tokenizer_3"] = ["transformers", "T5TokenizerFast"]
    else:
        index["transformer"] = ["diffusers", "FluxTransformer2DModel"]
        index["text_encoder"] = ["transformers", "CLIPTextModel"]
        index["text_encoder_2"] = ["transformers", "T5EncoderModel"]
        index["tokenizer"] = ["transformers", "CLIPTokenizer"]
        index["tokenizer_2"] = ["transformers", "T5TokenizerFast"]
    index["image_encoder"] = [None, None]
    index["feature_extractor"] = [None, None]
    return index


#: Folder component -> (kind, encoder name) for the text encoders of each pipeline.
_FOLDER_ENCODERS = {
    "sd3": {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl"},
    "flux": {"text_encoder": "clip_l", "text_encoder_2": "t5xxl"},
}
_TOKENIZERS = {
    "sd3": {"tokenizer": 49407, "tokenizer_2": 0, "tokenizer_3": None},
    "flux": {"tokenizer": 49407, "tokenizer_2": None},
}


def write_folder_files(directory: Path, kind: str, family: str, *,
                       clip_l_projection: bool = True) -> None:
    """The files of a flow folder that hold no weights: tokenizers, scheduler, model index."""
    from comfyc.compiler.models.diffusers_folder import write_tokenizer_files

    for name, pad in _TOKENIZERS[kind].items():
        if pad is None:
            write_t5_tokenizer_files(directory / name)
        else:
            write_tokenizer_files(directory / name, pad_token=pad)
    build_flow_scheduler(family).save_pretrained(str(directory / "scheduler"))
    (directory / "model_index.json").write_text(json.dumps(
        flow_model_index(kind, clip_l_projection=clip_l_projection), indent=2), "utf-8")


def detect_module(transformer: Any, kind: str) -> DetectedTransformer:
    """The detection of a diffusers transformer module (from its weights' original shapes)."""
    shapes = {k: tuple(v.shape) for k, v in transformer.state_dict().items()}
    table = {}
    for plan in plans_for(kind)(shapes):
        rows = sum(shapes[p][0] for p in plan.parts)
        table[plan.original] = torch.empty((rows, *shapes[plan.parts[0]][1:]), device="meta")
    detected = detect_transformer(table)
    config = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
    return DetectedTransformer(detected.family, detected.variant, detected.published,
                               detected.comfy_config, config, detected.notes)


def _folder_kind(root: Path) -> str:
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise ModelFormatError(f"{str(root)!r} has no model_index.json; expected a diffusers "
                               "pipeline folder")
    name = json.loads(index_file.read_text("utf-8")).get("_class_name", "")
    for kind, pipeline in FLOW_PIPELINES.items():
        if name.startswith(pipeline.replace("Pipeline", "")):
            return kind
    raise ModelFormatError(f"{str(root)!r} is a {name or 'unknown'} folder; expected "
                           f"{' or '.join(FLOW_PIPELINES.values())}")


def folder_family(folder: str | os.PathLike[str]) -> str:
    """The family of a diffusers folder: SD3/Flux from the transformer's config, else the Stable
    Diffusion family (``sd1``, ``sd2``, ``sdxl``, ``sdxl_refiner``).
    """
    root = Path(folder)
    if (root / "transformer" / "config.json").is_file():
        kind = _folder_kind(root)
        config = json.loads((root / "transformer" / "config.json").read_text("utf-8"))
        if kind == "sd3":
            return "sd3"
        if int(config.get("in_channels", 64)) > 64:
            return "flux_inpaint"
        return "flux" if config.get("guidance_embeds") else "flux_schnell"
    unet_file = root / "unet" / "config.json"
    if not unet_file.is_file():
        raise ModelFormatError(f"{str(root)!r} has neither transformer/ nor unet/; expected a "
                               "diffusers Stable Diffusion, SD3 or Flux pipeline folder")
    # NOTE: read from the configs (no weights), by the rules load_diffusers_folder applies.
    unet = json.loads(unet_file.read_text("utf-8"))
    if unet.get("addition_embed_type") == "text_time":
        return "sdxl" if (root / "text_encoder").is_dir() else "sdxl_refiner"
    text_file = root / "text_encoder" / "config.json"
    text = json.loads(text_file.read_text("utf-8")) if text_file.is_file() else {}
    linear = bool(unet.get("use_linear_projection"))
    return "sd2" if linear or text.get("hidden_act") == "gelu" else "sd1"


def load_flow_folder(folder: str | os.PathLike[str], *, dtype: torch.dtype | None = torch.float32
                     ) -> Any:
    """Loads an SD3/SD3.5 or Flux diffusers folder (local files only).

    Args:
        folder: The pipeline folder (``model_index.json``, ``transformer/``, ``vae/``,
            ``text_encoder*/``).
        dtype: Floating dtype of the modules.

    Returns:
        A `comfyc.compiler.models.flow.FlowCheckpoint`.
    """
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    from comfyc.compiler.models.flow import DiffusionModel, FlowCheckpoint
    from comfyc.compiler.models.single_file import vae_family_config
    from comfyc.compiler.models.text_encoders import LoadedTextEncoder, TextEncoders

    root = Path(folder)
    kind = _folder_kind(root)
    cls = SD3Transformer2DModel if kind == "sd3" else FluxTransformer2DModel
    transformer = cls.from_pretrained(str(root / "transformer"), torch_dtype=dtype)
    detected = detect_module(transformer, kind)
    vae = None
    if (root / "vae").is_dir():
        vae = AutoencoderKL.from_pretrained(str(root / "vae"), torch_dtype=dtype)
        for key, value in vae_family_config(detected.family).items():
            if key in ("scaling_factor", "shift_factor") and vae.config.get(key) is None:
                vae.register_to_config(**{key: value})
    encoders = TextEncoders("sd3" if kind == "sd3" else "flux", sources=[root])
    index = json.loads((root / "model_index.json").read_text("utf-8"))
    for component, name in _FOLDER_ENCODERS[kind].items():
        path = root / component
        if not path.is_dir() or index.get(component, [None])[0] is None:
            continue
        if name == "t5xxl":
            module = T5EncoderModel.from_pretrained(str(path), dtype=dtype)
        else:
            class_name = index[component][1]
            loader = CLIPTextModelWithProjection if class_name.endswith("Projection") else (
                CLIPTextModel)
            module = loader.from_pretrained(str(path), dtype=dtype)
        config = module.config.to_dict()
        setattr(encoders, name, LoadedTextEncoder(name, module.eval().requires_grad_(False),
                                                  config, path))
    for module in (transformer, vae):
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    model = DiffusionModel(transformer, detected, source=root / "transformer")
    return FlowCheckpoint(model, vae, encoders, root)


def _text_encoder_module(name: str, encoder: Any, kind: str) -> Any:
    """The module to save for a folder: SD3's CLIP-L gets an identity projection if it has none.
    """
    module = encoder.module
    if kind == "sd3" and name == "clip_l" and not hasattr(module, "text_projection"):
        from transformers import CLIPTextModelWithProjection

        from comfyc.compiler.models.single_file import canonical_text_key

        config = module.config
        config.projection_dim = config.hidden_size
        with_projection = CLIPTextModelWithProjection(config)
        # NOTE: transformers 5 dropped CLIPTextModel's text_model level; match canonical names.
        source = {canonical_text_key(k): v for k, v in module.state_dict().items()}
        state = {k: source[canonical_text_key(k)] for k in with_projection.state_dict()
                 if canonical_text_key(k) in source}
        state["text_projection.weight"] = torch.eye(config.hidden_size)
        missing, unexpected = with_projection.load_state_dict(state, strict=False)
        if [k for k in missing if not k.endswith("position_ids")] or unexpected:
            raise ModelFormatError(f"cannot add a projection to CLIP-L: missing {missing[:3]}, "
                                   f"unexpected {unexpected[:3]}")
        return with_projection.eval()
    return module


def write_flow_folder(
    checkpoint: Any,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Writes a loaded `FlowCheckpoint` as a diffusers pipeline folder (see the module docstring).

    The folder is assembled in a temporary sibling and renamed into place.

    Args:
        checkpoint: A `comfyc.compiler.models.flow.FlowCheckpoint` with its VAE and the text
            encoders of its family (SD3: clip_l, clip_g, t5xxl; Flux: clip_l, t5xxl).
        out_dir: The folder to create.
        overwrite: Replace an existing non-empty folder.

    Returns:
        `out_dir`.

    Raises:
        ModelFormatError: A missing component, or `out_dir` exists.
    """
    from safetensors.torch import save_file

    from comfyc.compiler.models.single_file import canonical_text_key

    target = Path(out_dir)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise ModelFormatError(f"{str(target)!r} already exists and is not empty; choose another "
                               "folder or pass overwrite=True")
    kind = checkpoint.model.detected.kind
    encoders = checkpoint.text_encoders
    missing = [n for n in _FOLDER_ENCODERS[kind].values() if getattr(encoders, n) is None]
    if checkpoint.vae is None or missing:
        raise ModelFormatError(f"a {FLOW_PIPELINES[kind]} folder needs the VAE and "
                               f"{list(_FOLDER_ENCODERS[kind].values())}; missing "
                               f"{missing + ([] if checkpoint.vae is not None else ['vae'])}")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        checkpoint.model.transformer.save_pretrained(str(scratch / "transformer"))
        checkpoint.vae.save_pretrained(str(scratch / "vae"))
        for component, name in _FOLDER_ENCODERS[kind].items():
            module = _text_encoder_module(name, getattr(encoders, name), kind)
            folder = scratch / component
            folder.mkdir()
            state = module.state_dict()
            if name != "t5xxl":
                state = {canonical_text_key(k): v for k, v in state.items()}
            else:
                state = {k: v for k, v in state.items() if k != "encoder.embed_tokens.weight"}
            save_file({k: v.contiguous() for k, v in state.items()},
                      str(folder / "model.safetensors"), metadata={"format": "pt"})
            config = module.config
            config.architectures = [type(module).__name__]
            config.save_pretrained(str(folder))
        write_folder_files(scratch, kind, checkpoint.family)
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return target
