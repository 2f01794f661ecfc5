"""Write a commented, ready-to-run starter workflow in comfyc's DSL.

  comfyc init --template txt2img -o digits.cfy
  comfyc init --template hires-fix -o hires.cfy --ckpt v1-5-pruned-emaonly.safetensors
  comfyc init --template sdxl -o sdxl.cfy --ckpt my-sdxl-finetune.safetensors

Every template is one of the examples that ship with comfyc (listed below). Most run on the
embedded tiny model (64x64 handwritten digits; nothing to download), and --ckpt names a Stable
Diffusion 1.x/2.x checkpoint from the models folder instead (512x512, a photographic prompt).
The SDXL, Flux and SD3 templates name the published model files, which you put in the models
folder (--models-dir DIR or $COMFYC_MODELS); --ckpt replaces the first one they load. The
file's header and the message init prints list the model files the workflow reads. Starters
that read an input image also get one for the tiny model: input/digit.png beside the workflow.
An existing file is never overwritten without --force.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from .common import EXIT_INVALID, EXIT_OK, EXIT_UNREADABLE, write_output

__all__ = ["add_arguments", "run", "template_list"]


def template_list() -> str:
    """The templates, one per line with the example's first sentence (``--help``'s list)."""
    from comfyc.cli.templates import TEMPLATES

    width = max(len(name) for name in TEMPLATES) + 2
    lines = ["templates:"]
    for name, template in TEMPLATES.items():
        model = "tiny model" if template.tiny else "your model files"
        text = f"{template.headline} ({model}; examples/{template.example})"
        wrapped = textwrap.wrap(text, 96 - width - 2)
        lines.append(f"  {name:<{width}}{wrapped[0]}")
        lines.extend(f"  {'':<{width}}{rest}" for rest in wrapped[1:])
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc init``."""
    from comfyc.cli.templates import TEMPLATES

    parser.epilog = template_list()
    parser.add_argument("--template", "-t", required=True, choices=list(TEMPLATES),
                        metavar="NAME", help=f"one of: {', '.join(TEMPLATES)} (listed below)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.cfy",
                        help="the workflow file to write ('-' for standard output)")
    parser.add_argument("--ckpt", metavar="NAME",
                        help="a checkpoint in the models folder instead of the embedded tiny "
                             "model (SDXL/Flux/SD3 templates: instead of the first model "
                             "file they load)")
    parser.add_argument("--lora", metavar="NAME",
                        help="the LoRA the lora template loads (default: the tiny model's, "
                             "or my-lora.safetensors with --ckpt)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc init``."""
    from comfyc import examples
    from comfyc.cli.templates import (
        INPUT_IMAGE,
        TEMPLATES,
        model_files,
        render,
        replaced_by_ckpt,
        uses_input_image,
    )

    if args.ckpt is not None and not args.ckpt.strip():
        print("comfyc init: error: --ckpt needs a checkpoint name, e.g. "
              "--ckpt v1-5-pruned-emaonly.safetensors", file=sys.stderr)
        return EXIT_UNREADABLE
    to_stdout = args.output == "-"
    target = Path(args.output)
    input_dir = target.parent / "input"
    if not to_stdout:
        if target.is_dir():
            print(f"comfyc init: error: {target} is a directory; name the workflow file to "
                  f"write, e.g. -o {target / (args.template + '.cfy')}", file=sys.stderr)
            return EXIT_UNREADABLE
        if target.exists() and not args.force:
            print(f"comfyc init: error: {target} already exists; pass --force to overwrite "
                  f"it, or choose another name with -o", file=sys.stderr)
            return EXIT_INVALID
    reads_image = uses_input_image(args.template)
    file = args.output if not to_stdout else f"{args.template}.cfy"
    text = render(args.template, file=file, ckpt=args.ckpt, lora=args.lora,
                  input_dir=os.fspath(input_dir) if reads_image else None)
    try:
        write_output(text, args.output)
    except OSError as exc:
        print(f"comfyc init: error: cannot write {target}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_UNREADABLE
    if to_stdout:
        return EXIT_OK
    template = TEMPLATES[args.template]
    files = model_files(text, file)
    print(f"wrote {target}: {template.headline}", file=sys.stderr)
    if template.tiny and args.ckpt is None:
        print("it runs on comfyc's embedded tiny model" +
              (", and" if files else ": nothing to download"), file=sys.stderr)
    if files:
        print("it reads these files from the models folder (--models-dir DIR or "
              "$COMFYC_MODELS):", file=sys.stderr)
        for folder, name in files:
            print(f"  {folder}/{name}", file=sys.stderr)
    if args.ckpt is None:
        folder, first = replaced_by_ckpt(args.template)
        what = ("a Stable Diffusion 1.x/2.x checkpoint of yours" if template.tiny else
                f"your own file in place of {folder}/{first}")
        print(f"for {what}: comfyc init -t {args.template} -o {target} --ckpt NAME --force",
              file=sys.stderr)
    if reads_image:
        image = input_dir / (INPUT_IMAGE if args.ckpt is None else "input.png")
        if args.ckpt is None and not image.exists():
            try:
                write_output(examples.read_bytes(f"input/{INPUT_IMAGE}"), os.fspath(image))
                print(f"wrote {image} (the input image LoadImage reads)", file=sys.stderr)
            except OSError as exc:
                print(f"comfyc init: warning: cannot write {image}: {exc.strerror or exc}",
                      file=sys.stderr)
        elif not image.exists():
            print(f"put the input image at {image} (or change LoadImage's image name)",
                  file=sys.stderr)
    extra = f" --input-dir {input_dir}" if reads_image else ""
    where = " --models-dir models" if files else ""
    print(f"next: comfyc run {target}{where} --output output{extra}" +
          ("   (models: your models folder, e.g. ComfyUI/models)" if files else ""),
          file=sys.stderr)
    return EXIT_OK
