"""``comfyc model ...``: inspect and convert model files.

The main driver (`comfyc.cli.main`) calls `add_parser(subparsers)` to register the
``model`` command and `run(args)` to execute it. Importing this module is cheap: torch and
diffusers are imported inside `run`.

Examples::

    comfyc model convert v1-5-pruned-emaonly.safetensors --to diffusers -o sd15-diffusers/
    comfyc model convert sd15-diffusers/ --to single-file -o sd15.safetensors --dtype fp16
    comfyc model info --models-dir ~/ComfyUI/models v2-1_768-ema-pruned.safetensors
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]

_DTYPES = ("fp32", "fp16", "bf16")

#: Shown at the end of ``comfyc model --help``.
EXAMPLES = """\
examples:
  comfyc model convert v1-5-pruned-emaonly.safetensors --to diffusers -o sd15-diffusers/
  comfyc model convert sd15-diffusers/ --to single-file -o sd15.safetensors --dtype fp16
  comfyc model info --models-dir ~/ComfyUI/models sd_xl_base_1.0.safetensors
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers ``model`` (with ``convert`` and ``info``) on the driver's subparsers.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers()``.

    Returns:
        The ``model`` parser (its ``func`` default is `run`).
    """
    parser = subparsers.add_parser(
        "model", help="inspect and convert SD1.x/SD2.x/SDXL model files",
        description="Inspect and convert SD1.x/SD2.x/SDXL checkpoints (nothing is downloaded).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="model_command", metavar="COMMAND", required=True)

    convert = commands.add_parser(
        "convert", help="convert a checkpoint to a diffusers folder or a single file",
        description="Convert a single-file checkpoint to a diffusers folder (loadable with "
        "StableDiffusionPipeline / StableDiffusionXLPipeline / StableDiffusionXLImg2ImgPipeline"
        ".from_pretrained), or a diffusers folder to a single file.",
    )
    convert.add_argument("checkpoint", help="checkpoint file or diffusers folder; a bare name "
                         "is looked up in MODELS/checkpoints/")
    convert.add_argument("--to", choices=("diffusers", "single-file"), default="diffusers",
                         help="output format (default: diffusers)")
    convert.add_argument("-o", "--output", required=True, help="output folder or .safetensors")
    convert.add_argument("--dtype", choices=_DTYPES, default="fp32",
                         help="dtype of the written weights (default: fp32)")
    convert.add_argument("--prediction-type", choices=("epsilon", "v_prediction"),
                         help="override the detected prediction type")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output")
    convert.add_argument("--models-dir", help="ComfyUI-style models folder (default: "
                         "$COMFYC_MODELS)")

    info = commands.add_parser("info", help="print the inferred architecture and facts")
    info.add_argument("checkpoint", help="checkpoint file or diffusers folder")
    info.add_argument("--models-dir", help="ComfyUI-style models folder")
    parser.set_defaults(func=run)
    return parser


def _locate(name: str, models_dir: str | None) -> Path:
    """A path as given when it exists, else the name resolved in MODELS/checkpoints/."""
    from comfyc.runtime.model_paths import resolve

    path = Path(name).expanduser()
    if path.exists():
        return path
    return resolve("checkpoints", name, models_dir)


def _torch_dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _describe(checkpoint: Any) -> str:
    unet = checkpoint.unet.config
    lines = [
        f"source:           {checkpoint.source}",
        f"family:           {checkpoint.family}",
        f"prediction type:  {checkpoint.prediction_type}",
        f"in channels:      {checkpoint.in_channels}"
        + (" (inpainting)" if checkpoint.is_inpainting else ""),
        f"UNet:             channels {list(unet.block_out_channels)}, layers/block "
        f"{unet.layers_per_block}, context {unet.cross_attention_dim}, heads "
        f"{unet.attention_head_dim}, linear proj {unet.use_linear_projection}",
    ]
    if checkpoint.vae is not None:
        vae = checkpoint.vae.config
        lines.append(f"VAE:              channels {list(vae.block_out_channels)}, latent "
                     f"{vae.latent_channels}, scale {checkpoint.latent_scale}")
    if checkpoint.adm_in_channels is not None:
        lines.append(f"ADM input:        {checkpoint.adm_in_channels} (pooled + "
                     f"{', '.join(checkpoint.adm_ids)})"
                     + (f"; variant {checkpoint.variant}" if checkpoint.variant else ""))
    for spec in checkpoint.text_encoders:
        text = getattr(checkpoint, spec.attribute).config
        label = f"text encoder {spec.name}:"
        lines.append(f"{label:17} width {text.hidden_size}, layers "
                     f"{text.num_hidden_layers}, heads {text.num_attention_heads}, "
                     f"{text.hidden_act}; default layer {spec.default_layer}"
                     f"{'' if spec.layer_norm_hidden_state else ' (no final norm)'}, pad "
                     f"token {spec.pad_token}" + ("; pooled output" if spec.pooled else ""))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Executes ``comfyc model ...``.

    Args:
        args: Parsed arguments from the parser made by `add_parser`.

    Returns:
        The process exit status (0 on success, 1 on a model or path error).
    """
    from comfyc.compiler.models.errors import ModelFormatError
    from comfyc.runtime.model_paths import ModelPathError

    try:
        source = _locate(args.checkpoint, getattr(args, "models_dir", None))
        if args.model_command == "info":
            from comfyc.compiler.models.single_file import load_checkpoint

            print(_describe(load_checkpoint(source)))
            return 0
        dtype = _torch_dtype(args.dtype)
        if args.to == "diffusers":
            from comfyc.compiler.models.diffusers_folder import write_diffusers_folder
            from comfyc.compiler.models.single_file import load_checkpoint

            checkpoint = load_checkpoint(source, prediction_type=args.prediction_type)
            for module in (checkpoint.unet, checkpoint.vae, checkpoint.text_encoder,
                           checkpoint.text_encoder_2):
                if module is not None:
                    module.to(dtype)
            out = write_diffusers_folder(checkpoint, args.output, overwrite=args.overwrite)
        else:
            from comfyc.compiler.models.single_file import load_checkpoint, save_single_file

            output = Path(args.output)
            if output.exists() and not args.overwrite:
                raise ModelFormatError(f"{str(output)!r} exists; pass --overwrite to replace it")
            checkpoint = load_checkpoint(source, prediction_type=args.prediction_type)
            out = save_single_file(
                output, checkpoint.unet, checkpoint.vae, checkpoint.text_encoder, dtype,
                prediction_type=checkpoint.prediction_type,
                text_projection=checkpoint.text_projection,
                text_encoder_2=checkpoint.text_encoder_2, variant=checkpoint.variant,
            )
        print(f"wrote {out}")
        return 0
    except (ModelFormatError, ModelPathError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
