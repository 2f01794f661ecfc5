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
from .program import Op, ParamSpec, Program

__all__ = ["FORMAT", "FORMAT_VERSION", "ArtifactError", "load", "read_manifest", "file_sha256",
           "decode_constants", "STAGE_KINDS"]

FORMAT = "comfyc-artifact"
FORMAT_VERSION = 1
STAGE_KINDS = ("unet", "text_encoder", "vae_decoder", "vae_encoder")


class ArtifactError(ValueError):
    """The artifact is missing, damaged, or from an incompatible comfyc."""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Read and check an artifact's manifest (and, with ``verify``, every file's hash).

    Raises:
        ArtifactError: Not an artifact, an unknown format version, a missing or changed file.
    """
    root = Path(path)
    manifest_path = root / "manifest.json"
    if not root.is_dir():
        raise ArtifactError(f"{root}: not an artifact directory (compile one with "
                            f"`comfyc compile WORKFLOW -o {root.name}`)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{root}: manifest.json is missing; this is not a complete "
                            f"artifact — compile it again") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: manifest is not valid JSON ({exc}); the "
                            f"artifact is damaged — compile it again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path}: not a comfyc artifact manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{root}: artifact format version {version!r} is not supported by this runtime "
            f"(it reads version {FORMAT_VERSION}); recompile the workflow with this comfyc, or "
            f"install the comfyc version that made it ({manifest.get('comfyc_version')})")
    if verify:
        _verify_files(root, manifest)
    return manifest


def _verify_files(root: Path, manifest: dict[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{root}: manifest lists no files")
    expected_hash = manifest.get("manifest_hash")
    if expected_hash is not None:
        body = {k: v for k, v in manifest.items() if k != "manifest_hash"}
        actual = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if actual != expected_hash:
            raise ArtifactError(
                f"{root}/manifest.json was edited after compilation (hash mismatch); "
                f"recompile the workflow instead of editing the manifest")
    for rel, digest in files.items():
        target = (root / rel).resolve()
        if root.resolve() not in target.parents:
            raise ArtifactError(f"{root}: manifest names a file outside the artifact: {rel}")
        if not target.is_file():
            raise ArtifactError(f"{root}: file {rel} is missing; the artifact is incomplete — "
                                f"compile it again")
        actual = file_sha256(target)
        if actual != digest:
            raise ArtifactError(
                f"{root}: file {rel} does not match its recorded hash (it is truncated or "
                f"changed); compile the artifact again")


def decode_constants(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the constants table (arrays and conditioning lists) from safetensors."""
    spec = manifest.get("constants") or {}
    entries = spec.get("entries") or {}
    if not entries:
        return {}
    from safetensors.numpy import load_file

    tensors = load_file(str(root / spec["file"]))
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


def _parse_backend(backend: str | Mapping[str, str] | None, stage: str, kind: str,
                   planned: str) -> str:
    if backend is None:
        return planned
    if isinstance(backend, str):
        if "=" not in backend:
            return backend
        backend = dict(part.split("=", 1) for part in backend.split(",") if part)
    return backend.get(stage) or backend.get(kind) or planned


def _make_stage(root: Path, name: str, entry: dict[str, Any], backend: str,
                options: Mapping[str, Any]) -> Any:
    """The stage for a manifest entry; a :class:`~comfyc.runtime.lora.RuntimeLoraStage`
    when the entry has runtime-mode LoRAs (its sessions are made when strengths are known)."""
    lora = entry.get("lora")
    if not lora:
        return _make_base_stage(root, name, entry, backend, options)
    from .lora import RuntimeLoraStage

    torch_backend = backend in ("torch", "torch-compile")
    if not (torch_backend or backend.startswith("ort")):
        raise BackendError(
            f"stage {name} has runtime-mode LoRAs, which are merged when an onnxruntime or "
            f"PyTorch session is made; the {backend} backend cannot replace its weights. Run "
            f"it with --backend {name}=ort-cuda (or ort-cpu), or fold the LoRA: compile with "
            f"constant strengths and without --lora-runtime")
    _check_stage_source(name, entry, backend)

    def create(overrides: dict[str, Any]) -> Stage:
        return _make_base_stage(root, name, entry, backend, options, overrides)

    return RuntimeLoraStage.from_index(root, name, entry["kind"], lora, create,
                                       source="torch" if torch_backend else "onnx",
                                       info=dict(entry.get("info") or {}))


