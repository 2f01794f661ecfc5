"""TensorRT lowering: shape profiles, ONNX checks and engine builds for an artifact's stages.

``comfyc build-engines ARTIFACT`` (and ``comfyc compile --backend trt``) turns every ONNX stage
of an artifact into a TensorRT engine, cached in the artifact's ``engines/`` folder under a key
of GPU, compute capability, TensorRT version, ONNX hash, precision and profile
(:class:`comfyc.runtime.backends.trt.EngineKey`). The parts that need no GPU run anywhere and
are tested on the CPU:

* :func:`stage_profile` — the min/opt/max shapes of each input. A stage exported with static
  shapes gets exactly those; a dynamic export (``comfyc compile --dynamic``) gets ranges for
  its free dimensions (``batch``, latent ``height``/``width``, ``image_height``/``image_width``,
  ``context_len``) from :class:`ProfileSpec` with the workflow's own shapes as the optimum.
* :func:`check_onnx` — what TensorRT's ONNX parser would refuse, found before a build: opset
  outside 9–20, operators it does not implement, string tensors, a model that fails ONNX's
  checker or shape inference.
* :func:`prepare_onnx` — polygraphy's constant folding and shape inference (on the CPU, with
  onnxruntime), which TensorRT's parser handles better than the raw export.

:func:`build_engines` needs TensorRT and a GPU; it shows progress per stage and per builder
phase, uses a timing cache per GPU, honours a workspace limit, and can build refittable
engines so that a LoRA change is a refit rather than a rebuild (``TrtStage.refit``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from comfyc.runtime.artifact import ArtifactError, file_sha256, read_manifest
from comfyc.runtime.backends.trt import (
    ENGINE_DIR,
    INDEX_FORMAT,
    EngineKey,
    find_engine,
    gpu_identity,
    read_engine_index,
    require_tensorrt,
    stage_onnx_sha256,
)
from comfyc.runtime.manifest import Manifest

__all__ = [
    "BuildOptions",
    "ProfileSpec",
    "ShapeRange",
    "TensorRTError",
    "UNSUPPORTED_OPS",
    "build_engines",
    "check_onnx",
    "onnx_stages",
    "prepare_onnx",
    "stage_profile",
]

#: The opsets TensorRT 10's ONNX parser accepts (onnx-tensorrt docs/operators.md).
MIN_OPSET, MAX_OPSET = 9, 20

#: ONNX operators TensorRT's parser does not implement (onnx-tensorrt's support matrix):
#: sequences, strings, training losses, integer-only quantised kernels and a few others.
UNSUPPORTED_OPS = frozenset({
    "BitShift", "Compress", "ConcatFromSequence", "ConvInteger", "Det",
    "DynamicQuantizeLinear", "Hardmax", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
    "Multinomial", "NegativeLogLikelihoodLoss", "OneHot", "QLinearConv", "QLinearMatMul",
    "RandomNormal", "RandomNormalLike", "SequenceAt", "SequenceConstruct", "SequenceEmpty",
    "SequenceErase", "SequenceInsert", "SequenceLength", "SoftmaxCrossEntropyLoss",
    "SplitToSequence", "StringNormalizer", "TfIdfVectorizer", "Unique", "Col2Im",
    "StringConcat", "StringSplit", "RegexFullMatch", "ImageDecoder",
})


class TensorRTError(ArtifactError):
    """A stage cannot become an engine: bad profile, ONNX TensorRT would refuse, build failure."""


@dataclass(frozen=True)
class ShapeRange:
    """The min/opt/max shapes of one engine input."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise TensorRTError(f"profile ranks differ: {self.min}, {self.opt}, {self.max}")
        for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True):
            if not 1 <= lo <= mid <= hi:
                raise TensorRTError(
                    f"profile shapes must satisfy 1 <= min <= opt <= max in every dimension; "
                    f"got min {list(self.min)}, opt {list(self.opt)}, max {list(self.max)}")

    @property
    def static(self) -> bool:
        """min == opt == max."""
        return self.min == self.opt == self.max

    def as_lists(self) -> list[list[int]]:
        """``[min, opt, max]`` as lists (the engine key and the index use this)."""
        return [list(self.min), list(self.opt), list(self.max)]


