"""From a ComfyUI prompt to a runnable program: validate, compile on first sight, cache.

A prompt's *graph shape* is the prompt with its run-time inputs taken out: sampler seeds and
settings (KSampler ``seed``, ``steps``, ``cfg``, ``sampler_name``, ``scheduler``,
``denoise``; KSamplerAdvanced ``noise_seed``, ``cfg``), prompt texts (``CLIPTextEncode``
``text``, of any length: compiled UNets take any number of 77-token chunks; with TensorRT, whose
engines keep their traced shapes, the texts' chunk counts stay in the shape) and where outputs
go (SaveImage ``filename_prefix``). The first prompt of a shape is compiled with exactly those
inputs as runtime params (the compiler's ``--param NODE.INPUT=NAME`` mechanism) into
``CACHE/<key>.comfyc``; every later prompt of the shape — any seed, any text, any prefix —
loads that artifact (from memory after the first load) and only sets params. Node titles
(``_meta``) are not part of the shape.

Tiered execution (``first_run="torch"``, the default): a shape with no artifact yet does not
wait for its compile. Its first prompt runs at once on the *torch tier* — the same passes and
params lowered onto PyTorch stages (:func:`lower_torch`), checkpoints kept loaded across
prompts as ComfyUI keeps them, the torch tier's imports preloaded when the server starts
(:meth:`Engine.preload`) — and when that run is over the artifact compiles in a background
process at lower priority (:mod:`.compile_job`), one shape at a time, and is loaded; until it
is, the shape's prompts stay on the torch tier, after it they run the artifact. The pictures
agree within the documented torch/artifact tolerance (2/255). A shape whose compile fails
keeps running on the torch tier; one whose lowering fails is refused like a failed compile.
``first_run="compile"`` compiles first, as before.

Validation rejects what the run would reject, before anything is queued: ComfyUI's checks
(the compiler's validate pass), then run-time types — an INT must be an integer (``20`` or
``20.0``, not ``true`` or ``3.5``), a FLOAT a finite number, a STRING text, a BOOLEAN a
boolean (numeric strings are converted, as ComfyUI converts them, and the converted prompt
is what runs) — files that must exist (models, LoadImage pictures in the input folder or, as
``"name [output]"``/``"name [temp]"``, in the output folder), and a memory estimate (of the
largest picture batch the prompt makes: :func:`picture_memory`) against the server's budget.

Resources stay bounded: compiled artifacts are evicted least-recently-used beyond a size and a
count (never one in use: users hold a shared file lock on its key); a shape whose compile
failed is remembered for :data:`FAILED_TTL_S` and refused at once instead of compiled again
on every prompt; at most :data:`MAX_LOADED` programs stay loaded.

Precompiled artifacts (``comfyc serve ARTIFACT...``) are matched against the prompt the
compiler recorded (``source.prompt`` in the manifest): a prompt with the same nodes and the
same values everywhere except the artifact's param inputs runs on it.

The compiler is imported lazily: the runtime core stays free of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .redact import Redactor

_log = logging.getLogger(__name__)

__all__ = ["BYTES_PER_PIXEL", "BYTES_PER_TOKEN_PAIR", "COMPILE_IDLE_S", "COMPILE_NICENESS",
           "DEFAULT_CACHE_ARTIFACTS", "DEFAULT_CACHE_BYTES", "DEFAULT_MEMORY_BUDGET",
           "FAILED_TTL_S", "FIRST_RUN_MODES", "MAX_PROMPT_CHUNKS", "MAX_TEXT_CHARS",
           "RUNTIME_INPUTS", "CompileFailed", "Engine", "Prepared", "PromptRejected",
           "Validated", "compile_prompt", "estimate_memory",
           "graph_shape", "lower_torch", "picture_memory", "prompt_chunks", "shape_key"]

#: Inputs that become runtime params, by node class: changing them never recompiles.
RUNTIME_INPUTS: dict[str, tuple[str, ...]] = {
    "KSampler": ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": ("noise_seed", "cfg"),
    "CLIPTextEncode": ("text",),
    # NOTE: where outputs go changes nothing that is computed; as a literal, every new
    # prefix compiled (and kept) another artifact.
    "SaveImage": ("filename_prefix",),
}
#: Programs kept loaded in memory (the artifacts stay on disk), and torch-tier programs.
MAX_LOADED = 8
#: Distinct checkpoints the torch tier keeps loaded (more: the models are loaded again).
MAX_TORCH_CHECKPOINTS = 2
#: How a prompt of a shape without an artifact runs: ``torch`` at once while the artifact
#: compiles in the background (ComfyUI starts sampling at once too), or ``compile`` first.
FIRST_RUN_MODES = ("torch", "compile")
#: Niceness of background compiles: the prompts running meanwhile get the CPU first.
COMPILE_NICENESS = 10
#: Seconds the compile process waits for another shape before it exits (freeing its memory).
COMPILE_IDLE_S = 300.0
#: Compiled artifacts kept in the cache folder, by total size and by count (LRU beyond).
DEFAULT_CACHE_BYTES = 10 * 1024**3
DEFAULT_CACHE_ARTIFACTS = 64
#: Seconds a failed compile is remembered (its prompts are refused at once meanwhile).
FAILED_TTL_S = 600.0
#: Estimated run memory per picture pixel of the largest batch a prompt makes. Measured on the
#: tiny model at 64x64, batch 64 (843 B/px peak RSS growth: VAE decoder and sampler arrays).
BYTES_PER_PIXEL = 768
#: Estimated attention memory per (latent token)² per picture. The tiny model (attention at the
#: full latent size, like SD1.x) measured 144 B (512x512: 2.4 GiB; 256x256 batch 16: 2.9
#: GiB); SDXL attends at half and quarter sizes only, 16 times less. The SDXL figure is used:
#: the estimate is a lower bound that refuses prompts that certainly do not fit, never ones
#: that might (an operator of SD1.x models lowers --max-prompt-memory-mb instead).
BYTES_PER_TOKEN_PAIR = 9
#: The default memory budget of one prompt (the server makes it min(this, half the RAM)).
DEFAULT_MEMORY_BUDGET = 8 * 1024**3
#: Longest node id accepted (ComfyUI's are short numbers, "12:3" for subgraph nodes).
MAX_NODE_ID = 256
#: Longest text a STRING input may hold (a long prompt is a few thousand characters).
MAX_TEXT_CHARS = 32768
#: Most 77-token CLIP chunks a prompt text may make (2,464 tokens): each is a text-encoder
#: run, and the UNet's cross-attention grows with their total; a 1 MB text made 6,645.
MAX_PROMPT_CHUNKS = 32
#: Backends whose compiled UNets keep the traced context length and batch (their prompts are
#: keyed by exact chunk counts).
_PINNED_CONTEXT = ("trt", "ort-trt", "auto")
_IDENT = re.compile(r"[^A-Za-z0-9_]")
#: What a compile stopped by a kill leaves in the cache folder (compile_graph's temporaries).
_LEFTOVER = re.compile(r"\.(?P<key>[0-9a-f]+)\.comfyc\.(?:tmp|old)-[0-9]+")
_WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


@functools.cache
def _compiler_reads_outputs() -> bool:
    """Whether the compiler's probe run can read ``"name [output]"`` pictures (its options
    have an output folder)."""
    try:
        from comfyc.compiler.lowering.artifact import CompileOptions
    except ImportError:
        return False
    return "output_dir" in getattr(CompileOptions, "__dataclass_fields__", {})



class PromptRejected(Exception):
    """A prompt that cannot be queued: ComfyUI's 400 body is in :attr:`body`."""

    def __init__(self, body: dict[str, Any]) -> None:
        error = body.get("error")
        super().__init__(error.get("message") if isinstance(error, dict) else str(error))
        self.body = body


