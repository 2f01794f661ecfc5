"""The strict reference for the runtime's overhead: a whole txt2img's model work in one call.

:func:`build` writes one ONNX graph that does what a comfyc program's stage calls do for a
CFG Euler txt2img, with no Python between them: the sampler-step graph unrolled over every
step (each copy pruned to the one head Euler reads, the weights shared), ``process_out``, the
VAE decoder and VAEDecode's ``clamp((x + 1) / 2, 0, 1)`` in NHWC. One ``session.run`` of it
is the least time any runtime could spend on that work on this onnxruntime; a program's time
above it is everything the runtime adds (the seed's noise, the schedule, Python between
calls, per-call bindings, the heads the sampler does not read, PNG encoding and the file).

Only for benchmarks: the graph is tied to one step count, takes seconds to make a session
of (tens of thousands of nodes) and gives the image within float rounding of the program's,
not bit for bit (onnxruntime fuses the unrolled graph differently).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def _needed(graph, outputs: Iterable[str]) -> list:  # type: ignore[no-untyped-def]
    """The nodes of ``graph`` that ``outputs`` depend on, in graph order."""
    producers = {name: node for node in graph.node for name in node.output}
    keep: set[int] = set()
    seen: set[str] = set()
    todo = list(outputs)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is not None:
            keep.add(id(node))
            todo.extend(v for v in node.input if v)
    return [node for node in graph.node if id(node) in keep]


def build(step_path: str | Path, vae_path: str | Path, steps: int, scale: float,
          shift: float, out_path: str | Path, head: str = "euler") -> int:
    """Write the unrolled txt2img graph; returns its node count.

    Inputs: ``x_in`` (the first step's latent, model space), ``context`` (both CFG rows),
    ``coefs`` ``[steps, 17]`` and ``timesteps`` ``[steps, 2b]`` (what the program feeds the
    step graph, row by row). Output: ``image`` ``[b, H, W, 3]`` in [0, 1].
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    step = onnx.load(str(step_path))
    vae = onnx.load(str(vae_path))
    sg, vg = step.graph, vae.graph
    weights = {t.name for t in sg.initializer}
    body = _needed(sg, [head])
    nodes = []
    initializers = list(sg.initializer)
    x = "x_in"
    for i in range(steps):
        index = f"step_index_{i}"
        initializers.append(numpy_helper.from_array(np.array(i, np.int64), index))
        nodes.append(helper.make_node("Gather", ["coefs", index], [f"coefs_{i}"], axis=0,
                                      name=f"coefs_{i}"))
        nodes.append(helper.make_node("Gather", ["timesteps", index], [f"timestep_{i}"],
                                      axis=0, name=f"timestep_{i}"))
        names = {"timestep": f"timestep_{i}", "encoder_hidden_states": "context",
                 "step_x": x, "step_old": x, "step_noise": x, "step_coefs": f"coefs_{i}",
                 "": ""}

        def rename(value: str, i: int = i, names: dict[str, str] = names) -> str:
            if value in names:
                return names[value]
            return value if value in weights else f"s{i}/{value}"

        for node in body:
            copied = copy.deepcopy(node)
            copied.name = f"s{i}/{node.name}"
            copied.input[:] = [rename(v) for v in node.input]
            copied.output[:] = [rename(v) for v in node.output]
            nodes.append(copied)
        x = f"s{i}/{head}"
    initializers.append(numpy_helper.from_array(np.array(scale, np.float32), "latent_scale"))
    latent = "latent"
    nodes.append(helper.make_node("Div", [x, "latent_scale"], ["latent_scaled"],
                                  name="process_out"))
    if shift:
        initializers.append(numpy_helper.from_array(np.array(shift, np.float32),
                                                    "latent_shift"))
        nodes.append(helper.make_node("Add", ["latent_scaled", "latent_shift"], [latent],
                                      name="process_out_shift"))
    else:
        nodes.append(helper.make_node("Identity", ["latent_scaled"], [latent]))
    vae_input = vg.input[0].name

    def vae_name(value: str) -> str:
        if not value:
            return ""
        return latent if value == vae_input else f"vae/{value}"

    for node in vg.node:
        copied = copy.deepcopy(node)
        copied.name = f"vae/{node.name}"
        copied.input[:] = [vae_name(v) for v in node.input]
        copied.output[:] = [vae_name(v) for v in node.output]
        nodes.append(copied)
    for tensor in vg.initializer:
        copied = copy.deepcopy(tensor)
        copied.name = f"vae/{tensor.name}"
        initializers.append(copied)
    for name, value in (("one", 1.0), ("two", 2.0), ("zero", 0.0)):
        initializers.append(numpy_helper.from_array(np.array(value, np.float32), name))
    decoded = vae_name(vg.output[0].name)
    nodes += [helper.make_node("Add", [decoded, "one"], ["post_1"]),
              helper.make_node("Div", ["post_1", "two"], ["post_2"]),
              helper.make_node("Max", ["post_2", "zero"], ["post_3"]),
              helper.make_node("Min", ["post_3", "one"], ["post_4"]),
              helper.make_node("Transpose", ["post_4"], ["image"], perm=[0, 2, 3, 1])]

    def value_info(name: str, like) -> object:  # type: ignore[no-untyped-def]
        copied = copy.deepcopy(like)
        copied.name = name
        return copied

    inputs = {v.name: v for v in sg.input}
    graph = helper.make_graph(
        nodes, "txt2img",
        [value_info("x_in", inputs["step_x"]),
         value_info("context", inputs["encoder_hidden_states"]),
         helper.make_tensor_value_info("coefs", TensorProto.FLOAT, [steps, None]),
         helper.make_tensor_value_info("timesteps", TensorProto.FLOAT, [steps, None])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=list(step.opset_import))
    model.ir_version = step.ir_version
    onnx.save(model, str(out_path))
    return len(nodes)
