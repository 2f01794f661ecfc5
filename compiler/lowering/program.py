"""Lowering: an IR graph → a runtime :class:`~comfyc.runtime.program.Program`.

Model nodes (CheckpointLoaderSimple, VAELoader, LoraLoader …) become stages plus small ops
that build MODEL/CLIP/VAE handles from them; every other node becomes one op with its inputs
encoded (links → ``$ref``, params → ``$param``, missing widgets → their defaults). Model
inputs must be constants: a checkpoint is chosen when the program is made.

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
from dataclasses import dataclass, field, replace
from typing import Any

from comfyc.runtime.lora import LoraVariants

from ..catalog import Catalog, default_catalog
from ..errors import SchemaError, WorkflowError, WorkflowErrors
from ..ir.core import MISSING, Graph, Node, Param, Value
from ..passes.validate import reachable_nodes

__all__ = ["lower_to_program", "encode_node_args", "lower_node", "check_runnable",
           "TorchModelCache", "TorchLoraStage", "MODEL_NODES"]

#: Nodes whose outputs are model handles; they are resolved while lowering.
MODEL_NODES = {"CheckpointLoaderSimple", "VAELoader", "LoraLoader", "LoraLoaderModelOnly"}


def encode_literal(value: Any) -> Any:
    """Encode a literal so the program never mistakes it for a reference."""
    if isinstance(value, (dict, list)):
        return {"$lit": value}
    return value


def encode_node_args(node: Node, catalog: Catalog) -> dict[str, Any]:
    """A node's inputs as program arguments, with defaults for missing widget inputs."""
    schema = catalog.get(node.class_type)
    args: dict[str, Any] = {}
    for name, value in node.inputs.items():
        if schema is not None and schema.input(name) is None:
            continue  # Undeclared inputs are ignored, as ComfyUI does.
        if isinstance(value, Value):
            args[name] = {"$ref": [value.producer.id, value.index]}
        elif isinstance(value, Param):
            args[name] = {"$param": value.name}
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
    """The op for a non-model node (folded constants and schedules become $const args)."""
    from comfyc.runtime.program import Op

    if node.class_type == "FoldedConditioning":
        return Op(node.id, "ConditioningConstant", {"entries": {"$const": node.inputs["key"]}},
                  node.title)
    args = encode_node_args(node, catalog)
    if node.meta.get("sigmas"):
        args["sigmas"] = {"$const": node.meta["sigmas"]}
    return Op(node.id, node.class_type, args, node.title)


def check_runnable(graph: Graph, nodes: list[Node], supported: Callable[[str], bool]) -> None:
    """Fail before any work starts when a node cannot run, naming every such node.

    Raises:
        WorkflowErrors: One error per unsupported node.
    """
    errors: list[WorkflowError] = []
    for node in nodes:
        if node.class_type in MODEL_NODES or supported(node.class_type):
            continue
        errors.append(SchemaError(
            f"{node.display()} cannot run: comfyc has no implementation of "
            f"{node.class_type} yet", node.loc, kind="unsupported_node",
            help="ControlNet, T2I adapters and upscale models are planned; remove the node "
                 "or run this workflow in ComfyUI"))
    if errors:
        raise WorkflowErrors(errors)


@dataclass
class _ModelDesc:
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