class CompileFailed(Exception):
    """A graph shape whose compile failed recently (remembered; not compiled again)."""


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


@functools.lru_cache(maxsize=1)
def _clip_tokenizer() -> Any:
    from comfyc.runtime.tokenizer import ClipTokenizer

    return ClipTokenizer()


_CHUNKS: OrderedDict[bytes, int] = OrderedDict()
_CHUNKS_LOCK = threading.Lock()


def prompt_chunks(text: str) -> int:
    """How many 77-token chunks CLIP makes of a prompt text (ComfyUI's weighted chunks).

    Remembered for the last 512 texts by their digest (not the texts: they may be long).
    """
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    with _CHUNKS_LOCK:
        if digest in _CHUNKS:
            _CHUNKS.move_to_end(digest)
            return _CHUNKS[digest]
    tokenizer = _clip_tokenizer()
    with _CHUNKS_LOCK:  # NOTE: the tokenizer's word cache is a plain dict.
        count = len(tokenizer.tokenize_weighted(text))
        _CHUNKS[digest] = count
        while len(_CHUNKS) > 512:
            _CHUNKS.popitem(last=False)
    return count


def graph_shape(prompt: dict[str, Any], *, free_context: bool = False) -> dict[str, Any]:
    """The prompt without titles and with runtime inputs replaced by their param names.

    ``free_context``: the backend's compiled UNets take any context length and batch (as
    onnxruntime and OpenVINO artifacts do), so prompt texts of any length are one shape.
    Otherwise (TensorRT keeps the traced shapes) a text's param records how many 77-token
    chunks it makes (issue #19 item 2): texts of another length are another shape, compiled
    once per chunk count and run on the torch tier until then, like any new shape.
    """
    bound = set(_runtime_inputs(prompt))
    shape = {}
    for node_id, node in prompt.items():
        inputs = {}
        for name, value in node.get("inputs", {}).items():
            if (node_id, name) not in bound:
                inputs[name] = value
                continue
            inputs[name] = {"$param": _param_name(node_id, name)}
            if not free_context and name == "text" and isinstance(value, str):
                inputs[name]["chunks"] = prompt_chunks(value)
        shape[node_id] = {"class_type": node.get("class_type"), "inputs": inputs}
    return shape


def shape_key(prompt: dict[str, Any], salt: str = "", *, free_context: bool = False) -> str:
    """A short hash of the graph shape (plus ``salt``: comfyc version, backend)."""
    text = json.dumps({"shape": graph_shape(prompt, free_context=free_context),
                       "salt": salt}, sort_keys=True, default=str)
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


def _shown(value: Any) -> Any:
    """A received value for an error body, cut when long (it is echoed to the client)."""
    if isinstance(value, str) and len(value) > 80:
        return value[:77] + "..."
    return value


def _strict(kind: str, value: Any) -> Any:
    """``value`` as the run will use an input of widget type ``kind``.

    Stricter than ComfyUI's validation (which would turn ``true`` into 1, ``3.5`` into 3 and
    ``123`` into "123"): what the runtime would not take as it is, is refused here, so a
    prompt never fails after it was queued. Numeric text is converted, as ComfyUI does.

    Raises:
        ValueError: With what is wrong.
    """
    if kind == "INT":
        if isinstance(value, str):
            try:
                value = float(value.strip()) if "." in value or "e" in value.lower() \
                    else int(value.strip())
            except ValueError:
                raise ValueError("text that is not a whole number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"a {_type_name(value)}, not a whole number")
        if isinstance(value, float):
            if not math.isfinite(value) or not value.is_integer():
                raise ValueError("not a whole number")
            value = int(value)
        return value
    if kind == "FLOAT":
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError("text that is not a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"a {_type_name(value)}, not a number")
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return float(value)
    if kind == "STRING":
        if not isinstance(value, str):
            raise ValueError(f"a {_type_name(value)}, not text")
        return value
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"a {_type_name(value)}, not true or false")
    return value


def _check_text(class_type: str, name: str, value: Any) -> None:
    """Refuse a text too long to take (see :data:`MAX_TEXT_CHARS`, :data:`MAX_PROMPT_CHUNKS`).

    Raises:
        ValueError: With what is wrong.
    """
    if not isinstance(value, str):
        return
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"text of {len(value):,} characters, longer than this server takes "
                         f"({MAX_TEXT_CHARS:,})")
    if name in RUNTIME_INPUTS.get(class_type, ()) and name == "text":
        chunks = prompt_chunks(value)
        if chunks > MAX_PROMPT_CHUNKS:
            raise ValueError(f"a prompt of {chunks} chunks of 75 tokens, more than this "
                             f"server takes ({MAX_PROMPT_CHUNKS})")


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "whole number", float: "number", str: "text",
            list: "list", dict: "object", type(None): "null"}.get(type(value), "value")


def picture_memory(area: float, batch: float) -> float:
    """Estimated run memory of a batch of pictures of ``area`` pixels (see the constants)."""
    tokens = area / 64  # Latent pixels: the VAE scales by 8 each way.
    return batch * (BYTES_PER_PIXEL * area + BYTES_PER_TOKEN_PAIR * tokens * tokens)


