"""The program: a list of ops over stages, constants and params, and its interpreter.

A program is what the compiler lowers a workflow to; it is plain JSON (so an artifact's
manifest can hold it) plus a table of stages and a table of constant tensors::

    {"id": "3", "op": "KSampler", "title": "KSampler",
     "args": {"seed": {"$param": "seed"}, "steps": 20, "model": {"$ref": ["4", 0]}, ...}}

Argument forms: a JSON literal; ``{"$ref": [op_id, output_index]}`` an earlier op's output;
``{"$param": name}`` a runtime param; ``{"$const": key}`` a stored tensor (a folded prompt
encoding …); ``{"$stage": name}`` a model stage; ``{"$lit": value}`` a literal dict or list
that would otherwise be read as one of these forms. The interpreter runs ops in order (they
are topologically sorted) and frees each value after its last use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Stage, StageTimer
from .errors import ParamError, ProgramError

__all__ = ["Op", "ParamSpec", "Program", "RunResult", "RunContext", "ProgramError",
           "ParamError", "decode_arg"]


@dataclass
class Op:
    """One instruction: run ``op`` (a node class) on ``args``.

    Attributes:
        id: The workflow node id the op came from.
        op: The op name (the node's class_type, or a lowering op such as LoadCheckpoint).
        args: Encoded arguments (see the module docstring).
        title: The node title, for progress and messages.
    """

    id: str
    op: str
    args: dict[str, Any]
    title: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The op as manifest JSON."""
        out: dict[str, Any] = {"id": self.id, "op": self.op, "args": self.args}
        if self.title:
            out["title"] = self.title
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Op:
        """Read an op from manifest JSON."""
        return cls(str(data["id"]), str(data["op"]), dict(data.get("args") or {}),
                   data.get("title"))


@dataclass
class ParamSpec:
    """A runtime param: name, type, default and range, as the manifest records them."""

    name: str
    type: str
    default: Any = None
    has_default: bool = False
    min: float | None = None
    max: float | None = None
    choices: list[Any] | None = None
    doc: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The param as manifest JSON."""
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.has_default:
            out["default"] = self.default
        for key in ("min", "max", "choices", "doc"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ParamSpec:
        """Read a param from manifest JSON."""
        return cls(data["name"], data["type"], data.get("default"), "default" in data,
                   data.get("min"), data.get("max"), data.get("choices"), data.get("doc"))

    def check(self, value: Any) -> Any:
        """Convert and range-check a value given for this param.

        Raises:
            ParamError: Wrong type or out of range.
        """
        kind = self.type
        try:
            if kind == "INT":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                value = int(value)
            elif kind == "FLOAT":
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
            elif kind == "BOOLEAN":
                if isinstance(value, str) and value.lower() not in (
                        "true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                if isinstance(value, str):
                    value = value.lower() in ("true", "1", "yes")
                value = bool(value)
            elif kind in ("STRING", "COMBO") and not isinstance(value, str):
                raise ValueError
        except (TypeError, ValueError):
            raise ParamError(
                f"param '{self.name}' is {kind}; {value!r} is not a valid {kind} value") from None
        if self.min is not None and value < self.min:
            raise ParamError(f"param '{self.name}' = {value} is below its minimum {self.min}")
        if self.max is not None and value > self.max:
            raise ParamError(f"param '{self.name}' = {value} is above its maximum {self.max}")
        if self.choices is not None and value not in self.choices:
            raise ParamError(f"param '{self.name}' = {value!r} is not one of {self.choices}")
        return value


@dataclass
class RunContext:
    """What ops see while running: folders, progress, metadata to embed, timings."""

    output_dir: Path
    input_dir: Path
    timer: StageTimer
    progress: Callable[[str, int, int], None] | None = None
    prompt: dict[str, Any] | None = None
    extra_pnginfo: dict[str, Any] | None = None
    save: bool = True
    vocab_path: str | None = None
    images: dict[str, np.ndarray] = field(default_factory=dict)
    files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    current: Op | None = None
    #: ``preview(x0)`` once per sampling step with the step's x0 prediction (raw latents).
    preview: Callable[[np.ndarray], None] | None = None
    #: Whose per-step sampler noise to reproduce (:data:`comfyc.runtime.noise.NOISE_MODES`).
    noise_mode: str = "cpu"
    #: Textual-inversion embeddings for ``embedding:NAME``
    #: (:class:`~comfyc.runtime.embeddings.Embeddings`).
    embeddings: Any = None

    def noise_mode_used(self) -> None:
        """Note in the PNGs still to be saved that this run's noise mode shaped the image
        (a ``comfyc`` text chunk ``{"noise_mode": …}``; ComfyUI ignores it, ``comfyc run
        PNG`` reads it back)."""
        if self.save and self.prompt is not None:
            self.extra_pnginfo = {**(self.extra_pnginfo or {}),
                                  "comfyc": {"noise_mode": self.noise_mode}}


@dataclass
class RunResult:
    """What a run produced.

    Attributes:
        images: Output images by node id (IMAGE arrays, [B,H,W,3] in [0,1]).
        files: Files written by output nodes, by node id (ComfyUI's ui.images entries).
        timings: Seconds: ``total_s`` (the whole :meth:`Program.run` call, from checking the
            params to the last op), ``stage_total_s`` (inside model stage calls),
            ``overhead_s`` (the difference: the runtime's own time), ``ops`` (per op class)
            and ``stages`` (per stage: calls, total and median per call).
    """

    images: dict[str, np.ndarray]
    files: dict[str, list[dict[str, Any]]]
    timings: dict[str, Any]


def decode_arg(value: Any, values: Mapping[tuple[str, int], Any], params: Mapping[str, Any],
               constants: Mapping[str, Any], stages: Mapping[str, Stage]) -> Any:
    """Resolve one encoded argument to its runtime value."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if key == "$ref":
            return values[(str(inner[0]), int(inner[1]))]
        if key == "$param":
            return params[inner]
        if key == "$const":
            return constants[inner]
        if key == "$stage":
            return stages[inner]
        if key == "$lit":
            return inner
    if isinstance(value, dict):
        return {k: decode_arg(v, values, params, constants, stages) for k, v in value.items()}
    return value


def _noise_mode(mode: str | None) -> str:
    """A checked noise mode (None: the default); a bad one is a :class:`ParamError`."""
    from .noise import DEFAULT_NOISE_MODE, check_noise_mode

    try:
        return check_noise_mode(mode or DEFAULT_NOISE_MODE)
    except ValueError as exc:
        raise ParamError(str(exc)) from None


def _refs(value: Any) -> list[tuple[str, int]]:
    if isinstance(value, dict):
        if set(value) == {"$ref"}:
            return [(str(value["$ref"][0]), int(value["$ref"][1]))]
        if set(value) == {"$lit"}:
            return []
        return [r for v in value.values() for r in _refs(v)]
    return []


class Program:
    """A runnable program.

    Args:
        ops: The ops in execution order.
        stages: Model stages by name.
        constants: Stored tensors by key.
        params: Runtime params by name.
        meta: Facts about the program (source workflow, prompt for PNG metadata …).
    """

    def __init__(self, ops: list[Op], stages: Mapping[str, Stage],
                 constants: Mapping[str, Any] | None = None,
                 params: Mapping[str, ParamSpec] | None = None,
                 meta: Mapping[str, Any] | None = None) -> None:
        self.ops = list(ops)
        self.stages = dict(stages)
        self.constants = dict(constants or {})
        self.params = dict(params or {})
        self.meta = dict(meta or {})
        self.timer = StageTimer()
        for stage in self.stages.values():
            # A stage entry may be one stage, a mapping of CLIP layers to stages (the torch
            # path makes those on demand: it has a `timer` of its own), or None (a stage the
            # workflow never calls).
            if stage is None:
                continue
            if hasattr(stage, "timer") and not isinstance(stage, Stage):
                stage.timer = self.timer
                continue
            members = stage.values() if isinstance(stage, Mapping) else [stage]
            for member in members:
                if member is not None:
                    member.timer = self.timer
        self._last_use = self._compute_last_use()
        # NOTE: per-run costs paid once: each op's references, and the op table (the
        # registry builds a fresh dict on every ``OPS`` lookup).
        self._op_refs = [_refs(op.args) for op in self.ops]
        self._op_table: Mapping[str, Any] | None = None
        #: Where ``embedding:NAME`` in a runtime prompt is looked up when :meth:`run` is given
        #: no models folder (the torch path sets the one it loaded from; None:
        #: ``$COMFYC_MODELS``). Not stored in artifacts.
        self.models_dir: str | None = None
        self._embeddings: dict[str | None, Any] = {}
        self._provenance: tuple[tuple[Any, ...], Any] | None = None
        # Per op, once it first runs: (its arguments that are the same in every run, the
        # others still encoded).
        self._split_args: list[tuple[dict[str, Any], list[tuple[str, Any]]] | None] = [
            None] * len(self.ops)

    def _args(self, index: int, values: Mapping[tuple[str, int], Any],
              resolved: Mapping[str, Any]) -> dict[str, Any]:
        """Op ``index``'s arguments for this run: literals, constants and stages are decoded
        the first time (they decode to the same objects in every run), references and params
        each time (a nested structure too: each run gets its own)."""
        split = self._split_args[index]
        if split is None:
            static: dict[str, Any] = {}
            dynamic: list[tuple[str, Any]] = []
            for key, value in self.ops[index].args.items():
                if not isinstance(value, dict) or (
                        len(value) == 1 and next(iter(value)) in ("$lit", "$const", "$stage")):
                    static[key] = decode_arg(value, {}, {}, self.constants, self.stages)
                else:
                    dynamic.append((key, value))
            split = self._split_args[index] = (static, dynamic)
        args = dict(split[0])
        for key, value in split[1]:
            args[key] = decode_arg(value, values, resolved, self.constants, self.stages)
        return args

    def _compute_last_use(self) -> dict[tuple[str, int], int]:
        last: dict[tuple[str, int], int] = {}
        for index, op in enumerate(self.ops):
            for ref in _refs(op.args):
                last[ref] = index
        return last

    def resolve_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Check given params against the specs and fill defaults.

        Raises:
            ParamError: An unknown name, a missing value, or a bad type or range.
        """
        unknown = [k for k in given if k not in self.params]
        if unknown:
            known = ", ".join(self.params) or "none"
            raise ParamError(f"unknown param{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, unknown))}; this program's params: {known}")
        resolved = {}
        for name, spec in self.params.items():
            if name in given:
                resolved[name] = spec.check(given[name])
            elif spec.has_default:
                resolved[name] = spec.default
            else:
                raise ParamError(f"param '{name}' ({spec.type}) has no default; pass a value "
                                 f"with --param {name}=VALUE")
        return resolved

    def _embeddings_for(self, models_dir: str | Path | None) -> Any:
        """The textual-inversion embeddings of a models folder, kept between runs."""
        from .embeddings import Embeddings

        key = str(models_dir) if models_dir is not None else self.models_dir
        if key not in self._embeddings:
            self._embeddings[key] = Embeddings(key)
        return self._embeddings[key]

    def _plan(self, build: bool) -> Any:
        """The :class:`~comfyc.runtime.provenance.ProvenancePlan` of this program's workflow,
        or None. With ``build``, a run notes the workflow and makes the plan when it saves the
        same one again (the server puts each job's prompt into :attr:`meta`, and a plan costs
        more than one direct copy)."""
        extra = self.meta.get("extra_pnginfo")
        workflow = extra.get("workflow") if isinstance(extra, Mapping) else None
        key = (self.meta.get("prompt"), workflow, self.meta.get("param_uses"))
        held = self._provenance
        if held is not None and all(a is b for a, b in zip(held[0], key)):
            if held[1] is None and build:
                from .provenance import ProvenancePlan

                self._provenance = held = (key, ProvenancePlan(
                    key[0], key[1] if isinstance(key[1], Mapping) else None, key[2] or {}))
            return held[1]
        if build:
            self._provenance = (key, None)  # holds the objects, so their ids stay theirs
        return None

    def executed_prompt(self, params: Mapping[str, Any], plan: Any = None
                        ) -> dict[str, Any] | None:
        """The user's workflow as an API prompt with these param values (resolved, as
        :meth:`resolve_params` gives them): SaveImage's ``prompt`` chunk. See
        :mod:`comfyc.runtime.provenance`; the result may share its unchanged parts with the
        program's copy, so read it without changing it."""
        plan = plan or self._plan(False)
        if plan is not None:
            return plan.prompt(params)
        from .provenance import executed_prompt

        prompt = self.meta.get("prompt")
        if prompt is None:
            return None
        return executed_prompt(prompt, self.meta.get("param_uses") or {}, params)

    def executed_extra_pnginfo(self, params: Mapping[str, Any], plan: Any = None
                               ) -> dict[str, Any] | None:
        """The further PNG chunks (``{"workflow": UI workflow}``) with these param values in
        the widgets they came from; None when the input carried no UI workflow. Read it
        without changing it, as :meth:`executed_prompt`."""
        extra = self.meta.get("extra_pnginfo")
        if not isinstance(extra, Mapping):
            return None
        out = dict(extra)
        if isinstance(out.get("workflow"), Mapping):
            plan = plan or self._plan(False)
            if plan is not None:
                out["workflow"] = plan.workflow(params)
            else:
                from .provenance import executed_workflow

                out["workflow"] = executed_workflow(out["workflow"],
                                                    self.meta.get("param_uses") or {}, params)
        return out

    def run(self, params: Mapping[str, Any] | None = None, *,
            output_dir: str | Path | None = None, input_dir: str | Path = "input",
            save: bool = True,
            progress: Callable[[str, int, int], None] | None = None,
            on_op: Callable[[Op, RunContext], None] | None = None,
            preview: Callable[[np.ndarray], None] | None = None,
            noise_mode: str | None = None,
            models_dir: str | Path | None = None) -> RunResult:
        """Run the program.

        Args:
            params: Values for runtime params (defaults fill the rest).
            output_dir: Where SaveImage / PreviewImage write; None (the default) writes no
                file — the images are in the result either way.
            input_dir: Where LoadImage reads.
            save: Write output files when ``output_dir`` is given (False: never).
            progress: ``progress(label, step, total)`` for sampling steps.
            on_op: ``on_op(op, ctx)`` before each op (the server's ``executing`` messages;
                an exception it raises stops the run, unwrapped).
            preview: ``preview(x0)`` after each sampling step with its x0 prediction
                ``[B, 4, h, w]`` (raw latents; :mod:`comfyc.runtime.preview` draws them).
            noise_mode: Whose per-step sampler noise to reproduce: ``cpu`` (ComfyUI on a CPU),
                ``cpu-legacy`` (ComfyUI on a CPU before its #11528) or ``cuda`` (ComfyUI on
                an NVIDIA GPU); None: the program's own (``meta["noise_mode"]``), else
                :data:`~comfyc.runtime.noise.DEFAULT_NOISE_MODE`. Saved PNGs whose sampler
                it affected record it (:meth:`RunContext.noise_mode_used`).
            models_dir: The models folder whose ``embeddings`` serve ``embedding:NAME`` in
                prompts encoded while running (None: :attr:`models_dir`, else
                ``$COMFYC_MODELS``); prompts folded at compile time already hold theirs.

        Raises:
            ParamError: Bad params (before any work starts).
            ProgramError: An op failed.
        """
        # NOTE: the run's time (and so its overhead) counts from here: checking the params
        # and building the saved PNGs' workflow chunks are part of the runtime's work.
        started = time.perf_counter()
        if self._op_table is None:
            from .nodes import OPS  # The op table imports every op module; load it once.

            self._op_table = OPS
        OPS = self._op_table  # noqa: N806 - the table's usual name

        resolved = self.resolve_params(params or {})
        mode = _noise_mode(noise_mode or self.meta.get("noise_mode"))
        missing = sorted({op.op for op in self.ops if op.op not in OPS})
        if missing:
            raise ProgramError(f"this runtime cannot run the op(s) {', '.join(missing)}; "
                               f"the artifact needs a newer comfyc")
        self.timer.reset()
        writes = save and output_dir is not None
        plan = self._plan(True) if writes else None
        ctx = RunContext(Path(output_dir) if output_dir is not None else Path("."),
                         Path(input_dir), self.timer, progress,
                         # NOTE: only saved PNGs embed these (see _plan).
                         self.executed_prompt(resolved, plan) if writes else None,
                         self.executed_extra_pnginfo(resolved, plan) if writes else None,
                         writes,
                         self.meta.get("vocab_path"), preview=preview, noise_mode=mode,
                         embeddings=self._embeddings_for(models_dir))
        values: dict[tuple[str, int], Any] = {}
        op_times: dict[str, float] = {}
        for index, op in enumerate(self.ops):
            args = self._args(index, values, resolved)
            ctx.current = op
            if on_op is not None:
                on_op(op, ctx)
            t0 = time.perf_counter()
            try:
                outputs = OPS[op.op](ctx, **args)
            except (ParamError, ProgramError):
                raise
            except Exception as exc:
                name = f"#{op.id}" + (f" '{op.title}'" if op.title else "") + f" ({op.op})"
                raise ProgramError(f"node {name} failed: {type(exc).__name__}: {exc}") from exc
            op_times[op.op] = op_times.get(op.op, 0.0) + time.perf_counter() - t0
            for out_index, value in enumerate(outputs or ()):
                if self._last_use.get((op.id, out_index), -1) > index:
                    values[(op.id, out_index)] = value
            for ref in self._op_refs[index]:
                if self._last_use.get(ref) == index:
                    values.pop(ref, None)
        total = time.perf_counter() - started
        stage_time = self.timer.total()
        timings = {
            "total_s": total,
            "stages": self.timer.summary(),
            "stage_total_s": stage_time,
            "overhead_s": total - stage_time,
            "ops": op_times,
        }
        return RunResult(ctx.images, ctx.files, timings)
