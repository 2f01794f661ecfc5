"""The onnxruntime backend: stages that run exported ONNX files on any execution provider.

Part of the lean runtime: it needs numpy and onnxruntime only, and imports onnxruntime inside
functions, so importing this module is cheap and works without it.

Two facts shape this module:

* onnxruntime falls back to the CPU *silently* (a warning at most) when a requested provider
  is not in the build or cannot start (missing CUDA/cuDNN libraries). :class:`OrtSession`
  checks ``session.get_providers()`` after creating a session and raises
  :class:`~comfyc.runtime.backends.base.BackendError` when any requested provider is missing.
* Weights can be replaced when a session is created (merged LoRA weights, without
  re-exporting): ``SessionOptions.add_external_initializers`` swaps initializers *before*
  onnxruntime optimizes the graph, so constant folding sees the new values. It only replaces
  initializers stored as external data (``NAME.onnx.data``; export with
  ``external_data=True``); ``add_initializer`` would be applied after folding and is silently
  lost for every folded weight (measured: a replaced ``to_q.weight`` changed nothing at
  ``ORT_ENABLE_BASIC``), so it is not used.

Stages take and return the arrays of :mod:`comfyc.runtime.backends.base`: inputs are cast to
the dtypes the model declares (float16 models), floating outputs come back as float32.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import BackendError, Stage
from .threads import choose_threads

__all__ = [
    "PROVIDER_ALIASES",
    "OptimizedGraphCache",
    "OrtSession",
    "OrtTextEncoder",
    "OrtControlNet",
    "OrtT2IAdapter",
    "OrtUNet",
    "OrtUpscale",
    "OrtVaeDecoder",
    "OrtVaeEncoder",
    "ProviderSpec",
    "available_providers",
    "backend_name",
    "providers_for_backend",
    "require_onnxruntime",
    "resolve_providers",
]

#: Short names accepted wherever a provider is named.
PROVIDER_ALIASES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}

#: A provider: its name (or alias), or ``(name, provider options)`` as onnxruntime takes it.
ProviderSpec = str | tuple[str, Mapping[str, Any]]

#: What to install for a provider that is not in the onnxruntime build.
_INSTALL_HINTS: dict[str, str] = {
    "CUDAExecutionProvider": (
        "pip install 'comfyc[gpu]' (onnxruntime-gpu; uninstall onnxruntime first: both provide "
        "the onnxruntime module) and CUDA 12 + cuDNN 9 libraries matching it"),
    "TensorrtExecutionProvider": (
        "pip install 'comfyc[gpu]' (onnxruntime-gpu, not together with onnxruntime) and the "
        "TensorRT libraries (pip install tensorrt, or the comfyc[tensorrt] extra)"),
}

_LEVELS = ("disable", "basic", "extended", "all")

#: CPU sessions of models up to this size (:func:`model_bytes`) use onnxruntime's memory
#: patterns (one block a run: the tiny model's stages are fastest so); larger ones do not
#: (see ``OrtSession._create``).
MEMORY_PATTERN_MAX_BYTES = 64 * 2**20

#: onnxruntime type strings → numpy dtypes (bfloat16 has no numpy dtype: unsupported).
_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
}

#: Inputs a stage kind may take beyond its own: SDXL's ADM vector ``y`` (SD3's and Flux's
#: pooled vector), Flux-dev's ``guidance``.
_EXTRA_INPUTS: dict[str, tuple[str, ...]] = {
    "unet": ("y", "guidance"), "controlnet": ("y",),
    # Textual-inversion vectors where input_ids is -1 (artifacts older than embeddings lack it).
    "text_encoder": ("embeds",),
}

#: Input and output names per stage kind (the exporter's ``STAGE_IO``; kept here too because
#: the runtime never imports the compiler).

_STAGE_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "unet": (("sample", "timestep", "encoder_hidden_states"), ("out_sample",)),
    "text_encoder": (("input_ids",), ("last_hidden_state", "pooled_output")),
    "vae_decoder": (("latent",), ("image",)),
    "upscale": (("image",), ("upscaled",)),
    # Outputs: every output of the file, in order (down_0 … mid; feature_0 …).
    "controlnet": (("sample", "hint", "timestep", "encoder_hidden_states"), ()),
    "t2i_adapter": (("hint",), ()),
    "vae_encoder": (("image",), ("latent",)),
}


# --------------------------------------------------------------------------- providers
def require_onnxruntime() -> Any:
    """Import onnxruntime or explain how to get it."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(
            "this stage runs on the onnxruntime backend, but onnxruntime is not installed; "
            "install it: pip install 'comfyc[cpu]' (or 'comfyc[gpu]' for CUDA, never both)"
        ) from None
    return onnxruntime


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build has (``get_available_providers``)."""
    return list(require_onnxruntime().get_available_providers())


def resolve_providers(providers: str | Sequence[ProviderSpec]) -> list[ProviderSpec]:
    """Expand aliases (``"cuda"`` → ``"CUDAExecutionProvider"``) in a provider list.

    Args:
        providers: One provider or a list; each a name, an alias, or ``(name, options)``.

    Returns:
        The list with full names, in the given order.

    Raises:
        BackendError: The list is empty.
    """
    items: Sequence[ProviderSpec] = [providers] if isinstance(providers, str) else providers
    if not items:
        raise BackendError("no execution provider was given; expected e.g. "
                           "['CPUExecutionProvider'] or ['CUDAExecutionProvider']")
    resolved: list[ProviderSpec] = []
    for item in items:
        if isinstance(item, tuple):
            resolved.append((PROVIDER_ALIASES.get(item[0].lower(), item[0]), dict(item[1])))
        else:
            resolved.append(PROVIDER_ALIASES.get(item.lower(), item))
    return resolved


def backend_name(providers: str | Sequence[ProviderSpec]) -> str:
    """The backend name for a provider list: ``ort-`` + the first provider's short name."""
    first = _provider_name(resolve_providers(providers)[0])
    for alias, name in PROVIDER_ALIASES.items():
        if name == first:
            return f"ort-{alias}"
    return "ort-" + first.removesuffix("ExecutionProvider").lower()


