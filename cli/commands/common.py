"""Helpers shared by subcommands: catalogue options, loading, error printing, safe writes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from comfyc.compiler.catalog import Catalog, ObjectInfoError, default_catalog
from comfyc.compiler.errors import InputFileError, WorkflowError, WorkflowErrors, render_errors

__all__ = [
    "noise_mode_of",
    "add_catalog_arguments", "catalog_from_args", "print_error", "write_output", "source_texts",
    "EXIT_OK", "EXIT_INVALID", "EXIT_UNREADABLE", "EXTRAS", "MissingExtra", "require_extra",
    "missing_extra_for", "backend_help", "exit_code_for_runtime",
]

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2

#: The optional extras (pyproject.toml's ``optional-dependencies``) and the import names each
#: brings, in the order a message lists them.
EXTRAS: dict[str, tuple[str, ...]] = {
    "cpu": ("onnxruntime", "PIL", "safetensors"),
    "dsl": ("lark",),
    "compiler": ("torch", "diffusers", "transformers", "onnx", "onnxscript", "lark", "PIL",
                 "safetensors"),
    "serve": ("starlette", "uvicorn", "websockets"),
    "web": ("comfyui_frontend_package",),
    "bench": ("matplotlib",),
    "tensorrt": ("tensorrt", "polygraphy"),
    "ray": ("ray",),
    "openvino": ("openvino",),
}
#: What each extra is for, in a message ("… needs the dsl extra (reading .cfy files)").
_EXTRA_PURPOSE = {
    "cpu": "the lean runtime", "dsl": "reading .cfy files", "compiler": "the compiler",
    "serve": "the server", "web": "the server's web page", "bench": "charts",
    "tensorrt": "TensorRT engines", "ray": "Ray Serve", "openvino": "the ov-cpu backend",
}
#: The smallest extra that brings an import name.
_MODULE_EXTRA = {module: extra for extra in reversed(EXTRAS) for module in EXTRAS[extra]}


class MissingExtra(Exception):
    """A command needs an optional extra that is not installed.

    Args:
        extra: The extra (``compiler`` …).
        missing: The import names of that extra that are absent here.
    """

    def __init__(self, extra: str, missing: list[str]) -> None:
        super().__init__(extra)
        self.extra = extra
        self.missing = missing

    def render(self, command: str) -> str:
        """``comfyc CMD: error: …`` plus a ``help:`` line with the install command."""
        from comfyc import __version__

        wheel = f"comfyc-{__version__}-py3-none-any.whl"
        # NOTE: comfyc is not on a package index: the help names the forms that work (a
        # clone, a built wheel) besides the plain `comfyc[extra]` requirement.
        also = " (or comfyc[gpu] on a CUDA machine; never both)" if self.extra == "cpu" else ""
        return (f"comfyc {command}: error: this needs comfyc's {self.extra} extra "
                f"({_EXTRA_PURPOSE[self.extra]}); not installed here: "
                f"{', '.join(self.missing)}\n"
                f"help: install it with pip install 'comfyc[{self.extra}]'{also}: from a clone "
                f"pip install -e '.[{self.extra}]', from a wheel pip install "
                f"'dist/{wheel}[{self.extra}]'")


def _absent(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def require_extra(extra: str) -> None:
    """Fail before any work when an extra's packages are absent.

    Raises:
        MissingExtra: Naming the extra and the absent packages.
    """
    missing = [module for module in EXTRAS[extra] if _absent(module)]
    if missing:
        raise MissingExtra(extra, missing)


def missing_extra_for(error: ModuleNotFoundError) -> MissingExtra | None:
    """The extra that brings the module an import failed on; None for a module that no
    extra brings (comfyc's own, or an unexpected one: a bug to report)."""
    top = (error.name or "").split(".")[0]
    extra = _MODULE_EXTRA.get(top)
    if extra is None:
        return None
    return MissingExtra(extra, [m for m in EXTRAS[extra] if _absent(m)] or [top])


def add_catalog_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--object-info FILE`` (repeatable)."""
    parser.add_argument(
        "--object-info", metavar="FILE", action="append", default=[],
        help="a ComfyUI /object_info JSON dump that defines more node types (repeatable)")


def catalog_from_args(args: argparse.Namespace) -> Catalog:
    """The built-in catalogue extended by every ``--object-info`` file.

    Raises:
        InputFileError: An object_info file cannot be read.
    """
    files = getattr(args, "object_info", None) or []
    if not files:
        return default_catalog()
    catalog = default_catalog().copy()
    for path in files:
        try:
            catalog.load_object_info(path)
        except ObjectInfoError as exc:
            raise InputFileError(str(exc)) from None
    return catalog


def source_texts(path: str) -> dict[str, str]:
    """``{path: text}`` for DSL error snippets (the caret line); empty when unreadable."""
    from comfyc.frontends.load import MAX_BYTES

    if path == "-":
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            # NOTE: bounded like the workflow read itself: /dev/zero or a huge file must not
            # be read whole just to print an error snippet.
            text = fh.read(MAX_BYTES + 1)
    except (OSError, UnicodeDecodeError):
        return {}
    return {} if len(text) > MAX_BYTES else {path: text}


def print_error(error: WorkflowError, sources: dict[str, str] | None = None) -> None:
    """Print an error (or several) to standard error."""
    if isinstance(error, WorkflowErrors):
        print(render_errors(error.errors, sources), file=sys.stderr)
    else:
        print(error.render(sources), file=sys.stderr)


def exit_code_for(error: WorkflowError) -> int:
    """2 for unreadable input, 1 for an invalid workflow."""
    return EXIT_UNREADABLE if isinstance(error, InputFileError) else EXIT_INVALID


def write_output(text: str | bytes, out: str | None) -> None:
    """Write to standard output, or atomically to a file (never half-written)."""
    if out is None or out == "-":
        if isinstance(text, bytes):
            sys.stdout.buffer.write(text)
        else:
            sys.stdout.write(text)
        return
    from comfyc.runtime.files import atomic_write

    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, text)


def dump_json(data: Any) -> str:
    """JSON as ComfyUI writes it (indent 2, UTF-8 kept), ending in a newline."""
    import json

    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def exit_code_for_runtime(error: BaseException) -> int:
    """2 when this machine lacks what a backend needs (TensorRT, a GPU, a provider: like a
    missing extra), 1 for any other runtime failure."""
    from comfyc.runtime.backends.base import BackendError

    return EXIT_UNREADABLE if isinstance(error, BackendError) else EXIT_INVALID


def backend_help(error: BaseException) -> str | None:
    """A ``help:`` line for a backend that cannot run here, naming one that can (None for
    other errors)."""
    from comfyc.runtime.backends.base import BackendError

    if not isinstance(error, BackendError) or "--backend ort-cpu" in str(error):
        return None  # not a backend error, or the message names what runs here already
    # NOTE: onnxruntime's CPU provider is in every build; GPU providers and PyTorch are not
    # offered here: they fail on the machines where this error happens, or may not hold the
    # artifact's stages.
    if _absent("onnxruntime"):
        return "help: install the lean runtime (comfyc[cpu]) and use --backend ort-cpu"
    return "help: on this machine, use --backend ort-cpu (onnxruntime on the CPU)"


def noise_mode_of(args: argparse.Namespace) -> str | None:
    """``--noise-mode``, else the one a PNG input records (its ``comfyc`` chunk), else None
    (``comfyc run`` and ``comfyc compile``)."""
    import json

    if getattr(args, "noise_mode", None) or not Path(args.file).is_file():
        return getattr(args, "noise_mode", None)
    from comfyc.frontends.comfy_json.png import PngError, is_png, read_text_chunks
    from comfyc.frontends.load import MAX_BYTES

    path = Path(args.file)
    try:
        with path.open("rb") as handle:
            if not is_png(handle.read(8)) or path.stat().st_size > MAX_BYTES:
                return None  # Not a PNG, or one the loader refuses with its own message.
        data = path.read_bytes()
    except OSError:
        return None
    try:
        record = json.loads(read_text_chunks(data).get("comfyc", "{}"))
    except (PngError, ValueError):
        return None
    mode = record.get("noise_mode") if isinstance(record, dict) else None
    return mode if isinstance(mode, str) else None
