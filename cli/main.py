"""The ``comfyc`` command line.

Each subcommand lives in its own module and is imported only when it runs, so ``comfyc
check`` starts in a fraction of a second and never imports torch. Exit codes: 0 success,
1 an invalid workflow (or a failed run or compile), 2 an unreadable input, a usage error, or
something this machine lacks: an optional extra, TensorRT, a GPU (the message names it).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

#: name -> (module, one-line help). Each module has ``add_arguments(parser)`` and
#: ``run(args) -> int``. Order is the order of ``comfyc --help``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "check": ("comfyc.cli.commands.check",
              "validate workflows (UI/API JSON, PNG, DSL) and report every problem"),
    "convert": ("comfyc.cli.commands.convert",
                "convert a workflow to ComfyUI's API prompt or to comfyc DSL"),
    "compile": ("comfyc.cli.commands.compile",
                "compile a workflow into a deployable artifact (ONNX stages + program)"),
    "inspect": ("comfyc.cli.commands.inspect",
                "show the IR after each pass and the stages a workflow compiles to"),
    "run": ("comfyc.cli.commands.run",
            "run a workflow (torch backend) or a compiled artifact and write its images"),
    "demo": ("comfyc.cli.commands.demo",
             "compile and run the txt2img example on the embedded tiny model"),
    "fmt": ("comfyc.cli.commands.fmt", "format DSL files canonically, keeping comments"),
    "bench": ("comfyc.cli.commands.bench",
              "benchmark backends on a workflow or artifact: table, JSON, chart, HTML report"),
    "tune": ("comfyc.cli.commands.tune",
             "measure every available backend per stage and record the fastest in the artifact"),
    "build-engines": ("comfyc.cli.commands.build_engines",
                      "build TensorRT engines for an artifact's ONNX stages (NVIDIA GPUs)"),
    "serve": ("comfyc.serve.cli",
              "serve ComfyUI's HTTP/websocket API, compiling what it is sent"),
    "viz": ("comfyc.cli.commands.viz",
            "draw a workflow or artifact as a graph page (HTML, SVG or DOT)"),
    "init": ("comfyc.cli.commands.init",
             "write a commented starter workflow (tiny model, SDXL, Flux, SD3, ControlNet, "
             "upscale ...; --help lists them)"),
    "model": ("comfyc.cli.commands.model", "model tools: convert checkpoints to diffusers"),
}

_DESCRIPTION = """\
comfyc compiles ComfyUI workflows (UI JSON, API JSON, PNG with metadata, or .cfy DSL)
into deployable artifacts run by a lean numpy + onnxruntime runtime.

Run `comfyc COMMAND --help` for the options of each command."""


def _available() -> dict[str, tuple[str, str]]:
    """Subcommands whose module is installed (parts of comfyc may be absent in a build)."""
    found = {}
    for name, (module, text) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
            continue
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:
            continue
        found[name] = (module, text)
    return found


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    from comfyc import __version__

    parser = argparse.ArgumentParser(
        prog="comfyc", description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"comfyc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, text) in _available().items():
        mod = importlib.import_module(module)
        if hasattr(mod, "add_parser"):
            cmd = mod.add_parser(sub)
            if isinstance(cmd, argparse.ArgumentParser) and cmd.get_default("_run") is None:
                cmd.set_defaults(_run=mod.run)
            continue
        cmd = sub.add_parser(name, help=text, description=(mod.__doc__ or text).strip(),
                             epilog=getattr(mod, "EXAMPLES", None),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(cmd)
        cmd.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 2
    from comfyc.cli.commands.common import EXIT_UNREADABLE, MissingExtra, missing_extra_for

    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("comfyc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except MissingExtra as exc:
        print(exc.render(args.command), file=sys.stderr)
        return EXIT_UNREADABLE
    except ModuleNotFoundError as exc:
        # A lean install (comfyc[cpu] only) lacks the packages of the other extras: name the
        # extra to install instead of a traceback. An import of anything else is a bug.
        missing = missing_extra_for(exc)
        if missing is None:
            raise
        print(missing.render(args.command), file=sys.stderr)
        return EXIT_UNREADABLE


if __name__ == "__main__":
    sys.exit(main())
