"""The ``trt`` backend: native TensorRT engines built from an artifact's ONNX stages.

Engines live inside the artifact, in ``engines/``, next to an index that records what each one
was built for::

    engines/index.json          {"format": 1, "engines": {STAGE: [ENTRY, ...]}}
    engines/unet_ab12.3f9c…plan  one serialized engine per (stage, key)
    engines/timing-….cache      TensorRT's timing cache, per GPU and TensorRT version

An entry's ``key`` (:class:`EngineKey`) is the GPU's name and compute capability, the TensorRT
version, the SHA-256 of the ONNX file, the precision, whether the engine is refittable and the
shape profile; an engine is used only where its key matches this machine. Engines are a cache:
they are not part of the manifest's content hashes, and ``comfyc build-engines`` rebuilds
(saying why) whenever the key does not match.

TensorRT is imported lazily (the ``tensorrt`` extra; it installs only where there is an NVIDIA
GPU); without it, asking for this backend fails with a message naming the package and the
extra. Stage calls take and return numpy arrays like every backend (the program's samplers are
numpy code); inside a call the inputs are copied to the GPU once, bound by address, and the
engine runs on a CUDA stream, optionally replayed from a CUDA graph when shapes are static.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import file_sha256
from .base import BackendError, Stage

__all__ = [
    "ENGINE_DIR",
    "EngineKey",
    "GpuIdentity",
    "TrtStage",
    "engine_entries",
    "find_engine",
    "gpu_identity",
    "load_trt_stage",
    "read_engine_index",
    "require_tensorrt",
    "tensorrt_version",
]

ENGINE_DIR = "engines"
INDEX_FORMAT = 1

_MISSING_TENSORRT = (
    "the trt backend needs NVIDIA TensorRT's Python package ('tensorrt'), which is not "
    "installed here. Install it with the tensorrt extra on a machine with an NVIDIA GPU and "
    "CUDA 12: pip install 'comfyc[tensorrt]' (it also brings polygraphy)")


def _backends_that_run_here() -> list[str]:
    """onnxruntime backends this machine has, GPU ones first (for the missing-TensorRT hint)."""
    try:
        import onnxruntime

        providers = set(onnxruntime.get_available_providers())
    except ImportError:
        return []
    # NOTE: only what can run here is suggested: ort-cuda or ort-trt on a CPU-only build would
    # fail just the same (issue #18).
    found = [name for name, provider in (("ort-trt", "TensorrtExecutionProvider"),
                                         ("ort-cuda", "CUDAExecutionProvider"))
             if provider in providers]
    return found + ["ort-cpu"]


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or a :class:`BackendError` saying how to get it."""
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError as exc:
        here = _backends_that_run_here()
        hint = (f". On this machine the stages run with --backend {' or '.join(here)}"
                if here else "")
        raise BackendError(_MISSING_TENSORRT + hint) from exc
    return tensorrt


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None (never raises)."""
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(tensorrt.__version__)


@dataclass(frozen=True)
class GpuIdentity:
    """What an engine is specific to: the GPU model and its compute capability."""

    name: str
    compute_capability: str


def gpu_identity(device: int = 0) -> GpuIdentity:
    """This machine's GPU (torch's CUDA runtime if present, else ``nvidia-smi``).

    Raises:
        BackendError: No NVIDIA GPU can be seen.
    """
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return GpuIdentity(torch.cuda.get_device_name(device), f"{major}.{minor}")
    except ImportError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        out = []
    if len(out) > device:
        name, _, cap = out[device].partition(",")
        return GpuIdentity(name.strip(), cap.strip())
    raise BackendError(
        "the trt backend needs an NVIDIA GPU, and none is visible here (torch.cuda is not "
        "available and nvidia-smi found no device). Run on a GPU machine, or pick a CPU "
        "backend: --backend ort-cpu")


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on; an engine runs only where all of it matches.

    Attributes:
        gpu: The GPU's name (``NVIDIA H100 80GB HBM3``).
        compute_capability: ``9.0``.
        tensorrt: TensorRT's version (engines are not portable across versions).
        onnx_sha256: The stage's ONNX file hash (a recompile means a new engine).
        fp16: Built with FP16 kernels allowed.
        refittable: Built with the REFIT flag (LoRA changes without a rebuild).
        profile: ``{input: [min, opt, max]}`` shapes, JSON-normalised.
    """

    gpu: str
    compute_capability: str
    tensorrt: str
    onnx_sha256: str
    fp16: bool
    refittable: bool
    profile: str

    @classmethod
    def make(cls, gpu: GpuIdentity, tensorrt: str, onnx_sha256: str, *, fp16: bool,
             refittable: bool, profile: Mapping[str, Sequence[Sequence[int]]]) -> EngineKey:
        """A key with the profile normalised (sorted inputs, plain int lists)."""
        norm = {name: [[int(d) for d in shape] for shape in shapes]
                for name, shapes in sorted(profile.items())}
        return cls(gpu.name, gpu.compute_capability, tensorrt, onnx_sha256, bool(fp16),
                   bool(refittable), json.dumps(norm, separators=(",", ":")))

    def digest(self) -> str:
        """16 hex digits naming the engine file."""
        body = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(body).hexdigest()[:16]

    def machine_matches(self, other: EngineKey) -> bool:
        """Same GPU model, compute capability and TensorRT version."""
        return (self.gpu, self.compute_capability, self.tensorrt) == (
            other.gpu, other.compute_capability, other.tensorrt)

    def differences(self, other: EngineKey) -> list[str]:
        """Why an engine built for ``other`` cannot serve this key, in words."""
        out = []
        if (self.gpu, self.compute_capability) != (other.gpu, other.compute_capability):
            out.append(f"it was built for {other.gpu} (compute {other.compute_capability}); "
                       f"this is {self.gpu} (compute {self.compute_capability})")
        if self.tensorrt != other.tensorrt:
            out.append(f"it was built with TensorRT {other.tensorrt}; this is "
                       f"TensorRT {self.tensorrt}")
        if self.onnx_sha256 != other.onnx_sha256:
            out.append("the stage's ONNX file changed since it was built")
        if self.fp16 != other.fp16:
            out.append(f"it was built {'with' if other.fp16 else 'without'} FP16")
        if self.refittable != other.refittable:
            out.append(f"it was built {'' if other.refittable else 'not '}refittable")
        if self.profile != other.profile:
            out.append(f"its shape profile {other.profile} differs from {self.profile}")
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineKey:
        """The key stored in the index."""
        return cls(**{f: data[f] for f in cls.__dataclass_fields__})