def providers_for_backend(backend: str) -> list[str]:
    """The providers a backend name asks for: ``ort-cpu``, ``ort-cuda``, ``ort-tensorrt`` ….

    ``ort`` alone means the CPU. TensorRT gets CUDA as its fallback for the nodes TensorRT
    does not take, as onnxruntime recommends. Other names are ``ort-`` + a provider's short
    name (``ort-openvino``, or any provider this build lists, e.g. ``ort-azure``).

    Raises:
        BackendError: The name is not ``ort`` or ``ort-<provider>``.
    """
    lowered = backend.lower()
    if lowered != "ort" and not lowered.startswith("ort-"):
        raise BackendError(f"{backend!r} is not an onnxruntime backend; expected ort-cpu, "
                           "ort-cuda, ort-tensorrt or ort-<provider>")
    short = lowered.removeprefix("ort").removeprefix("-") or "cpu"
    if short in ("tensorrt", "trt"):
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    if short in PROVIDER_ALIASES:
        return [PROVIDER_ALIASES[short]]
    for name in available_providers():
        if name.removesuffix("ExecutionProvider").lower() == short:
            return [name]
    known = ", ".join(f"ort-{alias}" for alias in PROVIDER_ALIASES)
    raise BackendError(
        f"unknown onnxruntime backend {backend!r}; expected one of {known}, or ort-<provider> "
        f"for a provider of this build ({', '.join(available_providers())})")


