"""Reading a compiled artifact (``NAME.comfyc/``) into a runnable program.

An artifact is a directory::

    manifest.json            format version, source workflow, params, program, stages, hashes
    stages/*.onnx            one ONNX model per stage (external data beside large ones)
    torch/<stage>/           weights + config of stages that fall back to PyTorch
    constants.safetensors    folded prompt encodings, sigma schedules …
    tokenizer/               the CLIP vocabulary, when a prompt is a runtime param
    lora/<stage>.safetensors low-rank factors of runtime-mode LoRAs (strength is a param, or
                             --lora-runtime): merged into the stage's weights when its session
                             is made (see runtime/lora.py)

Loading checks the format version and every file's SHA-256 before anything runs, so a
truncated model or an edited manifest is a clear error, not a crash halfway through a run.
Only numpy, safetensors and onnxruntime are needed for ONNX stages; torch is imported only
when a stage runs on the PyTorch backend.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .backends.base import BackendError, Stage
from .errors import Error
from .manifest import (
    FORMAT,
    FORMAT_VERSION,
    STAGE_KINDS,
    Manifest,
    ManifestError,
    StageEntry,
    manifest_hash,
)
from .program import Op, ParamSpec, Program

__all__ = ["FORMAT", "FORMAT_VERSION", "ArtifactError", "load", "read_manifest", "file_sha256",
           "decode_constants", "STAGE_KINDS", "BACKENDS", "parse_backend_spec", "make_stage",
           "manifest_hash", "write_manifest", "stage_entries", "backend_unavailable_reason",
           "Manifest", "StageEntry"]

#: Manifests larger than this are refused before parsing (a real one is well under 1 MB).
_MAX_MANIFEST_BYTES = 256 * 1024 * 1024


class ArtifactError(Error, ValueError):
    """The artifact is missing, damaged, or from an incompatible comfyc."""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: str | Path, *, verify: bool = True) -> Manifest:
    """Read and check an artifact's manifest (and, with ``verify``, every file's hash).

    Raises:
        ArtifactError: Not an artifact, an unknown format version, a malformed field, a path
            outside the artifact, a missing hash, or a missing or changed file.
    """
    root = Path(path)
    manifest_path = root / "manifest.json"
    if not root.is_dir():
        raise ArtifactError(f"{root}: not an artifact directory (compile one with "
                            f"`comfyc compile WORKFLOW -o {root.name}`)")
    if not manifest_path.is_file():
        workflows = [p.name for p in sorted(root.iterdir())
                     if p.suffix in (".cfy", ".json", ".png")][:3] if root.is_dir() else []
        hint = (f"; it holds workflows ({', '.join(workflows)}): run one of those, or "
                f"compile it first" if workflows else "; compile it again")
        raise ArtifactError(f"{root}: not a compiled artifact (manifest.json is missing){hint}")
    try:
        if manifest_path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{manifest_path}: manifest is larger than "
                                f"{_MAX_MANIFEST_BYTES >> 20} MiB; it is not a comfyc manifest")
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: manifest is not valid JSON ({exc}); the "
                            f"artifact is damaged — compile it again") from None
    except RecursionError:
        raise ArtifactError(f"{manifest_path}: manifest is nested too deeply; the artifact is "
                            f"damaged — compile it again") from None
    except OSError as exc:
        raise ArtifactError(f"{manifest_path}: cannot read the manifest: {exc.strerror}"
                            ) from None
    try:
        manifest = Manifest.from_json(data, str(manifest_path))
    except ManifestError as exc:
        raise ArtifactError(f"{root}: {exc}") from None
    if data.get("manifest_hash") is None:
        raise ArtifactError(f"{manifest_path} has no manifest_hash; the manifest was edited "
                            f"or damaged — compile the workflow again")
    if manifest_hash(data) != data["manifest_hash"]:
        raise ArtifactError(
            f"{manifest_path} was edited after compilation (hash mismatch); recompile the "
            f"workflow instead of editing the manifest")
    if verify:
        _verify_files(root, manifest)
    return manifest


def _verify_files(root: Path, manifest: Manifest) -> None:
    base = root.resolve()
    for rel, digest in manifest.files.items():
        target = (root / rel).resolve()
        if base not in target.parents:
            raise ArtifactError(f"{root}: manifest names a file outside the artifact: {rel}")
        if not target.is_file():
            raise ArtifactError(f"{root}: file {rel} is missing; the artifact is incomplete — "
                                f"compile it again")
        actual = file_sha256(target)
        if actual != digest:
            raise ArtifactError(
                f"{root}: file {rel} does not match its recorded hash (it is truncated or "
                f"changed); compile the artifact again")


def write_manifest(root: str | Path, manifest: Manifest) -> None:
    """Rewrite an artifact's manifest atomically (temporary file + rename), rehashed.

    Used by ``comfyc tune``: a reader sees the old manifest or the new one, never half.
    """
    from .files import atomic_write

    atomic_write(Path(root) / "manifest.json", json.dumps(manifest.to_json(), indent=1))


def stage_entries(manifest: Manifest) -> dict[str, StageEntry]:
    """Every runnable stage entry by its plan name (CLIP layers flattened, unused left out)."""
    return manifest.stage_entries()


def decode_constants(root: Path, manifest: Manifest) -> dict[str, Any]:
    """Rebuild the constants table (arrays and conditioning lists) from safetensors."""
    entries = manifest.constants.entries
    if not entries:
        return {}
    from safetensors.numpy import load_file

    tensors = load_file(str(root / manifest.constants.file))
    try:
        return _decode_entries(entries, tensors)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{root}: manifest constants are malformed ({type(exc).__name__}: "
                            f"{exc}); compile the artifact again") from None


def _decode_entries(entries: Mapping[str, Any], tensors: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, entry in entries.items():
        kind = entry.get("type")
        if kind == "array":
            out[key] = tensors[entry["tensor"]]
        elif kind == "none":
            out[key] = None
        elif kind == "conditioning":
            items = []
            for item in entry["items"]:
                cond: dict[str, Any] = dict(item.get("options") or {})
                for name, tensor_key in (item.get("tensors") or {}).items():
                    cond[name] = tensors[tensor_key]
                if "area" in cond and isinstance(cond["area"], list):
                    cond["area"] = tuple(cond["area"])
                items.append(cond)
            out[key] = items
        else:
            raise ArtifactError(f"constant {key!r} has unknown type {kind!r}")
    return out


#: Backend names a stage can run on (``ort-<provider>`` passes any other provider through).
BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "ov-cpu", "torch", "torch-compile",
            "torch-cuda", "torch-compile-cuda", "trt")

#: Options that only onnxruntime stages take (torch and trt stages ignore them).
_ORT_OPTIONS = ("intra_op_threads", "inter_op_threads", "optimization_level", "io_binding",
                "log_severity_level", "precision", "ort_cache")


def parse_backend_spec(backend: str | Mapping[str, str] | None) -> str | dict[str, str] | None:
    """``"ort-cpu"`` stays a name; ``"unet=ort-cuda,vae_decoder=ort-cpu"`` becomes a map.

    Map keys are stage names (``unet_18f8c13854``), stage kinds (``unet``, ``text_encoder``,
    ``vae_decoder``, ``vae_encoder``) or ``*`` for every stage not named otherwise.

    Raises:
        BackendError: A malformed map entry.
    """
    if backend is None or isinstance(backend, Mapping):
        return None if backend is None else dict(backend)
    if "=" not in backend:
        return backend.strip()
    out: dict[str, str] = {}
    for part in backend.split(","):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise BackendError(f"--backend map entries are STAGE=BACKEND (e.g. "
                               f"unet=ort-cuda,vae_decoder=ort-cpu), got {part!r}")
        out[key.strip()] = value.strip()
    return out


def _parse_backend(backend: str | Mapping[str, str] | None, stage: str, kind: str,
                   planned: str) -> str:
    spec = parse_backend_spec(backend)
    if spec is None:
        return planned
    if isinstance(spec, str):
        return spec
    return spec.get(stage) or spec.get(kind) or spec.get("*") or planned


def _check_backend_keys(backend: str | Mapping[str, str] | None, manifest: Manifest) -> None:
    """Fail when a per-stage map names a stage or kind this artifact does not have."""
    spec = parse_backend_spec(backend)
    if not isinstance(spec, dict):
        return
    names = list(stage_entries(manifest))
    # NOTE: any stage kind is accepted (one map can serve many artifacts, e.g. a server's);
    # only keys that are neither a kind nor a stage of this artifact are typos.
    unknown = [key for key in spec
               if key != "*" and key not in names and key not in STAGE_KINDS]
    if unknown:
        raise BackendError(
            f"--backend names {', '.join(map(repr, unknown))}, which is neither a stage kind "
            f"({', '.join(STAGE_KINDS)}) nor a stage of this artifact ({', '.join(names)}); "
            f"use one of those, or * for the rest")


def backend_unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine (what is missing and how to get it), or None.

    A cheap check made before any work (``comfyc bench`` runs it for every backend first);
    stages still check for real when they start (``session.get_providers()``).
    """
    import importlib.util

    if backend.startswith("ort"):
        from .backends import ort

        try:
            wanted = ort.providers_for_backend(backend)
            available = ort.available_providers()
        except BackendError as exc:
            return str(exc)
        missing = [name for name in wanted if name not in available]
        if missing:
            return (f"{backend} needs {', '.join(missing)}, but this onnxruntime build only has "
                    f"{', '.join(available)}; install: "
                    f"{ort._INSTALL_HINTS.get(missing[0], 'an onnxruntime build with it')}")
        return None
    if backend.startswith("ov-"):
        if importlib.util.find_spec("openvino") is None:
            return (f"{backend} needs the OpenVINO runtime, which is not installed; pip "
                    f"install 'comfyc[openvino]' (or pip install openvino)")
        if backend != "ov-cpu":
            return f"unknown OpenVINO backend {backend!r}; ov-cpu is the one supported"
        return None
    if _is_torch(backend):
        if importlib.util.find_spec("torch") is None:
            return (f"{backend} needs PyTorch, which is not installed; pip install "
                    f"'comfyc[compiler,cpu]'")
        if backend.endswith("-cuda"):
            from .backends.torch import require_cuda

            try:
                require_cuda(backend)
            except BackendError as exc:
                return str(exc)
        return None
    if backend == "trt":
        if importlib.util.find_spec("tensorrt") is None:
            return ("trt (native TensorRT engines) needs the tensorrt package and an NVIDIA GPU; "
                    "neither TensorRT nor its Python bindings are installed here: pip install "
                    "'comfyc[tensorrt]' on a machine with an NVIDIA GPU and driver")
        if importlib.util.find_spec("comfyc.runtime.backends.trt") is None:
            return "this comfyc has no TensorRT runtime (comfyc.runtime.backends.trt)"
        return None
    return (f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)} or "
            f"ort-<provider>")


