"""The artifact manifest as typed records, shared by the writer (the compiler) and the reader.

``manifest.json`` is the contract between ``comfyc compile`` and every reader (the runtime,
``comfyc tune``, ``build-engines``, ``viz``, ``inspect``, the server). :class:`Manifest` is its
one model: the writer builds one and calls :meth:`Manifest.to_json`; readers get one from
:meth:`Manifest.from_json`, which checks every field's type and refuses a path that leaves the
artifact, so a damaged or hostile manifest is an :class:`ManifestError` naming the field —
never a ``KeyError`` halfway through a run.

Format version 2 (this one) added the compile's change log (``changes``), the optimised graph
(``optimized``), a mandatory ``manifest_hash``, and ``run_meta.prompt`` as the user's workflow
(version 1 stored the compiled program there). Readers refuse other versions with a message
saying which comfyc made the artifact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from .errors import Error

__all__ = ["FORMAT", "FORMAT_VERSION", "STAGE_KINDS", "Manifest", "ManifestError", "StageEntry",
           "SourceRecord", "ConstantsIndex", "RunMeta", "manifest_hash"]

FORMAT = "comfyc-artifact"
FORMAT_VERSION = 2
#: The kinds of model stage an artifact holds.
STAGE_KINDS = ("unet", "text_encoder", "vae_decoder", "vae_encoder", "upscale", "controlnet",
               "t2i_adapter")
#: A CLIP's stages, one per layer the workflow uses.
_LAYERS_KIND = "text_encoder_layers"


class ManifestError(Error, ValueError):
    """A manifest field has the wrong type, is missing, or names a path outside the artifact."""


def manifest_hash(body: Mapping[str, Any]) -> str:
    """The SHA-256 recorded as ``manifest_hash``: of the manifest JSON without that key."""
    rest = {k: v for k, v in body.items() if k != "manifest_hash"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------- field checks
def _get(data: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str,
         default: Any = ..., allow_none: bool = False) -> Any:
    """``data[key]`` checked against ``types`` (``default`` when absent, if given)."""
    if key not in data:
        if default is ...:
            raise ManifestError(f"{where}.{key} is missing")
        return default
    value = data[key]
    if value is None and allow_none:
        return None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in (
            types if isinstance(types, tuple) else (types,))):
        names = (" or ".join(t.__name__ for t in types) if isinstance(types, tuple)
                 else types.__name__)
        raise ManifestError(f"{where}.{key} must be a {names}, found {type(value).__name__}")
    return value


def _path(value: Any, where: str) -> str:
    """A relative path inside the artifact (no absolute path, no ``..``)."""
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where} must be a non-empty relative path")
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or value.startswith(("/", "\\")) or (
            len(value) > 1 and value[1] == ":"):
        raise ManifestError(f"{where} = {value!r} points outside the artifact; a manifest may "
                            f"only name files inside it")
    return value


def _opt_path(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    return None if value is None else _path(value, f"{where}.{key}")


# ---------------------------------------------------------------------------- records
@dataclass
class StageEntry:
    """One model stage of the program (or, for ``text_encoder_layers``, a CLIP's layers).

    Attributes:
        kind: ``unet``, ``text_encoder``, ``vae_decoder``, ``vae_encoder`` or
            ``text_encoder_layers``.
        backend: The backend it was compiled for.
        name: A text-encoder layer's stage name (``text_encoder_ab12_L1``).
        file: The ONNX file (relative), when it has one.
        torch: The folder of its stored PyTorch weights (relative), when it has one.
        info: Facts the stage needs (prediction type, CLIP layer …).
        shapes: The input shapes the workflow calls it with.
        facts: What the exporter recorded (input/output names and shapes, dtypes).
        dynamic: Exported with dynamic axes.
        optimized: onnxruntime's offline optimisation level it was saved at, or False.
        precision: ``int8`` when quantised.
        variants: Other files of the same stage (``{"fp16": "stages/x.fp16.onnx"}``).
        lora: The index of its runtime-mode LoRAs (see :mod:`comfyc.runtime.lora`).
        fallback: Why ONNX export failed, when it fell back to PyTorch.
        export_s: Export time in seconds.
        unused: The workflow never calls it (no file).
        layers: For ``text_encoder_layers``: the per-layer entries by layer (``"-1"``).
    """

    kind: str
    backend: str = "ort-cpu"
    name: str | None = None
    file: str | None = None
    torch: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    shapes: list[Any] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    dynamic: bool = False
    optimized: str | bool = False
    precision: str | None = None
    variants: dict[str, str] = field(default_factory=dict)
    lora: dict[str, Any] | None = None
    fallback: str | None = None
    export_s: float | None = None
    unused: bool = False
    layers: dict[str, StageEntry] = field(default_factory=dict)

    def paths(self) -> list[str]:
        """Every artifact file this entry names (LoRA factor files included)."""
        out = [p for p in (self.file, *self.variants.values()) if p]
        if self.lora and isinstance(self.lora.get("file"), str):
            out.append(self.lora["file"])
        for sub in self.layers.values():
            out.extend(sub.paths())
        return out

    def to_json(self) -> dict[str, Any]:
        """The entry as manifest JSON (empty and default fields left out)."""
        if self.kind == _LAYERS_KIND:
            return {"kind": self.kind, "layers": {k: v.to_json() for k, v in self.layers.items()}}
        if self.unused:
            return {"kind": self.kind, "unused": True}
        out: dict[str, Any] = {"kind": self.kind, "backend": self.backend, "info": self.info,
                               "shapes": self.shapes}
        for key in ("name", "file", "torch", "precision", "fallback", "export_s"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.facts:
            out["facts"] = self.facts
        if self.file is not None:
            out["dynamic"] = self.dynamic
            out["optimized"] = self.optimized
        for key in ("variants", "lora"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> StageEntry:
        """Read and check one entry.

        Raises:
            ManifestError: A field has the wrong type or a path leaves the artifact.
        """
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where} must be an object, found {type(data).__name__}")
        kind = _get(data, "kind", str, where)
        if kind == _LAYERS_KIND:
            layers = _get(data, "layers", dict, where, {})
            return cls(kind, layers={
                str(k): cls.from_json(v, f"{where}.layers.{k}") for k, v in layers.items()})
        if kind not in STAGE_KINDS:
            raise ManifestError(f"{where}.kind = {kind!r} is not a stage kind "
                                f"({', '.join(STAGE_KINDS)})")
        if _get(data, "unused", bool, where, False):
            return cls(kind, unused=True)
        variants = _get(data, "variants", dict, where, {})
        lora = _get(data, "lora", dict, where, None, allow_none=True)
        if lora is not None and "file" in lora:
            _path(lora["file"], f"{where}.lora.file")
        return cls(
            kind=kind, backend=_get(data, "backend", str, where, "ort-cpu"),
            name=_get(data, "name", str, where, None, allow_none=True),
            file=_opt_path(data, "file", where), torch=_opt_path(data, "torch", where),
            info=dict(_get(data, "info", dict, where, {})),
            shapes=list(_get(data, "shapes", list, where, [])),
            facts=dict(_get(data, "facts", dict, where, {})),
            dynamic=_get(data, "dynamic", bool, where, False),
            optimized=_get(data, "optimized", (str, bool), where, False),
            precision=_get(data, "precision", str, where, None, allow_none=True),
            variants={str(k): _path(v, f"{where}.variants.{k}") for k, v in variants.items()},
            lora=dict(lora) if lora is not None else None,
            fallback=_get(data, "fallback", str, where, None, allow_none=True),
            export_s=_get(data, "export_s", (int, float), where, None, allow_none=True),
        )


@dataclass
class SourceRecord:
    """The workflow an artifact was compiled from.

    Attributes:
        file: Its path as given to ``comfyc compile``.
        kind: ``api``, ``ui``, ``png`` or ``dsl``.
        sha256: SHA-256 of its text.
        prompt: Its API prompt, when it had no params (for ``viz`` and the server).
        text: Its text, when it is text under 1 MB (for ``viz``).
    """

    file: str = ""
    kind: str | None = None
    sha256: str = ""
    prompt: dict[str, Any] | None = None
    text: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as manifest JSON."""
        return {"file": self.file, "kind": self.kind, "sha256": self.sha256,
                "prompt": self.prompt, "text": self.text}

    @classmethod
    def from_json(cls, data: Any, where: str) -> SourceRecord:
        """Read and check the record."""
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where} must be an object")
        return cls(_get(data, "file", str, where, ""),
                   _get(data, "kind", str, where, None, allow_none=True),
                   _get(data, "sha256", str, where, ""),
                   _get(data, "prompt", dict, where, None, allow_none=True),
                   _get(data, "text", str, where, None, allow_none=True))