Range3 = tuple[int, int, int]


def _parse_range(name: str, text: str) -> Range3:
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise TensorRTError(f"--profile {name}={text}: expected integers MIN:OPT:MAX (or one "
                            f"value for a fixed size), e.g. {name}=1:1:4") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise TensorRTError(f"--profile {name}={text}: expected MIN:OPT:MAX")
    lo, mid, hi = values
    if not 1 <= lo <= mid <= hi:
        raise TensorRTError(f"--profile {name}={text}: need 1 <= MIN <= OPT <= MAX")
    return lo, mid, hi


@dataclass(frozen=True)
class ProfileSpec:
    """The ranges a user asks engines to cover (images, not latents).

    Attributes:
        batch: Images per call (a UNet call batches cond and uncond: up to twice this).
        height: Image height in pixels (multiples of 8).
        width: Image width in pixels (multiples of 8).
        context: Prompt length in tokens (multiples of 77; longer prompts are chunked).
    """

    batch: Range3 | None = None
    height: Range3 | None = None
    width: Range3 | None = None
    context: Range3 | None = None

    @classmethod
    def parse(cls, text: str | None) -> ProfileSpec:
        """``batch=1:1:4,height=512:768:1024,width=...,context=77:77:231``."""
        if not text:
            return cls()
        values: dict[str, Range3] = {}
        for part in text.split(","):
            name, sep, value = part.strip().partition("=")
            if not sep or name not in ("batch", "height", "width", "context"):
                raise TensorRTError(
                    f"--profile {part.strip()!r}: expected batch=, height=, width= or "
                    f"context= followed by MIN:OPT:MAX")
            values[name] = _parse_range(name, value)
        for name in ("height", "width"):
            if name in values and any(v % 8 for v in values[name]):
                raise TensorRTError(f"--profile {name}={':'.join(map(str, values[name]))}: "
                                    f"image sizes must be multiples of 8 (the VAE's factor)")
        if "context" in values and any(v % 77 for v in values["context"]):
            raise TensorRTError("--profile context=...: token counts are multiples of 77")
        return cls(**values)

    @property
    def empty(self) -> bool:
        """Nothing was asked for."""
        return not (self.batch or self.height or self.width or self.context)


def _dim_range(dim: str, kind: str, observed: int, spec: ProfileSpec) -> Range3:
    """min/opt/max of one named dynamic dimension; the workflow's size is the optimum."""
    def around(asked: Range3 | None, scale: int, default_max: int) -> Range3:
        if asked is None:
            return min(observed, 1), observed, max(observed, default_max)
        lo, mid, hi = (v * scale if scale > 0 else v // -scale for v in asked)
        return lo, mid, hi

    if dim == "batch":
        if spec.batch is None:
            return 1, observed, max(observed, 4 if kind == "unet" else 2)
        lo, mid, hi = spec.batch
        return (lo, mid * 2, hi * 2) if kind == "unet" else (lo, mid, hi)
    if dim in ("height", "width"):  # Latent pixels: an eighth of the image's.
        asked = spec.height if dim == "height" else spec.width
        return around(asked, -8, observed * 2)
    if dim in ("image_height", "image_width"):
        asked = spec.height if dim == "image_height" else spec.width
        return around(asked, 1, observed * 2)
    if dim == "context_len":
        if spec.context is None:
            return 77, max(observed, 77), max(observed, 77 * 3)
        return spec.context
    return observed, observed, observed


def stage_profile(entry: Mapping[str, Any], spec: ProfileSpec | None = None
                  ) -> dict[str, ShapeRange]:
    """The engine profile of one stage entry of a manifest.

    Args:
        entry: ``manifest["stages"][NAME]`` (needs ``facts.inputs`` and ``shapes``).
        spec: Ranges asked for; only a stage exported with dynamic shapes can honour them.

    Raises:
        TensorRTError: Ranges asked for a static stage, or an entry without shape facts.
    """
    spec = spec or ProfileSpec()
    facts = entry.get("facts") or {}
    inputs = facts.get("inputs")
    if not inputs:
        raise TensorRTError("stage entry has no input shapes (facts.inputs); recompile the "
                            "artifact with this comfyc")
    kind = entry.get("kind", "")
    observed_sets = entry.get("shapes") or [[inp["shape"] for inp in inputs]]
    observed = observed_sets[0]
    dynamic = any(isinstance(d, str) for inp in inputs for d in inp["shape"])
    if not dynamic and not spec.empty:
        shapes = ", ".join(f"{i['name']} {i['shape']}" for i in inputs)
        raise TensorRTError(
            f"the {kind} stage was exported with static shapes ({shapes}), so its engine "
            f"cannot cover other sizes; compile with --dynamic to build engines for ranges, "
            f"or drop --profile")
    out: dict[str, ShapeRange] = {}
    for index, inp in enumerate(inputs):
        seen = observed[index] if index < len(observed) else inp["shape"]
        lo, mid, hi = [], [], []
        for axis, dim in enumerate(inp["shape"]):
            if isinstance(dim, int):
                lo.append(dim)
                mid.append(dim)
                hi.append(dim)
                continue
            size = int(seen[axis]) if axis < len(seen) and isinstance(seen[axis], int) else 1
            a, b, c = _dim_range(dim, kind, size, spec)
            lo.append(a)
            mid.append(b)
            hi.append(c)
        out[inp["name"]] = ShapeRange(tuple(lo), tuple(mid), tuple(hi))
    return out


# ----------------------------------------------------------------------------- ONNX
def _load_onnx(path: Path, *, weights: bool) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=weights)