def _is_torch(backend: str) -> bool:
    return backend in ("torch", "torch-compile", "torch-cuda", "torch-compile-cuda")


def _make_stage(root: Path, name: str, entry: StageEntry, backend: str,
                options: Mapping[str, Any]) -> Any:
    """The stage for a manifest entry; a :class:`~comfyc.runtime.lora.RuntimeLoraStage`
    when the entry has runtime-mode LoRAs (its sessions are made when strengths are known)."""
    lora = entry.lora
    if not lora:
        return _make_base_stage(root, name, entry, backend, options)
    from .lora import RuntimeLoraStage

    torch_backend = _is_torch(backend)
    if not (torch_backend or backend.startswith("ort") or backend == "trt"):
        raise BackendError(
            f"stage {name} has runtime-mode LoRAs, which are merged when an onnxruntime, "
            f"PyTorch or TensorRT (refit) stage is made; the {backend} backend cannot replace "
            f"its weights. Run it with --backend {name}=ort-cuda (or ort-cpu), or fold the "
            f"LoRA: compile with constant strengths and without --lora-runtime")
    _check_stage_source(name, entry, backend)

    def create(overrides: dict[str, Any]) -> Stage:
        return _make_base_stage(root, name, entry, backend, options, overrides)

    return RuntimeLoraStage.from_index(root, name, entry.kind, lora, create,
                                       source="torch" if torch_backend else "onnx",
                                       info=dict(entry.info))


