"""From a ComfyUI prompt to a runnable program: validate, compile on first sight, cache.

A prompt's *graph shape* is the prompt with its run-time inputs taken out: sampler seeds and
settings (KSampler ``seed``, ``steps``, ``cfg``, ``sampler_name``, ``scheduler``,
``denoise``; KSamplerAdvanced ``noise_seed``, ``cfg``) and prompt texts (``CLIPTextEncode``
``text``). The first prompt of a shape is compiled with exactly those inputs as runtime
params (the compiler's ``--param NODE.INPUT=NAME`` mechanism) into ``CACHE/<key>.comfyc``;
every later prompt of the shape — any seed, any text — loads that artifact (from memory
after the first load) and only sets params. Node titles (``_meta``) are not part of the
shape.

Precompiled artifacts (``comfyc serve ARTIFACT...``) are matched against the prompt the
compiler recorded (``source.prompt`` in the manifest): a prompt with the same nodes and the
same values everywhere except the artifact's param inputs runs on it. An artifact whose
source prompt was not recorded (a DSL workflow with declared params) is matched on the
program's prompt when nothing in it was folded; otherwise it is never picked, and matching
prompts are compiled instead.

The compiler is imported lazily: the runtime core stays free of it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RUNTIME_INPUTS", "Engine", "PromptRejected", "graph_shape", "shape_key"]

#: Inputs that become runtime params, by node class: changing them never recompiles.
RUNTIME_INPUTS: dict[str, tuple[str, ...]] = {
    "KSampler": ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": ("noise_seed", "cfg"),
    "CLIPTextEncode": ("text",),
}
#: Programs kept loaded in memory (the artifacts stay on disk).
MAX_LOADED = 8
_IDENT = re.compile(r"[^A-Za-z0-9_]")


class PromptRejected(Exception):
    """A prompt that cannot be queued: ComfyUI's 400 body is in :attr:`body`."""

    def __init__(self, body: dict[str, Any]) -> None:
        error = body.get("error")
        super().__init__(error.get("message") if isinstance(error, dict) else str(error))
        self.body = body


def _param_name(node_id: str, input_name: str) -> str:
    return f"{input_name}_{_IDENT.sub('_', node_id)}"


def _runtime_inputs(prompt: dict[str, Any]) -> list[tuple[str, str]]:
    """``(node_id, input)`` of the literal inputs that become params, in sorted order."""
    out = []
    for node_id in sorted(prompt):
        node = prompt[node_id]
        for name in RUNTIME_INPUTS.get(node.get("class_type"), ()):
            value = node.get("inputs", {}).get(name)
            if name in node.get("inputs", {}) and not isinstance(value, list):
                out.append((node_id, name))
    return out


def graph_shape(prompt: dict[str, Any]) -> dict[str, Any]:
    """The prompt without titles and with runtime inputs replaced by their param names."""
    bound = set(_runtime_inputs(prompt))
    shape = {}
    for node_id, node in prompt.items():
        inputs = {name: ({"$param": _param_name(node_id, name)}
                         if (node_id, name) in bound else value)
                  for name, value in node.get("inputs", {}).items()}
        shape[node_id] = {"class_type": node.get("class_type"), "inputs": inputs}
    return shape