def estimate_memory(nodes: list[Any], pictures: dict[str, tuple[int, int, int]]
                    ) -> tuple[int, str, int]:
    """The estimated run memory of a prompt: its largest picture batch, and where.

    Returns:
        ``(bytes, node id, pixels)`` of the batch that needs the most memory.

    Follows sizes through the graph: ``width``/``height`` and ``batch_size`` literals set them
    (EmptyLatentImage, ImageScale …), ``scale_by`` multiplies the area, ``amount`` the batch
    (RepeatLatentBatch), a loaded picture brings its own size and frame count; other nodes
    pass on the largest size and batch of their inputs.

    Args:
        nodes: The nodes that run, in topological order.
        pictures: ``(width, height, frames)`` of the pictures LoadImage nodes read, by node id.
    """
    from comfyc.compiler.ir import Value

    state: dict[str, tuple[float, float]] = {}
    peak, where, pixels = 0.0, "", 0.0

    def number(value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) if math.isfinite(value) and value > 0 else None

    for node in nodes:
        ups = [state[v.producer.id] for v in node.inputs.values()
               if isinstance(v, Value) and v.producer.id in state]
        area = max((u[0] for u in ups), default=0.0)
        batch = max((u[1] for u in ups), default=1.0)
        inputs = node.inputs
        width, height = number(inputs.get("width")), number(inputs.get("height"))
        if width and height:
            area = width * height
        if node.id in pictures:
            w, h, frames = pictures[node.id]
            area, batch = float(w * h), float(max(frames, 1))
        if (size := number(inputs.get("batch_size"))) is not None:
            batch = size
        if (amount := number(inputs.get("amount"))) is not None:
            batch *= amount
        if (scale := number(inputs.get("scale_by"))) is not None:
            area *= scale * scale
        state[node.id] = (area, batch)
        memory = picture_memory(area, batch)
        if memory > peak:
            peak, where, pixels = memory, node.id, area * batch
    return int(min(peak, 2**62)), where, int(min(pixels, 2**62))


@dataclass
class Validated:
    """A prompt that passed validation.

    Attributes:
        prompt: The prompt to run (numeric text converted to numbers).
        outputs: The output node ids to execute.
        key: The model key (prompts with one key share a worker).
        memory: The estimated run memory in bytes.
    """

    prompt: dict[str, Any]
    outputs: list[str]
    key: str
    memory: int = 0


@dataclass
class Prepared:
    """A prompt ready to run: the program, its params, and what the worker reports.

    Call :meth:`release` when the run is over (the artifact may be evicted after that).

    Attributes:
        program: The loaded program (one worker runs it at a time).
        params: Values for its runtime params, taken from the prompt.
        compiled: True when this call compiled the artifact.
        artifact: The artifact directory (for the torch tier: where it is being compiled).
        cached_nodes: Prompt nodes that have no op in the program (folded at compile time).
        tier: ``artifact`` (a compiled artifact runs it) or ``torch`` (the workflow lowered
            onto PyTorch stages, while its artifact compiles in the background).
        key: The graph shape's key (``shape_key``; the artifact's name for compiled shapes).
    """

    program: Any
    params: dict[str, Any]
    compiled: bool
    artifact: Path
    cached_nodes: list[str]
    _release: Callable[[], None] = field(default=lambda: None, repr=False)
    tier: str = "artifact"
    key: str = ""

    @property
    def lock_key(self) -> str:
        """What :meth:`Engine.run_lock` is keyed by: one program, one run at a time."""
        return f"{self.tier}:{self.artifact}"

    def release(self) -> None:
        """Let the artifact go (it stays cached; it may now be evicted)."""
        release, self._release = self._release, lambda: None
        release()


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
        # NOTE: a UNet exported with a fixed context length or batch (artifacts of an older
        # comfyc, or TensorRT's) takes prompt texts of as many 77-token chunks as the texts it
        # was compiled with (issue #19 item 2). Other texts do not match it: they compile, or
        # are refused with --no-compile, instead of failing in the run.
        self.fixed_context = any(
            inp.get("name") == "encoder_hidden_states" and len(inp.get("shape") or ()) > 1
            and not (isinstance(inp["shape"][0], str) and isinstance(inp["shape"][1], str))
            for entry in manifest.stages.values() if entry.kind == "unet"
            for inp in (entry.facts or {}).get("inputs") or ())

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
                if (node_id, name) not in self.uses:
                    if value != theirs[name]:
                        return False
                elif (self.fixed_context and name == "text" and isinstance(value, str)
                      and isinstance(theirs[name], str)
                      and prompt_chunks(value) != prompt_chunks(theirs[name])):
                    return False
        return True


def _bindings(prompt: dict[str, Any]) -> list[str]:
    """The ``NODE.INPUT=NAME`` param bindings of a prompt's runtime inputs."""
    return [f"{n}.{i}={_param_name(n, i)}" for n, i in _runtime_inputs(prompt)]


def compile_prompt(prompt: dict[str, Any], path: Path, *, backend: str,
                   models_dir: str | None, input_dir: Path, output_dir: Path | None,
                   say: Callable[[str], None] | None = None) -> None:
    """Compile a prompt's graph shape into the artifact ``path`` (its runtime inputs as
    params; see the module docstring).

    Raises:
        WorkflowError: The workflow cannot be compiled.
    """
    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.frontends.comfy_json.api import graph_from_api

    graph = graph_from_api(_strip_meta(prompt), default_catalog(), "<prompt>")
    path.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if _compiler_reads_outputs() and output_dir is not None:
        extra["output_dir"] = str(output_dir)
    options = CompileOptions(backend=backend, param_bindings=_bindings(prompt),
                             models_dir=models_dir, input_dir=str(input_dir), **extra)
    # NOTE: compile_graph writes `.NAME.tmp-PID` and renames it into place, so a
    # replica killed mid-compile leaves no half artifact under the cache key.
    compile_graph(graph, path, options, progress=say)


def lower_torch(prompt: dict[str, Any], models: Any) -> Any:
    """The torch tier's program of a prompt's graph shape: the compile passes (with the
    same runtime params as the artifact) lowered onto PyTorch stages, nothing exported.

    Args:
        prompt: The validated prompt.
        models: The :class:`~comfyc.compiler.lowering.program.TorchModelCache` whose loaded
            checkpoints the program uses (and keeps loaded).

    Raises:
        WorkflowError: The workflow cannot be lowered (a model does not load …).
    """
    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.program import lower_to_program
    from comfyc.compiler.passes.base import PassContext, PassOptions
    from comfyc.compiler.pipeline import run_pipeline
    from comfyc.frontends.comfy_json.api import graph_from_api

    catalog = default_catalog()
    graph = graph_from_api(_strip_meta(prompt), catalog, "<prompt>")
    context = PassContext(catalog, PassOptions(param_bindings=_bindings(prompt),
                                               models_dir=models.models_dir), models=models)
    run_pipeline(graph, context)
    return lower_to_program(graph, catalog, cache=models,
                            merged_into=context.changes.merged_into())


