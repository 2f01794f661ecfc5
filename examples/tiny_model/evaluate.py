"""Measures how often the tiny model draws the requested digit, per sampler and CFG scale.

Images are generated with diffusers' own StableDiffusionPipeline from a pipeline folder (10 digits
x 10 seeds, prompt "a handwritten digit {word}", 64x64, seeds 0..9 through torch.Generator) and
judged by the independent scikit-learn classifier in ``classifier.py``.

Usage (from the repository root)::

    .venv/bin/python examples/tiny_model/evaluate.py --pipeline examples/tiny_model/out/pipeline \
        --schedulers euler euler_a dpmpp_2m_karras --cfg 3 5 7.5 --fp16-roundtrip
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from classifier import train_classifier

__all__ = ["DIGIT_WORDS", "generate_grid", "load_pipeline", "main", "make_scheduler"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def load_pipeline(folder: Path, fp16_roundtrip: bool = False) -> Any:
    """Loads a StableDiffusionPipeline folder in float32 on the CPU.

    Args:
        folder: A ``save_pretrained`` folder.
        fp16_roundtrip: Round every weight to float16 and back, to judge the shipped fp16 file.
    """
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder), torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    if fp16_roundtrip:
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            with torch.no_grad():
                for p in module.parameters():
                    p.copy_(p.half().float())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_scheduler(name: str, config: Any) -> Any:
    """Builds a diffusers scheduler from the pipeline's scheduler config.

    Args:
        name: ``euler``, ``euler_a`` or ``dpmpp_2m_karras`` (ComfyUI's names for the same methods).
        config: The pipeline scheduler's config.
    """
    from diffusers import (
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
    )

    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(
            config,
            algorithm_type="dpmsolver++",
            solver_order=2,
            use_karras_sigmas=True,
            final_sigmas_type="zero",
        )
    raise ValueError(f"unknown scheduler {name!r}; expected euler, euler_a or dpmpp_2m_karras")


def generate_grid(
    pipe: Any, cfg: float, steps: int = 20, seeds: range = range(10)
) -> tuple[np.ndarray, np.ndarray]:
    """Generates one image per (digit, seed), all in one pipeline call.

    Each image gets its own ``torch.Generator().manual_seed(seed)``, so image (d, s) is the image
    a single-prompt call with seed s would give.

    Returns:
        ``(images, digits)``: float [100, 64, 64, 3] in [0, 1] and int [100].
    """
    digits = [d for d in range(10) for _ in seeds]
    prompts = [f"a handwritten digit {DIGIT_WORDS[d]}" for d in digits]
    generators = [torch.Generator().manual_seed(s) for _ in range(10) for s in seeds]
    with torch.inference_mode():
        images = pipe(
            prompts,
            height=64,
            width=64,
            num_inference_steps=steps,
            guidance_scale=cfg,
            generator=generators,
            output_type="np",
        ).images
    return np.asarray(images), np.asarray(digits)


def main(argv: list[str] | None = None) -> None:
    """Prints (and optionally writes as JSON) the accuracy table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", type=Path, required=True)
    p.add_argument("--schedulers", nargs="+", default=["euler", "euler_a", "dpmpp_2m_karras"])
    p.add_argument("--cfg", type=float, nargs="+", default=[5.0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--fp16-roundtrip", action="store_true")
    p.add_argument("--json", type=Path)
    p.add_argument("--grid-png", type=Path, help="save the euler grid at the first CFG here")
    args = p.parse_args(argv)
    torch.set_num_threads(2)

    classifier = train_classifier()
    pipe = load_pipeline(args.pipeline, args.fp16_roundtrip)
    base_config = pipe.scheduler.config
    results: list[dict[str, Any]] = []
    for name in args.schedulers:
        pipe.scheduler = make_scheduler(name, base_config)
        for cfg in args.cfg:
            start = time.perf_counter()
            images, digits = generate_grid(pipe, cfg, args.steps, range(args.seeds))
            predicted = classifier.classify(images)
            accuracy = float((predicted == digits).mean())
            per_digit = [float((predicted[digits == d] == d).mean()) for d in range(10)]
            seconds = time.perf_counter() - start
            results.append(
                {"scheduler": name, "cfg": cfg, "accuracy": accuracy, "per_digit": per_digit,
                 "seconds": seconds}
            )
            print(
                f"{name:16s} cfg {cfg:4.1f}: accuracy {accuracy:.3f} "
                f"per digit {' '.join(f'{a:.1f}' for a in per_digit)} ({seconds:.1f}s)",
                flush=True,
            )
            if args.grid_png and name == args.schedulers[0] and cfg == args.cfg[0]:
                from PIL import Image

                rows = images.reshape(10, args.seeds, 64, 64, 3)
                grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
                Image.fromarray((grid * 255).round().astype(np.uint8)).save(args.grid_png)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