def _check_stage_source(name: str, entry: StageEntry, backend: str) -> None:
    """Fail unless the artifact stored this stage for ``backend``."""
    if _is_torch(backend) and not entry.torch:
        raise BackendError(f"stage {name} was not stored for the torch backend; compile "
                           f"with --backend {name}=torch to run it on PyTorch")
    if (backend.startswith("ort") or backend.startswith("ov-")) and not entry.file:
        raise BackendError(f"stage {name} has no ONNX file (it was compiled for "
                           f"{entry.backend}); run it with --backend {name}=torch")


def _make_base_stage(root: Path, name: str, entry: StageEntry, backend: str,
                     options: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
                     ) -> Stage:
    """The stage of a manifest entry, with ``overrides`` (merged LoRA weights) replacing
    stored weights by name."""
    kind = entry.kind
    info = dict(entry.info)
    _check_stage_source(name, entry, backend)
    if not options.get("intra_op_threads") and info.get("threads"):
        # NOTE: the autotuner's thread count, but never more than the cores free now.
        from .backends.threads import free_cores

        options = {**options, "intra_op_threads": min(int(info["threads"]), free_cores())}
    if _is_torch(backend) and kind == "unet" and info.get("step_cache"):
        raise BackendError(f"stage {name} caches steps, which runs on onnxruntime or OpenVINO "
                           f"only; run it with --backend {name}=ort-cpu (or ov-cpu), or "
                           f"compile without --step-cache")
    if _is_torch(backend):
        from .backends.threads import choose_threads, passive_openmp
        from .backends.torch import require_torch

        passive_openmp()  # before torch loads: OpenMP reads it once
        torch = require_torch()  # names the extra to install when torch is missing

        # NOTE: the same rule as every backend: the free cores unless told otherwise.
        torch.set_num_threads(choose_threads(options.get("intra_op_threads")))
        from .backends.torch_artifact import load_torch_stage

        stage = load_torch_stage(root / str(entry.torch), name, kind, info,
                                 compile="compile" in backend,
                                 device="cuda" if backend.endswith("-cuda") else "cpu")
        if overrides:
            _load_torch_overrides(stage, overrides)
        return stage
    if backend.startswith("ort"):
        from .backends import ort

        classes = {"unet": ort.OrtUNet, "text_encoder": ort.OrtTextEncoder,
                   "vae_decoder": ort.OrtVaeDecoder, "vae_encoder": ort.OrtVaeEncoder,
                   "upscale": ort.OrtUpscale, "controlnet": ort.OrtControlNet,
                   "t2i_adapter": ort.OrtT2IAdapter}
        ort_options = {key: value for key, value in options.items() if key in _ORT_OPTIONS}
        precision = ort_options.pop("precision", None)
        kept = ort_options.pop("ort_cache", None)
        if kept:
            # NOTE: large CPU stages keep onnxruntime's optimised graph for later loads.
            ort_options["optimized_cache"] = (root / "cache" / "ort-cpu" if kept is True
                                              else Path(kept))
        providers = ort.providers_for_backend(backend)
        if entry.optimized:
            # NOTE: the file holds onnxruntime's portable (EXTENDED) optimisations. On the CPU
            # the session adds ALL's layout transformations (NCHWc convolutions), which are
            # tied to the machine and so cannot be stored: 12-23 % less time per image on the
            # tiny model at the same load time (bench/bench_ort_level.py; spikes §4 found
            # EXTENDED files 7-21 % slower).
            cpu = all(provider == "CPUExecutionProvider" for provider in providers)
            ort_options.setdefault("optimization_level", "all" if cpu else "extended")
        if overrides:
            ort_options["initializer_overrides"] = dict(overrides)
        if providers[0] == "TensorrtExecutionProvider":
            providers = _tensorrt_ep(root, providers, entry)
        if kind == "unet" and info.get("step_cache"):
            return _step_cache_stage(root, name, entry, info, lambda path: ort.OrtSession(
                path, providers=providers, **ort_options))
        file = _stage_file(entry, backend, precision)
        step = entry.variants.get("step")
        if (kind == "unet" and step and file == str(entry.file) and not overrides
                and options.get("step_graph", True) and _step_graph_known(info)):
            from .backends.step_graph import StepGraphUNet

            def plain() -> Stage:
                return ort.OrtUNet(name, root / file, providers=providers, info=info,
                                   **ort_options)

            return StepGraphUNet(name, ort.OrtSession(root / step, providers=providers,
                                                      **ort_options), plain, info=info)
        return classes[kind](name, root / file, providers=providers, info=info, **ort_options)
    if backend.startswith("ov-"):
        if overrides:
            raise BackendError(f"stage {name} has runtime-mode LoRAs, which ov-cpu cannot "
                               f"merge; run it with --backend {name}=ort-cpu")
        from .backends.openvino import OvSession, make_ov_stage

        precision = options.get("precision")
        ov_options = {"intra_op_threads": options.get("intra_op_threads"),
                      "precision": None if precision in (None, "fp32") else precision}
        if kind == "unet" and info.get("step_cache"):
            return _step_cache_stage(root, name, entry, info,
                                     lambda path: OvSession(path, **ov_options))
        return make_ov_stage(name, kind, root / str(entry.file), info=info, **ov_options)
    if backend == "trt":
        try:
            from .backends.trt import load_trt_stage  # type: ignore[import-not-found]
        except ImportError as exc:
            raise BackendError(
                f"stage {name} asks for the native TensorRT backend (trt), but this comfyc has "
                f"no TensorRT runtime ({exc}); install it with pip install 'comfyc[tensorrt]' "
                f"on a machine with an NVIDIA GPU, or run the stage with --backend "
                f"{name}=ort-cpu") from None
        stage = load_trt_stage(root, name, entry, info)  # pragma: no cover - GPU only
        if overrides:  # pragma: no cover - GPU only
            stage.refit(overrides)  # LoRA without a rebuild (engines built --refittable).
        return stage
    raise BackendError(f"unknown backend {backend!r} for stage {name}; use one of "
                       f"{', '.join(BACKENDS)} or ort-<provider>")


