"""Write a commented, ready-to-run starter workflow in comfyc's DSL.

  comfyc init --template txt2img -o digits.cfy
  comfyc init --template hires-fix -o hires.cfy --ckpt v1-5-pruned-emaonly.safetensors

Templates: txt2img, img2img, inpaint, hires-fix, lora, area. By default they use the
embedded tiny model (64x64 handwritten digits; nothing to download); --ckpt names a Stable
Diffusion 1.x/2.x checkpoint from the models folder instead (512x512, a photographic prompt).
The img2img and inpaint starters for the tiny model also get their input image,
input/digit.png beside the workflow. An existing file is never overwritten without --force.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import EXIT_INVALID, EXIT_OK, EXIT_UNREADABLE, write_output

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc init``."""
    from comfyc.cli.templates import TEMPLATES, descriptions

    names = ", ".join(f"{name} ({text[0].lower()}{text[1:].rstrip('.')})" for name, text in
                      descriptions().items())
    parser.add_argument("--template", "-t", required=True, choices=list(TEMPLATES),
                        metavar="NAME", help=f"one of: {names}")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.cfy",
                        help="the workflow file to write ('-' for standard output)")
    parser.add_argument("--ckpt", metavar="NAME",
                        help="a checkpoint in the models folder instead of the embedded tiny "
                             "model")
    parser.add_argument("--lora", metavar="NAME",
                        help="the LoRA the lora template loads (default: the tiny model's, "
                             "or my-lora.safetensors with --ckpt)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc init``."""
    from comfyc import examples
    from comfyc.cli.templates import INPUT_IMAGE, render, uses_input_image

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
    text = render(args.template, file=args.output if not to_stdout else
                  f"{args.template}.cfy", ckpt=args.ckpt, lora=args.lora,
                  input_dir=os.fspath(input_dir) if reads_image else None)
    try:
        write_output(text, args.output)
    except OSError as exc:
        print(f"comfyc init: error: cannot write {target}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_UNREADABLE
    if to_stdout:
        return EXIT_OK
    print(f"wrote {target} ({args.template}, {args.ckpt or 'the embedded tiny model'})",
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
    print(f"next: comfyc run {target} --output output{extra}", file=sys.stderr)
    return EXIT_OK