def _check_stage_source(name: str, entry: dict[str, Any], backend: str) -> None:
    """Fail unless the artifact stored this stage for ``backend``."""
    if backend in ("torch", "torch-compile") and not entry.get("torch"):
        raise BackendError(f"stage {name} was not stored for the torch backend; compile "
                           f"with --backend {name}=torch to run it on PyTorch")
    if backend.startswith("ort") and not entry.get("file"):
        raise BackendError(f"stage {name} has no ONNX file (it was compiled for "
                           f"{entry.get('backend')}); run it with --backend {name}=torch")


def _make_base_stage(root: Path, name: str, entry: dict[str, Any], backend: str,
                     options: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
                     ) -> Stage:
    """The stage of a manifest entry, with ``overrides`` (merged LoRA weights) replacing
    stored weights by name."""
    kind = entry["kind"]
    info = dict(entry.get("info") or {})
    _check_stage_source(name, entry, backend)
    if backend in ("torch", "torch-compile"):
        from .backends.torch_artifact import load_torch_stage

        stage = load_torch_stage(root / entry["torch"], name, kind, info,
                                 compile=backend == "torch-compile")
        if overrides:
            _load_torch_overrides(stage, overrides)
        return stage
    if backend.startswith("ort"):
        from .backends import ort

        classes = {"unet": ort.OrtUNet, "text_encoder": ort.OrtTextEncoder,
                   "vae_decoder": ort.OrtVaeDecoder, "vae_encoder": ort.OrtVaeEncoder}
        options = dict(options)
        if entry.get("optimized"):
            # Already optimised offline (EXTENDED level, portable): don't redo that work.
            options.setdefault("optimization_level", "extended")
        if overrides:
            options["initializer_overrides"] = dict(overrides)
        return classes[kind](name, root / entry["file"], backend=backend, info=info,
                             **options)
    if backend == "trt":
        from .backends.trt import load_trt_stage  # type: ignore[import-not-found]

        return load_trt_stage(root, name, entry, info)  # pragma: no cover - GPU only
    raise BackendError(f"unknown backend {backend!r} for stage {name}; use ort-cpu, ort-cuda, "
                       f"ort-<provider>, torch, torch-compile or trt")


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
        **stage_options: Passed to every ONNX stage (threads, providers …).

    Raises:
        ArtifactError: The artifact is damaged or incompatible.
        BackendError: A backend cannot run here.
    """
    root = Path(path)
    manifest = read_manifest(root, verify=verify)
    plan = manifest.get("plan") or {}
    stages: dict[str, Any] = {}
    for name, entry in (manifest.get("stages") or {}).items():
        kind = entry.get("kind")
        if kind == "text_encoder_layers":
            layers = {}
            for layer, sub in (entry.get("layers") or {}).items():
                sub_name = sub.get("name", f"{name}_L{layer}")
                chosen = _parse_backend(backend, sub_name, "text_encoder",
                                        plan.get(sub_name, "ort-cpu"))
                layers[int(layer)] = _make_stage(root, sub_name, sub, chosen, stage_options)
            stages[name] = layers
            continue
        if entry.get("unused"):
            stages[name] = None
            continue
        chosen = _parse_backend(backend, name, kind, plan.get(name, "ort-cpu"))
        stages[name] = _make_stage(root, name, entry, chosen, stage_options)
    params = {p["name"]: ParamSpec.from_json(p) for p in manifest.get("params", [])}
    ops = [Op.from_json(op) for op in manifest["program"]["ops"]]
    meta = dict(manifest.get("run_meta") or {})
    meta["artifact"] = str(root)
    vocab = root / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
    if vocab.is_file():
        meta["vocab_path"] = str(vocab)
    constants = decode_constants(root, manifest)
    return Program(ops, stages, constants, params, meta)