def _step_graph_known(info: Mapping[str, Any]) -> bool:
    """Whether the stage's sampler-step graph has the interface this runtime runs."""
    from .backends.step_graph import STEP_GRAPH_VERSIONS

    return info.get("step_graph") in STEP_GRAPH_VERSIONS


def _step_cache_stage(root: Path, name: str, entry: StageEntry, info: dict[str, Any],
                      session: Any) -> Stage:
    """A step-caching UNet over the entry's full and shallow graphs (compile
    ``--step-cache``); ``session(path)`` opens one graph on the chosen backend."""
    from .backends.step_cache import StepCacheUNet

    shallow = entry.variants.get("step_cache_shallow")
    settings = info.get("step_cache") or {}
    if not shallow or not isinstance(settings, Mapping) or "interval" not in settings:
        raise BackendError(f"stage {name} says it caches steps but the artifact has no "
                           f"shallow graph or interval; compile it again")
    return StepCacheUNet(name, session(root / str(entry.file)), session(root / shallow),
                         interval=int(settings["interval"]), info=info)


def _stage_file(entry: StageEntry, backend: str, precision: str | None) -> str:
    """The ONNX file a backend runs: an fp16 variant on GPU providers when the artifact has
    one (``comfyc compile --gpu-fp16``) unless ``precision="fp32"``; ``precision="fp16"``
    insists on it."""
    variant = entry.variants.get("fp16")
    on_gpu = backend not in ("ort", "ort-cpu")
    if precision == "fp16" and not variant:
        raise BackendError(f"precision fp16 was asked for, but stage file {entry.file} has "
                           f"no fp16 variant; compile with --gpu-fp16 (or --fp16)")
    if variant and (precision == "fp16" or (precision is None and on_gpu)):
        return str(variant)
    return str(entry.file)