# --------------------------------------------------------------------------- the session
class OrtSession:
    """An ``onnxruntime.InferenceSession`` whose requested providers are checked to be active.

    Args:
        path: The ``.onnx`` file (its ``.onnx.data`` beside it, if any).
        providers: Execution providers in priority order (names, aliases or
            ``(name, options)``); every one of them must end up active.
        intra_op_threads: Threads inside one operator; 0 (or None): the cores other work
            leaves free (:func:`~comfyc.runtime.backends.threads.choose_threads`). Idle
            threads never spin (``session.intra_op.allow_spinning = 0``): on a shared or
            busy machine a spinning thread takes the core another one needs.
        inter_op_threads: Threads across operators (used only by parallel execution);
            0 means 1.
        optimization_level: ``disable``, ``basic``, ``extended`` or ``all``. Use ``disable``
            for files already optimized offline.
        initializer_overrides: Weights to use instead of the file's, by initializer name
            (torch parameter names for comfyc exports). Each must have the stored shape; the
            stored weights must be external data.
        weights_dtype: The dtype the stored weights have (``float16`` …); floating overrides
            are cast to it. None: used as given, and retried once as float16/float32 if
            onnxruntime reports a dtype mismatch.
        log_severity_level: onnxruntime's session log level (0 verbose … 3 errors, 4 fatal).
            Errors only by default: fp16 graphs on the CPU warn about every constant they
            cannot fold.
        io_binding: Run through ``session.io_binding()`` (inputs bound from host memory,
            outputs allocated on the device and copied back once), which saves onnxruntime's
            per-call output allocation and synchronisation on GPU providers. None: on when
            CUDA or TensorRT is active, off on the CPU (where it gains nothing).
        optimized_cache: A folder that keeps onnxruntime's optimised graph of a large model
            (over :data:`MEMORY_PATTERN_MAX_BYTES`) for later loads (:class:`OptimizedGraphCache`;
            CPU sessions at level ``all`` without overrides). None: no cache.

    Attributes:
        session: The onnxruntime session.
        path: The model file.
        providers: The requested provider names.
        active_providers: ``session.get_providers()``.
        backend: The backend name (``ort-cpu``, ``ort-cuda`` …).
        inputs: Per input name: ``(numpy dtype, shape)``; free dimensions are strings.
        output_names: The outputs, in order.
        metadata: The model's custom metadata (``comfyc.*`` keys from the exporter).

    Raises:
        BackendError: onnxruntime is missing; the file is missing or invalid; a provider is
            not in this build or did not start; an override does not fit.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: str | Sequence[ProviderSpec] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        optimization_level: str = "all",
        initializer_overrides: Mapping[str, np.ndarray] | None = None,
        weights_dtype: str | None = None,
        log_severity_level: int = 3,
        io_binding: bool | None = None,
        optimized_cache: str | Path | None = None,
    ) -> None:
        ort = require_onnxruntime()
        self.path = Path(path)
        self.optimized_cache = Path(optimized_cache) if optimized_cache is not None else None
        #: Where the session's graph came from: ``"file"``, or with a cache folder
        #: ``"cache"`` (an optimised graph kept by an earlier load) or ``"saved"`` (this load
        #: optimised the graph and kept it).
        self.graph_source = "file"
        if not self.path.is_file():
            raise BackendError(f"stage file {self.path} does not exist; expected the .onnx "
                               "file the compiler wrote (re-run comfyc compile)")
        if optimization_level not in _LEVELS:
            raise BackendError(f"unknown graph optimization level {optimization_level!r}; "
                               f"expected one of {', '.join(_LEVELS)}")
        specs = resolve_providers(providers)
        self.providers = [_provider_name(spec) for spec in specs]
        self.log_severity_level = log_severity_level
        self.backend = backend_name(specs)
        available = list(ort.get_available_providers())
        for name in self.providers:
            if name not in available:
                raise BackendError(
                    f"execution provider {name} was asked for, but this onnxruntime "
                    f"{ort.__version__} build only has {', '.join(available)}; "
                    f"install: {_INSTALL_HINTS.get(name, f'an onnxruntime build with {name}')}")
        overrides = dict(initializer_overrides or {})
        if weights_dtype is not None:
            overrides = _cast_floats(overrides, np.dtype(weights_dtype))
        try:
            self.session = self._create(ort, specs, intra_op_threads, inter_op_threads,
                                        optimization_level, overrides)
        except Exception as error:
            message = str(error)
            swapped = _swap_float_dtype(overrides) if weights_dtype is None else None
            if "data type does not match" not in message or swapped is None:
                raise self._session_error(error, overrides) from error
            try:
                self.session = self._create(ort, specs, intra_op_threads, inter_op_threads,
                                            optimization_level, swapped)
            except Exception as second:
                raise self._session_error(second, swapped) from second
        self.active_providers = list(self.session.get_providers())
        for name in self.providers:
            if name not in self.active_providers:
                raise BackendError(
                    f"execution provider {name} was asked for and is in this onnxruntime "
                    f"build, but the session for {self.path.name} runs on "
                    f"{', '.join(self.active_providers)}: onnxruntime could not start {name} "
                    "(its log above names the library it could not load, usually CUDA, cuDNN "
                    f"or TensorRT); install: "
                    f"{_INSTALL_HINTS.get(name, f'the libraries {name} needs')}")
        self.inputs: dict[str, tuple[Any, list[int | str]]] = {}
        for value in self.session.get_inputs():
            if value.type not in _DTYPES:
                raise BackendError(f"{self.path.name}: input {value.name} has type "
                                   f"{value.type}, which the runtime cannot feed from numpy")
            self.inputs[value.name] = (_DTYPES[value.type], list(value.shape))
        self.output_names = [value.name for value in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(self.providers)
        self.io_binding = bool(gpu) if io_binding is None else io_binding
        self._device = "cuda" if gpu else "cpu"

    def _create(self, ort: Any, specs: Sequence[ProviderSpec], intra_op_threads: int,
                inter_op_threads: int, level: str, overrides: Mapping[str, np.ndarray]) -> Any:
        """Create the InferenceSession."""
        self.threads = choose_threads(intra_op_threads)
        cpu_only = all(name == "CPUExecutionProvider" for name in self.providers)
        size = model_bytes(self.path) if cpu_only else 0

        def make_options(level: str) -> Any:
            enum = ort.GraphOptimizationLevel
            options = ort.SessionOptions()
            options.log_severity_level = self.log_severity_level
            options.graph_optimization_level = {
                "disable": enum.ORT_DISABLE_ALL, "basic": enum.ORT_ENABLE_BASIC,
                "extended": enum.ORT_ENABLE_EXTENDED, "all": enum.ORT_ENABLE_ALL}[level]
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = max(1, inter_op_threads or 1)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
            # NOTE: CPU-only sessions allocate from one CPU memory arena shared by the process's
            # sessions (shared_cpu_arena), without memory patterns unless the model is small.
            # Measured on the SD1.5-size UNet and VAE decoder at 512x512 (2 threads, an Intel
            # Xeon VM where a page fault is dear), bench/RESULTS.md:
            # * no arena (comfyc before): each run takes its activations from the system again
            #   and faults their pages in: UNet 7.9-8.5 s a call, 17.5-18 s the first;
            # * an arena per session: UNet 7.3 s, 11.5 s the first, but the VAE decoder's one run
            #   grows an arena of its own (24 s against 9.9 s) while the UNet's holds its memory;
            # * with memory patterns too (onnxruntime's default), the UNet's second run
            #   allocates one block for the recorded pattern: a 31 s call and 2.2 GB more peak;
            # * one shared arena that grows by what is asked, no patterns: UNet 7.1-7.4 s (11.4
            #   the first), VAE 9.1 s, and the lowest peak (6.3 GB against 6.9 without arena).
            # The tiny model's stages are fastest with patterns (one block a run). GPU sessions
            # keep onnxruntime's defaults for their device and no CPU arena (not re-measured).
            options.enable_cpu_mem_arena = cpu_only
            if cpu_only:
                options.enable_mem_pattern = size <= MEMORY_PATTERN_MAX_BYTES
                if shared_cpu_arena(ort):
                    options.add_session_config_entry("session.use_env_allocators", "1")
            return options

        options = make_options(level)
        # NOTE: the OrtValues only borrow the numpy buffers and SessionOptions only borrows
        # the OrtValues (a temporary here crashes onnxruntime); keep both alive until the
        # session exists. onnxruntime copies the data into the graph, so both can go after.
        arrays = [np.ascontiguousarray(array) for array in overrides.values()]
        values = [ort.OrtValue.ortvalue_from_numpy(array) for array in arrays]
        if overrides:
            options.add_external_initializers(list(overrides), values)
        names = [spec if isinstance(spec, str) else spec[0] for spec in specs]
        provider_options = [{} if isinstance(spec, str) else dict(spec[1]) for spec in specs]
        cache = None
        if (self.optimized_cache is not None and cpu_only and not overrides and level == "all"
                and size > MEMORY_PATTERN_MAX_BYTES):
            try:
                cache = OptimizedGraphCache(self.optimized_cache, self.path, ort.__version__)
            except OSError:  # the model's files cannot be listed: load them as usual
                cache = None
        if cache is not None:
            session = cache.session(ort, options, lambda: make_options("disable"), names,
                                    provider_options)
            if session is not None:
                self.graph_source = cache.source
                return session
        session = ort.InferenceSession(str(self.path), options, providers=names,
                                       provider_options=provider_options)
        del values, arrays
        return session

    def _session_error(self, error: Exception, overrides: Mapping[str, np.ndarray]
                       ) -> BackendError:
        """Explain why onnxruntime could not create the session."""
        message = str(error)
        if "non-external initializer" in message:
            return BackendError(
                f"{self.path.name} stores its weights inside the .onnx file, but initializer "
                "overrides can only replace weights stored as external data; re-export the "
                "stage with external_data=True (it writes NAME.onnx.data)")
        if "Failed to find existing initializer" in message:
            name = message.rsplit("name", 1)[-1].strip(" .")
            return BackendError(
                f"initializer override {name!r} names no weight of {self.path.name}; expected "
                "a torch parameter name such as 'conv_in.weight' (onnx_export."
                "initializer_names lists them)")
        if "Replacement tensor" in message and overrides:  # its dtype or its dimensions
            shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}"
                               for k, v in list(overrides.items())[:5])
            return BackendError(
                f"an initializer override does not fit {self.path.name} ({message.strip()}); "
                f"the overrides were: {shapes}{' …' if len(overrides) > 5 else ''}; give "
                "each the stored shape and dtype (weights_dtype=...)")
        return BackendError(f"onnxruntime could not load {self.path}: {message.strip()}")

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model: inputs cast to the declared dtypes, floating outputs as float32.

        Raises:
            BackendError: An input is missing or has a shape the model was not exported for,
                or onnxruntime failed.
        """
        missing = [name for name in self.inputs if name not in feeds]
        if missing:
            raise BackendError(f"{self.path.name} needs inputs {missing}; got {list(feeds)}")
        prepared: dict[str, np.ndarray] = {}
        for name, (dtype, shape) in self.inputs.items():
            array = np.ascontiguousarray(feeds[name], dtype=dtype)
            if len(shape) != array.ndim or any(isinstance(dim, int) and dim != size
                                               for dim, size in zip(shape, array.shape)):
                raise BackendError(
                    f"{self.path.name}: input {name} has shape {list(array.shape)}, but the "
                    f"model was exported for {shape}; compile the workflow with `comfyc "
                    "compile --dynamic` to take any size and batch (or at this shape)")
            prepared[name] = array
        try:
            if self.io_binding:
                outputs = self._run_bound(prepared)
            else:
                outputs = self.session.run(self.output_names, prepared)
        except Exception as error:
            shapes = {name: list(array.shape) for name, array in prepared.items()}
            raise BackendError(f"onnxruntime failed running {self.path.name} on {shapes}: "
                               f"{str(error).strip()}") from error
        return [out.astype(np.float32, copy=False) if np.issubdtype(out.dtype, np.floating)
                else out for out in outputs]

    def run_prepared(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """:meth:`run` for feeds a caller has already passed through :meth:`run` once: every
        input present, C-contiguous, in its declared dtype and an accepted shape. It skips
        the per-input checks and conversions (tens of microseconds a call, which matter
        between the few-millisecond calls of a small UNet); floating outputs are returned
        as the graph declares them.

        Raises:
            BackendError: onnxruntime failed.
        """
        if self.io_binding:
            return self.run(feeds)
        try:
            return self.session.run(self.output_names, feeds)
        except Exception as error:
            shapes = {name: list(np.shape(array)) for name, array in feeds.items()}
            raise BackendError(f"onnxruntime failed running {self.path.name} on {shapes}: "
                               f"{str(error).strip()}") from error

    def _run_bound(self, prepared: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One run through IO binding: host inputs, outputs on the provider's device."""
        binding = self.session.io_binding()
        for name, array in prepared.items():
            binding.bind_cpu_input(name, array)
        for name in self.output_names:
            binding.bind_output(name, self._device)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def __repr__(self) -> str:
        return f"OrtSession({self.path.name!r}, {self.active_providers})"


# --------------------------------------------------------------------------- stages
class _OrtStage(Stage):
    """A stage over one ONNX file; ``model`` is a path or a ready :class:`OrtSession`.

    The providers are ``providers`` when given, else those of the ``backend`` name
    (:func:`providers_for_backend`; ``ort-cpu`` when neither is given).
    """

    backend = "ort"

    def __init__(
        self,
        name: str,
        kind: str,
        model: str | Path | OrtSession,
        *,
        providers: str | Sequence[ProviderSpec] | None = None,
        backend: str | None = None,
        intra_op_threads: int = 0,
        optimization_level: str = "all",
        initializer_overrides: Mapping[str, np.ndarray] | None = None,
        weights_dtype: str | None = None,
        log_severity_level: int = 3,
        inter_op_threads: int = 0,
        io_binding: bool | None = None,
        info: dict[str, Any] | None = None,
        optimized_cache: str | Path | None = None,
    ) -> None:
        if isinstance(model, OrtSession) or hasattr(model, "run") and hasattr(model, "inputs"):
            # NOTE: any session with OrtSession's interface (the OpenVINO backend's too).
            session = model
        else:
            if providers is None:
                providers = providers_for_backend(backend or "ort-cpu")
            session = OrtSession(model, providers=providers, intra_op_threads=intra_op_threads,
                                 optimization_level=optimization_level,
                                 initializer_overrides=initializer_overrides,
                                 weights_dtype=weights_dtype,
                                 log_severity_level=log_severity_level,
                                 inter_op_threads=inter_op_threads, io_binding=io_binding,
                                 optimized_cache=optimized_cache)
        facts = {key.removeprefix("comfyc."): value for key, value in session.metadata.items()
                 if key.startswith("comfyc.")}
        super().__init__(name, kind, {**facts, **(info or {})})
        self.session = session
        self.backend = session.backend
        stored = facts.get("stage")
        if stored is not None and stored != kind:
            raise BackendError(f"{session.path.name} was exported as a {stored} stage, but it "
                               f"is loaded as the {kind} stage {name!r}")
        inputs, outputs = _STAGE_IO[kind]
        extra = [name for name in session.inputs if name not in inputs]
        allowed = set(_EXTRA_INPUTS.get(kind, ()))
        if kind == "unet":  # ControlNet / T2I-Adapter inputs (comfyc.runtime.control).
            allowed |= {name for name in extra if name.startswith("control_")}
        if (set(inputs) - set(session.inputs) or set(extra) - allowed
                or set(outputs) - set(session.output_names)):
            raise BackendError(
                f"{session.path.name} has inputs {list(session.inputs)} and outputs "
                f"{session.output_names}; a {kind} stage needs inputs {list(inputs)} (and may "
                f"take {list(_EXTRA_INPUTS.get(kind, ())) or 'nothing more'}) and outputs "
                f"{list(outputs)} (export it with comfyc's onnx_export)")
        #: Inputs beyond the kind's own (SDXL's ``y``), in the file's order.
        self.extra_inputs = tuple(extra)
        self._outputs = [session.output_names.index(out) for out in outputs]

    def _run(self, *arrays: np.ndarray, **extras: np.ndarray) -> list[np.ndarray]:
        """Feed ``arrays`` by the kind's input names (and ``extras`` by theirs); outputs in
        the kind's order."""
        names = _STAGE_IO[self.kind][0]
        feed = dict(zip(names, arrays, strict=True))
        for name in self.extra_inputs:
            if name not in extras:
                if name.startswith("control_"):  # No (active) control on these rows.
                    feed[name] = self._zero_control(name, arrays[0])
                    continue
                raise BackendError(f"stage {self.name!r} needs input {name!r}; the program "
                                   f"gave none")
            feed[name] = np.ascontiguousarray(extras[name], dtype=np.float32)
        outputs = self.session.run(feed)
        if not _STAGE_IO[self.kind][1]:  # A free output list: every output, in order.
            return list(outputs)
        return [outputs[i] for i in self._outputs]


    def _zero_control(self, name: str, sample: np.ndarray) -> np.ndarray:
        """Zeros for a control input of a UNet exported with them (``info["control_inputs"]``:
        channels and how often the size is halved, rounding up)."""
        spec = (self.info.get("control_inputs") or {}).get(name)
        if spec is None:
            raise BackendError(f"stage {self.name!r} needs input {name!r}; the program gave "
                               f"none and the stage does not say its shape")
        channels, halvings = int(spec[0]), int(spec[1])
        height, width = sample.shape[2], sample.shape[3]
        for _ in range(halvings):
            height, width = -(-height // 2), -(-width // 2)
        return np.zeros((sample.shape[0], channels, height, width), dtype=np.float32)


class OrtUNet(_OrtStage):
    """``unet(sample, timestep, context) -> eps|v`` from an exported ``unet`` ONNX file.

    Args:
        name: The stage name in the program.
        model: The ``.onnx`` path or an :class:`OrtSession`.
        **options: ``providers`` or ``backend``, ``intra_op_threads``, ``inter_op_threads``,
            ``optimization_level``, ``io_binding``, ``initializer_overrides``,
            ``weights_dtype``, ``log_severity_level`` (see :class:`OrtSession`) and ``info``
            (merged over the file's ``comfyc.*`` metadata).
    """

    def __init__(self, name: str, model: str | Path | OrtSession, **options: Any) -> None:
        super().__init__(name, "unet", model, **options)

    def forward(self, sample: np.ndarray, timestep: np.ndarray, context: np.ndarray,
                **extras: np.ndarray) -> np.ndarray:
        batch = sample.shape[0]
        steps = np.asarray(timestep, dtype=np.float32).reshape(-1)
        if steps.size == 1:
            steps = np.full((batch,), steps[0], dtype=np.float32)  # diffusers expands it too
        elif steps.size != batch:
            raise BackendError(f"unet stage {self.name!r} got {steps.size} timesteps for a batch "
                               f"of {batch}; expected one per sample or one for all")
        return self._run(sample, steps, context, **extras)[0]


class OrtTextEncoder(_OrtStage):
    """``text_encoder(input_ids[, embeds]) -> (hidden, pooled)`` at the CLIP layer fixed at
    export.

    ``info["clip_layer"]`` is that layer (from the file's metadata). ``embeds`` holds
    textual-inversion vectors used where ``input_ids`` is -1 (zeros are fed when there are
    none); a stage exported before comfyc applied embeddings has no such input.

    Args:
        name: The stage name in the program.
        model: The ``.onnx`` path or an :class:`OrtSession`.
        **options: As for :class:`OrtUNet`.
    """

    def __init__(self, name: str, model: str | Path | OrtSession, **options: Any) -> None:
        super().__init__(name, "text_encoder", model, **options)

    def forward(self, input_ids: np.ndarray, embeds: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(input_ids, dtype=np.int64)
        extras = {}
        if "embeds" in self.extra_inputs:
            extras["embeds"] = (embeds if embeds is not None else
                                np.zeros((*ids.shape, self._width()), np.float32))
        elif embeds is not None:
            raise BackendError(
                f"stage {self.name!r} was compiled before comfyc applied textual-inversion "
                f"embeddings (embedding:NAME); compile the workflow again with this comfyc")
        hidden, pooled = self._run(ids, **extras)
        return hidden, pooled

    def _width(self) -> int:
        """The hidden width (the ``embeds`` input's last dimension)."""
        shape = self.session.inputs["embeds"][1]
        if not shape or not isinstance(shape[-1], int):
            raise BackendError(f"stage {self.name!r}: its embeds input has no fixed width "
                               f"({shape}); export it with comfyc's onnx_export")
        return shape[-1]


class OrtVaeDecoder(_OrtStage):
    """``vae_decoder(latent) -> image in [-1, 1]`` (raw latents, ``post_quant_conv`` inside).

    Args:
        name: The stage name in the program.
        model: The ``.onnx`` path or an :class:`OrtSession`.
        **options: As for :class:`OrtUNet`.
    """

    def __init__(self, name: str, model: str | Path | OrtSession, **options: Any) -> None:
        super().__init__(name, "vae_decoder", model, **options)

    def forward(self, latent: np.ndarray) -> np.ndarray:
        return self._run(latent)[0]


class OrtVaeEncoder(_OrtStage):
    """``vae_encoder(image in [-1, 1]) -> latent mean`` (raw; ``quant_conv`` inside).

    Args:
        name: The stage name in the program.
        model: The ``.onnx`` path or an :class:`OrtSession`.
        **options: As for :class:`OrtUNet`.
    """

    def __init__(self, name: str, model: str | Path | OrtSession, **options: Any) -> None:
        super().__init__(name, "vae_encoder", model, **options)

    def forward(self, image: np.ndarray) -> np.ndarray:
        return self._run(image)[0]


class OrtUpscale(_OrtStage):
    """``upscale(image [1,C,h,w]) -> [1,C',h·s,w·s]``: an upscale model's bare network
    (dynamic height and width; the caller pads and clamps).

    Args:
        name: The stage name in the program.
        model: The ``.onnx`` path or an :class:`OrtSession`.
        **options: As for :class:`OrtUNet`.
    """

    def __init__(self, name: str, model: str | Path | OrtSession, **options: Any) -> None:
        super().__init__(name, "upscale", model, **options)

    def forward(self, image: np.ndarray) -> np.ndarray:
        return self._run(np.asarray(image, dtype=np.float32))[0]


class OrtControlNet(_OrtStage):
    """``controlnet(sample, hint, timestep, context[, y]) -> (down_0, …, mid)``.

    Args:
        name: The stage name in the program.
        model: The ``.onnx`` path or an :class:`OrtSession`.
        **options: As for :class:`OrtUNet`.
    """

    def __init__(self, name: str, model: str | Path | OrtSession, **options: Any) -> None:
        super().__init__(name, "controlnet", model, **options)

    def forward(self, sample: np.ndarray, hint: np.ndarray, timestep: np.ndarray,
                context: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        extras = {} if y is None else {"y": y}
        steps = np.asarray(timestep, dtype=np.float32).reshape(-1)
        if steps.size == 1:
            steps = np.full((sample.shape[0],), steps[0], dtype=np.float32)
        return tuple(self._run(sample, np.asarray(hint, dtype=np.float32), steps, context,
                               **extras))


class OrtT2IAdapter(_OrtStage):
    """``t2i_adapter(hint) -> (feature_0, …)``.

    Args:
        name: The stage name in the program.
        model: The ``.onnx`` path or an :class:`OrtSession`.
        **options: As for :class:`OrtUNet`.
    """

    def __init__(self, name: str, model: str | Path | OrtSession, **options: Any) -> None:
        super().__init__(name, "t2i_adapter", model, **options)

    def forward(self, hint: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self._run(np.asarray(hint, dtype=np.float32)))


# --------------------------------------------------------------------------- helpers
_ARENA_LOCK = threading.Lock()
_SHARED_ARENA: list[bool] = []  # [registered?] once tried


def shared_cpu_arena(ort: Any) -> bool:
    """Register the process's shared CPU memory arena with onnxruntime (once); True when
    CPU sessions can use it (``session.use_env_allocators``).

    The arena grows by what is asked (``arena_extend_strategy`` 1, kSameAsRequested) rather
    than by doubling, and keeps what it holds for the next run: the pages of a stage's
    activations are faulted in once per process, and a stage that runs after another (the
    VAE decoder after the UNet) reuses the memory the other freed.
    """
    with _ARENA_LOCK:
        if not _SHARED_ARENA:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                         ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(
                    info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
                _SHARED_ARENA.append(True)
            except Exception:  # an onnxruntime without environment allocators
                _SHARED_ARENA.append(False)
        return _SHARED_ARENA[0]


class OptimizedGraphCache:
    """onnxruntime's optimised CPU graph of one large model, kept in a folder so that later
    loads skip the graph optimisation (``comfyc run --ort-cache``).

    Making a session of an SD1.5-size UNet (1.6 GB of float16-stored weights behind ``Cast``
    nodes) spends most of its time folding those casts and optimising the graph: 48 s on a
    2-core VM, against 1.7-2.3 s for the same session from the optimised file onnxruntime
    writes (float32 weights in external data, the machine's NCHWc layouts; the same outputs
    bit for bit; ``bench/RESULTS.md``). That file is tied to this onnxruntime version and
    this CPU, so the entry's key holds both, with the source files' sizes and modification
    times; the files of an entry are written to a temporary folder and renamed into place
    complete. A folder that cannot be written, or an entry that does not load, only costs
    the saving: the session is made from the model file as without a cache.
    """

    def __init__(self, folder: Path, model: Path, ort_version: str) -> None:
        import hashlib
        import json
        import platform

        facts: dict[str, Any] = {"onnxruntime": ort_version, "machine": platform.machine(),
                                 "cpu": _cpu_flags(), "files": {}}
        for path in model_files(model):
            stat = path.stat()
            facts["files"][path.name] = [stat.st_size, stat.st_mtime_ns]
        digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
        self.facts = facts
        self.source_model = model
        self.entry = folder / f"{model.stem}-{digest}"
        self.model = self.entry / "model.onnx"
        #: ``"cache"`` (made from the kept graph) or ``"saved"`` (optimised and kept now).
        self.source = "file"

    def session(self, ort: Any, options: Any, kept_options: Callable[[], Any],
                providers: list[str], provider_options: list[dict[str, Any]]) -> Any:
        """The session from the kept graph (made with ``kept_options()``: the session's
        options at level ``disable``), or a fresh one from ``options`` that keeps its graph;
        None when the model file should be loaded as usual (the graph could not be
        written)."""
        import json
        import shutil

        if (self.entry / "complete").is_file():
            try:
                session = ort.InferenceSession(str(self.model), kept_options(),
                                               providers=providers,
                                               provider_options=provider_options)
            except Exception:  # noqa: BLE001 - a damaged entry is made again below
                shutil.rmtree(self.entry, ignore_errors=True)
            else:
                self.source = "cache"
                return session
        tmp = self.entry.with_name(f".{self.entry.name}.tmp-{os.getpid()}-"
                                   f"{threading.get_ident()}")
        try:
            tmp.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        options.optimized_model_filepath = str(tmp / "model.onnx")
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "model.onnx.data")
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            session = ort.InferenceSession(str(self.source_model), options, providers=providers,
                                           provider_options=provider_options)
        except Exception:  # noqa: BLE001 - e.g. a full disk; the caller loads as usual
            shutil.rmtree(tmp, ignore_errors=True)
            options.optimized_model_filepath = ""  # (the caller reuses the options)
            return None
        try:
            (tmp / "complete").write_text(json.dumps(self.facts, indent=1))
            if self.entry.exists():  # another load's complete entry wins; a partial one goes
                if (self.entry / "complete").is_file():
                    raise FileExistsError(self.entry)
                shutil.rmtree(self.entry)
            os.replace(tmp, self.entry)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            self.source = "saved"
        return session


def _cpu_flags() -> str:
    """The CPU's model name and feature flags (an optimised graph is tied to them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor()
    lines = [line for line in text.splitlines()
             if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def model_files(path: Path) -> list[Path]:
    """The model file ``path`` and the external data files beside it that go with it:
    ``NAME.*.data`` for a file ``NAME.*`` (``NAME.onnx.data``; a step graph ``NAME.step.onnx``
    reads its UNet's).

    Raises:
        OSError: The folder cannot be listed.
    """
    base = path.name.split(".", 1)[0]
    data = sorted(Path(entry.path) for entry in os.scandir(path.parent)
                  if entry.name.startswith(base + ".") and entry.name.endswith(".data"))
    return [path, *data]


def model_bytes(path: Path) -> int:
    """The bytes of :func:`model_files`; 0 for a file that cannot be read."""
    try:
        return sum(file.stat().st_size for file in model_files(path))
    except OSError:
        return 0


def _provider_name(spec: ProviderSpec) -> str:
    """The provider name of a spec."""
    return spec if isinstance(spec, str) else spec[0]


def _cast_floats(arrays: Mapping[str, np.ndarray], dtype: np.dtype[Any]
                 ) -> dict[str, np.ndarray]:
    """Floating arrays cast to ``dtype``; others unchanged."""
    return {name: np.asarray(array).astype(dtype, copy=False)
            if np.issubdtype(np.asarray(array).dtype, np.floating) else np.asarray(array)
            for name, array in arrays.items()}


def _swap_float_dtype(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """float32 overrides as float16 or the reverse; None when that is not one simple swap."""
    dtypes = {np.asarray(array).dtype for array in arrays.values()}
    if dtypes == {np.dtype(np.float32)}:
        return _cast_floats(arrays, np.dtype(np.float16))
    if dtypes == {np.dtype(np.float16)}:
        return _cast_floats(arrays, np.dtype(np.float32))
    return None
