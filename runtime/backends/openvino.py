"""The OpenVINO backend (``ov-cpu``): the artifact's ONNX stages run by the OpenVINO runtime.

OpenVINO is the CPU and edge runtime people compare against (optimum-intel's OpenVINO
pipelines). It reads the same ``stages/*.onnx`` files (external data included) that the
onnxruntime backend runs, so one artifact serves both; the stage classes are the
onnxruntime ones (:mod:`comfyc.runtime.backends.ort`) over an :class:`OvSession`, which has
the session interface they use (``inputs``, ``output_names``, ``metadata``, ``run``).

Choices:

* Precision: OpenVINO's CPU plugin computes in bfloat16 by default on CPUs with
  AVX512-BF16 or AMX (the project's boxes have AVX512-BF16, the Intel one AMX too). That is
  an approximation, so ``ov-cpu`` asks for float32 (``INFERENCE_PRECISION_HINT=f32``) and
  agrees with the other backends; ``precision="bf16"`` (or ``fp16``) opts in to the faster
  one, measured with the same agreement checks in ``comfyc bench``.
* Threads: ``INFERENCE_NUM_THREADS`` from
  :func:`~comfyc.runtime.backends.threads.choose_threads` (the free cores), one stream,
  latency hint, no core pinning (the machine is shared).
* Offline-optimised stage files (``optimized`` in the manifest) hold onnxruntime's own
  fused operators, which OpenVINO cannot read; ``comfyc compile`` leaves large stages
  unoptimised for that reason, and a file OpenVINO cannot read is a clear error.

``openvino`` is imported inside functions: an optional extra (``pip install openvino``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .base import BackendError
from .ort import OrtTextEncoder, OrtUNet, OrtVaeDecoder, OrtVaeEncoder
from .threads import choose_threads

__all__ = ["OvSession", "PRECISIONS", "make_ov_stage", "require_openvino"]

#: ``precision`` option → OpenVINO's inference precision hint.
PRECISIONS = {None: "f32", "fp32": "f32", "bf16": "bf16", "fp16": "f16"}

_CLASSES = {"unet": OrtUNet, "text_encoder": OrtTextEncoder, "vae_decoder": OrtVaeDecoder,
            "vae_encoder": OrtVaeEncoder}

_INSTALL = "pip install openvino (the comfyc[openvino] extra)"


def require_openvino() -> Any:
    """Import openvino or explain how to get it."""
    try:
        import openvino
    except ImportError:
        raise BackendError(f"the ov-cpu backend needs the OpenVINO runtime, which is not "
                           f"installed; {_INSTALL}") from None
    return openvino


def _numpy_dtype(element_type: Any) -> Any:
    """The numpy dtype of an OpenVINO element type (``f32`` → float32 …)."""
    try:
        return np.dtype(element_type.to_dtype())
    except (AttributeError, TypeError) as exc:
        raise BackendError(f"OpenVINO input type {element_type} has no numpy dtype") from exc


def _port_name(port: Any) -> str:
    """The ONNX graph input/output name of a port (a port also carries the names of the
    tensors inside the graph that it is, such as ``/decoder/conv_out/Conv_output_0``)."""
    names = sorted(port.get_names())
    plain = [name for name in names if "/" not in name and "::" not in name]
    return (plain or names or [port.get_any_name()])[0]


class OvSession:
    """A compiled OpenVINO model with the interface of :class:`~.ort.OrtSession`.

    Args:
        path: The ``.onnx`` file (its ``.onnx.data`` beside it, if any).
        device: The OpenVINO device (``CPU``).
        intra_op_threads: Threads; 0/None: the free cores.
        precision: ``None``/``fp32`` (exact), ``bf16`` or ``fp16`` (see the module docs).
        cache_dir: OpenVINO's compiled-model cache folder (faster later loads), or None.

    Raises:
        BackendError: openvino is missing, the file is missing, or OpenVINO cannot read or
            compile it.
    """

    def __init__(self, path: str | Path, *, device: str = "CPU",
                 intra_op_threads: int | None = None, precision: str | None = None,
                 cache_dir: str | Path | None = None) -> None:
        ov = require_openvino()
        self.path = Path(path)
        if not self.path.is_file():
            raise BackendError(f"stage file {self.path} does not exist; expected the .onnx "
                               "file the compiler wrote (re-run comfyc compile)")
        if precision not in PRECISIONS:
            raise BackendError(f"ov-cpu precision {precision!r}: expected one of "
                               f"{', '.join(str(p) for p in PRECISIONS if p)}")
        self.threads = choose_threads(intra_op_threads)
        self.precision = PRECISIONS[precision]
        self.backend = f"ov-{device.lower()}"
        core = ov.Core()
        if device not in core.available_devices:
            raise BackendError(f"OpenVINO device {device} is not available here (this "
                               f"machine has {', '.join(core.available_devices)})")
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": self.threads,
                                  "INFERENCE_PRECISION_HINT": self.precision,
                                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                  "ENABLE_CPU_PINNING": False}
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)
        try:
            model = core.read_model(str(self.path))
            self.compiled = core.compile_model(model, device, config)
        except Exception as error:
            hint = (" (an onnxruntime-optimised file: recompile the artifact; large stages are "
                    "left portable)" if "com.microsoft" in str(error) else "")
            raise BackendError(f"OpenVINO could not load {self.path}: "
                               f"{str(error).strip().splitlines()[0]}{hint}") from error
        self.request = self.compiled.create_infer_request()
        self.inputs: dict[str, tuple[Any, list[int | str]]] = {}
        for port in self.compiled.inputs:
            shape = [int(d.get_length()) if d.is_static else "?" for d in port.partial_shape]
            self.inputs[_port_name(port)] = (_numpy_dtype(port.element_type), shape)
        self.output_names = [_port_name(port) for port in self.compiled.outputs]
        self.metadata: dict[str, str] = {}
        self.active_providers = [self.backend]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model: inputs cast to the declared dtypes, floating outputs as float32.

        Raises:
            BackendError: An input is missing, or OpenVINO failed.
        """
        missing = [name for name in self.inputs if name not in feeds]
        if missing:
            raise BackendError(f"{self.path.name} needs inputs {missing}; got {list(feeds)}")
        prepared = {name: np.ascontiguousarray(feeds[name], dtype=dtype)
                    for name, (dtype, _) in self.inputs.items()}
        try:
            self.request.infer(prepared)
        except Exception as error:
            shapes = {name: list(array.shape) for name, array in prepared.items()}
            raise BackendError(f"OpenVINO failed running {self.path.name} on {shapes}: "
                               f"{str(error).strip().splitlines()[0]}") from error
        outputs = []
        for port in self.compiled.outputs:
            # NOTE: the request reuses its output buffers: copy before the next call.
            data = self.request.get_tensor(port).data
            outputs.append(data.astype(np.float32) if np.issubdtype(data.dtype, np.floating)
                           else data.copy())
        return outputs

    def __repr__(self) -> str:
        return f"OvSession({self.path.name!r}, {self.precision}, {self.threads} threads)"


def make_ov_stage(name: str, kind: str, path: str | Path, *, info: dict[str, Any] | None = None,
                  **options: Any) -> Any:
    """A stage of ``kind`` running ``path`` on OpenVINO (options as :class:`OvSession`)."""
    session = OvSession(path, **options)
    return _CLASSES[kind](name, session, info=info)
