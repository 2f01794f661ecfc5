"""The built-in node table: ComfyUI's core SD1.x/SD2.x nodes.

Input order, defaults, ranges and combo lists follow ComfyUI 0.8 (``nodes.py``,
``comfy_extras``) as recorded in ../shared/reference/comfyui-format.md §3–§4. The order of
inputs matters: UI ``widgets_values`` map onto it positionally.
"""

from __future__ import annotations

from typing import Any

from ..ir.types import COMBO
from .schema import InputSpec, NodeSchema, OutputSpec

__all__ = ["SAMPLERS", "SCHEDULERS", "MAX_RESOLUTION", "INTERNAL_CATEGORY", "builtin_schemas"]

MAX_RESOLUTION = 16384
INTERNAL_CATEGORY = "comfyc/internal"
_MAX_SEED = 0xFFFFFFFFFFFFFFFF
_MAXSIZE = 2**63 - 1

#: ``KSampler.SAMPLERS`` in ComfyUI's combo order.
SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
    "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde",
    "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
    "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
    "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]

#: ``SCHEDULER_HANDLERS`` in ComfyUI's combo order.
SCHEDULERS = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
]

_LATENT_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
_IMAGE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


def _req(name: str, type: str, default: Any = None, min: float | None = None,
         max: float | None = None, step: float | None = None, **kw: Any) -> InputSpec:
    spec = InputSpec(name, type, min=min, max=max, step=step, **kw)
    if default is not None:
        spec.default = default
    return spec


def _link(name: str, type: str, required: bool = True) -> InputSpec:
    return InputSpec(name, type, required=required)


def _combo(name: str, choices: list[Any], default: Any = None, **kw: Any) -> InputSpec:
    spec = InputSpec(name, COMBO, choices=list(choices), **kw)
    if default is not None:
        spec.default = default
    return spec


def _files(name: str, folder: str, **kw: Any) -> InputSpec:
    return InputSpec(name, COMBO, choices=[], files=folder, **kw)


def _int(name: str, default: int, min: int, max: int, step: int = 1, **kw: Any) -> InputSpec:
    return _req(name, "INT", default, min, max, step, **kw)


def _float(name: str, default: float, min: float, max: float, step: float = 0.01,
           **kw: Any) -> InputSpec:
    return _req(name, "FLOAT", default, min, max, step, **kw)


def _out(*pairs: str) -> list[OutputSpec]:
    """``_out("MODEL", "CLIP")`` or ``_out("positive:CONDITIONING")``."""
    outs = []
    for pair in pairs:
        name, _, type = pair.partition(":")
        outs.append(OutputSpec(name, type or name))
    return outs


def _node(class_type: str, inputs: list[InputSpec], outputs: list[OutputSpec],
          display: str = "", category: str = "", **kw: Any) -> NodeSchema:
    return NodeSchema(class_type, inputs, outputs, display_name=display, category=category, **kw)


def _sampler_inputs() -> tuple[InputSpec, InputSpec]:
    return _combo("sampler_name", SAMPLERS), _combo("scheduler", SCHEDULERS)


