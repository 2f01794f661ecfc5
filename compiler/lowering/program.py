"""Lowering: an IR graph → a runtime :class:`~comfyc.runtime.program.Program`.

Every node becomes ops: by default one op of its own class with its inputs encoded (links →
``$ref``, params → ``$param``, missing widgets → their defaults, a precomputed schedule →
``$const``); a class whose compile rule has ``lower`` (:mod:`comfyc.compiler.nodes`) becomes
what that rule emits — model loaders become stages plus ``LoadCheckpoint`` / ``LoadVAE`` /
``ApplyLoRA`` ops that build MODEL/CLIP/VAE handles from them. Model inputs must be constants:
a checkpoint is chosen when the program is made.

LoRA loaders become ``ApplyLoRA`` ops. A LoRA folded at compile time (``lora_mode`` merged)
gives new stages with merged weights. A runtime-mode LoRA (its strength is a param, or
``--lora-runtime``) gives a stage with LoRA *slots* (:class:`TorchLoraStage`: the base weights
plus the factors of every runtime-mode LoRA from the checkpoint up to this loader), and the op
passes one strength per slot (``unet_strengths`` / ``text_strengths``, params or literals);
the stage makes (and caches) a merged copy per distinct strengths.

This module builds in-memory programs over PyTorch stages (``comfyc run WORKFLOW``); the
artifact writer reuses :func:`encode_node_args` and the op list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from comfyc.runtime.lora import LoraVariants

from ..catalog import Catalog, default_catalog
from ..errors import SchemaError, WorkflowError, WorkflowErrors
from ..ir.core import MISSING, Graph, Node, Param, Value
from ..nodes import compile_rule
from ..nodes.weights import Weights, is_constant, trace_weights
from ..passes.validate import reachable_nodes

__all__ = ["lower_to_program", "encode_node_args", "lower_node", "check_runnable",
           "TorchModelCache", "TorchLoraStage", "ModelDesc", "Lowering"]


def encode_literal(value: Any) -> Any:
    """Encode a literal so the program never mistakes it for a reference."""
    if isinstance(value, (dict, list)):
        return {"$lit": value}
    return value


def encode_value(value: Any) -> Any:
    """An input as a program argument: a ``$ref``, a ``$param`` or an encoded literal."""
    if isinstance(value, Value):
        return {"$ref": [value.producer.id, value.index]}
    if isinstance(value, Param):
        return {"$param": value.name}
    return encode_literal(value)


def encode_node_args(node: Node, catalog: Catalog) -> dict[str, Any]:
    """A node's inputs as program arguments, with defaults for missing widget inputs."""
    schema = catalog.get(node.class_type)
    args: dict[str, Any] = {}
    for name, value in node.inputs.items():
        if schema is not None and schema.input(name) is None:
            continue  # Undeclared inputs are ignored, as ComfyUI does.
        if isinstance(value, (Value, Param)):
            args[name] = encode_value(value)
        else:
            args[name] = encode_literal(_coerce(schema, name, value))
    if schema is not None:
        for spec in schema.inputs:
            if spec.name not in args and spec.is_widget:
                default = spec.effective_default()
                if default is not MISSING:
                    args[spec.name] = encode_literal(default)
    return args


def _coerce(schema: Any, name: str, value: Any) -> Any:
    from ..passes.validate import coerce_literal

    spec = schema.input(name) if schema is not None else None
    if spec is None:
        return value
    try:
        return coerce_literal(spec, value)
    except (TypeError, ValueError):
        return value


def lower_node(node: Node, catalog: Catalog) -> Any:
    """The default lowering: one op of the node's class (a precomputed schedule rides along
    as the ``sigmas`` argument)."""
    from comfyc.runtime.program import Op

    args = encode_node_args(node, catalog)
    if node.facts.sigmas:
        args["sigmas"] = {"$const": node.facts.sigmas}
    return Op(node.id, node.class_type, args, node.title)


