"""comfyc's text DSL (``.cfy``): a readable, diffable form of a ComfyUI workflow.

One statement is one ComfyUI node; inputs are passed by name; ids and titles ride on ``@``
decorators, so JSON → DSL → JSON is lossless::

    param seed: INT = 42 [min=0]
    param prompt: STRING = "a handwritten digit seven"

    ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")
    positive = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)
    negative = CLIPTextEncode(text="", clip=ckpt.CLIP)
    latent = EmptyLatentImage(width=64, height=64, batch_size=1)
    sampler = KSampler(model=ckpt.MODEL, seed=seed, steps=20, cfg=5.0, sampler_name="euler",
                       scheduler="normal", positive=positive, negative=negative,
                       latent_image=latent, denoise=1.0)
    image = VAEDecode(samples=sampler, vae=ckpt.VAE)
    SaveImage(images=image, filename_prefix="digit")
    output image

Pipeline: :func:`~.parse.parse_module` (grammar.lark → :mod:`.ast`), then
:func:`~.lower.lower_module` (names, ids, catalogue checks → IR graph). The canonical printer
is :func:`comfyc.compiler.ir.printer.print_graph` (``str(graph)``); :mod:`.format` adds comments
back for ``comfyc fmt``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from comfyc.compiler.catalog import Catalog, default_catalog
from comfyc.compiler.ir import MISSING, Graph

from .lower import lower_module
from .parse import parse_module

__all__ = ["parse_dsl", "parse_module", "lower_module"]


def parse_dsl(text: str, file: str | None = None, catalog: Catalog | None = None) -> Graph:
    """Parse DSL text into an IR graph (not yet validated; ``validate_graph`` does that).

    Args:
        text: The source text.
        file: The path, for error locations (``FILE:LINE:COL``).
        catalog: Node schemas; the built-in catalogue when None.

    Returns:
        The graph: nodes in statement order, every node, input and param located in the
        source.

    Raises:
        WorkflowErrors: Syntax errors, or every name/catalogue/type problem found.
    """
    with _gc_paused():
        module = parse_module(text, file)
        graph = lower_module(module, catalog or default_catalog(), file)
    graph.source.file = file
    graph.source.prompt = source_prompt(graph)
    return graph


def source_prompt(graph: Graph) -> dict[str, Any] | None:
    """The API prompt a DSL graph stands for (params at their defaults, no ``_meta.dsl``):
    what images made from it embed as their ``prompt``."""
    from ..comfy_json.api import graph_to_api

    defaults = {p.name: (None if p.default is MISSING else p.default)
                for p in graph.params.values()}
    return graph_to_api(graph, params=defaults, dsl_meta=False)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a file becomes a graph.

    Parsing allocates tens of thousands of small objects that all stay alive; every
    allocation threshold crossed would scan them again (a third of a large file's parse time
    went there). Nothing collectable is made, so the pause frees nothing late.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