class Engine:
    """Validates prompts and turns them into loaded programs, compiling on demand.

    Args:
        cache_dir: Where compiled artifacts are kept (``<key>.comfyc``).
        models_dir: The models folder (ComfyUI layout); the tiny model is always found.
        input_dir: Where LoadImage reads (and uploads go).
        output_dir: The output folder (``"name [output]"`` pictures; ``temp/`` inside it for
            ``"name [temp]"``).
        backend: Stage backend for compiled artifacts and loading (``ort-cpu`` …).
        artifacts: Precompiled artifacts to serve.
        compile: Compile prompts that match no artifact (False: answer 400 instead).
        max_cache_bytes: Compiled artifacts kept, by total size (least recently used go).
        max_cache_artifacts: Compiled artifacts kept, by count.
        memory_budget: Largest estimated run memory of one prompt, in bytes (None: no limit).
        first_run: How the first prompts of a shape without an artifact run (one of
            :data:`FIRST_RUN_MODES`): ``torch`` — at once on the torch tier, while the
            artifact compiles in a background process; ``compile`` — after compiling.
        report: ``report(kind, facts)`` for the server's metrics (``compile`` with
            ``seconds`` and ``ok``).
        noise_mode: Whose per-step sampler noise prompts reproduce unless they choose
            (:data:`comfyc.runtime.noise.NOISE_MODES`; None: each program's own default).
    """

    def __init__(self, cache_dir: str | Path, *, models_dir: str | None = None,
                 input_dir: str | Path = "input", output_dir: str | Path | None = None,
                 backend: str = "ort-cpu", artifacts: list[str | Path] = (),
                 compile: bool = True, max_cache_bytes: int = DEFAULT_CACHE_BYTES,
                 max_cache_artifacts: int = DEFAULT_CACHE_ARTIFACTS,
                 memory_budget: int | None = DEFAULT_MEMORY_BUDGET, first_run: str = "torch",
                 report: Callable[[str, dict[str, Any]], None] | None = None,
                 noise_mode: str | None = None) -> None:
        from comfyc import __version__
        from comfyc.runtime.noise import check_noise_mode

        if first_run not in FIRST_RUN_MODES:
            raise ValueError(f"first_run must be one of {FIRST_RUN_MODES}, not {first_run!r}")
        self.first_run = first_run
        self.report = report
        self.noise_mode = check_noise_mode(noise_mode) if noise_mode is not None else None
        # The torch tier: loaded checkpoints (kept, as ComfyUI keeps them), lowered programs
        # by shape key, and the background compiles of those shapes.
        self._models: Any = None
        self._torch: OrderedDict[str, Any] = OrderedDict()
        self._torch_lock = threading.Lock()
        # Held while lowering onto PyTorch (and importing it): one build at a time.
        self._build_lock = threading.Lock()
        self._compiles: queue.Queue[tuple[str, Path, dict[str, Any]] | None] = queue.Queue()
        self._compiling: dict[str, str] = {}  # key -> "queued" | "compiling" | "loading"
        self._compile_failed: dict[str, str] = {}
        self._compiler: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._closed = False
        #: Whether :meth:`preload` has imported the torch tier's code.
        self.preloaded = False

        self.cache_dir = Path(cache_dir)
        self.models_dir = models_dir
        self.input_dir = Path(input_dir)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.backend = backend
        self.allow_compile = compile
        self.max_cache_bytes = max_cache_bytes
        self.max_cache_artifacts = max_cache_artifacts
        self.memory_budget = memory_budget
        self.salt = f"comfyc {__version__} backend {backend}"
        self.served = [_Served(Path(p)) for p in artifacts]
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._run_locks: dict[str, threading.Lock] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self._sizes: dict[str, int] = {}
        self.evicted = 0
        self.redactor = Redactor(self._folders())

    def _folders(self) -> dict[str, Any]:
        """The server's folders, as labels for :class:`~.redact.Redactor`."""
        from comfyc.runtime.model_paths import get_models_dir

        try:
            models = get_models_dir(self.models_dir)
        except Exception:  # noqa: BLE001 - only used for redaction
            models = None
        return {"output": self.output_dir, "input": self.input_dir, "cache": self.cache_dir,
                "models": models, "comfyc": Path(__file__).resolve().parents[1],
                "python": sys.prefix, "python-lib": sys.base_prefix, "home": Path.home()}

    def shape_key(self, prompt: dict[str, Any]) -> str:
        """The key of a prompt's graph shape on this server (:func:`shape_key` with the
        server's salt and whether its backend's UNets take any context length)."""
        return shape_key(prompt, self.salt,
                         free_context=self.backend not in _PINNED_CONTEXT)

    # ------------------------------------------------------------- validate
    def validate(self, prompt: Any) -> Validated:
        """Check a prompt as ComfyUI's ``validate_prompt`` does, and as strictly as the run.

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
            if not node_id or len(node_id) > MAX_NODE_ID:
                raise PromptRejected(_error(
                    "invalid_prompt", f"node id {_shown(node_id)!r} is not a usable id: ids "
                    f"are non-empty strings of at most {MAX_NODE_ID} characters", ""))
            if not isinstance(node, dict):
                raise PromptRejected(_error("invalid_prompt", f"node {_shown(node_id)!r} is "
                                            f"{type(node).__name__}, not an object with "
                                            f"class_type and inputs", ""))
        catalog = default_catalog()
        served = None
        pictures: dict[str, tuple[int, int, int]] = {}
        try:
            graph = self._graph(prompt, catalog)
            # NOTE: only a prompt that is structurally sound is compared with the artifacts.
            served = self._served_for(prompt)
            nodes = self._reachable(graph, catalog)
            prompt = self._check_types(prompt, nodes, catalog)
            if served is None:
                pictures = self._check_runnable(nodes, catalog)
        except WorkflowErrors as exc:
            raise PromptRejected(_rejection(exc.errors, prompt)) from None
        except WorkflowError as exc:
            raise PromptRejected(_rejection([exc], prompt)) from None
        memory = self._check_memory(nodes, pictures)
        outputs = [n.id for n in graph.nodes
                   if (s := catalog.get(n.class_type)) is not None and s.output_node]
        if served is not None:
            return Validated(prompt, outputs, f"artifact:{served.path}", memory)
        if not self.allow_compile:
            raise PromptRejected(_error(
                "invalid_prompt", "this server runs only its precompiled artifacts and the "
                "prompt matches none of them", "send one of the served workflows (seeds, "
                "sampler settings and prompt texts may change), or start the server without "
                "--no-compile"))
        failure = self._failure(self.shape_key(prompt))
        if failure is not None:
            raise PromptRejected(_error(
                "compile_failed", f"this workflow failed to compile a moment ago: {failure}",
                "it is not compiled again for a while; change the workflow, or ask the "
                "server's operator (POST /free forgets failed compiles)"))
        models = sorted({str(v) for n in graph.nodes
                         for name, v in n.inputs.items()
                         if (s := catalog.get(n.class_type)) and (i := s.input(name))
                         and i.files and i.files != "input"})
        return Validated(prompt, outputs, "models:" + ",".join(models), memory)

    @staticmethod
    def only_outputs(prompt: Any, targets: list[str]) -> Any:
        """The prompt with only the output nodes in ``targets`` (the page's "run selected
        outputs": ComfyUI's ``partial_execution_targets``); the others' branches are left
        to dead-node elimination. Anything but a dict of nodes is returned as it is."""
        from comfyc.compiler.catalog import default_catalog

        if not isinstance(prompt, dict):
            return prompt
        catalog = default_catalog()
        out = {}
        for node_id, node in prompt.items():
            schema = catalog.get(node.get("class_type")) if isinstance(node, dict) else None
            if schema is not None and schema.output_node and node_id not in targets:
                continue
            out[node_id] = node
        return out

    def _graph(self, prompt: dict[str, Any], catalog: Any) -> Any:
        from comfyc.compiler.passes.base import PassContext
        from comfyc.compiler.passes.validate import ValidatePass
        from comfyc.frontends.comfy_json.api import graph_from_api

        graph = graph_from_api(_strip_meta(prompt), catalog, "<prompt>")
        ValidatePass(PassContext(catalog))(graph)
        return graph

    @staticmethod
    def _reachable(graph: Any, catalog: Any) -> list[Any]:
        from comfyc.compiler.passes.validate import reachable_nodes

        return reachable_nodes(graph, catalog)

    def _check_types(self, prompt: dict[str, Any], nodes: list[Any], catalog: Any
                     ) -> dict[str, Any]:
        """The prompt with widget literals as the run takes them; see :func:`_strict`.

        Raises:
            WorkflowErrors: ``invalid_input_type`` for every value the run would refuse.
        """
        from comfyc.compiler.errors import SchemaError, WorkflowErrors

        errors = []
        converted: dict[tuple[str, str], Any] = {}
        for node in nodes:
            schema = catalog.get(node.class_type)
            raw = prompt.get(node.id, {}).get("inputs")
            if schema is None or not isinstance(raw, dict):
                continue
            for name, value in raw.items():
                spec = schema.input(name)
                if spec is None or spec.type not in _WIDGET_TYPES or isinstance(value, list):
                    continue
                try:
                    strict = _strict(spec.type, value)
                    _check_text(node.class_type, name, strict)
                except ValueError as exc:
                    errors.append(SchemaError(
                        f"input '{name}' expects {spec.type}, but {_shown(value)!r} is {exc}",
                        node.input_loc(name), kind="invalid_input_type",
                        class_type=node.class_type, details=f"{name}, {_shown(value)!r}",
                        help=f"send a {spec.type} value", extra={
                            "input_name": name, "received_value": _shown(value)}))
                    continue
                if type(strict) is not type(value) or strict != value:
                    converted[(node.id, name)] = strict
        if errors:
            raise WorkflowErrors(errors)
        if not converted:
            return prompt
        out = {nid: dict(node) for nid, node in prompt.items()}
        for (node_id, name), value in converted.items():
            out[node_id]["inputs"] = {**out[node_id]["inputs"], name: value}
        return out

    def _check_runnable(self, nodes: list[Any], catalog: Any
                        ) -> dict[str, tuple[int, int, int]]:
        """Unsupported nodes and missing files, before the prompt is queued.

        Returns:
            ``(width, height, frames)`` of every picture a LoadImage node reads, by node id.
        """
        from comfyc.compiler.errors import SchemaError, WorkflowErrors
        from comfyc.compiler.lowering.program import check_runnable
        from comfyc.runtime.image_io import ImageIOError
        from comfyc.runtime.model_paths import ModelPathError, resolve

        check_runnable(nodes, catalog)
        errors = []
        pictures: dict[str, tuple[int, int, int]] = {}
        for node in nodes:
            schema = catalog.get(node.class_type)
            for name, value in node.inputs.items():
                spec = schema.input(name) if schema else None
                if spec is None or not spec.files or not isinstance(value, str):
                    continue
                try:
                    if spec.files == "input":
                        pictures[node.id] = self._picture(value)
                    else:
                        resolve(spec.files, value, self.models_dir)
                except (ModelPathError, ImageIOError, ValueError) as exc:
                    where = ("input folder (upload it with POST /upload/image)"
                             if spec.files == "input" else f"server's {spec.files} folder")
                    errors.append(SchemaError(
                        f"{name} {_shown(value)!r}: {self.redactor.text(str(exc))}",
                        node.input_loc(name), kind="value_not_in_list",
                        class_type=node.class_type,
                        details=f"{name}: '{_shown(value)}' not in the {spec.files} folder",
                        extra={"input_name": name, "received_value": _shown(value)},
                        help=f"put the file in the {where}"))
        if errors:
            raise WorkflowErrors(errors)
        return pictures

    def _picture(self, name: str) -> tuple[int, int, int]:
        """Size and frame count of a picture LoadImage would read (as it resolves the name).

        Raises:
            ImageIOError: No such picture, or not a picture.
        """
        from PIL import Image, UnidentifiedImageError

        from comfyc.runtime.image_io import ImageIOError, resolve_image_path

        if (name.endswith(("[output]", "[temp]")) and self.allow_compile
                and not _compiler_reads_outputs()):
            # NOTE: the compiler runs the program once to learn its shapes, and reads pictures
            # from the input folder only (CompileOptions has no output folder yet).
            raise ImageIOError(
                f"{name!r} names a picture in the output folder, which this server cannot "
                "compile a workflow from yet; upload the picture (POST /upload/image) and use "
                "its input-folder name", name)
        output = self.output_dir
        path = resolve_image_path(name, self.input_dir, output_dir=output,
                                  temp_dir=output / "temp" if output is not None else None)
        try:
            with Image.open(path) as picture:
                width, height = picture.size
                return width, height, int(getattr(picture, "n_frames", 1) or 1)
        except (UnidentifiedImageError, OSError, ValueError,
                Image.DecompressionBombError) as exc:
            raise ImageIOError(f"{name!r} is not a picture comfyc can read ({exc})",
                               name) from None

    def _check_memory(self, nodes: list[Any], pictures: dict[str, tuple[int, int, int]]
                      ) -> int:
        """The estimated run memory; refuses a prompt above the budget.

        Raises:
            PromptRejected: ``memory_budget_exceeded`` naming the node and the figures.
        """
        memory, where, pixels = estimate_memory(nodes, pictures)
        if self.memory_budget is not None and memory > self.memory_budget:
            node = next((n for n in nodes if n.id == where), None)
            raise PromptRejected({
                "error": {"type": "memory_budget_exceeded", "message": (
                    f"this prompt would need about {memory / 2**30:.1f} GiB ({pixels:,} picture "
                    f"pixels at node #{where}), more than this server allows per prompt "
                    f"({self.memory_budget / 2**30:.1f} GiB)"),
                    "details": "make the pictures smaller or the batch smaller, or start the "
                               "server with a larger --max-prompt-memory-mb",
                    "extra_info": {"estimated_bytes": memory,
                                   "budget_bytes": self.memory_budget}},
                "node_errors": {where: {
                    "errors": [{"type": "memory_budget_exceeded",
                                "message": "the pictures made here are too large",
                                "details": f"{pixels:,} pixels", "extra_info": {}}],
                    "dependent_outputs": [],
                    "class_type": node.class_type if node is not None else ""}}})
        return memory

    def check_upload(self, width: int, height: int, frames: int = 1) -> str | None:
        """Why an uploaded picture is refused (too large to load within the budget), or None."""
        if self.memory_budget is None:
            return None
        memory = picture_memory(width * height, max(frames, 1))
        if memory <= self.memory_budget:
            return None
        return (f"the picture is {width}x{height}" + (f" with {frames} frames" if frames > 1
                                                       else "")
                + f"; loading it would need about {memory / 2**30:.1f} GiB, more than this "
                  f"server allows per prompt ({self.memory_budget / 2**30:.1f} GiB)")

    def _served_for(self, prompt: dict[str, Any]) -> _Served | None:
        return next((s for s in self.served if s.matches(prompt)), None)

    # -------------------------------------------------------- failed compiles
    def _failure(self, key: str) -> str | None:
        """The remembered failure of a shape, if it failed less than FAILED_TTL_S ago."""
        with self._lock:
            entry = self._failed.get(key)
            if entry is None:
                return None
            if time.monotonic() - entry[0] > FAILED_TTL_S:
                del self._failed[key]
                return None
            return entry[1]

    def _remember_failure(self, key: str, exc: BaseException) -> None:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        with self._lock:
            self._failed[key] = (time.monotonic(), self.redactor.text(str(message))[:2000])
            # NOTE: bounded like everything a client can fill: the oldest go first.
            while len(self._failed) > 1000:
                self._failed.pop(next(iter(self._failed)))

    # -------------------------------------------------------------- prepare
    def prepare(self, prompt: dict[str, Any],
                say: Callable[[str], None] | None = None) -> Prepared:
        """The program for a validated prompt.

        A served or cached artifact runs it when there is one (loaded in this process). A
        shape without one runs on the torch tier at once (``first_run="torch"``); when that
        run is over its artifact compiles (and then loads) in the background, and the
        shape's prompts run on the torch tier until it is ready. With
        ``first_run="compile"`` it is compiled here first.

        Raises:
            CompileFailed: The shape failed to build recently (not tried again).
            WorkflowError: Lowering or compilation failed (remembered for FAILED_TTL_S).
            ArtifactError: A cached artifact is damaged twice in a row.
        """
        served = self._served_for(prompt)
        if served is not None:
            return self._prepared(prompt, served.path, self._load(served.path), False)
        key = self.shape_key(prompt)
        failure = self._failure(key)
        if failure is not None:
            raise CompileFailed(f"this workflow failed to compile a moment ago: {failure}")
        path = self.cache_dir / f"{key}.comfyc"
        if self._tiered() and not self._artifact_ready(key, path):
            return self._torch_prepared(key, prompt, path)
        compiled = False
        for attempt in range(2):
            compiled = self._ensure_compiled(key, path, prompt, say) or compiled
            use = self._use(key)
            try:
                program = self._load(path)
            except Exception as exc:
                use()
                from comfyc.runtime.artifact import ArtifactError

                if attempt or not isinstance(exc, (ArtifactError, OSError)):
                    raise
                # NOTE: damaged (or evicted by another replica in between): compile again.
                self._discard(key, path)
                continue
            os.utime(path)  # Least recently used goes first.
            with self._torch_lock:
                # The artifact took over: the shape's torch program is not needed again.
                self._torch.pop(key, None)
            return self._prepared(prompt, path, program, compiled, use, key=key)
        raise AssertionError("unreachable")

    def tier_for(self, prompt: dict[str, Any]) -> str:
        """The tier a validated prompt would run on now (``artifact`` or ``torch``), without
        preparing anything (``execution_start`` says it)."""
        if self._served_for(prompt) is not None or not self._tiered():
            return "artifact"
        key = self.shape_key(prompt)
        return "artifact" if self._artifact_ready(key, self.cache_dir / f"{key}.comfyc") \
            else "torch"

    def _tiered(self) -> bool:
        return self.first_run == "torch" and self.allow_compile

    def _artifact_ready(self, key: str, path: Path) -> bool:
        """Whether the artifact should run a shape: it exists, and is loaded in this process
        or no torch program of the shape is (loading it then costs less than lowering)."""
        if not (path / "manifest.json").is_file():
            return False
        with self._lock:
            loaded = str(path) in self._loaded
        with self._torch_lock:
            return loaded or key not in self._torch

    # ------------------------------------------------------------ torch tier
    def _torch_prepared(self, key: str, prompt: dict[str, Any], path: Path) -> Prepared:
        """The shape's torch-tier program (lowered on first use; checkpoints stay loaded); its
        release queues the shape's background compile.

        Raises:
            WorkflowError: The workflow cannot be lowered (remembered like a failed
                compile: its prompts are refused for FAILED_TTL_S).
        """
        with self._torch_lock:
            program = self._torch.get(key)
            if program is not None:
                self._torch.move_to_end(key)
        if program is None:
            with self._build_lock:
                with self._torch_lock:
                    program = self._torch.get(key)
                if program is None:
                    try:
                        program = lower_torch(prompt, self._model_cache())
                    except Exception as exc:
                        self._remember_failure(key, exc)
                        raise
                    with self._torch_lock:
                        self._torch[key] = program
                        while len(self._torch) > MAX_LOADED:
                            self._torch.popitem(last=False)
        # NOTE: the artifact's compile is queued when this run is over (its release), not
        # before: on a small machine the compile's own imports and export would otherwise
        # share the CPU with the very prompt the torch tier is there to answer at once.
        return self._prepared(prompt, path, program, False,
                              lambda: self._schedule(key, path, prompt), tier="torch", key=key)

    def _model_cache(self) -> Any:
        """The torch tier's checkpoint cache (build lock held): a new one when it holds more
        than :data:`MAX_TORCH_CHECKPOINTS` checkpoints (their programs are lowered again)."""
        from comfyc.compiler.lowering.program import TorchModelCache

        loaded = self._models.loaded if self._models is not None else {}
        if self._models is None or sum(k.startswith("ckpt:") for k in loaded) \
                >= MAX_TORCH_CHECKPOINTS + 1:
            self._models = TorchModelCache(self.models_dir)
            with self._torch_lock:
                self._torch.clear()
        return self._models

    def preload(self) -> threading.Thread | None:
        """Import the torch tier's code in the background (PyTorch, the diffusers and
        transformers model classes: 10-15 s on two cores), so the first prompt of the
        server does not pay for it; None when the torch tier is off.

        NOTE: ComfyUI imports everything before it listens; here the server answers at once,
        and a prompt that comes meanwhile waits only for what is still being imported.
        """
        if not self._tiered():
            return None

        def run() -> None:
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 5)
            # NOTE: under the torch tier's lock: diffusers' lazy module table is not safe
            # to import from two threads at once (the first prompt's lowering waits).
            with self._build_lock:
                _import_torch_tier()
            self.preloaded = True

        thread = threading.Thread(target=run, daemon=True, name="comfyc-preload")
        thread.start()
        return thread

    # ---------------------------------------------------- background compiles
    def _schedule(self, key: str, path: Path, prompt: dict[str, Any]) -> None:
        """Compile (or load) a shape's artifact in the background, once."""
        with self._lock:
            if self._closed or key in self._compiling or key in self._compile_failed:
                return
            self._compiling[key] = "queued"
            if self._compiler is None or not self._compiler.is_alive():
                self._compiler = threading.Thread(target=self._compile_loop, daemon=True,
                                                  name="comfyc-background-compile")
                self._compiler.start()
        self._compiles.put((key, path, prompt))

    def _compile_loop(self) -> None:
        """Compile and load queued shapes one at a time (two compiles at once would only
        share the CPU with each other and with the prompts running meanwhile)."""
        while True:
            item = self._compiles.get()
            if item is None:
                return
            key, path, prompt = item
            started, ok = time.perf_counter(), False
            try:
                if not (path / "manifest.json").is_file():
                    self._compiling[key] = "compiling"
                    self._ensure_compiled(key, path, prompt, None, background=True)
                self._compiling[key] = "loading"
                release = self._use(key)
                try:
                    self._load(path)
                finally:
                    release()
                ok = True
            except Exception as exc:  # noqa: BLE001 - the torch tier keeps serving the shape
                message = self.redactor.text(_first_line(exc))[:2000]
                with self._lock:
                    self._compile_failed[key] = message
                _log.warning("background compile of graph %s failed (its prompts keep "
                             "running on the torch tier): %s", key, message)
            finally:
                with self._lock:
                    self._compiling.pop(key, None)
                seconds = time.perf_counter() - started
                _log.info("graph %s: artifact %s in %.1f s", key,
                          "ready" if ok else "failed", seconds)
                if self.report is not None:
                    try:
                        self.report("compile", {"seconds": seconds, "ok": ok})
                    except Exception:  # noqa: BLE001 - metrics never stop the compiler
                        _log.debug("reporting a compile failed", exc_info=True)

    def _compile_in_child(self, prompt: dict[str, Any], path: Path) -> None:
        """Compile in the compile process (:mod:`.compile_job`), started on first use at
        lower priority (:data:`COMPILE_NICENESS`) and kept for the next shapes until it has
        been idle for :data:`COMPILE_IDLE_S`.

        NOTE: a process, not a thread: exporting holds the GIL for long stretches (a thread
        would stall the prompts running on the torch tier meanwhile), its memory goes back
        to the system when it exits, and the server can stop it. One process for many
        compiles: its imports (PyTorch, diffusers, onnx: seconds) are paid once.

        Raises:
            WorkflowError: The compile failed (with the compile process's message).
        """
        from comfyc.compiler.errors import WorkflowError

        request = {"prompt": prompt, "path": str(path), "backend": self.backend,
                   "models_dir": self.models_dir, "input_dir": str(self.input_dir),
                   "output_dir": str(self.output_dir) if self.output_dir else None}
        for attempt in range(2):
            child = self._compile_process()
            try:
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write((json.dumps(request) + "\n").encode())
                child.stdin.flush()
                answer = None
                for raw in child.stdout:
                    line = raw.decode("utf-8", "replace").strip()
                    if line.startswith('{"done":'):
                        answer = json.loads(line)
                        break
                    _log.debug("compile %s: %s", path.name, line)
            except (OSError, ValueError):
                answer = None
            if answer is None:
                # The process died (or idled out as the request was sent): once more in a
                # new one; a second death is this compile's doing.
                child.kill()
                child.wait()
                if attempt or self._closed:
                    raise WorkflowError(f"the compile process exited with {child.returncode}")
                continue
            if answer.get("error"):
                raise WorkflowError(str(answer["error"]))
            return

    def _compile_process(self) -> subprocess.Popen[bytes]:
        """The running compile process, or a new one."""
        with self._lock:
            child = self._child
            if child is not None and child.poll() is None:
                return child
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            child = subprocess.Popen(
                [sys.executable, "-m", "comfyc.serve.compile_job", "--parent", str(os.getpid()),
                 "--nice", str(COMPILE_NICENESS), "--idle-exit", str(COMPILE_IDLE_S)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env=env)
            self._child = child
            return child

    def tier_stats(self) -> dict[str, Any]:
        """The tiers' state for ``/system_stats``: mode, torch programs, compiles."""
        with self._lock:
            compiling = dict(self._compiling)
            failed = dict(self._compile_failed)
        with self._torch_lock:
            torch_programs = len(self._torch)
        return {"first_run": self.first_run, "preloaded": self.preloaded,
                "torch_programs": torch_programs, "compiling": compiling,
                "compile_failed": failed}

    def wait_compiles(self, timeout: float) -> bool:
        """Wait until no background compile is queued or running; False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if not self._compiling:
                    return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        """Stop the background compiler (and a compile process it runs)."""
        with self._lock:
            self._closed = True
            child = self._child
        self._compiles.put(None)
        if child is not None and child.poll() is None:
            child.kill()

    def _ensure_compiled(self, key: str, path: Path, prompt: dict[str, Any],
                         say: Callable[[str], None] | None, *, background: bool = False
                         ) -> bool:
        """Compile the shape unless its artifact exists; True when this call compiled it.

        ``background``: in a child process (a failure is the caller's to keep: the torch tier
        goes on serving the shape); else here, and a failure refuses the shape's prompts for
        :data:`FAILED_TTL_S`.
        """
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if (path / "manifest.json").is_file():
                return False
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            # NOTE: a file lock too: Ray replicas share the cache folder, and the second
            # compile of a key would replace the first one's artifact while it is loaded.
            with open(self._lock_file(key), "a+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                if (path / "manifest.json").is_file():
                    return False
                # NOTE: no one compiles the key but us: its temporaries are a killed
                # compile's (compile_graph only reuses one of its own process id).
                for left in self.cache_dir.glob(f".{key}.comfyc.*-*"):
                    if _LEFTOVER.fullmatch(left.name):
                        shutil.rmtree(left, ignore_errors=True)
                if background:
                    self._compile_in_child(prompt, path)
                else:
                    try:
                        self._compile(prompt, path, say)
                    except BaseException as exc:
                        if isinstance(exc, Exception):
                            self._remember_failure(key, exc)
                        raise
        self._evict(keep=path)
        return True

    def _use(self, key: str) -> Callable[[], None]:
        """Hold a shared lock on a key while its artifact is used; returns the release."""
        handle = open(self._lock_file(key), "a+b")  # noqa: SIM115 - closed by the release
        fcntl.flock(handle, fcntl.LOCK_SH)
        return handle.close

    def _lock_file(self, key: str) -> Path:
        return self.cache_dir / f".{key}.lock"

    def _prepared(self, prompt: dict[str, Any], path: Path, program: Any, compiled: bool,
                  release: Callable[[], None] = lambda: None, *, tier: str = "artifact",
                  key: str = "") -> Prepared:
        params = {}
        for name, uses in (program.meta.get("param_uses") or {}).items():
            node_id, input_name = uses[0]
            value = prompt.get(node_id, {}).get("inputs", {}).get(input_name)
            if value is not None and not isinstance(value, list):
                params[name] = value
        op_ids = {op.id for op in program.ops}
        cached = [n for n in prompt if n not in op_ids]
        return Prepared(program, params, compiled, path, cached, release, tier,
                        key or self.shape_key(prompt))

    def _compile(self, prompt: dict[str, Any], path: Path,
                 say: Callable[[str], None] | None) -> None:
        compile_prompt(prompt, path, backend=self.backend, models_dir=self.models_dir,
                       input_dir=self.input_dir, output_dir=self.output_dir, say=say)

    # ---------------------------------------------------------------- cache
    def _evict(self, keep: Path) -> None:
        """Delete least recently used artifacts beyond the size and count bounds.

        An artifact in use (a shared lock on its key, in this process or another replica) or
        the one just compiled (``keep``) is never deleted.
        """
        entries = []
        for path in self.cache_dir.glob("*.comfyc"):
            try:
                entries.append((path.stat().st_mtime, path, self._size(path)))
            except OSError:
                continue
        entries.sort(key=lambda e: e[0])
        count, total = len(entries), sum(e[2] for e in entries)
        for _, path, size in entries:
            if count <= self.max_cache_artifacts and total <= self.max_cache_bytes:
                break
            if path == keep:
                continue
            if self._discard(path.name[: -len(".comfyc")], path, wait=False):
                count, total = count - 1, total - size
                self.evicted += 1

    def _discard(self, key: str, path: Path, *, wait: bool = True) -> bool:
        """Delete a cached artifact unless it is in use; True when it was deleted."""
        lock_file = self._lock_file(key)
        try:
            handle = open(lock_file, "a+b")  # noqa: SIM115
        except OSError:
            return False
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError:
                return False  # In use.
            with self._lock:
                self._loaded.pop(str(path), None)
                self._sizes.pop(str(path), None)
            # NOTE: renamed first, so no reader ever sees half a directory under the key.
            trash = self.cache_dir / f".evicted-{key}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                return False
            shutil.rmtree(trash, ignore_errors=True)
            return True
        finally:
            handle.close()

    def _size(self, path: Path) -> int:
        """Bytes of an artifact directory (artifacts never change once written)."""
        key = str(path)
        with self._lock:
            if key in self._sizes:
                return self._sizes[key]
        total = 0
        for folder, _, files in os.walk(path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(folder, name)).st_size
        with self._lock:
            self._sizes[key] = total
        return total

    def cache_stats(self) -> dict[str, int]:
        """Artifacts and bytes in the cache folder, and how many were evicted."""
        paths = list(self.cache_dir.glob("*.comfyc")) if self.cache_dir.is_dir() else []
        return {"artifacts": len(paths), "bytes": sum(self._size(p) for p in paths),
                "evicted": self.evicted}

    def clean_leftovers(self) -> None:
        """Remove what kills left in the cache folder: evictions cut short (``.evicted-*``)
        and compiles cut short (the compiler's ``.KEY.comfyc.tmp-PID`` and ``.old-PID``
        folders, issue #19 item 10).

        A compile's folder is removed only while no one compiles its key: the key's file
        lock (held by every compile, in this process or another replica sharing the folder)
        is taken without waiting first, so a compile still running elsewhere keeps its work.
        """
        if not self.cache_dir.is_dir():
            return
        for trash in self.cache_dir.glob(".evicted-*"):
            shutil.rmtree(trash, ignore_errors=True)
        for left in self.cache_dir.glob(".*.comfyc.*-*"):
            match = _LEFTOVER.fullmatch(left.name)
            if match is None or not left.is_dir():
                continue
            try:
                handle = open(self._lock_file(match["key"]), "a+b")  # noqa: SIM115
            except OSError:
                continue
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # Being compiled now.
                shutil.rmtree(left, ignore_errors=True)
                _log.info("removed %s, left by a compile that was stopped", left.name)

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
        """Drop loaded programs, the torch tier's models and remembered compile failures
        (``POST /free``); artifacts stay on disk."""
        with self._lock:
            self._loaded.clear()
            self._failed.clear()
            self._compile_failed.clear()
        with self._torch_lock:
            self._torch.clear()
        # NOTE: not under the build lock (a build may hold it for seconds): the next build
        # starts a new cache; one running now finishes with the old.
        self._models = None

    def model_file(self, kind: str, name: str) -> Path | None:
        """The file of a model by folder and name (the page reads its size and metadata),
        or None when it does not resolve."""
        from comfyc.runtime.model_paths import ModelPathError, resolve

        try:
            return resolve(kind, name, self.models_dir)
        except (ModelPathError, ValueError, OSError):
            return None

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


def _first_line(exc: BaseException) -> str:
    """An exception's message (comfyc errors rendered with their location)."""
    render = getattr(exc, "render", None)
    if callable(render):
        with contextlib.suppress(Exception):
            return str(render())
    return str(exc) or type(exc).__name__


def _import_torch_tier() -> None:
    """Import what lowering a workflow onto PyTorch imports (see :meth:`Engine.preload`)."""
    try:
        import torch  # noqa: F401
        from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
        from transformers import CLIPTextModel  # noqa: F401

        import comfyc.compiler.lowering.program  # noqa: F401
        import comfyc.compiler.models.single_file  # noqa: F401
        import comfyc.compiler.pipeline  # noqa: F401
    except Exception:  # noqa: BLE001 - the first prompt imports (and reports) it
        _log.debug("preloading the torch tier failed", exc_info=True)