def shape_key(prompt: dict[str, Any], salt: str = "") -> str:
    """A short hash of the graph shape (plus ``salt``: comfyc version, backend)."""
    text = json.dumps({"shape": graph_shape(prompt), "salt": salt}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _strip_meta(prompt: dict[str, Any]) -> dict[str, Any]:
    """The prompt with only ``_meta.title`` kept (comfyc's own ``_meta.dsl`` would declare
    params of its own)."""
    out = {}
    for node_id, node in prompt.items():
        node = dict(node)
        meta = node.get("_meta")
        if isinstance(meta, dict):
            node["_meta"] = {k: v for k, v in meta.items() if k == "title"}
        out[node_id] = node
    return out


@dataclass
class Prepared:
    """A prompt ready to run: the program, its params, and what the worker reports.

    Attributes:
        program: The loaded program (one worker runs it at a time).
        params: Values for its runtime params, taken from the prompt.
        compiled: True when this call compiled the artifact.
        artifact: The artifact directory.
        cached_nodes: Prompt nodes that have no op in the program (folded at compile time).
    """

    program: Any
    params: dict[str, Any]
    compiled: bool
    artifact: Path
    cached_nodes: list[str]


class _Served:
    """A precompiled artifact and the prompt it answers."""

    def __init__(self, path: Path) -> None:
        from comfyc.runtime.artifact import read_manifest

        manifest = read_manifest(path, verify=False)
        self.path = path
        self.uses = {(n, i) for uses in manifest.run_meta.param_uses.values() for n, i in uses}
        # The workflow it answers: the source prompt (params at their defaults) that runs
        # embed in their images.
        self.reference: dict[str, Any] | None = (manifest.source.prompt
                                                 or manifest.run_meta.prompt)

    def matches(self, prompt: dict[str, Any]) -> bool:
        ref = self.reference
        if not ref or set(ref) != set(prompt):
            return False
        for node_id, node in prompt.items():
            other = ref[node_id]
            if node.get("class_type") != other.get("class_type"):
                return False
            mine, theirs = node.get("inputs", {}), other.get("inputs", {})
            if set(mine) != set(theirs):
                return False
            for name, value in mine.items():
                if (node_id, name) not in self.uses and value != theirs[name]:
                    return False
        return True


class Engine:
    """Validates prompts and turns them into loaded programs, compiling on demand.

    Args:
        cache_dir: Where compiled artifacts are kept (``<key>.comfyc``).
        models_dir: The models folder (ComfyUI layout); the tiny model is always found.
        input_dir: Where LoadImage reads (and uploads go).
        backend: Stage backend for compiled artifacts and loading (``ort-cpu`` …).
        artifacts: Precompiled artifacts to serve.
        compile: Compile prompts that match no artifact (False: answer 400 instead).
    """

    def __init__(self, cache_dir: str | Path, *, models_dir: str | None = None,
                 input_dir: str | Path = "input", backend: str = "ort-cpu",
                 artifacts: list[str | Path] = (), compile: bool = True) -> None:
        from comfyc import __version__

        self.cache_dir = Path(cache_dir)
        self.models_dir = models_dir
        self.input_dir = Path(input_dir)
        self.backend = backend
        self.allow_compile = compile
        self.salt = f"comfyc {__version__} backend {backend}"
        self.served = [_Served(Path(p)) for p in artifacts]
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._run_locks: dict[str, threading.Lock] = {}

    # ------------------------------------------------------------- validate
    def validate(self, prompt: Any) -> tuple[list[str], str]:
        """Check a prompt as ComfyUI's ``validate_prompt`` does.

        Returns:
            The output node ids to execute and the model key (prompts with one key share
            a worker).

        Raises:
            PromptRejected: With ComfyUI's ``{"error", "node_errors"}`` body.
        """
        from comfyc.compiler.catalog import default_catalog
        from comfyc.compiler.errors import WorkflowError, WorkflowErrors

        if not isinstance(prompt, dict) or not prompt:
            raise PromptRejected(_error("invalid_prompt", "the prompt must be a non-empty "
                                        "JSON object of nodes (ComfyUI's API format)",
                                        "export the workflow with 'Save (API Format)'"))
        for node_id, node in prompt.items():
            if not isinstance(node, dict):
                raise PromptRejected(_error("invalid_prompt", f"node {node_id!r} is "
                                            f"{type(node).__name__}, not an object with "
                                            f"class_type and inputs", ""))
        served = self._served_for(prompt)
        catalog = default_catalog()
        try:
            graph = self._graph(prompt, catalog)
            if served is None:
                self._check_runnable(graph, catalog)
        except WorkflowErrors as exc:
            raise PromptRejected(_rejection(exc.errors, prompt)) from None
        except WorkflowError as exc:
            raise PromptRejected(_rejection([exc], prompt)) from None
        outputs = [n.id for n in graph.nodes
                   if (s := catalog.get(n.class_type)) is not None and s.output_node]
        if served is not None:
            return outputs, f"artifact:{served.path}"
        if not self.allow_compile:
            raise PromptRejected(_error(
                "invalid_prompt", "this server runs only its precompiled artifacts and the "
                "prompt matches none of them", "send one of the served workflows (seeds, "
                "sampler settings and prompt texts may change), or start the server without "
                "--no-compile"))
        models = sorted({str(v) for n in graph.nodes
                         for name, v in n.inputs.items()
                         if (s := catalog.get(n.class_type)) and (i := s.input(name))
                         and i.files and i.files != "input"})
        return outputs, "models:" + ",".join(models)

    def _graph(self, prompt: dict[str, Any], catalog: Any) -> Any:
        from comfyc.compiler.passes.base import PassContext
        from comfyc.compiler.passes.validate import ValidatePass
        from comfyc.frontends.comfy_json.api import graph_from_api

        graph = graph_from_api(_strip_meta(prompt), catalog, "<prompt>")
        ValidatePass(PassContext(catalog))(graph)
        return graph

    def _check_runnable(self, graph: Any, catalog: Any) -> None:
        """Unsupported nodes and missing files, before the prompt is queued."""
        from comfyc.compiler.errors import SchemaError, WorkflowErrors
        from comfyc.compiler.lowering.program import check_runnable
        from comfyc.compiler.passes.validate import reachable_nodes
        from comfyc.runtime.model_paths import ModelPathError, resolve

        nodes = reachable_nodes(graph, catalog)
        check_runnable(nodes, catalog)
        errors = []
        for node in nodes:
            schema = catalog.get(node.class_type)
            for name, value in node.inputs.items():
                spec = schema.input(name) if schema else None
                if spec is None or not spec.files or not isinstance(value, str):
                    continue
                try:
                    if spec.files == "input":
                        from .paths import safe_join

                        if not safe_join(self.input_dir, value).is_file():
                            raise ModelPathError(f"no file {value!r} in the input folder")
                    else:
                        resolve(spec.files, value, self.models_dir)
                except (ModelPathError, ValueError) as exc:
                    errors.append(SchemaError(
                        f"{name} {value!r}: {exc}", node.input_loc(name),
                        kind="value_not_in_list", class_type=node.class_type,
                        details=f"{name}: '{value}' not in the {spec.files} folder",
                        extra={"input_name": name, "received_value": value},
                        help=f"put the file in the server's {spec.files} folder (upload "
                             f"images with POST /upload/image)"))
        if errors:
            raise WorkflowErrors(errors)

    def _served_for(self, prompt: dict[str, Any]) -> _Served | None:
        return next((s for s in self.served if s.matches(prompt)), None)

    # -------------------------------------------------------------- prepare
    def prepare(self, prompt: dict[str, Any],
                say: Callable[[str], None] | None = None) -> Prepared:
        """The program for a validated prompt, compiling it on first sight of its shape.

        Raises:
            WorkflowError: Compilation failed.
            ArtifactError: A cached artifact is damaged (it is compiled again next time).
        """
        served = self._served_for(prompt)
        compiled = False
        if served is not None:
            path = served.path
        else:
            key = shape_key(prompt, self.salt)
            path = self.cache_dir / f"{key}.comfyc"
            with self._lock:
                key_lock = self._key_locks.setdefault(key, threading.Lock())
            with key_lock:
                if not (path / "manifest.json").is_file():
                    self.cache_dir.mkdir(parents=True, exist_ok=True)
                    # NOTE: a file lock too: Ray replicas share the cache folder, and the
                    # second compile of a key would replace the first one's artifact while
                    # it is being loaded.
                    with open(self.cache_dir / f".{key}.lock", "a+b") as handle:
                        fcntl.flock(handle, fcntl.LOCK_EX)
                        if not (path / "manifest.json").is_file():
                            self._compile(prompt, path, say)
                            compiled = True
        program = self._load(path)
        params = {}
        for name, uses in (program.meta.get("param_uses") or {}).items():
            node_id, input_name = uses[0]
            value = prompt.get(node_id, {}).get("inputs", {}).get(input_name)
            if value is not None and not isinstance(value, list):
                params[name] = value
        op_ids = {op.id for op in program.ops}
        cached = [n for n in prompt if n not in op_ids]
        return Prepared(program, params, compiled, path, cached)

    def _compile(self, prompt: dict[str, Any], path: Path,
                 say: Callable[[str], None] | None) -> None:
        from comfyc.compiler.catalog import default_catalog
        from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
        from comfyc.frontends.comfy_json.api import graph_from_api

        bindings = [f"{n}.{i}={_param_name(n, i)}" for n, i in _runtime_inputs(prompt)]
        graph = graph_from_api(_strip_meta(prompt), default_catalog(), "<prompt>")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        options = CompileOptions(backend=self.backend, param_bindings=bindings,
                                 models_dir=self.models_dir, input_dir=str(self.input_dir))
        # NOTE: compile_graph writes `.NAME.tmp-PID` and renames it into place, so a
        # replica killed mid-compile leaves no half artifact under the cache key.
        compile_graph(graph, path, options, progress=say)

    def _load(self, path: Path) -> Any:
        from comfyc.runtime.artifact import load

        key = str(path)
        with self._lock:
            program = self._loaded.get(key)
            if program is not None:
                self._loaded.move_to_end(key)
                return program
        program = load(path, backend=None if self.backend == "auto" else self.backend)
        with self._lock:
            self._loaded[key] = program
            while len(self._loaded) > MAX_LOADED:
                self._loaded.popitem(last=False)
        return program

    def run_lock(self, artifact: Path) -> threading.Lock:
        """The lock held while a program runs (a program is not reentrant)."""
        with self._lock:
            return self._run_locks.setdefault(str(artifact), threading.Lock())

    def free(self) -> None:
        """Drop loaded programs (``POST /free``); artifacts stay on disk."""
        with self._lock:
            self._loaded.clear()

    def list_files(self, kind: str) -> list[str]:
        """File combo choices for ``/object_info``: model names, or the input folder."""
        if kind == "input":
            root = self.input_dir
            if not root.is_dir():
                return []
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                          if p.is_file() and not p.name.startswith("."))
        from comfyc.runtime.model_paths import list_models

        try:
            return list_models(kind, self.models_dir)
        except ValueError:
            return []


def _error(kind: str, message: str, details: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "details": details,
                      "extra_info": {}}, "node_errors": {}}


def _rejection(errors: list[Any], prompt: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's 400 body for validation errors."""
    from comfyc.compiler.errors import node_errors

    for error in errors:
        if not error.class_type and error.loc is not None and error.loc.node_id in prompt:
            error.class_type = prompt[error.loc.node_id].get("class_type")
    grouped = node_errors(errors)
    first = errors[0]
    if first.kind in ("invalid_prompt", "prompt_no_outputs", "dependency_cycle") or not grouped:
        body = first.to_comfy()
        body["message"] = first.message
        if first.help:
            body["details"] = (first.details or "") + (" — " if first.details else "") + first.help
        return {"error": body, "node_errors": grouped}
    details = "\n".join(f"{e.to_comfy()['message']}: {e.to_comfy()['details']}"
                        for e in errors)
    return {"error": {"type": "prompt_outputs_failed_validation",
                      "message": "Prompt outputs failed validation", "details": details,
                      "extra_info": {}}, "node_errors": grouped}