def check_runnable(nodes: list[Node], catalog: Catalog) -> None:
    """Fail before any work starts when a node cannot run, naming every such node.

    Raises:
        WorkflowErrors: One error per node comfyc cannot run, with the registry's reason.
    """
    errors: list[WorkflowError] = []
    for node in nodes:
        reason = catalog.unrunnable_reason(node.class_type)
        if reason is None:
            continue
        errors.append(SchemaError(
            f"{node.display()} cannot run: {reason}", node.loc, kind="unsupported_node",
            help="remove the node, or run this workflow in ComfyUI"))
    if errors:
        raise WorkflowErrors(errors)


@dataclass(frozen=True)
class ModelDesc:
    """What a MODEL or CLIP value is at compile time: a checkpoint plus LoRAs.

    Attributes:
        checkpoint: The checkpoint name.
        loras: LoRAs folded at compile time, in order, as ``(name, strength_model,
            strength_clip)``; a MODEL's have strength_clip 0, a CLIP's strength_model 0.
        runtime: Runtime-mode LoRAs by name, in order (merged when a session is made).
        strengths: One encoded program argument per runtime-mode LoRA (a ``$param``, a
            ``$ref`` or a literal): its strength for this side.
    """

    checkpoint: str
    loras: tuple[tuple[str, float, float], ...] = ()
    runtime: tuple[str, ...] = ()
    strengths: tuple[Any, ...] = ()

    def key(self) -> str:
        """A short hash naming the weights: the strengths of runtime-mode LoRAs are not in
        it (they are chosen at run time), so every strength shares one stage."""
        parts: tuple[Any, ...] = (self.checkpoint, self.loras)
        if self.runtime:
            parts = (*parts, self.runtime)
        return hashlib.sha1(repr(parts).encode()).hexdigest()[:10]

    @classmethod
    def of(cls, weights: Weights, side: str) -> ModelDesc:
        """The desc of traced weights; ``side`` is ``model`` or ``clip`` (which strength a
        folded LoRA contributes)."""
        loras: list[tuple[str, float, float]] = []
        runtime: list[str] = []
        strengths: list[Any] = []
        for lora in weights.loras:
            if lora.mode == "runtime" or not is_constant(lora.strength):
                runtime.append(str(lora.name))
                strengths.append(_encode_strength(lora.strength))
            else:
                value = float(lora.strength)
                loras.append((str(lora.name), value, 0.0) if side == "model"
                             else (str(lora.name), 0.0, value))
        return cls(str(weights.origin[1]), tuple(loras), tuple(runtime), tuple(strengths))


def _encode_strength(value: Any) -> Any:
    """A LoRA strength as a program argument: a param, a reference or a literal float."""
    if isinstance(value, (Param, Value)):
        return encode_value(value)
    return float(value)


