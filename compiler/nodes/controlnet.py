"""Compile rules of the ControlNet family: a ControlNet / T2I-Adapter file becomes a stage.

``ControlNetLoader`` reads the file (ControlNets and T2I-Adapters, as ComfyUI's one loader);
``DiffControlNetLoader`` also takes the MODEL's UNet (after its LoRAs), which a diff ControlNet
adds to its weights and a Control-LoRA is built on. Both become a ``LoadControlNet`` op over the
net's stage (:mod:`comfyc.compiler.models.controlnet`).
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..ir.core import Node
from .rules import CompileRule

__all__ = ["RULES"]


def _lower_controlnet(node: Node, lowering: Any, with_model: bool = False) -> list[Any]:
    """``with_model``: the loader takes the MODEL (DiffControlNetLoader)."""
    from comfyc.runtime.program import Op

    name = lowering.const_input(node, "control_net_name")
    unet = None
    key = ""
    if with_model:
        desc = lowering.desc(node, "model", "model")
        key = desc.key()
        unet = lowering.cache.unet_with_loras(desc.checkpoint, desc.loras)
    loaded = lowering.load(node, "control_net_name",
                           lambda n: lowering.cache.controlnet(n, unet, key))
    digest = hashlib.sha1(f"{name}:{key}".encode()).hexdigest()[:10]
    stage, facts = lowering.control_stage(digest, loaded)
    return [Op(node.id, "LoadControlNet", {"stage": {"$stage": stage}, **facts, "name": name},
               node.title)]


RULES: dict[str, CompileRule] = {
    "ControlNetLoader": CompileRule(lower=_lower_controlnet),
    "DiffControlNetLoader": CompileRule(
        lower=lambda node, lowering: _lower_controlnet(node, lowering, with_model=True)),
}