def _tensorrt_ep(root: Path, providers: list[str], entry: StageEntry) -> list[Any]:
    """onnxruntime's TensorRT EP with its engine and timing caches in ``root/cache/ort-trt``
    (engines are keyed by onnxruntime itself: model hash, GPU, TensorRT version)."""
    from .backends import ort

    if "TensorrtExecutionProvider" not in ort.available_providers():
        return providers  # OrtSession names what is missing.
    cache = root / "cache" / "ort-trt"
    cache.mkdir(parents=True, exist_ok=True)
    fp16 = "float16" in str(entry.facts.get("weights_dtype", ""))
    options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
               "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
               "trt_fp16_enable": "True" if fp16 else "False"}
    return [("TensorrtExecutionProvider", options), *providers[1:]]


def make_stage(root: str | Path, name: str, entry: StageEntry, backend: str,
               **options: Any) -> Any:
    """One stage of an artifact on ``backend`` (what :func:`load` makes for each entry);
    the autotuner measures stages made this way.

    Raises:
        BackendError: The backend cannot run here, or the artifact has no file for it.
    """
    return _make_stage(Path(root), name, entry, backend, options)


def _load_torch_overrides(stage: Any, overrides: Mapping[str, Any]) -> None:
    """Copy merged weights (numpy, by state-dict name) into a PyTorch stage's module."""
    import numpy as np
    import torch

    state = stage.module.state_dict()
    unknown = [key for key in overrides if key not in state]
    if unknown:
        raise BackendError(f"stage {stage.name}: LoRA targets {unknown[:3]} are not weights of "
                           f"its module; the artifact is inconsistent — compile again")
    with torch.no_grad():
        for key, value in overrides.items():
            state[key].copy_(torch.from_numpy(np.ascontiguousarray(value)))