@dataclass
class ConstantsIndex:
    """Where the folded values are: a safetensors file and how each entry is rebuilt."""

    file: str = "constants.safetensors"
    entries: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, where: str) -> ConstantsIndex:
        """Read and check the index."""
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where} must be an object")
        return cls(_path(_get(data, "file", str, where, "constants.safetensors"),
                         f"{where}.file"),
                   dict(_get(data, "entries", dict, where, {})))


@dataclass
class RunMeta:
    """What running needs besides ops: the workflow to embed in images, and param uses.

    Attributes:
        prompt: The user's workflow as an API prompt (params at their defaults); images
            embed it with each run's param values substituted.
        param_uses: Per param, the ``[node id, input]`` places its value goes in ``prompt``.
        extra_pnginfo: Further PNG chunks (``{"workflow": UI workflow}``).
        noise_mode: The noise mode runs use unless told another (``comfyc compile
            --noise-mode``; None: the runtime's default). See
            :func:`comfyc.runtime.noise.check_noise_mode`.
    """

    prompt: dict[str, Any] | None = None
    param_uses: dict[str, list[list[str]]] = field(default_factory=dict)
    extra_pnginfo: dict[str, Any] | None = None
    noise_mode: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as manifest JSON."""
        out: dict[str, Any] = {"prompt": self.prompt, "param_uses": self.param_uses}
        if self.extra_pnginfo is not None:
            out["extra_pnginfo"] = self.extra_pnginfo
        if self.noise_mode is not None:
            out["noise_mode"] = self.noise_mode
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> RunMeta:
        """Read and check the record."""
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where} must be an object")
        uses = _get(data, "param_uses", dict, where, {})
        for name, places in uses.items():
            if not isinstance(places, list) or not all(
                    isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
                    for p in places):
                raise ManifestError(f"{where}.param_uses.{name} must be [[node, input], …]")
        return cls(_get(data, "prompt", dict, where, None, allow_none=True), dict(uses),
                   _get(data, "extra_pnginfo", dict, where, None, allow_none=True),
                   _get(data, "noise_mode", str, where, None, allow_none=True))


@dataclass
class Manifest:
    """A whole ``manifest.json``.

    Attributes:
        comfyc_version: The comfyc that wrote it.
        created: UTC time of the compile (ISO 8601).
        source: The workflow it was compiled from.
        params: Runtime params as :class:`~comfyc.runtime.program.ParamSpec` JSON objects.
        outputs: Ids of the output nodes.
        ops: The program's ops as JSON objects (``{"id", "op", "args", "title"}``).
        stages: Model stages by name.
        plan: The backend of every stage (flattened names), chosen at compile time or by
            the autotuner.
        constants: Where the folded values are.
        run_meta: What running needs besides the ops.
        stats: The compile's counts (:meth:`ChangeLog.summary` plus node counts).
        changes: The compile's change log (JSON records).
        optimized: The optimised graph as DSL text.
        options: The compile options that shape how it runs.
        files: SHA-256 of every file in the artifact, by relative path.
        autotune: The autotuner's measurements, when it ran.
        extra: Other top-level fields, kept as they are.
    """

    comfyc_version: str
    created: str = ""
    source: SourceRecord = field(default_factory=SourceRecord)
    params: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    ops: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, StageEntry] = field(default_factory=dict)
    plan: dict[str, str] = field(default_factory=dict)
    constants: ConstantsIndex = field(default_factory=ConstantsIndex)
    run_meta: RunMeta = field(default_factory=RunMeta)
    stats: dict[str, Any] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    optimized: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    autotune: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _FIELDS = ("format", "format_version", "comfyc_version", "created", "source", "params",
               "outputs", "program", "stages", "plan", "constants", "run_meta", "stats",
               "changes", "optimized", "options", "files", "autotune", "manifest_hash")

    def stage_entries(self) -> dict[str, StageEntry]:
        """Every runnable stage entry by its plan name (CLIP layers flattened, unused left
        out)."""
        out: dict[str, StageEntry] = {}
        for name, entry in self.stages.items():
            if entry.kind == _LAYERS_KIND:
                for layer, sub in entry.layers.items():
                    out[sub.name or f"{name}_L{layer}"] = sub
            elif not entry.unused:
                out[name] = entry
        return out

    def referenced_paths(self) -> list[str]:
        """Every file the manifest names (stages, LoRA factors, constants)."""
        paths = [p for entry in self.stages.values() for p in entry.paths()]
        if self.constants.entries:
            paths.append(self.constants.file)
        return paths

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON, with its ``manifest_hash``."""
        body: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "comfyc_version": self.comfyc_version, "created": self.created,
            "source": self.source.to_json(), "params": self.params, "outputs": self.outputs,
            "program": {"ops": self.ops},
            "stages": {name: entry.to_json() for name, entry in self.stages.items()},
            "plan": self.plan,
            "constants": {"file": self.constants.file, "entries": self.constants.entries},
            "run_meta": self.run_meta.to_json(), "stats": self.stats, "changes": self.changes,
            "optimized": self.optimized, "options": self.options, "files": self.files,
        }
        if self.autotune is not None:
            body["autotune"] = self.autotune
        body.update(self.extra)
        body["manifest_hash"] = manifest_hash(body)
        return body

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest") -> Manifest:
        """Read and check a manifest (not its files: :func:`comfyc.runtime.artifact.
        read_manifest` checks those).

        Raises:
            ManifestError: Not a comfyc manifest, another format version, a missing or
                mistyped field, or a path outside the artifact.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ManifestError(f"{where} is not a comfyc artifact manifest")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(
                f"artifact format version {version!r} is not supported by this runtime (it "
                f"reads version {FORMAT_VERSION}); recompile the workflow with this comfyc, or "
                f"install the comfyc version that made it ({data.get('comfyc_version')})")
        program = _get(data, "program", dict, where)
        ops = _get(program, "ops", list, f"{where}.program")
        for index, op in enumerate(ops):
            if not isinstance(op, Mapping) or not isinstance(op.get("id"), str) or \
                    not isinstance(op.get("op"), str) or not isinstance(op.get("args", {}),
                                                                       Mapping):
                raise ManifestError(f"{where}.program.ops[{index}] must be an object with "
                                    f"string id and op and an args object")
        stages = _get(data, "stages", dict, where)
        files = _get(data, "files", dict, where)
        for rel, digest in files.items():
            _path(rel, f"{where}.files key")
            if not isinstance(digest, str):
                raise ManifestError(f"{where}.files[{rel!r}] must be a SHA-256 string")
        plan = _get(data, "plan", dict, where, {})
        if not all(isinstance(v, str) for v in plan.values()):
            raise ManifestError(f"{where}.plan maps stage names to backend names")
        params = _get(data, "params", list, where, [])
        if not all(isinstance(p, Mapping) and isinstance(p.get("name"), str) and
                   isinstance(p.get("type"), str) for p in params):
            raise ManifestError(f"{where}.params must be objects with a name and a type")
        manifest = cls(
            comfyc_version=str(data.get("comfyc_version", "")),
            created=str(data.get("created", "")),
            source=SourceRecord.from_json(data.get("source") or {}, f"{where}.source"),
            params=[dict(p) for p in params],
            outputs=[str(o) for o in _get(data, "outputs", list, where, [])],
            ops=[dict(op) for op in ops],
            stages={str(name): StageEntry.from_json(entry, f"{where}.stages.{name}")
                    for name, entry in stages.items()},
            plan=dict(plan),
            constants=ConstantsIndex.from_json(data.get("constants") or {},
                                               f"{where}.constants"),
            run_meta=RunMeta.from_json(data.get("run_meta") or {}, f"{where}.run_meta"),
            stats=dict(_get(data, "stats", dict, where, {})),
            changes=list(_get(data, "changes", list, where, [])),
            optimized=_get(data, "optimized", str, where, None, allow_none=True),
            options=dict(_get(data, "options", dict, where, {})),
            files=dict(files),
            autotune=_get(data, "autotune", dict, where, None, allow_none=True),
            extra={k: v for k, v in data.items() if k not in cls._FIELDS},
        )
        unhashed = sorted(set(manifest.referenced_paths()) - set(manifest.files))
        if unhashed:
            raise ManifestError(f"{where} names files that are not in its hashed file list: "
                                f"{', '.join(unhashed[:5])}")
        return manifest