@dataclass
class TorchModelCache:
    """Loads checkpoints (and merged LoRA variants) once per process for the torch path."""

    models_dir: str | None = None
    loaded: dict[str, Any] = field(default_factory=dict)

    def checkpoint(self, name: str) -> Any:
        """A loaded checkpoint by ComfyUI name."""
        from comfyc.runtime.model_paths import resolve

        from ..models.single_file import load_checkpoint

        path = resolve("checkpoints", name, self.models_dir)
        key = f"ckpt:{path}"
        if key not in self.loaded:
            self.loaded[key] = load_checkpoint(path)
        return self.loaded[key]

    def vae(self, name: str) -> Any:
        """A separately loaded VAE by ComfyUI name."""
        from comfyc.runtime.model_paths import resolve

        from ..models.single_file import load_vae

        path = resolve("vae", name, self.models_dir)
        key = f"vae:{path}"
        if key not in self.loaded:
            self.loaded[key] = load_vae(path)
        return self.loaded[key]

    def merged(self, checkpoint: str, loras: tuple[tuple[str, float, float], ...] | list[Any]
               ) -> tuple[Any, Any]:
        """UNet and text encoder of a checkpoint with LoRAs merged in order (cached)."""
        import copy

        from ..models.lora import merge_lora

        loras = tuple((str(n), float(sm), float(sc)) for n, sm, sc in loras)
        key = f"merged:{checkpoint}:{loras!r}"
        if key not in self.loaded:
            loaded = self.checkpoint(checkpoint)
            if not loras:
                self.loaded[key] = (loaded.unet, loaded.text_encoder)
            else:
                unet, text = self.merged(checkpoint, loras[:-1])
                name, strength_model, strength_clip = loras[-1]
                # A component at strength 0 is not changed: share it instead of copying.
                unet = copy.deepcopy(unet) if strength_model else unet
                text = copy.deepcopy(text) if strength_clip else text
                merge_lora((unet, text), self.lora(name), strength_model, strength_clip)
                self.loaded[key] = (unet, text)
        return self.loaded[key]

    def text_encoder_with_loras(self, checkpoint: str, loras: Sequence[Any]) -> Any:
        """The text encoder of a checkpoint with LoRAs ``(name, strength_model,
        strength_clip)`` merged (the model strengths are ignored)."""
        return self.merged(checkpoint, [(n, 0.0, sc) for n, _, sc in loras])[1]

    def unet_with_loras(self, checkpoint: str, loras: Sequence[Any]) -> Any:
        """The UNet of a checkpoint with LoRAs ``(name, strength_model, strength_clip)``
        merged (the CLIP strengths are ignored)."""
        return self.merged(checkpoint, [(n, sm, 0.0) for n, sm, _ in loras])[0]

    def lora_factors(self, checkpoint: str, name: str) -> Any:
        """The :class:`~comfyc.compiler.models.lora.LoraFactors` of a LoRA for a checkpoint
        (cached): its low-rank factors per UNet and text-encoder weight."""
        from ..models.lora import extract_lora_factors

        key = f"factors:{checkpoint}:{name}"
        if key not in self.loaded:
            loaded = self.checkpoint(checkpoint)
            self.loaded[key] = extract_lora_factors(
                {"unet": loaded.unet, "text_encoder": loaded.text_encoder}, self.lora(name))
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

    def __init__(self, name: str, module: Any) -> None:
        self.name = name
        self.module = module
        self.made: dict[int, Any] = {}
        self.timer: Any = None

    def __getitem__(self, layer: int) -> Any:
        from comfyc.runtime.backends.torch import TorchTextEncoder

        if layer not in self.made:
            stage = TorchTextEncoder(f"{self.name}", self.module, layer)
            stage.timer = self.timer
            self.made[layer] = stage
        return self.made[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(range(-1, -25, -1))

    def __len__(self) -> int:
        return 24


class TorchLoraStage(LoraVariants):
    """The torch path's stage with runtime-mode LoRAs: a merged copy per distinct strengths.

    ``with_strengths(strengths)`` (one strength per slot; the last two variants cached) gives
    a :class:`~comfyc.runtime.backends.torch.TorchUNet` (kind ``unet``) or a mapping of CLIP
    layers to text-encoder stages (kind ``text_encoder``) over a copy of ``module`` with each
    slot's factors merged exactly as the compiler folds LoRAs (float32 sum, cast back);
    all-zero strengths use ``module`` itself. The artifact writer exports ``module`` (the base
    weights) and stores the slots' factors.

    Args:
        name: The stage name.
        kind: ``unet`` or ``text_encoder``.
        module: The base module (checkpoint plus folded LoRAs); never changed.
        slots: Per runtime-mode LoRA, in order: ``(lora name, {weight name: LoraFactor})``.
        wrap: Turns a module into the variant (a stage or a layer mapping).
        info: Facts about the stage.
    """

    def __init__(self, name: str, kind: str, module: Any,
                 slots: Sequence[tuple[str, Mapping[str, Any]]], wrap: Callable[[Any], Any],
                 info: dict[str, Any] | None = None) -> None:
        super().__init__(name, kind, [lora for lora, _ in slots], self._merged, info)
        self.module = module
        self.slots = list(slots)
        self.wrap = wrap

    def _merged(self, strengths: tuple[float, ...]) -> Any:
        import copy

        from ..models.lora import _merge_into

        module = self.module
        if any(strengths):
            module = copy.deepcopy(module)
            component = "unet" if self.kind == "unet" else "text_encoder"
            for (_, factors), strength in zip(self.slots, strengths, strict=True):
                if strength and factors:
                    _merge_into(module, component, dict(factors), strength)
        return self.wrap(module)


def lower_to_program(graph: Graph, catalog: Catalog | None = None, *,
                     models_dir: str | None = None, cache: TorchModelCache | None = None,
                     compile_stages: bool = False) -> Any:
    """Lower a validated graph to an in-memory program on PyTorch stages.

    Args:
        graph: A validated graph.
        catalog: Node schemas.
        models_dir: The models folder (ComfyUI layout); the packaged tiny model is always
            found by name.
        cache: Reuse loaded checkpoints across calls.
        compile_stages: Wrap stages in ``torch.compile``.

    Raises:
        WorkflowErrors: A node cannot run, or a model input is not a constant.
    """
    from comfyc.frontends.comfy_json.api import graph_to_api
    from comfyc.runtime.backends.torch import (
        TorchUNet,
        TorchVaeDecoder,
        TorchVaeEncoder,
    )
    from comfyc.runtime.nodes import OPS
    from comfyc.runtime.program import Op, ParamSpec, Program

    catalog = catalog or default_catalog()
    cache = cache or TorchModelCache(models_dir)
    nodes = reachable_nodes(graph, catalog)
    check_runnable(graph, nodes, lambda c: c in OPS or c == "FoldedConditioning")

    stages: dict[str, Any] = {}
    ops: list[Op] = []

    def const_input(node: Node, name: str) -> Any:
        value = node.inputs.get(name, MISSING)
        if isinstance(value, (Value, Param)):
            raise WorkflowErrors([SchemaError(
                f"input '{name}' of {node.display()} must be a constant: models are chosen "
                f"when the workflow is compiled", node.input_loc(name),
                kind="not_constant", help=f"write the {name} as a literal")])
        if value is MISSING:
            spec = catalog.get(node.class_type).input(name)  # type: ignore[union-attr]
            value = spec.effective_default() if spec else MISSING
        return value

    def load(node: Node, input_name: str, loader: Callable[[Any], Any]) -> Any:
        """Run a model loader; a missing or unreadable file becomes an error at the node."""
        from comfyc.runtime.model_paths import ModelPathError

        from ..models.errors import ModelFormatError

        name = const_input(node, input_name)
        try:
            return loader(name)
        except (ModelPathError, ModelFormatError, OSError) as exc:
            raise WorkflowErrors([SchemaError(
                f"{node.display()} cannot load {name!r}: {exc}", node.input_loc(input_name),
                kind="model_not_found",
                help="put the file in the models folder (--models-dir or $COMFYC_MODELS, "
                     "ComfyUI layout) or fix the name")]) from None

    def slots(desc: _ModelDesc, component: str) -> list[tuple[str, Any]]:
        return [(name, getattr(cache.lora_factors(desc.checkpoint, name), component))
                for name in desc.runtime]

    def unet_stage(desc: _ModelDesc, loaded: Any) -> str:
        """The UNet stage for a MODEL desc (made once per distinct weights)."""
        name = f"unet_{desc.key()}"
        if name not in stages:
            info = {"prediction_type": loaded.prediction_type}
            module = cache.unet_with_loras(desc.checkpoint, desc.loras)
            if desc.runtime:
                stages[name] = TorchLoraStage(
                    name, "unet", module, slots(desc, "unet"),
                    lambda m: TorchUNet(name, m, info, compile=compile_stages), info)
            else:
                stages[name] = TorchUNet(name, module, info, compile=compile_stages)
        return name

    def text_stage(desc: _ModelDesc) -> str:
        """The text-encoder stage (any CLIP layer) for a CLIP desc."""
        name = f"text_encoder_{desc.key()}"
        if name not in stages:
            module = cache.text_encoder_with_loras(desc.checkpoint, desc.loras)
            if desc.runtime:
                stages[name] = TorchLoraStage(name, "text_encoder", module,
                                              slots(desc, "text_encoder"),
                                              lambda m: _LayerEncoders(name, m))
            else:
                stages[name] = _LayerEncoders(name, module)
        return name

    for node in nodes:
        if node.class_type == "CheckpointLoaderSimple":
            ckpt_name = const_input(node, "ckpt_name")
            loaded = load(node, "ckpt_name", cache.checkpoint)
            desc = _ModelDesc(ckpt_name)
            unet = unet_stage(desc, loaded)
            te = text_stage(desc)
            dec, enc = f"vae_decoder_{desc.key()}", f"vae_encoder_{desc.key()}"
            stages.setdefault(dec, TorchVaeDecoder(dec, loaded.vae))
            stages.setdefault(enc, TorchVaeEncoder(enc, loaded.vae))
            node.meta["model_desc"] = node.meta["clip_desc"] = desc
            node.meta["loaded"] = loaded
            ops.append(Op(node.id, "LoadCheckpoint", {
                "unet": {"$stage": unet},
                "text_encoders": {"$stage": te},
                "vae_decoder": {"$stage": dec}, "vae_encoder": {"$stage": enc},
                "prediction_type": loaded.prediction_type,
                "in_channels": int(loaded.unet.config.in_channels),
                "default_layer": int(loaded.default_clip_layer),
                "pad_token": int(loaded.clip_pad_token),
                "name": ckpt_name,
            }, node.title))
            continue
        if node.class_type == "VAELoader":
            vae_name = const_input(node, "vae_name")
            vae = load(node, "vae_name", cache.vae)
            key = hashlib.sha1(vae_name.encode()).hexdigest()[:10]
            dec, enc = f"vae_decoder_{key}", f"vae_encoder_{key}"
            stages.setdefault(dec, TorchVaeDecoder(dec, vae))
            stages.setdefault(enc, TorchVaeEncoder(enc, vae))
            ops.append(Op(node.id, "LoadVAE", {"vae_decoder": {"$stage": dec},
                                               "vae_encoder": {"$stage": enc},
                                               "name": vae_name}, node.title))
            continue
        if node.class_type in ("LoraLoader", "LoraLoaderModelOnly"):
            load(node, "lora_name", cache.lora)
            ops.append(_lower_lora(node, const_input, catalog, unet_stage, text_stage))
            continue
        ops.append(lower_node(node, catalog))

    for name, value in graph.outputs.items():
        ops.append(Op(f"output:{name}", "Output", {
            "name": name, "value": {"$ref": [value.producer.id, value.index]}}))
    params = {
        p.name: ParamSpec(p.name, p.type, None if p.default is MISSING else p.default,
                          p.default is not MISSING, p.min, p.max, p.choices, p.doc)
        for p in graph.params.values()
    }
    meta: dict[str, Any] = {"prompt": graph_to_api(graph, params=_defaults(graph)),
                            "param_uses": _param_uses(graph)}
    if graph.meta.get("workflow") is not None:
        meta["extra_pnginfo"] = {"workflow": graph.meta["workflow"]}
    return Program(ops, stages, graph.meta.get("constants", {}), params, meta)


def _defaults(graph: Graph) -> dict[str, Any]:
    return {p.name: (p.default if p.default is not MISSING else None)
            for p in graph.params.values()}


def _param_uses(graph: Graph) -> dict[str, list[list[str]]]:
    return {p.name: [[u.node.id, u.input_name] for u in p.uses()] for p in graph.params.values()}


def _lower_lora(node: Node, const_input: Callable[[Node, str], Any], catalog: Catalog,
                unet_stage: Callable[[_ModelDesc, Any], str],
                text_stage: Callable[[_ModelDesc], str]) -> Any:
    """A LoRA loader → an ``ApplyLoRA`` op that swaps in new UNet / text-encoder stages.

    Each side (MODEL with ``strength_model``, CLIP with ``strength_clip``) is lowered on its
    own: a constant strength of 0 leaves that side as it is; a folded LoRA
    (``lora_mode`` merged, constant strength) gives a stage with merged weights; a
    runtime-mode one (``lora_mode`` runtime, or a strength that is not a constant — the torch
    path runs without the LoRA pass) adds a slot to the stage and its strength to the op's
    ``unet_strengths`` / ``text_strengths``.
    """
    from comfyc.runtime.program import Op

    lora_name = const_input(node, "lora_name")
    runtime_mode = node.meta.get("lora_mode") == "runtime"
    sides = [("model", "strength_model")]
    if node.class_type == "LoraLoader":
        sides.append(("clip", "strength_clip"))
    args: dict[str, Any] = {}
    for side, strength_input in sides:
        value = node.inputs.get(side)
        if not isinstance(value, Value):
            continue
        source = _source_desc(value, side)
        if source is None:
            raise WorkflowErrors([SchemaError(
                f"{node.display()}: the {side} must come from a checkpoint loader (through "
                f"other LoRA loaders or {' / '.join(_PASS_THROUGH[side])})",
                node.input_loc(side), kind="unsupported_node",
                help="load the model with CheckpointLoaderSimple and chain the LoRA loaders "
                     "directly after it")])
        src_node, desc = source
        if side == "model":
            node.meta["loaded"] = src_node.meta["loaded"]  # prediction type, for the UNet
        args[side] = {"$ref": [value.producer.id, value.index]}
        strength = node.inputs.get(strength_input, MISSING)
        if strength is MISSING:
            spec = catalog.get(node.class_type).input(strength_input)  # type: ignore[union-attr]
            strength = spec.effective_default() if spec else 1.0
        constant = not isinstance(strength, (Param, Value))
        if constant and float(strength) == 0.0:
            node.meta[f"{side}_desc"] = desc  # This side is unchanged.
            continue
        if runtime_mode or not constant:
            new = replace(desc, runtime=desc.runtime + (lora_name,),
                          strengths=desc.strengths + (_encode_strength(strength),))
        else:
            folded = ((lora_name, float(strength), 0.0) if side == "model"
                      else (lora_name, 0.0, float(strength)))
            new = replace(desc, loras=desc.loras + (folded,))
        node.meta[f"{side}_desc"] = new
        if side == "model":
            args["unet"] = {"$stage": unet_stage(new, node.meta["loaded"])}
            if new.runtime:
                args["unet_strengths"] = {str(i): s for i, s in enumerate(new.strengths)}
        else:
            args["text_encoders"] = {"$stage": text_stage(new)}
            if new.runtime:
                args["text_strengths"] = {str(i): s for i, s in enumerate(new.strengths)}
    return Op(node.id, "ApplyLoRA", args, node.title)


def _encode_strength(value: Any) -> Any:
    """A LoRA strength as a program argument: a param, a reference or a literal float."""
    if isinstance(value, Param):
        return {"$param": value.name}
    if isinstance(value, Value):
        return {"$ref": [value.producer.id, value.index]}
    return float(value)


#: Nodes a MODEL / CLIP passes through unchanged in its weights.
_PASS_THROUGH = {"model": {"ModelSamplingDiscrete": "model"},
                 "clip": {"CLIPSetLastLayer": "clip"}}


def _source_desc(value: Any, side: str) -> tuple[Node, _ModelDesc] | None:
    """The node that describes the weights of a MODEL (``side`` model) or CLIP value."""
    while isinstance(value, Value):
        node = value.producer
        desc = node.meta.get(f"{side}_desc")
        if desc is not None:
            return node, desc
        through = _PASS_THROUGH[side].get(node.class_type)
        if through is None:
            return None
        value = node.inputs.get(through)
    return None