def check_onnx(path: str | Path) -> list[str]:
    """Problems TensorRT's ONNX parser would have with a stage file (empty when none).

    Runs ONNX's checker and strict shape inference (both on the CPU), then checks the opset
    range, every operator against :data:`UNSUPPORTED_OPS` and that no tensor is a string.
    """
    import onnx

    path = Path(path)
    problems: list[str] = []
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types; all are findings.
        problems.append(f"ONNX checker: {str(exc).splitlines()[0]}")
    model = _load_onnx(path, weights=False)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not MIN_OPSET <= opset.version <= MAX_OPSET:
            problems.append(f"opset {opset.version} is outside TensorRT's {MIN_OPSET}-"
                            f"{MAX_OPSET}; re-export with opset {min(opset.version, 18)}")
    ops: dict[str, int] = {}
    foreign: dict[str, int] = {}
    for node in _all_nodes(model.graph):
        if node.domain in ("", "ai.onnx"):
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        else:
            name = f"{node.domain}.{node.op_type}"
            foreign[name] = foreign.get(name, 0) + 1
    if any(name.startswith("com.microsoft.") for name in foreign):
        fused = ", ".join(f"{n} ({c})" for n, c in sorted(foreign.items())
                          if n.startswith("com.microsoft."))
        problems.append(f"onnxruntime-only fused operators: {fused}. The stage was saved with "
                        f"onnxruntime's offline optimisations; compile with --backend trt "
                        f"(or --no-ort-optimize) to keep standard ONNX")
    for name, count in sorted(foreign.items()):
        if not name.startswith("com.microsoft."):
            domain = name.rsplit(".", 1)[0]
            problems.append(f"operator {name} ({count} nodes) is not an ONNX standard "
                            f"operator: custom domain {domain!r} needs a TensorRT plugin")
    for op in sorted(set(ops) & UNSUPPORTED_OPS):
        problems.append(f"operator {op} ({ops[op]} nodes) is not supported by TensorRT's "
                        f"ONNX parser")
    string = onnx.TensorProto.STRING
    for value in [*model.graph.input, *model.graph.output]:
        if value.type.tensor_type.elem_type == string:
            problems.append(f"{value.name}: string tensors cannot run in TensorRT")
    return problems


def _all_nodes(graph: Any) -> list[Any]:
    """Every node, including those inside If/Loop/Scan subgraphs."""
    out = []
    for node in graph.node:
        out.append(node)
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                out.extend(_all_nodes(attr.g))
            for sub in attr.graphs:
                out.extend(_all_nodes(sub))
    return out