#: The weight components of a checkpoint a LoRA can change.
_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass
class TorchModelCache:
    """Loads checkpoints (and merged LoRA variants) once per process for the torch path."""

    models_dir: str | None = None
    loaded: dict[str, Any] = field(default_factory=dict)

    def checkpoint(self, name: str) -> Any:
        """A loaded model by weights key (:mod:`comfyc.compiler.models.store`): a checkpoint's
        ComfyUI name, or a UNETLoader / CLIP loader key.

        Returns:
            A :class:`~comfyc.compiler.models.single_file.LoadedCheckpoint` (SD1/SD2/SDXL)
            or a :class:`~comfyc.compiler.models.store.FlowLoaded` (SD3, Flux).
        """
        from comfyc.runtime.model_paths import resolve

        from ..models.store import parse_weights_key

        kind, option, names = parse_weights_key(name)
        if kind == "unet":
            path = resolve("diffusion_models", names[0], self.models_dir)
            key = f"unet:{option}:{path}"
        elif kind == "clip":
            paths = [resolve("text_encoders", n, self.models_dir) for n in names]
            key = f"clip:{option}:{paths}"
        else:
            path = resolve("checkpoints", names[0], self.models_dir)
            key = f"ckpt:{path}"
        if key not in self.loaded:
            self.loaded[key] = (self._load_clip(paths, option) if kind == "clip" else
                                self._load_unet(path, option) if kind == "unet" else
                                self._load_checkpoint(path))
        return self.loaded[key]

    @staticmethod
    def _load_checkpoint(path: Any) -> Any:
        from ..models.flow import FLOW_FAMILIES, checkpoint_family, load_flow_checkpoint
        from ..models.single_file import load_checkpoint
        from ..models.store import flow_from_checkpoint

        if checkpoint_family(path) in FLOW_FAMILIES:
            return flow_from_checkpoint(load_flow_checkpoint(path))
        return load_checkpoint(path)

    @staticmethod
    def _load_unet(path: Any, weight_dtype: str) -> Any:
        from ..models.flow import load_diffusion_model
        from ..models.store import flow_from_diffusion_model

        return flow_from_diffusion_model(load_diffusion_model(path, weight_dtype=weight_dtype))

    @staticmethod
    def _load_clip(paths: list[Any], clip_type: str) -> Any:
        from ..models.store import flow_from_text_encoders
        from ..models.text_encoders import load_clip

        return flow_from_text_encoders(load_clip(paths, clip_type), paths[0])

    def vae(self, name: str) -> Any:
        """A separately loaded VAE by ComfyUI name."""
        from comfyc.runtime.model_paths import resolve

        from ..models.single_file import load_vae

        path = resolve("vae", name, self.models_dir)
        key = f"vae:{path}"
        if key not in self.loaded:
            self.loaded[key] = load_vae(path)
        return self.loaded[key]

    def upscale(self, name: str) -> Any:
        """An upscale model by ComfyUI name (:class:`~comfyc.compiler.models.upscale.
        UpscaleModel`: the network and spandrel's facts)."""
        from comfyc.runtime.model_paths import resolve

        from ..models.upscale import load_upscale_model

        path = resolve("upscale_models", name, self.models_dir)
        key = f"upscale:{path}"
        if key not in self.loaded:
            self.loaded[key] = load_upscale_model(path)
        return self.loaded[key]

    def controlnet(self, name: str, unet: Any = None, unet_key: str = "") -> Any:
        """A ControlNet or T2I-Adapter by ComfyUI name (``unet``: the MODEL's UNet, for a
        diff ControlNet or Control-LoRA: DiffControlNetLoader)."""
        from comfyc.runtime.model_paths import resolve

        from ..models.controlnet import load_controlnet

        path = resolve("controlnet", name, self.models_dir)
        key = f"controlnet:{path}:{unet_key}"
        if key not in self.loaded:
            self.loaded[key] = load_controlnet(path, unet=unet)
        return self.loaded[key]

    def merged(self, checkpoint: str, loras: tuple[tuple[str, float, float], ...] | list[Any]
               ) -> dict[str, Any]:
        """The components of a checkpoint (``unet``, ``text_encoder``, ``text_encoder_2``)
        with LoRAs ``(name, strength_model, strength_clip)`` merged in order (cached).

        As in ComfyUI, each patched weight is summed over the whole chain in float32, and the
        text encoders' patched weights are then rounded once to float16 precision
        (:data:`~comfyc.compiler.models.lora.TEXT_ENCODER_DTYPE`)."""
        import copy

        from ..models.lora import round_text_weights

        loras = tuple((str(n), float(sm), float(sc)) for n, sm, sc in loras)
        key = f"merged:{checkpoint}:{loras!r}"
        if key not in self.loaded:
            if not loras:
                return self._merged_exact(checkpoint, loras)[0]
            exact_key = f"merged-f32:{checkpoint}:{loras!r}"
            fresh = exact_key not in self.loaded
            exact, patched = self._merged_exact(checkpoint, loras)
            parts = dict(exact)
            if fresh:
                # NOTE: only a longer chain could reuse this chain's float32 sums; rounding
                # them in place saves a copy of the text encoders.
                del self.loaded[exact_key]
            for component, names in patched.items():
                if names and parts.get(component) is not None:
                    if not fresh:
                        parts[component] = copy.deepcopy(parts[component])
                    round_text_weights(parts, {component: names})
            self.loaded[key] = parts
        return self.loaded[key]

    def _merged_exact(self, checkpoint: str, loras: tuple[tuple[str, float, float], ...]
                      ) -> tuple[dict[str, Any], dict[str, frozenset[str]]]:
        """The components with the chain's LoRAs summed in float32 (no rounding), and per text
        encoder the weight names the chain patched (cached per chain)."""
        import copy

        from ..models.lora import merge_lora

        key = f"merged-f32:{checkpoint}:{loras!r}"
        if key not in self.loaded:
            loaded = self.checkpoint(checkpoint)
            components = getattr(loaded, "components", _COMPONENTS)
            if not loras:
                self.loaded[key] = ({name: getattr(loaded, name, None) for name in components},
                                    {})
            elif components != _COMPONENTS:
                from ..models.errors import ModelFormatError

                raise ModelFormatError(
                    f"LoRAs on {loaded.family.upper()} models are not supported by comfyc yet "
                    f"({loras[-1][0]!r} on {checkpoint!r}); remove the LoRA loader")
            else:
                previous, patched = self._merged_exact(checkpoint, loras[:-1])
                parts = dict(previous)
                name, strength_model, strength_clip = loras[-1]
                # A component at strength 0 is not changed: share it instead of copying.
                for component in _COMPONENTS:
                    strength = strength_model if component == "unet" else strength_clip
                    if strength and parts[component] is not None:
                        parts[component] = copy.deepcopy(parts[component])
                factors = merge_lora(parts, self.lora(name), strength_model, strength_clip,
                                     round_text=False)
                patched = dict(patched)
                if strength_clip:
                    for component in ("text_encoder", "text_encoder_2"):
                        patched[component] = (patched.get(component, frozenset())
                                              | frozenset(getattr(factors, component)))
                self.loaded[key] = (parts, patched)
        return self.loaded[key]

    def component_with_loras(self, checkpoint: str, component: str, loras: Sequence[Any]
                             ) -> Any:
        """One component of a checkpoint with LoRAs merged (only the strength that applies to
        it counts: ``strength_model`` for the UNet, ``strength_clip`` for text encoders)."""
        if component == "unet":
            only = [(n, sm, 0.0) for n, sm, _ in loras]
        else:
            only = [(n, 0.0, sc) for n, _, sc in loras]
        return self.merged(checkpoint, only)[component]

    def text_encoder_with_loras(self, checkpoint: str, loras: Sequence[Any]) -> Any:
        """The (first) text encoder of a checkpoint with LoRAs merged."""
        return self.component_with_loras(checkpoint, "text_encoder", loras)

    def unet_with_loras(self, checkpoint: str, loras: Sequence[Any]) -> Any:
        """The UNet of a checkpoint with LoRAs merged (the CLIP strengths are ignored)."""
        return self.component_with_loras(checkpoint, "unet", loras)

    def lora_factors(self, checkpoint: str, name: str) -> Any:
        """The :class:`~comfyc.compiler.models.lora.LoraFactors` of a LoRA for a checkpoint
        (cached): its low-rank factors per UNet and text-encoder weight."""
        from ..models.lora import extract_lora_factors

        key = f"factors:{checkpoint}:{name}"
        if key not in self.loaded:
            loaded = self.checkpoint(checkpoint)
            self.loaded[key] = extract_lora_factors(
                {c: getattr(loaded, c, None) for c in _COMPONENTS}, self.lora(name))
        return self.loaded[key]

    def lora(self, name: str) -> Any:
        """A LoRA state dict by ComfyUI name."""
        from comfyc.runtime.model_paths import resolve

        from ..models.lora import load_lora

        path = resolve("loras", name, self.models_dir)
        key = f"lora:{path}"
        if key not in self.loaded:
            self.loaded[key] = load_lora(path)
        return self.loaded[key]


