"""Exports the trained tiny model to the shipped ``runtime/models/tiny-digits.safetensors``.

The key mapping is comfyc's own (``comfyc.compiler.models.save_single_file``): the file uses the
original SD1.x layout (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*``), fp16, plus comfyc's ``comfyc.config`` metadata with the exact
module configs. With ``--check`` the file is loaded back through
``comfyc.compiler.models.load_checkpoint`` and compared with the fp16-rounded source weights.

Usage (from the repository root)::

    .venv/bin/python examples/tiny_model/export.py \
        --pipeline examples/tiny_model/out/pipeline --check
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

__all__ = ["check_round_trip", "export", "main"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PIPELINE = Path(__file__).resolve().parent / "out" / "pipeline"
DEFAULT_OUTPUT = REPO_ROOT / "runtime" / "models" / "tiny-digits.safetensors"


def export(pipeline: Path, output: Path) -> Path:
    """Writes the single-file fp16 checkpoint from a diffusers pipeline folder.

    Args:
        pipeline: A ``StableDiffusionPipeline.save_pretrained`` folder (from ``train.py``).
        output: The ``.safetensors`` file to write.

    Returns:
        The written path.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from comfyc.compiler.models import save_single_file

    unet = UNet2DConditionModel.from_pretrained(str(pipeline / "unet"))
    vae = AutoencoderKL.from_pretrained(str(pipeline / "vae"))
    text_encoder = CLIPTextModel.from_pretrained(str(pipeline / "text_encoder"))
    return save_single_file(
        output,
        unet,
        vae,
        text_encoder,
        torch.float16,
        prediction_type="epsilon",
        metadata={
            "comfyc.model": "tiny-digits",
            "comfyc.description": (
                "tiny SD1.x-architecture model trained by examples/tiny_model/train.py on "
                "scikit-learn's digits; 64x64, dark ink on white; prompt e.g. "
                "'a handwritten digit seven'"
            ),
        },
    )


def check_round_trip(pipeline: Path, output: Path) -> float:
    """Loads the single file back with comfyc and compares it with the fp16-rounded source.

    Args:
        pipeline: The source diffusers folder.
        output: The exported single file.

    Returns:
        The largest absolute weight difference (0.0 when the round trip is exact).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from comfyc.compiler.models import load_checkpoint

    loaded = load_checkpoint(output, dtype=torch.float32)
    sources = {
        "unet": (UNet2DConditionModel.from_pretrained(str(pipeline / "unet")), loaded.unet),
        "vae": (AutoencoderKL.from_pretrained(str(pipeline / "vae")), loaded.vae),
        "text_encoder": (
            CLIPTextModel.from_pretrained(str(pipeline / "text_encoder")),
            loaded.text_encoder,
        ),
    }
    worst = 0.0
    for name, (source, target) in sources.items():
        source_state, target_state = source.state_dict(), target.state_dict()
        missing = sorted(set(source_state) ^ set(target_state))
        if missing:
            raise RuntimeError(f"{name}: key sets differ after the round trip: {missing[:5]}")
        for key, tensor in source_state.items():
            expected = tensor.half().float() if tensor.is_floating_point() else tensor
            diff = (expected - target_state[key].to(expected.dtype)).abs().max().item()
            worst = max(worst, float(diff))
    return worst


def main(argv: list[str] | None = None) -> None:
    """Exports, prints the size and optionally checks the round trip."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", type=Path, default=DEFAULT_PIPELINE)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--check", action="store_true", help="load back with comfyc and compare")
    args = p.parse_args(argv)
    path = export(args.pipeline, args.output)
    # NOTE: the writer goes through a private temporary file (mode 0600); the shipped model is
    # package data, readable by everyone.
    path.chmod(0o644)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    if args.check:
        print(f"round trip: max |weight difference| = {check_round_trip(args.pipeline, path):.3g}")


if __name__ == "__main__":
    main()