def prepare_onnx(src: str | Path, dst: str | Path) -> dict[str, int]:
    """Fold constants and infer shapes with polygraphy; write the result to ``dst``.

    Returns:
        Node counts before and after (``{"nodes_before": …, "nodes_after": …}``).

    Raises:
        TensorRTError: polygraphy is missing (it is in the ``tensorrt`` and ``dev`` extras).
    """
    try:
        from polygraphy.backend.onnx import fold_constants, infer_shapes, save_onnx
    except ImportError as exc:
        raise TensorRTError("preparing ONNX for TensorRT needs polygraphy: pip install "
                            "'comfyc[tensorrt]' (or polygraphy alone)") from exc
    src, dst = Path(src), Path(dst)
    model = _load_onnx(src, weights=True)
    before = len(model.graph.node)
    model = fold_constants(model, num_passes=2, error_ok=True)
    model = infer_shapes(model, error_ok=True)
    large = sum(init.ByteSize() for init in model.graph.initializer) > (1 << 30)
    save_onnx(model, str(dst), external_data_path=(dst.name + ".data") if large else None)
    return {"nodes_before": before, "nodes_after": len(model.graph.node)}


# ---------------------------------------------------------------------------- builds
@dataclass
class BuildOptions:
    """Options of ``comfyc build-engines``.

    Attributes:
        fp16: Allow FP16 kernels (the default on GPUs: SD's UNet is trained for it).
        refittable: Build with the REFIT flag so LoRA weights can change without a rebuild.
        workspace_bytes: The builder's workspace memory-pool limit.
        profile: Ranges for dynamic stages.
        stages: Only these stage names or kinds (all ONNX stages when empty).
        force: Rebuild even when an engine with the same key exists.
        prepare: Run :func:`prepare_onnx` before parsing.
        optimization_level: TensorRT builder optimisation level (0-5; 3 is TensorRT's).
    """

    fp16: bool = True
    refittable: bool = False
    workspace_bytes: int = 4 << 30
    profile: ProfileSpec = field(default_factory=ProfileSpec)
    stages: Sequence[str] = ()
    force: bool = False
    prepare: bool = True
    optimization_level: int = 3