def builtin_schemas() -> list[NodeSchema]:
    """Build the built-in schemas (fresh objects on each call)."""
    sampler, scheduler = _sampler_inputs()
    sampler_a, scheduler_a = _sampler_inputs()
    cond = "CONDITIONING"
    text = InputSpec("text", "STRING", multiline=True, dynamic_prompts=True)
    return [
        # ---------------------------------------------------------------- loaders
        _node("CheckpointLoaderSimple", [_files("ckpt_name", "checkpoints")],
              _out("MODEL", "CLIP", "VAE"), "Load Checkpoint", "loaders"),
        _node("VAELoader", [_files("vae_name", "vae")], _out("VAE"), "Load VAE", "loaders"),
        _node("LoraLoader", [
            _link("model", "MODEL"), _link("clip", "CLIP"), _files("lora_name", "loras"),
            _float("strength_model", 1.0, -100.0, 100.0),
            _float("strength_clip", 1.0, -100.0, 100.0),
        ], _out("MODEL", "CLIP"), "Load LoRA", "loaders"),
        _node("LoraLoaderModelOnly", [
            _link("model", "MODEL"), _files("lora_name", "loras"),
            _float("strength_model", 1.0, -100.0, 100.0),
        ], _out("MODEL"), "LoraLoaderModelOnly", "loaders"),
        _node("ControlNetLoader", [_files("control_net_name", "controlnet")],
              _out("CONTROL_NET"), "Load ControlNet Model", "loaders"),
        _node("DiffControlNetLoader", [
            _link("model", "MODEL"), _files("control_net_name", "controlnet"),
        ], _out("CONTROL_NET"), "Load ControlNet Model (diff)", "loaders"),
        _node("UpscaleModelLoader", [_files("model_name", "upscale_models")],
              _out("UPSCALE_MODEL"), "Load Upscale Model", "loaders",
              python_module="comfy_extras.nodes_upscale_model"),
        # ------------------------------------------------------------ conditioning
        _node("CLIPSetLastLayer", [
            _link("clip", "CLIP"), _int("stop_at_clip_layer", -1, -24, -1),
        ], _out("CLIP"), "CLIP Set Last Layer", "conditioning"),
        _node("CLIPTextEncode", [text, _link("clip", "CLIP")], _out(cond),
              "CLIP Text Encode (Prompt)", "conditioning"),
        _node("ConditioningCombine", [
            _link("conditioning_1", cond), _link("conditioning_2", cond),
        ], _out(cond), "Conditioning (Combine)", "conditioning"),
        _node("ConditioningConcat", [
            _link("conditioning_to", cond), _link("conditioning_from", cond),
        ], _out(cond), "Conditioning (Concat)", "conditioning"),
        _node("ConditioningAverage", [
            _link("conditioning_to", cond), _link("conditioning_from", cond),
            _float("conditioning_to_strength", 1.0, 0.0, 1.0),
        ], _out(cond), "Conditioning (Average)", "conditioning"),
        _node("ConditioningSetArea", [
            _link("conditioning", cond),
            _int("width", 64, 64, MAX_RESOLUTION, 8), _int("height", 64, 64, MAX_RESOLUTION, 8),
            _int("x", 0, 0, MAX_RESOLUTION, 8), _int("y", 0, 0, MAX_RESOLUTION, 8),
            _float("strength", 1.0, 0.0, 10.0),
        ], _out(cond), "Conditioning (Set Area)", "conditioning"),
        _node("ConditioningSetAreaPercentage", [
            _link("conditioning", cond),
            _float("width", 1.0, 0.0, 1.0), _float("height", 1.0, 0.0, 1.0),
            _float("x", 0.0, 0.0, 1.0), _float("y", 0.0, 0.0, 1.0),
            _float("strength", 1.0, 0.0, 10.0),
        ], _out(cond), "Conditioning (Set Area with Percentage)", "conditioning"),
        _node("ConditioningSetAreaStrength", [
            _link("conditioning", cond), _float("strength", 1.0, 0.0, 10.0),
        ], _out(cond), "ConditioningSetAreaStrength", "conditioning"),
        _node("ConditioningSetMask", [
            _link("conditioning", cond), _link("mask", "MASK"),
            _float("strength", 1.0, 0.0, 10.0),
            _combo("set_cond_area", ["default", "mask bounds"]),
        ], _out(cond), "Conditioning (Set Mask)", "conditioning"),
        _node("ConditioningSetTimestepRange", [
            _link("conditioning", cond),
            _float("start", 0.0, 0.0, 1.0, 0.001), _float("end", 1.0, 0.0, 1.0, 0.001),
        ], _out(cond), "ConditioningSetTimestepRange", "advanced/conditioning"),
        _node("ConditioningZeroOut", [_link("conditioning", cond)], _out(cond),
              "ConditioningZeroOut", "advanced/conditioning"),
        _node("ControlNetApply", [
            _link("conditioning", cond), _link("control_net", "CONTROL_NET"),
            _link("image", "IMAGE"), _float("strength", 1.0, 0.0, 10.0),
        ], _out(cond), "Apply ControlNet (OLD)", "conditioning/controlnet", deprecated=True),
        _node("ControlNetApplyAdvanced", [
            _link("positive", cond), _link("negative", cond),
            _link("control_net", "CONTROL_NET"), _link("image", "IMAGE"),
            _float("strength", 1.0, 0.0, 10.0),
            _float("start_percent", 0.0, 0.0, 1.0, 0.001),
            _float("end_percent", 1.0, 0.0, 1.0, 0.001),
            _link("vae", "VAE", required=False),
        ], _out("positive:CONDITIONING", "negative:CONDITIONING"), "Apply ControlNet",
            "conditioning/controlnet"),
        # ------------------------------------------------------------------ latent
        _node("EmptyLatentImage", [
            _int("width", 512, 16, MAX_RESOLUTION, 8), _int("height", 512, 16, MAX_RESOLUTION, 8),
            _int("batch_size", 1, 1, 4096),
        ], _out("LATENT"), "Empty Latent Image", "latent"),
        _node("LatentUpscale", [
            _link("samples", "LATENT"), _combo("upscale_method", _LATENT_METHODS),
            _int("width", 512, 0, MAX_RESOLUTION, 8), _int("height", 512, 0, MAX_RESOLUTION, 8),
            _combo("crop", ["disabled", "center"]),
        ], _out("LATENT"), "Upscale Latent", "latent"),
        _node("LatentUpscaleBy", [
            _link("samples", "LATENT"), _combo("upscale_method", _LATENT_METHODS),
            _float("scale_by", 1.5, 0.01, 8.0),
        ], _out("LATENT"), "Upscale Latent By", "latent"),
        _node("LatentComposite", [
            _link("samples_to", "LATENT"), _link("samples_from", "LATENT"),
            _int("x", 0, 0, MAX_RESOLUTION, 8), _int("y", 0, 0, MAX_RESOLUTION, 8),
            _int("feather", 0, 0, MAX_RESOLUTION, 8),
        ], _out("LATENT"), "Latent Composite", "latent"),
        _node("LatentFromBatch", [
            _link("samples", "LATENT"), _int("batch_index", 0, 0, 63), _int("length", 1, 1, 64),
        ], _out("LATENT"), "Latent From Batch", "latent/batch"),
        _node("RepeatLatentBatch", [
            _link("samples", "LATENT"), _int("amount", 1, 1, 64),
        ], _out("LATENT"), "Repeat Latent Batch", "latent/batch"),
        _node("SetLatentNoiseMask", [_link("samples", "LATENT"), _link("mask", "MASK")],
              _out("LATENT"), "Set Latent Noise Mask", "latent/inpaint"),
        # ---------------------------------------------------------------- sampling
        _node("KSampler", [
            _link("model", "MODEL"),
            _int("seed", 0, 0, _MAX_SEED, control_after_generate=True),
            _int("steps", 20, 1, 10000), _float("cfg", 8.0, 0.0, 100.0, 0.1),
            sampler, scheduler,
            _link("positive", cond), _link("negative", cond), _link("latent_image", "LATENT"),
            _float("denoise", 1.0, 0.0, 1.0),
        ], _out("LATENT"), "KSampler", "sampling"),
        _node("KSamplerAdvanced", [
            _link("model", "MODEL"), _combo("add_noise", ["enable", "disable"]),
            _int("noise_seed", 0, 0, _MAX_SEED, control_after_generate=True),
            _int("steps", 20, 1, 10000), _float("cfg", 8.0, 0.0, 100.0, 0.1),
            sampler_a, scheduler_a,
            _link("positive", cond), _link("negative", cond), _link("latent_image", "LATENT"),
            _int("start_at_step", 0, 0, 10000), _int("end_at_step", 10000, 0, 10000),
            _combo("return_with_leftover_noise", ["disable", "enable"]),
        ], _out("LATENT"), "KSampler (Advanced)", "sampling"),
        _node("ModelSamplingDiscrete", [
            _link("model", "MODEL"),
            _combo("sampling", ["eps", "v_prediction", "lcm", "x0", "img_to_img"]),
            _req("zsnr", "BOOLEAN", False),
        ], _out("MODEL"), "ModelSamplingDiscrete", "advanced/model",
            python_module="comfy_extras.nodes_model_advanced"),
        # --------------------------------------------------------------------- vae
        _node("VAEDecode", [_link("samples", "LATENT"), _link("vae", "VAE")], _out("IMAGE"),
              "VAE Decode", "latent"),
        _node("VAEEncode", [_link("pixels", "IMAGE"), _link("vae", "VAE")], _out("LATENT"),
              "VAE Encode", "latent"),
        _node("VAEEncodeForInpaint", [
            _link("pixels", "IMAGE"), _link("vae", "VAE"), _link("mask", "MASK"),
            _int("grow_mask_by", 6, 0, 64),
        ], _out("LATENT"), "VAE Encode (for Inpainting)", "latent/inpaint"),
        _node("VAEDecodeTiled", [
            _link("samples", "LATENT"), _link("vae", "VAE"),
            _int("tile_size", 512, 64, 4096, 32), _int("overlap", 64, 0, 4096, 32),
            _int("temporal_size", 64, 8, 4096, 4), _int("temporal_overlap", 8, 4, 4096, 4),
        ], _out("IMAGE"), "VAE Decode (Tiled)", "_for_testing"),
        _node("VAEEncodeTiled", [
            _link("pixels", "IMAGE"), _link("vae", "VAE"),
            _int("tile_size", 512, 64, 4096, 64), _int("overlap", 64, 0, 4096, 32),
            _int("temporal_size", 64, 8, 4096, 4), _int("temporal_overlap", 8, 4, 4096, 4),
        ], _out("LATENT"), "VAE Encode (Tiled)", "_for_testing"),
        # ------------------------------------------------------------------- image
        _node("LoadImage", [_files("image", "input", image_upload=True)],
              _out("IMAGE", "MASK"), "Load Image", "image", foldable=False),
        _node("LoadImageMask", [
            _files("image", "input", image_upload=True),
            _combo("channel", ["alpha", "red", "green", "blue"]),
        ], _out("MASK"), "Load Image (as Mask)", "mask", foldable=False),
        _node("SaveImage", [
            _link("images", "IMAGE"), _req("filename_prefix", "STRING", "ComfyUI"),
        ], [], "Save Image", "image", output_node=True, side_effect=True),
        _node("PreviewImage", [_link("images", "IMAGE")], [], "Preview Image", "image",
              output_node=True, side_effect=True),
        _node("ImageScale", [
            _link("image", "IMAGE"), _combo("upscale_method", _IMAGE_METHODS),
            _int("width", 512, 0, MAX_RESOLUTION), _int("height", 512, 0, MAX_RESOLUTION),
            _combo("crop", ["disabled", "center"]),
        ], _out("IMAGE"), "Upscale Image", "image/upscaling"),
        _node("ImageScaleBy", [
            _link("image", "IMAGE"), _combo("upscale_method", _IMAGE_METHODS),
            _float("scale_by", 1.0, 0.01, 8.0),
        ], _out("IMAGE"), "Upscale Image By", "image/upscaling"),
        _node("ImageScaleToTotalPixels", [
            _link("image", "IMAGE"), _combo("upscale_method", _IMAGE_METHODS),
            _float("megapixels", 1.0, 0.01, 16.0), _int("resolution_steps", 1, 1, 256),
        ], _out("IMAGE"), "Scale Image to Total Pixels", "image/upscaling",
            python_module="comfy_extras.nodes_post_processing"),
        _node("ImageInvert", [_link("image", "IMAGE")], _out("IMAGE"), "Invert Image", "image"),
        _node("ImageBatch", [_link("image1", "IMAGE"), _link("image2", "IMAGE")],
              _out("IMAGE"), "Batch Images", "image"),
        _node("ImagePadForOutpaint", [
            _link("image", "IMAGE"),
            _int("left", 0, 0, MAX_RESOLUTION, 8), _int("top", 0, 0, MAX_RESOLUTION, 8),
            _int("right", 0, 0, MAX_RESOLUTION, 8), _int("bottom", 0, 0, MAX_RESOLUTION, 8),
            _int("feathering", 40, 0, MAX_RESOLUTION),
        ], _out("IMAGE", "MASK"), "Pad Image for Outpainting", "image"),
        _node("EmptyImage", [
            _int("width", 512, 1, MAX_RESOLUTION), _int("height", 512, 1, MAX_RESOLUTION),
            _int("batch_size", 1, 1, 4096), _int("color", 0, 0, 0xFFFFFF),
        ], _out("IMAGE"), "EmptyImage", "image"),
        _node("ImageUpscaleWithModel", [
            _link("upscale_model", "UPSCALE_MODEL"), _link("image", "IMAGE"),
        ], _out("IMAGE"), "Upscale Image (using Model)", "image/upscaling",
            python_module="comfy_extras.nodes_upscale_model"),
        # -------------------------------------------------------------- primitives
        _node("PrimitiveInt", [
            _int("value", 0, -_MAXSIZE, _MAXSIZE, control_after_generate=True),
        ], _out("INT"), "Int", "utils/primitive",
            python_module="comfy_extras.nodes_primitive"),
        _node("PrimitiveFloat", [_float("value", 0.0, -_MAXSIZE, _MAXSIZE)], _out("FLOAT"),
              "Float", "utils/primitive", python_module="comfy_extras.nodes_primitive"),
        _node("PrimitiveString", [_req("value", "STRING", "")], _out("STRING"), "String",
              "utils/primitive", python_module="comfy_extras.nodes_primitive"),
        _node("PrimitiveStringMultiline", [_req("value", "STRING", "", multiline=True)],
              _out("STRING"), "String (Multiline)", "utils/primitive",
              python_module="comfy_extras.nodes_primitive"),
        _node("PrimitiveBoolean", [_req("value", "BOOLEAN", False)], _out("BOOLEAN"),
              "Boolean", "utils/primitive", python_module="comfy_extras.nodes_primitive"),
        # ------------------------------------------------------ comfyc internal nodes
        # NOTE: made by constant folding; never in ComfyUI workflows nor in /object_info.
        _node("FoldedConditioning", [_req("key", "STRING", "")], _out("CONDITIONING"),
              "Folded conditioning", INTERNAL_CATEGORY, python_module="comfyc",
              description="A conditioning computed at compile time (a folded prompt)."),
    ]