class _LayerEncoders(Mapping[int, Any]):
    """Text-encoder stages made on demand for any CLIP layer (torch backend)."""

    def __init__(self, name: str, module: Any, info: dict[str, Any] | None = None) -> None:
        self.name = name
        self.module = module
        self.info = dict(info or {})
        self.made: dict[int, Any] = {}
        self.timer: Any = None
        config = module.config
        self.layers = int(getattr(config, "num_hidden_layers", None) or config.num_layers)

    def __getitem__(self, layer: int) -> Any:
        from comfyc.runtime.backends.torch import TorchTextEncoder

        if layer not in self.made:
            stage = TorchTextEncoder(f"{self.name}", self.module, layer, self.info)
            stage.timer = self.timer
            self.made[layer] = stage
        return self.made[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(range(-1, -self.layers - 1, -1))

    def __len__(self) -> int:
        return self.layers


class TorchLoraStage(LoraVariants):
    """The torch path's stage with runtime-mode LoRAs: a merged copy per distinct strengths.

    ``with_strengths(strengths)`` (one strength per slot; the last two variants cached) gives
    a :class:`~comfyc.runtime.backends.torch.TorchUNet` (kind ``unet``) or a mapping of CLIP
    layers to text-encoder stages (kind ``text_encoder``) over a copy of ``module`` with each
    slot's factors merged exactly as the compiler folds LoRAs (float32 sum, cast back; a
    text encoder's patched weights rounded to float16 precision, as ComfyUI keeps them);
    all-zero strengths use ``module`` itself. The artifact writer exports ``module`` (the base
    weights) and stores the slots' factors.

    Args:
        name: The stage name.
        kind: ``unet`` or ``text_encoder``.
        module: The base module (checkpoint plus folded LoRAs); never changed.
        slots: Per runtime-mode LoRA, in order: ``(lora name, {weight name: LoraFactor})``.
        wrap: Turns a module into the variant (a stage or a layer mapping).
        info: Facts about the stage.
        component: The checkpoint component the module is (``unet``, ``text_encoder``,
            ``text_encoder_2``): which LoRA key space its factors come from.
    """

    def __init__(self, name: str, kind: str, module: Any,
                 slots: Sequence[tuple[str, Mapping[str, Any]]], wrap: Callable[[Any], Any],
                 info: dict[str, Any] | None = None, component: str | None = None) -> None:
        super().__init__(name, kind, [lora for lora, _ in slots], self._merged, info)
        self.module = module
        self.slots = list(slots)
        self.wrap = wrap
        self.component = component or ("unet" if kind == "unet" else "text_encoder")

    def _merged(self, strengths: tuple[float, ...]) -> Any:
        import copy

        from ..models.lora import _merge_into, round_text_weights

        module = self.module
        if any(strengths):
            module = copy.deepcopy(module)
            patched: set[str] = set()
            for (_, factors), strength in zip(self.slots, strengths, strict=True):
                if strength and factors:
                    _merge_into(module, self.component, dict(factors), strength)
                    patched.update(factors)
            if self.component != "unet":
                round_text_weights({self.component: module}, {self.component: patched})
        return self.wrap(module)


def unet_info(loaded: Any) -> dict[str, Any]:
    """The UNet stage's facts: prediction type, family, extra inputs (SDXL's ``y``; a flow
    transformer's ``y`` and ``guidance``)."""
    if hasattr(loaded, "unet_info"):
        return loaded.unet_info()
    info: dict[str, Any] = {"prediction_type": loaded.prediction_type,
                            "family": loaded.family,
                            "out_channels": int(loaded.unet.config.out_channels)}
    if getattr(loaded, "adm_in_channels", None):
        info["extra_inputs"] = ["y"]
        info["adm_in_channels"] = int(loaded.adm_in_channels)
    return info


def model_sampling_spec(loaded: Any) -> dict[str, Any]:
    """A checkpoint's model sampling as a program describes it (``LoadCheckpoint``)."""
    if hasattr(loaded, "model_sampling_spec"):
        return loaded.model_sampling_spec()
    prediction = "v_prediction" if loaded.prediction_type == "v_prediction" else "eps"
    return {"kind": "discrete", "prediction": prediction}


def encoder_info(spec: Any) -> dict[str, Any]:
    """A text-encoder stage's facts from its spec (layer-norm rule, pooled projection,
    tokenizer)."""
    info: dict[str, Any] = {"layer_norm": bool(spec.layer_norm_hidden_state),
                            "encoder": spec.name}
    if getattr(spec, "tokenizer", "clip") != "clip":
        info["tokenizer"] = spec.tokenizer
    if hasattr(spec, "projected"):
        info["projected"] = bool(spec.projected)
    return info


def encoder_fields(spec: Any) -> dict[str, Any]:
    """The tokenizer rules of an encoder as a ``clip`` program argument (and
    :class:`~comfyc.runtime.values.TextEncoderRef`) holds them."""
    return {"pad_token": int(spec.pad_token), "default_layer": int(spec.default_layer),
            "pooled": bool(spec.pooled), "tokenizer": str(getattr(spec, "tokenizer", "clip")),
            "min_length": int(getattr(spec, "min_length", 77)),
            "width": int(getattr(spec, "width", 0))}


class Lowering:
    """The state of one lowering, which compile rules build on.

    Attributes:
        graph: The graph being lowered.
        catalog: Node schemas.
        cache: The model store (loaded checkpoints, merged LoRA variants).
        compile_stages: Wrap stages in ``torch.compile``.
        stages: The program's stages so far, by name.
    """

    def __init__(self, graph: Graph, catalog: Catalog, cache: TorchModelCache,
                 compile_stages: bool = False) -> None:
        self.graph = graph
        self.catalog = catalog
        self.cache = cache
        self.compile_stages = compile_stages
        self.stages: dict[str, Any] = {}

    def const_input(self, node: Node, name: str) -> Any:
        """A model input's constant value (its default when missing).

        Raises:
            WorkflowErrors: The input is a link or a param.
        """
        value = node.inputs.get(name, MISSING)
        if isinstance(value, (Value, Param)):
            raise WorkflowErrors([SchemaError(
                f"input '{name}' of {node.display()} must be a constant: models are chosen "
                f"when the workflow is compiled", node.input_loc(name),
                kind="not_constant", help=f"write the {name} as a literal")])
        if value is MISSING:
            schema = self.catalog.get(node.class_type)
            spec = schema.input(name) if schema is not None else None
            value = spec.effective_default() if spec else MISSING
        return value

    def load(self, node: Node, input_name: str, loader: Callable[[Any], Any]) -> Any:
        """Run a model loader; a missing or unreadable file becomes an error at the node.

        Raises:
            WorkflowErrors: ``model_not_found`` at the input.
        """
        from comfyc.runtime.model_paths import ModelPathError

        from ..models.errors import ModelFormatError

        name = self.const_input(node, input_name)
        try:
            return loader(name)
        except (ModelPathError, ModelFormatError, OSError) as exc:
            raise WorkflowErrors([SchemaError(
                f"{node.display()} cannot load {name!r}: {exc}", node.input_loc(input_name),
                kind="model_not_found",
                help="put the file in the models folder (--models-dir or $COMFYC_MODELS, "
                     "ComfyUI layout) or fix the name")]) from None

    def desc(self, node: Node, input_name: str, side: str) -> ModelDesc:
        """The :class:`ModelDesc` of a node's MODEL / CLIP input.

        Raises:
            WorkflowErrors: The weights do not come from a checkpoint loader.
        """
        weights = trace_weights(node.inputs.get(input_name))
        if weights is None or weights.origin[0] != "checkpoint":
            raise WorkflowErrors([SchemaError(
                f"{node.display()}: the {side} must come from a checkpoint loader (through "
                f"LoRA loaders or nodes that pass weights through)", node.input_loc(input_name),
                kind="unsupported_node",
                help="load the model with CheckpointLoaderSimple and chain the LoRA loaders "
                     "directly after it")])
        return ModelDesc.of(weights, side)

    def _slots(self, desc: ModelDesc, component: str) -> list[tuple[str, Any]]:
        return [(name, getattr(self.cache.lora_factors(desc.checkpoint, name), component))
                for name in desc.runtime]

    def unet_stage(self, desc: ModelDesc) -> str:
        """The UNet stage for a MODEL desc (made once per distinct weights)."""
        from comfyc.runtime.backends.torch import TorchUNet

        name = f"unet_{desc.key()}"
        if name not in self.stages:
            info = unet_info(self.cache.checkpoint(desc.checkpoint))
            module = self.cache.unet_with_loras(desc.checkpoint, desc.loras)
            compile_ = self.compile_stages
            if desc.runtime:
                self.stages[name] = TorchLoraStage(
                    name, "unet", module, self._slots(desc, "unet"),
                    lambda m: TorchUNet(name, m, info, compile=compile_), info)
            else:
                self.stages[name] = TorchUNet(name, module, info, compile=compile_)
        return name

    def text_stages(self, desc: ModelDesc) -> dict[str, str]:
        """The text-encoder stages (any CLIP layer) of a CLIP desc, by encoder name
        (``clip_l``, ``clip_g`` …): one per text encoder of the checkpoint."""
        loaded = self.cache.checkpoint(desc.checkpoint)
        out = {}
        for spec in loaded.text_encoders:
            name = f"{spec.attribute}_{desc.key()}"
            out[spec.name] = name
            if name in self.stages:
                continue
            module = self.cache.component_with_loras(desc.checkpoint, spec.attribute,
                                                     desc.loras)
            info = encoder_info(spec)
            if desc.runtime:
                self.stages[name] = TorchLoraStage(
                    name, "text_encoder", module, self._slots(desc, spec.attribute),
                    lambda m, n=name, i=info: _LayerEncoders(n, m, i),
                    component=spec.attribute)
            else:
                self.stages[name] = _LayerEncoders(name, module, info)
        return out

    def upscale_stage(self, key: str, model: Any) -> str:
        """The network stage of an upscale model (made once per file)."""
        from comfyc.runtime.backends.torch import TorchUpscale

        name = f"upscale_{key}"
        if name not in self.stages:
            spec = model.spec
            info = {"architecture": spec.architecture, "scale": int(spec.scale),
                    "in_channels": int(spec.in_channels), "out_channels": int(spec.out_channels),
                    "size_minimum": int(spec.size_minimum),
                    "size_multiple": int(spec.size_multiple),
                    "network_multiple": int(spec.network_multiple)}
            self.stages[name] = TorchUpscale(name, model.network, info)
        return name

    def control_stage(self, key: str, loaded: Any) -> tuple[str, dict[str, Any]]:
        """The stage of a ControlNet (``controlnet``) or T2I-Adapter (``t2i_adapter``) and the
        facts its ``LoadControlNet`` op carries."""
        import math

        from comfyc.runtime.backends.torch import TorchControlNet, TorchT2IAdapter

        adapter = hasattr(loaded, "hint_size")
        kind = "t2i_adapter" if adapter else "controlnet"
        facts: dict[str, Any] = {"kind": kind, "family": str(loaded.family)}
        if adapter:
            facts["hint_multiple"] = int(loaded.unshuffle_amount)
        else:
            shapes = loaded.residual_shapes(1, 64, 64)
            facts["takes_y"] = loaded.adm_in_channels is not None
            facts["residual_channels"] = [int(s[1]) for s in shapes]
            facts["residual_halvings"] = [round(math.log2(64 / s[2])) for s in shapes]
        name = f"{kind}_{key}"
        if name not in self.stages:
            cls = TorchT2IAdapter if adapter else TorchControlNet
            self.stages[name] = cls(name, loaded.stage(), dict(facts))
        return name, facts

    def vae_stages(self, key: str, vae: Any) -> tuple[str, str]:
        """Decoder and encoder stages of a VAE module (made once per key)."""
        from comfyc.runtime.backends.torch import TorchVaeDecoder, TorchVaeEncoder

        dec, enc = f"vae_decoder_{key}", f"vae_encoder_{key}"
        self.stages.setdefault(dec, TorchVaeDecoder(dec, vae))
        self.stages.setdefault(enc, TorchVaeEncoder(enc, vae))
        return dec, enc


def lower_to_program(graph: Graph, catalog: Catalog | None = None, *,
                     models_dir: str | None = None, cache: TorchModelCache | None = None,
                     compile_stages: bool = False, merged_into: Mapping[str, str] | None = None
                     ) -> Any:
    """Lower a validated graph to an in-memory program on PyTorch stages.

    Args:
        graph: A validated graph.
        catalog: Node schemas.
        models_dir: The models folder (ComfyUI layout); the packaged tiny model is always
            found by name.
        cache: Reuse loaded checkpoints across calls.
        compile_stages: Wrap stages in ``torch.compile``.
        merged_into: Nodes common-subexpression elimination merged, and the node kept for
            each (:meth:`ChangeLog.merged_into`): a param used by a kept node is substituted
            into the merged nodes' inputs of the embedded prompt too.

    Raises:
        WorkflowErrors: A node cannot run, or a model input is not a constant.
    """
    from comfyc.runtime.program import Op, ParamSpec, Program

    catalog = catalog or default_catalog()
    lowering = Lowering(graph, catalog, cache or TorchModelCache(models_dir), compile_stages)
    nodes = reachable_nodes(graph, catalog)
    check_runnable(nodes, catalog)
    ops: list[Op] = []
    for node in nodes:
        rule = compile_rule(node.class_type)
        if rule.lower is not None:
            ops.extend(rule.lower(node, lowering))
        else:
            ops.append(lower_node(node, catalog))
    for name, value in graph.outputs.items():
        ops.append(Op(f"output:{name}", "Output", {"name": name, "value": encode_value(value)}))
    params = {
        p.name: ParamSpec(p.name, p.type, None if p.default is MISSING else p.default,
                          p.default is not MISSING, p.min, p.max, p.choices, p.doc)
        for p in graph.params.values()
    }
    meta: dict[str, Any] = {"prompt": graph.source.prompt,
                            "param_uses": param_uses(graph, merged_into or {})}
    if graph.source.workflow is not None:
        meta["extra_pnginfo"] = {"workflow": graph.source.workflow}
    program = Program(ops, lowering.stages, graph.constants, params, meta)
    program.models_dir = lowering.cache.models_dir  # embedding:NAME in runtime prompts
    return program


def param_uses(graph: Graph, merged_into: Mapping[str, str]) -> dict[str, list[list[str]]]:
    """Where each param's value goes in the source prompt: ``[[node id, input], …]``.

    A node merged into another by common-subexpression elimination had the same inputs, so
    a param used by the kept node is used at the merged node's input too.
    """
    merged_from: dict[str, list[str]] = {}
    for merged, kept in merged_into.items():
        merged_from.setdefault(kept, []).append(merged)
    out: dict[str, list[list[str]]] = {}
    for param in graph.params.values():
        uses = []
        for use in param.uses():
            for node_id in [use.node.id, *merged_from.get(use.node.id, [])]:
                uses.append([node_id, use.input_name])
        out[param.name] = uses
    return out