def onnx_stages(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Every ONNX stage of a manifest by its program name (text-encoder layers expanded), as
    manifest JSON (``kind``, ``file``, ``shapes``, ``facts`` …: what profiles are made of)."""
    return {name: entry.to_json() for name, entry in manifest.stage_entries().items()
            if entry.file}


def _selected(name: str, entry: Mapping[str, Any], wanted: Sequence[str]) -> bool:
    return not wanted or name in wanted or entry.get("kind") in wanted


def _progress_monitor(trt: Any, say: Callable[[str], None]) -> Any:
    """A TensorRT ``IProgressMonitor`` reporting builder phases through ``say`` (None before
    TensorRT 10, which has no progress callbacks)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.last = 0.0

        def phase_start(self, phase_name: str, parent_phase: str | None,
                        num_steps: int) -> None:
            if parent_phase is None:
                say(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.monotonic()
            if now - self.last > 5.0:  # At most one line per 5 s.
                self.last = now
                say(f"  {phase_name}: step {step + 1}")
            return True

        def phase_finish(self, phase_name: str) -> None:
            return None

    return Monitor()


def _build_one(trt: Any, onnx_path: Path, plan_path: Path, profile: Mapping[str, ShapeRange],
               options: BuildOptions, timing_cache: Path, say: Callable[[str], None]) -> None:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTError(f"TensorRT could not parse {onnx_path.name}: "
                            + "; ".join(errors[:3]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if options.refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = options.optimization_level
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file()
                                       else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt, say)
    if monitor is not None:
        config.progress_monitor = monitor
    opt_profile = builder.create_optimization_profile()
    for name, shape in profile.items():
        opt_profile.set_shape(name, shape.min, shape.opt, shape.max)
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT failed to build an engine for {onnx_path.name} (see the "
                            f"TensorRT log above); try a larger --workspace-gb or --no-fp16")
    plan_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))


def _write_index(root: Path, index: Mapping[str, Any]) -> None:
    from comfyc.runtime.files import atomic_write

    atomic_write(root / ENGINE_DIR / "index.json", json.dumps(index, indent=2))


def build_engines(artifact: str | Path, options: BuildOptions | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Build (or reuse) one TensorRT engine per ONNX stage of an artifact.

    Each engine is written to ``engines/`` under its key's digest; ``engines/index.json`` is
    rewritten atomically after every stage, so an interrupted build keeps the engines that
    finished. An existing engine with the same key is reused; one for another GPU, TensorRT
    version or ONNX file stays (another machine may use it) and the reason for the rebuild is
    reported.

    Returns:
        Per stage: ``{"status": "built"|"cached", "file", "seconds", "reason"}``.

    Raises:
        BackendError: TensorRT or a GPU is missing.
        TensorRTError: A profile or ONNX problem, or a failed build.
    """
    options = options or BuildOptions()
    say = progress or (lambda message: None)
    root = Path(artifact)
    manifest = read_manifest(root)
    trt = require_tensorrt()
    gpu = gpu_identity()
    version = str(trt.__version__)
    stages = {n: e for n, e in onnx_stages(manifest).items()
              if _selected(n, e, options.stages)}
    if not stages:
        raise TensorRTError(f"{root}: no ONNX stage to build"
                            + (f" among {list(options.stages)}" if options.stages else ""))
    folder = root / ENGINE_DIR
    folder.mkdir(exist_ok=True)
    gpu_tag = EngineKey.make(gpu, version, "", fp16=False, refittable=False,
                             profile={}).digest()[:8]
    timing_cache = folder / f"timing-{gpu_tag}.cache"
    results: dict[str, dict[str, Any]] = {}
    say(f"building TensorRT {version} engines on {gpu.name} (compute "
        f"{gpu.compute_capability}) for {len(stages)} stages")
    for number, (name, entry) in enumerate(stages.items(), 1):
        profile = stage_profile(entry, options.profile)
        key = EngineKey.make(gpu, version,
                             stage_onnx_sha256(manifest.files, root, entry["file"]),
                             fp16=options.fp16, refittable=options.refittable,
                             profile={k: v.as_lists() for k, v in profile.items()})
        existing, reasons = find_engine(root, name, key)
        if existing is not None and not options.force:
            say(f"[{number}/{len(stages)}] {name}: cached ({existing.name})")
            results[name] = {"status": "cached", "file": existing.name, "seconds": 0.0}
            continue
        reason = "--force" if existing is not None else "; ".join(reasons)
        say(f"[{number}/{len(stages)}] {name}: building ({reason})")
        problems = check_onnx(root / entry["file"])
        if problems:
            raise TensorRTError(f"stage {name}: TensorRT would refuse {entry['file']}: "
                                + "; ".join(problems))
        start = time.perf_counter()
        plan_name = f"{name}.{key.digest()}.plan"
        with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
            source = root / entry["file"]
            if options.prepare:
                prepared = Path(tmp) / "stage.onnx"
                counts = prepare_onnx(source, prepared)
                say(f"  folded constants: {counts['nodes_before']} -> "
                    f"{counts['nodes_after']} nodes")
                source = prepared
            partial = Path(tmp) / plan_name
            _build_one(trt, source, partial, profile, options, timing_cache, say)
            os.replace(partial, folder / plan_name)
        seconds = time.perf_counter() - start
        index = read_engine_index(root)
        entries = [e for e in index["engines"].get(name, [])
                   if EngineKey.from_json(e["key"]) != key]
        entries.append({"file": plan_name, "key": asdict(key),
                        "sha256": file_sha256(folder / plan_name), "build_s": round(seconds, 2),
                        "bytes": (folder / plan_name).stat().st_size,
                        "built": time.strftime("%Y-%m-%dT%H:%M:%S")})
        index["engines"][name] = entries
        index["format"] = INDEX_FORMAT
        _write_index(root, index)
        say(f"  done in {seconds:.1f} s ({(folder / plan_name).stat().st_size / 1e6:.1f} MB)")
        results[name] = {"status": "built", "file": plan_name, "seconds": seconds,
                         "reason": reason}
    return results