def load(path: str | Path, backend: str | Mapping[str, str] | None = None, *,
         verify: bool = True, **stage_options: Any) -> Program:
    """Load an artifact as a runnable program.

    Args:
        path: The ``NAME.comfyc`` directory.
        backend: One backend for every stage (``ort-cpu``), a per-stage map
            (``{"unet": "ort-cpu", "vae_decoder": "torch"}`` or ``"unet=ort-cpu,..."``), or None
            for the plan recorded in the manifest (autotuned or chosen at compile time).
        verify: Check file hashes (on by default; turn off only for trusted, timed loops).
        **stage_options: onnxruntime tuning passed to every ONNX stage:
            ``intra_op_threads``, ``inter_op_threads``, ``optimization_level``
            (disable/basic/extended/all), ``io_binding`` (None: on for CUDA),
            ``precision`` (fp16/fp32 variant), ``log_severity_level``, ``ort_cache``
            (True: keep onnxruntime's optimised CPU graphs of large stages in
            ``ARTIFACT/cache/ort-cpu`` for later loads, or a folder to keep them in;
            :class:`~comfyc.runtime.backends.ort.OptimizedGraphCache`); and
            ``step_graph=False`` to run a UNet's sampling steps without its sampler-step
            graph (:mod:`comfyc.runtime.backends.step_graph`), which gives the same bits.

    Raises:
        ArtifactError: The artifact is damaged or incompatible.
        BackendError: A backend cannot run here.
    """
    root = Path(path)
    manifest = read_manifest(root, verify=verify)
    _check_backend_keys(backend, manifest)
    plan = manifest.plan
    stages: dict[str, Any] = {}
    for name, entry in manifest.stages.items():
        kind = entry.kind
        if kind == "text_encoder_layers":
            layers = {}
            for layer, sub in entry.layers.items():
                sub_name = sub.name or f"{name}_L{layer}"
                chosen = _parse_backend(backend, sub_name, "text_encoder",
                                        plan.get(sub_name, "ort-cpu"))
                layers[int(layer)] = _make_stage(root, sub_name, sub, chosen, stage_options)
            stages[name] = layers
            continue
        if entry.unused:
            stages[name] = None
            continue
        chosen = _parse_backend(backend, name, kind, plan.get(name, "ort-cpu"))
        stages[name] = _make_stage(root, name, entry, chosen, stage_options)
    params = {p["name"]: ParamSpec.from_json(p) for p in manifest.params}
    ops = [Op.from_json(op) for op in manifest.ops]
    meta = manifest.run_meta.to_json()
    meta["artifact"] = str(root)
    vocab = root / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
    if vocab.is_file():
        meta["vocab_path"] = str(vocab)
    constants = decode_constants(root, manifest)
    return Program(ops, stages, constants, params, meta)
