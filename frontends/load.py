"""One entry point that loads any workflow form by its content, not its extension.

* a PNG with ComfyUI's ``prompt`` / ``workflow`` text chunks,
* ComfyUI's UI workflow JSON (``nodes`` + ``links``),
* ComfyUI's API prompt JSON (also wrapped as ``{"prompt": {...}}``, a POST /prompt body),
* comfyc's text DSL (``.cfy``; anything that is not JSON).

Problems that make a file unreadable (missing, too large, not UTF-8, malformed JSON, a PNG
without a workflow) raise :class:`~comfyc.compiler.errors.InputFileError`; problems inside a
workflow raise :class:`~comfyc.compiler.errors.WorkflowErrors`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyc.compiler.catalog import Catalog, default_catalog
from comfyc.compiler.errors import InputFileError
from comfyc.compiler.ir import Graph, SourceLoc

from .comfy_json.api import graph_from_api
from .comfy_json.png import PngError, is_png, read_text_chunks
from .comfy_json.ui import is_ui_workflow, ui_to_api

__all__ = ["Source", "read_source", "load_workflow", "load_text", "load_api_prompt",
           "MAX_BYTES"]

#: Workflow files larger than this are refused (a real workflow is kilobytes; a PNG with one
#: is a few megabytes).
MAX_BYTES = int(os.environ.get("COMFYC_MAX_WORKFLOW_BYTES", 32 * 1024 * 1024))


@dataclass
class Source:
    """A workflow file read and classified.

    Attributes:
        path: The path as given (``<stdin>`` for standard input).
        kind: ``"api"``, ``"ui"``, ``"png"`` or ``"dsl"``.
        data: The parsed JSON (api/ui), the DSL text (dsl), or for a PNG the API prompt
            when it has one, else the UI workflow.
        text: The decoded file text (JSON/DSL), for error snippets.
        workflow: The UI workflow carried by a PNG or a UI file, if any.
        prompt: The API prompt carried by a PNG, if any.
    """

    path: str
    kind: str
    data: Any
    text: str | None = None
    workflow: dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None


def _read_bytes(path: str | Path, max_bytes: int) -> bytes:
    name = str(path)
    try:
        if name == "-":
            import sys

            data = sys.stdin.buffer.read(max_bytes + 1)
        else:
            size = os.path.getsize(path)
            if size > max_bytes:
                raise InputFileError(
                    f"file is {size / 2**20:.1f} MiB, larger than the {max_bytes / 2**20:.0f} MiB "
                    f"limit for workflow files", SourceLoc(file=name),
                    help="a workflow is a few kilobytes; check that this is the right file "
                    "(or raise the limit with COMFYC_MAX_WORKFLOW_BYTES)")
            with open(path, "rb") as fh:
                data = fh.read(max_bytes + 1)
    except IsADirectoryError:
        raise InputFileError("is a directory, not a workflow file", SourceLoc(file=name)) from None
    except FileNotFoundError:
        raise InputFileError("no such file", SourceLoc(file=name)) from None
    except OSError as exc:
        raise InputFileError(f"cannot read the file: {exc.strerror}", SourceLoc(file=name)
                             ) from None
    if len(data) > max_bytes:
        raise InputFileError(f"input is larger than the {max_bytes / 2**20:.0f} MiB limit",
                             SourceLoc(file=name))
    return data


def _parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(
            f"malformed JSON: {exc.msg}", SourceLoc(file=name, line=exc.lineno, col=exc.colno),
            kind="syntax_error", help="fix the JSON syntax at the position shown") from None
    except RecursionError:
        raise InputFileError("JSON nested too deeply", SourceLoc(file=name)) from None


def read_source(path: str | Path, *, max_bytes: int = MAX_BYTES) -> Source:
    """Read a workflow file and tell which form it is.

    Raises:
        InputFileError: The file cannot be read as any workflow form.
    """
    name = "<stdin>" if str(path) == "-" else str(path)
    data = _read_bytes(path, max_bytes)
    if not data.strip():
        raise InputFileError("file is empty", SourceLoc(file=name),
                             help="a workflow is ComfyUI JSON (UI or API), a PNG or comfyc DSL")
    if is_png(data):
        try:
            chunks = read_text_chunks(data)
        except PngError as exc:
            raise InputFileError(f"unreadable PNG: {exc}", SourceLoc(file=name)) from None
        prompt = workflow = None
        if "prompt" in chunks:
            prompt = _parse_json(chunks["prompt"], f"{name} [prompt chunk]")
        if "workflow" in chunks:
            workflow = _parse_json(chunks["workflow"], f"{name} [workflow chunk]")
        if prompt is None and workflow is None:
            raise InputFileError(
                "PNG has no ComfyUI workflow: it carries no 'prompt' or 'workflow' text chunk",
                SourceLoc(file=name),
                help="use a PNG saved by ComfyUI's SaveImage (or comfyc) with metadata on")
        return Source(name, "png", prompt if prompt is not None else workflow,
                      workflow=workflow if isinstance(workflow, dict) else None,
                      prompt=prompt if isinstance(prompt, dict) else None)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}) and not a PNG",
            SourceLoc(file=name), help="save the workflow as UTF-8") from None
    text = text.removeprefix("\ufeff")
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        parsed = _parse_json(text, name)
        if isinstance(parsed, dict) and is_ui_workflow(parsed):
            return Source(name, "ui", parsed, text=text, workflow=parsed)
        if isinstance(parsed, dict) and isinstance(parsed.get("prompt"), dict) and all(
            k in ("prompt", "client_id", "extra_data", "front", "number", "prompt_id",
                  "partial_execution_targets") for k in parsed
        ):
            extra = parsed.get("extra_data") or {}
            workflow = (extra.get("extra_pnginfo") or {}).get("workflow")
            return Source(name, "api", parsed["prompt"], text=text,
                          workflow=workflow if isinstance(workflow, dict) else None)
        if isinstance(parsed, dict):
            return Source(name, "api", parsed, text=text)
        raise InputFileError(
            f"JSON {type(parsed).__name__} is not a workflow: expected an object (an API "
            f"prompt or a UI workflow)", SourceLoc(file=name, line=1, col=1))
    return Source(name, "dsl", text, text=text)


def _graph_from_json(source: Source, data: Any, catalog: Catalog) -> Graph:
    if is_ui_workflow(data):
        graph = graph_from_api(ui_to_api(data, catalog, source.path), catalog, source.path)
        graph.source.workflow = data
        return graph
    graph = graph_from_api(data, catalog, source.path)
    if source.workflow is not None:
        graph.source.workflow = source.workflow
    return graph


def load_workflow(path: str | Path, catalog: Catalog | None = None, *,
                  max_bytes: int = MAX_BYTES) -> Graph:
    """Load any workflow form into an IR graph (not yet validated).

    Args:
        path: A file path, or ``-`` for standard input.
        catalog: Node schemas; the built-in catalogue when None.
        max_bytes: Refuse larger files.

    Raises:
        InputFileError: The file cannot be read.
        WorkflowErrors: The workflow is structurally broken.
    """
    catalog = catalog or default_catalog()
    source = read_source(path, max_bytes=max_bytes)
    if source.kind == "dsl":
        from .dsl import parse_dsl  # Lazy: lark is only needed for DSL input.

        graph = parse_dsl(source.text or "", source.path, catalog)
    else:
        graph = _graph_from_json(source, source.data, catalog)
    graph.source.file = source.path
    graph.source.kind = source.kind
    graph.source.text = source.text
    return graph


def load_text(text: str, name: str, catalog: Catalog | None = None) -> Graph:
    """Load a workflow held as text (API or UI JSON, a POST /prompt body, or DSL).

    Raises:
        InputFileError: Malformed JSON, or JSON that is not a workflow.
        WorkflowErrors: The workflow is structurally broken.
    """
    catalog = catalog or default_catalog()
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        from .dsl import parse_dsl

        graph = parse_dsl(text, name, catalog)
        kind = "dsl"
    else:
        data = _parse_json(text, name)
        if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and \
                not is_ui_workflow(data):
            data = data["prompt"]
        if not isinstance(data, dict):
            raise InputFileError(f"JSON {type(data).__name__} is not a workflow",
                                 SourceLoc(file=name))
        graph = _graph_from_json(Source(name, "api", data, text=text), data, catalog)
        kind = "ui" if is_ui_workflow(data) else "api"
    graph.source.file, graph.source.kind, graph.source.text = name, kind, text
    return graph


def load_api_prompt(path: str | Path, catalog: Catalog | None = None, *,
                    max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """The API prompt ComfyUI would queue for any workflow form.

    UI workflows are converted with the frontend's rules; a PNG gives its ``prompt`` chunk
    (exactly what ComfyUI executed) or, without one, its converted ``workflow``; DSL is
    lowered through the IR.
    """
    from .comfy_json.api import graph_to_api

    catalog = catalog or default_catalog()
    source = read_source(path, max_bytes=max_bytes)
    if source.kind == "ui" or (source.kind == "png" and source.prompt is None):
        return ui_to_api(source.data, catalog, source.path)
    if source.kind in ("api", "png"):
        graph_from_api(source.data, catalog, source.path)  # Structural check only.
        return source.data
    graph = load_workflow(path, catalog, max_bytes=max_bytes)
    return graph_to_api(graph)
