"""Lowering: an IR graph → a runtime :class:`~comfyc.runtime.program.Program`.

Model nodes (CheckpointLoaderSimple, VAELoader, LoraLoader …) become stages plus small ops
that build MODEL/CLIP/VAE handles from them; every other node becomes one op with its inputs
encoded (links → ``$ref``, params → ``$param``, missing widgets → their defaults). Model
inputs must be constants: a checkpoint is chosen when the program is made.

This module builds in-memory programs over PyTorch stages (``comfyc run WORKFLOW``); the
artifact writer reuses :func:`encode_node_args` and the op list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..catalog import Catalog, default_catalog
from ..errors import SchemaError, WorkflowError, WorkflowErrors
from ..ir.core import MISSING, Graph, Node, Param, Value
from ..passes.validate import reachable_nodes

__all__ = ["lower_to_program", "encode_node_args", "lower_node", "check_runnable",
           "TorchModelCache", "MODEL_NODES"]

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
    """What a MODEL/CLIP/VAE value is at compile time: a checkpoint plus LoRAs."""

    checkpoint: str
    loras: tuple[tuple[str, float, float], ...] = ()

    def key(self) -> str:
        raw = repr((self.checkpoint, self.loras)).encode()
        return hashlib.sha1(raw).hexdigest()[:10]


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

        loras = tuple(tuple(x) for x in loras)
        key = f"merged:{checkpoint}:{loras!r}"
        if key not in self.loaded:
            loaded = self.checkpoint(checkpoint)
            if not loras:
                self.loaded[key] = (loaded.unet, loaded.text_encoder)
            else:
                unet, text = self.merged(checkpoint, loras[:-1])
                unet, text = copy.deepcopy(unet), copy.deepcopy(text)
                name, strength_model, strength_clip = loras[-1]
                merge_lora((unet, text), self.lora(str(name)), float(strength_model),
                           float(strength_clip))
                self.loaded[key] = (unet, text)
        return self.loaded[key]

    def text_encoder_with_loras(self, checkpoint: str, loras: list[Any]) -> Any:
        """The text encoder of a checkpoint with LoRAs merged."""
        return self.merged(checkpoint, loras)[1]

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
        TorchUNet, TorchVaeDecoder, TorchVaeEncoder,
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

    def unet_stage(desc: _ModelDesc, module: Any, info: dict[str, Any]) -> str:
        name = f"unet_{desc.key()}"
        if name not in stages:
            stages[name] = TorchUNet(name, module, info, compile=compile_stages)
        return name

    for node in nodes:
        if node.class_type == "CheckpointLoaderSimple":
            ckpt_name = const_input(node, "ckpt_name")
            loaded = load(node, "ckpt_name", cache.checkpoint)
            desc = _ModelDesc(ckpt_name)
            unet = unet_stage(desc, loaded.unet, {"prediction_type": loaded.prediction_type})
            te = f"text_encoder_{desc.key()}"
            stages.setdefault(te, _LayerEncoders(te, loaded.text_encoder))
            dec, enc = f"vae_decoder_{desc.key()}", f"vae_encoder_{desc.key()}"
            stages.setdefault(dec, TorchVaeDecoder(dec, loaded.vae))
            stages.setdefault(enc, TorchVaeEncoder(enc, loaded.vae))
            node.meta["model_desc"] = desc
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
            ops.append(_lower_lora(node, const_input, cache, stages, unet_stage))
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


def _lower_lora(node: Node, const_input: Callable[[Node, str], Any], cache: TorchModelCache,
                stages: dict[str, Any], unet_stage: Callable[..., str]) -> Any:
    """Merge a LoRA at constant strength into copies of the UNet / text encoder."""
    from comfyc.runtime.program import Op

    lora_name = const_input(node, "lora_name")
    strength_model = float(const_input(node, "strength_model"))
    strength_clip = (float(const_input(node, "strength_clip"))
                     if node.class_type == "LoraLoader" else 0.0)
    model_value = node.inputs.get("model")
    clip_value = node.inputs.get("clip")
    source = _source_checkpoint(model_value) or _source_checkpoint(clip_value)
    if source is None:
        raise WorkflowErrors([SchemaError(
            f"{node.display()}: the model must come from a checkpoint loader (through other "
            f"LoRA loaders)", node.loc, kind="unsupported_node")])
    src_node, desc = source
    loaded = src_node.meta["loaded"]
    new_desc = _ModelDesc(desc.checkpoint, desc.loras + ((lora_name, strength_model,
                                                           strength_clip),))
    node.meta["model_desc"] = new_desc
    node.meta["loaded"] = loaded
    unet, text = cache.merged(new_desc.checkpoint, new_desc.loras)
    args: dict[str, Any] = {}
    if model_value is not None:
        args["model"] = {"$ref": [model_value.producer.id, model_value.index]}
        args["unet"] = {"$stage": unet_stage(new_desc, unet,
                                             {"prediction_type": loaded.prediction_type})}
    if clip_value is not None:
        args["clip"] = {"$ref": [clip_value.producer.id, clip_value.index]}
        te = f"text_encoder_{new_desc.key()}"
        stages.setdefault(te, _LayerEncoders(te, text))
        args["text_encoders"] = {"$stage": te}
    return Op(node.id, "ApplyLoRA", args, node.title)


def _source_checkpoint(value: Any) -> tuple[Node, _ModelDesc] | None:
    if not isinstance(value, Value):
        return None
    node = value.producer
    if "model_desc" in node.meta:
        return node, node.meta["model_desc"]
    return None