def read_engine_index(root: str | Path) -> dict[str, Any]:
    """``engines/index.json`` of an artifact (an empty index when there is none).

    Raises:
        BackendError: The index exists but is not readable JSON of the expected format.
    """
    path = Path(root) / ENGINE_DIR / "index.json"
    if not path.is_file():
        return {"format": INDEX_FORMAT, "engines": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendError(f"{path}: unreadable engine index ({exc}); delete the engines "
                           f"folder and run `comfyc build-engines {root}`") from exc
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        raise BackendError(f"{path}: engine index format {data.get('format')!r} is not "
                           f"{INDEX_FORMAT}; run `comfyc build-engines --force {root}`")
    data.setdefault("engines", {})
    return data


def engine_entries(index: Mapping[str, Any], stage: str) -> list[dict[str, Any]]:
    """The index entries of one stage."""
    return list(index.get("engines", {}).get(stage, []))


def find_engine(root: str | Path, stage: str, key: EngineKey
                ) -> tuple[Path | None, list[str]]:
    """The engine file built for exactly ``key``, or None and the reasons none fits.

    An entry whose file is missing or whose bytes do not hash to the recorded SHA-256 does
    not count (the reason says so).
    """
    root = Path(root)
    reasons: list[str] = []
    for entry in engine_entries(read_engine_index(root), stage):
        built = EngineKey.from_json(entry["key"])
        if built != key:
            reasons.extend(built_for for built_for in key.differences(built)
                           if built_for not in reasons)
            continue
        path = root / ENGINE_DIR / entry["file"]
        if Path(entry["file"]).name != entry["file"] or not path.is_file():
            reasons.append(f"its file {entry['file']} is missing")
            continue
        if file_sha256(path) != entry.get("sha256"):
            reasons.append(f"its file {entry['file']} does not match its recorded hash")
            continue
        return path, []
    if not reasons:
        reasons.append("no engine was built for it")
    return None, reasons


def stage_onnx_sha256(manifest_files: Mapping[str, str], root: Path, file: str) -> str:
    """The recorded hash of a stage's ONNX file (hashing the file when it is not recorded)."""
    return manifest_files.get(file) or file_sha256(root / file)


# ----------------------------------------------------------------------------- stages


class TrtStage(Stage):
    """One stage on a TensorRT engine (numpy in and out, like every backend).

    Args:
        name: The stage name.
        kind: ``unet``, ``text_encoder``, ``vae_decoder`` or ``vae_encoder``.
        engine_path: The serialized engine.
        info: Stage facts for the program.
        cuda_graph: Replay the engine from a CUDA graph when the input shapes repeat (static
            shapes; the first call at a shape captures).
        device: The CUDA device index.
    """

    backend = "trt"

    def __init__(self, name: str, kind: str, engine_path: str | Path,
                 info: Mapping[str, Any] | None = None, *, cuda_graph: bool = False,
                 device: int = 0) -> None:
        super().__init__(name, kind, dict(info or {}))
        trt = require_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise BackendError("the trt backend needs PyTorch with CUDA to hold GPU buffers "
                               "(torch.cuda.is_available() is False)")
        self._torch = torch
        self._trt = trt
        self.device = torch.device("cuda", device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise BackendError(f"stage {name}: TensorRT could not deserialize {engine_path} "
                               f"(built for another GPU or TensorRT version?); run "
                               f"`comfyc build-engines --force ARTIFACT`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.stream = torch.cuda.Stream(device=self.device)
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple[tuple[int, ...], ...], Any] = {}
        self._static: dict[tuple[tuple[int, ...], ...], tuple[list[Any], list[Any]]] = {}

    def _torch_dtype(self, name: str) -> Any:
        trt, torch = self._trt, self._torch
        table = {trt.float32: torch.float32, trt.float16: torch.float16,
                 trt.int32: torch.int32, trt.int64: torch.int64, trt.bool: torch.bool}
        if hasattr(trt, "bfloat16"):
            table[trt.bfloat16] = torch.bfloat16
        return table[self.engine.get_tensor_dtype(name)]

    def _bind(self, arrays: Sequence[np.ndarray]) -> tuple[list[Any], list[Any]]:
        torch = self._torch
        inputs = []
        for name, array in zip(self.input_names, arrays, strict=True):
            tensor = torch.from_numpy(np.ascontiguousarray(array)).to(
                self.device, self._torch_dtype(name), non_blocking=True)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
            inputs.append(tensor)
        outputs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            tensor = torch.empty(shape, dtype=self._torch_dtype(name), device=self.device)
            self.context.set_tensor_address(name, tensor.data_ptr())
            outputs.append(tensor)
        return inputs, outputs

    def forward(self, *arrays: np.ndarray, **extras: np.ndarray) -> Any:
        # NOTE: extra inputs (SDXL's y) follow the kind's own in the engine's input order.
        arrays = (*arrays, *(extras[name] for name in self.input_names[len(arrays):]
                             if name in extras))
        if self.kind == "text_encoder" and len(arrays) == 1 and len(self.input_names) == 2:
            # No textual-inversion vectors: zeros for the engine's embeds input.
            width = int(self.engine.get_tensor_shape(self.input_names[1])[-1])
            arrays = (arrays[0], np.zeros((*np.shape(arrays[0]), width), np.float32))
        if len(arrays) != len(self.input_names):
            raise BackendError(f"stage {self.name}: {len(arrays)} inputs given, the engine "
                               f"takes {len(self.input_names)} ({', '.join(self.input_names)})")
        torch = self._torch
        shapes = tuple(tuple(a.shape) for a in arrays)
        with torch.cuda.stream(self.stream):
            if self.cuda_graph and shapes in self._graphs:
                inputs, outputs = self._static[shapes]
                for tensor, array in zip(inputs, arrays, strict=True):
                    tensor.copy_(torch.from_numpy(np.ascontiguousarray(array)),
                                 non_blocking=True)
                self._graphs[shapes].replay()
            else:
                inputs, outputs = self._bind(arrays)
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise BackendError(f"stage {self.name}: TensorRT execution failed")
                if self.cuda_graph:
                    self._capture(shapes, inputs, outputs)
            results = [out.float().cpu().numpy() for out in outputs]
        self.stream.synchronize()
        if self.kind == "text_encoder":
            return results[0], results[1]
        return results[0]

    def _capture(self, shapes: tuple[tuple[int, ...], ...], inputs: list[Any],
                 outputs: list[Any]) -> None:
        """Record the engine's launch at these shapes into a CUDA graph (after a warm run)."""
        torch = self._torch
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)
        self._graphs[shapes] = graph
        self._static[shapes] = (inputs, outputs)

    def refit(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace named weights (ONNX initializer names) in place: LoRA without a rebuild.

        Raises:
            BackendError: The engine was not built refittable, or a name is not a weight.
        """
        trt = self._trt
        if not self.engine.refittable:
            raise BackendError(f"stage {self.name}: the engine was not built refittable; "
                               f"rebuild with `comfyc build-engines --refittable ARTIFACT`")
        refitter = trt.Refitter(self.engine, self._logger)
        known = set(refitter.get_all_weights())
        unknown = sorted(set(weights) - known)
        if unknown:
            raise BackendError(f"stage {self.name}: {unknown[:3]} are not refittable weights "
                               f"of the engine")
        keep = []
        for name, value in weights.items():
            array = np.ascontiguousarray(value)
            keep.append(array)  # TensorRT reads the memory during refit_cuda_engine().
            refitter.set_named_weights(name, trt.Weights(array))
        if not refitter.refit_cuda_engine():
            raise BackendError(f"stage {self.name}: TensorRT refit failed")
        self._graphs.clear()
        self._static.clear()


def load_trt_stage(root: str | Path, name: str, entry: Mapping[str, Any],
                   info: Mapping[str, Any], **options: Any) -> TrtStage:
    """The ``trt`` stage for an artifact's stage entry.

    Picks the newest engine in ``engines/index.json`` built for this GPU and TensorRT version
    from the stage's current ONNX file; none means the engines must be (re)built first.

    Raises:
        BackendError: TensorRT or a GPU is missing, or no engine fits this machine.
    """
    require_tensorrt()
    root = Path(root)
    gpu = gpu_identity()
    version = tensorrt_version() or ""
    from ..artifact import read_manifest

    onnx_file = str(entry.file)
    onnx_sha256 = stage_onnx_sha256(read_manifest(root, verify=False).files, root, onnx_file)
    entries = engine_entries(read_engine_index(root), name)
    reasons: list[str] = []
    for item in reversed(entries):
        built = EngineKey.from_json(item["key"])
        if (built.gpu, built.compute_capability, built.tensorrt) != (
                gpu.name, gpu.compute_capability, version):
            reasons.append(f"{item['file']}: built for {built.gpu} (compute "
                           f"{built.compute_capability}), TensorRT {built.tensorrt}")
            continue
        if built.onnx_sha256 != onnx_sha256:
            reasons.append(f"{item['file']}: built from an earlier version of {onnx_file}")
            continue
        path = root / ENGINE_DIR / item["file"]
        if Path(item["file"]).name != item["file"] or not path.is_file():
            reasons.append(f"{item['file']}: file missing")
            continue
        return TrtStage(name, entry.kind, path, info,
                        cuda_graph=bool(options.get("cuda_graph", False)))
    where = f"{gpu.name} (compute {gpu.compute_capability}), TensorRT {version}"
    detail = "; ".join(reasons) if reasons else "no engine has been built"
    raise BackendError(f"stage {name}: no TensorRT engine for {where} ({detail}). Build them "
                       f"with `comfyc build-engines {root}`")

