"""The sampler step inside the UNet's graph: one onnxruntime call per sampling step.

Between two UNet calls a sampler does a little arithmetic on the latent: the input scaling,
the x0 prediction of each CFG row, the CFG mix and the sampler's update. In numpy that is a
dozen small calls per step, each run with caches the UNet call has just evicted; on a small
UNet (the tiny model: a 4 ms call) they were most of the runtime's own time. This module
writes a second graph for an exported UNet, ``NAME.step.onnx``, which takes the latent
itself and returns the step's results, so the whole step is one ``session.run``::

    inputs   step_x[b,C,h,w]     the sampler's latent x (model space, unscaled)
             step_coefs[17]      denom, sigma, cfg, dt, ratio, coeff, a, b, v_denom, v_sqrt,
                                 s_noise, sigma_up, sde_a, sde_b, sde_c, sde_sigma, sde_scale
             step_old[b,C,h,w]   DPM-Solver++(2M)'s previous x0
             step_noise[b,C,h,w] the ancestral step's noise
                                 (old and noise: any array of x's shape when not read)
             timestep[2b], encoder_hidden_states[2b,T,D] (and SDXL's y[2b,A]) as the UNet's
    outputs  denoised            the CFG x0: uncond + (cond - uncond) * cfg
             euler               x + ((x - denoised) / sigma) * dt
             dpmpp_2m_first      ratio * x - coeff * denoised
             dpmpp_2m            ratio * x - coeff * (a * denoised - b * old)
             euler_ancestral     euler + (noise * s_noise) * sigma_up (dt = sigma_down - sigma)
             sde_first[_noise]   DPM++ 2M SDE: sde_a * x + sde_b * denoised (+ noise term)
             sde_second[_noise]  sde_first + sde_c * (denoised - old) (+ noise term); the
                                 noise term is ((noise * sde_sigma) * sde_scale) * s_noise

The UNet's rows are ``[negative, positive]``, each the latent scaled by ``1 / denom``
(``x / sqrt(sigma^2 + 1)``; 1 for flow models), as ComfyUI batches them. Each row's x0 is
``x - out * sigma`` (eps) or ``x / v_denom - out * sigma / v_sqrt`` (v-prediction, with
``v_denom = sigma^2 + 1``, ``v_sqrt = sqrt(v_denom)``), chosen when the graph is written. Every
head is the numpy expression of :mod:`comfyc.runtime.samplers` and :mod:`comfyc.runtime.cfg`
operation for operation in float32, so the step graph gives the same bits as the numpy path
(tests check this on whole images); the heads cost a few microseconds.

The step graph reads its weights from the UNet's own ``NAME.onnx.data`` (a UNet whose weights
were stored inside its ``.onnx`` file is re-saved with external data first), so an artifact
still holds each weight once. The runtime opens the step graph when a sampling run can use it
and the plain graph only when something else calls the UNet (see
:mod:`comfyc.runtime.backends.step_graph`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ExportError
from . import onnx_export

__all__ = ["COEFS", "OUTPUTS", "STEP_GRAPH_MAX_BYTES", "STEP_GRAPH_VERSION",
           "write_step_graph"]

#: The step graph's interface version (inputs, coefficients, outputs): the manifest records
#: it (``info["step_graph"]``) and a runtime uses only step graphs of the version it knows.
STEP_GRAPH_VERSION = 3

#: The scalars of ``step_coefs``, in order.
COEFS = ("denom", "sigma", "cfg", "dt", "ratio", "coeff", "a", "b", "v_denom", "v_sqrt",
         "s_noise", "sigma_up", "sde_a", "sde_b", "sde_c", "sde_sigma", "sde_scale")

#: The step graph's outputs, in order.
OUTPUTS = ("denoised", "euler", "dpmpp_2m_first", "dpmpp_2m", "euler_ancestral",
           "sde_first", "sde_second", "sde_first_noise", "sde_second_noise")

#: ``step_graph="auto"`` writes step graphs for UNets whose weights are at most this many
#: bytes: there a step's numpy arithmetic is a measurable share of the step (a few percent on
#: the tiny model), and a process that also needs the plain graph holds the weights twice.
#: At SD1.5 size the numpy arithmetic is under 0.1 % of a step.
STEP_GRAPH_MAX_BYTES = 512 * 1024 * 1024

#: The UNet inputs a step graph feeds through unchanged (besides ``sample``, which it makes).
_PASSED = ("timestep", "encoder_hidden_states", "y")


def _externalize(onnx: Any, path: Path) -> None:
    """Re-save ``path`` with every floating-point initializer in ``NAME.onnx.data``.

    Integer initializers (shapes, axes) stay inside the graph: onnxruntime's shape inference
    reads them when it loads a graph, and cannot read external data there.
    """
    import numpy as np
    from onnx import numpy_helper

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
              onnx.TensorProto.DOUBLE}
    model = onnx.load(str(path), load_external_data=False)
    if all(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
           if t.data_type in floats):
        return
    model = onnx.load(str(path))  # every tensor's data in memory
    data = onnx_export.data_path(path)
    tmp = data.with_name(data.name + ".tmp")
    with open(tmp, "wb") as handle:
        for tensor in model.graph.initializer:
            if tensor.data_type not in floats:
                continue
            array = np.ascontiguousarray(numpy_helper.to_array(tensor))
            offset = handle.tell()
            if offset % 64:
                handle.write(b"\0" * (64 - offset % 64))
                offset = handle.tell()
            handle.write(array.tobytes())
            name, dims, dtype = tensor.name, list(tensor.dims), tensor.data_type
            tensor.Clear()
            tensor.name, tensor.data_type = name, dtype
            tensor.dims.extend(dims)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", str(offset)),
                               ("length", str(array.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    os.replace(tmp, data)
    onnx.save_model(model, str(path))


def write_step_graph(path: str | Path, prediction: str, *, step_path: str | Path | None = None
                     ) -> Path:
    """Write the step graph of the exported UNet ``path`` (see the module docstring).

    Args:
        path: The UNet's ``NAME.onnx`` (inputs ``sample``, ``timestep``,
            ``encoder_hidden_states`` and optionally ``y``; output ``out_sample``). Its inline
            weights move to ``NAME.onnx.data``.
        prediction: ``eps`` (also flow models' ``const``) or ``v_prediction``.
        step_path: Where to write; default ``NAME.step.onnx`` beside ``path``.

    Returns:
        The step graph's path.

    Raises:
        ExportError: The graph is not a plain UNet graph (other inputs, such as ControlNet
            residuals), or the prediction type is unknown.
    """
    onnx = onnx_export._require_onnx()
    from onnx import TensorProto, helper

    path = Path(path)
    kind = {"eps": "eps", "epsilon": "eps", "const": "eps",
            "v_prediction": "v_prediction", "v": "v_prediction"}.get(prediction)
    if kind is None:
        raise ExportError(f"{path.name}: no step graph for prediction type {prediction!r}; "
                          "expected eps or v_prediction")
    out = Path(step_path) if step_path is not None else path.with_suffix(".step.onnx")
    plain = onnx.load(str(path), load_external_data=False)
    names = [value.name for value in plain.graph.input]
    if "sample" not in names or set(names) - {"sample", *_PASSED} or [
            value.name for value in plain.graph.output] != ["out_sample"]:
        raise ExportError(f"{path.name}: a step graph needs a UNet with inputs sample, "
                          f"timestep, encoder_hidden_states (and y) and output out_sample; it "
                          f"has inputs {names}")
    opset = next((o.version for o in plain.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 18:
        raise ExportError(f"{path.name}: step graphs need ONNX opset 18 or later (Split with "
                          f"num_outputs); the graph has opset {opset}")
    _externalize(onnx, path)
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    sample = next(value for value in graph.input if value.name == "sample")
    sample_type = sample.type.tensor_type.elem_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in sample.type.tensor_type.shape.dim]
    graph.input.remove(sample)
    for value in list(graph.output):
        graph.output.remove(value)

    f32 = TensorProto.FLOAT
    latent = ["step_batch", *dims[1:]]
    graph.input.extend([
        helper.make_tensor_value_info("step_x", f32, latent),
        helper.make_tensor_value_info("step_coefs", f32, [len(COEFS)]),
        helper.make_tensor_value_info("step_old", f32, latent),
        helper.make_tensor_value_info("step_noise", f32, latent),
    ])
    c = {name: f"step/{name}" for name in COEFS}
    before = [
        helper.make_node("Split", ["step_coefs"], list(c.values()), axis=0,
                         num_outputs=len(COEFS), name="step/coefs"),
        helper.make_node("Div", ["step_x", c["denom"]], ["step/x_in"], name="step/scale"),
    ]
    rows = "step/rows"
    before.append(helper.make_node("Concat", ["step/x_in", "step/x_in"], [rows], axis=0,
                                   name="step/rows"))
    if sample_type != f32:  # fp16 stages: numpy's astype and Cast round alike.
        before.append(helper.make_node("Cast", [rows], ["sample"], to=sample_type,
                                       name="step/sample_cast"))
    else:
        before[-1].output[0] = "sample"
    after: list[Any] = []
    eps = "out_sample"
    if sample_type != f32:
        after.append(helper.make_node("Cast", ["out_sample"], ["step/out"], to=f32,
                                      name="step/out_cast"))
        eps = "step/out"

    def op(kind_: str, inputs: list[str], output: str) -> str:
        after.append(helper.make_node(kind_, inputs, [output], name=output))
        return output

    after.append(helper.make_node("Split", [eps], ["step/uncond", "step/cond"], axis=0,
                                  num_outputs=2, name="step/halves"))
    x0 = {}
    for side in ("uncond", "cond"):
        scaled = op("Mul", [f"step/{side}", c["sigma"]], f"step/{side}_scaled")
        if kind == "eps":
            x0[side] = op("Sub", ["step_x", scaled], f"step/{side}_x0")
        else:
            first = op("Div", ["step_x", c["v_denom"]], f"step/{side}_x_part")
            second = op("Div", [scaled, c["v_sqrt"]], f"step/{side}_out_part")
            x0[side] = op("Sub", [first, second], f"step/{side}_x0")
    spread = op("Sub", [x0["cond"], x0["uncond"]], "step/spread")
    op("Add", [x0["uncond"], op("Mul", [spread, c["cfg"]], "step/spread_cfg")], "denoised")
    slope = op("Div", [op("Sub", ["step_x", "denoised"], "step/x_minus_x0"), c["sigma"]],
               "step/d")
    op("Add", ["step_x", op("Mul", [slope, c["dt"]], "step/d_dt")], "euler")
    noise = op("Mul", [op("Mul", ["step_noise", c["s_noise"]], "step/noise_scaled"),
                       c["sigma_up"]], "step/noise_up")
    op("Add", ["euler", noise], "euler_ancestral")
    # DPM++ 2M SDE: a * x + b * x0, + c * (x0 - old) from the second step, + the tree's noise
    # times sigma_next, the noise scale and s_noise, in that order.
    first = op("Add", [op("Mul", [c["sde_a"], "step_x"], "step/sde_ax"),
                       op("Mul", [c["sde_b"], "denoised"], "step/sde_bx0")], "sde_first")
    second = op("Add", [first, op("Mul", [c["sde_c"], op("Sub", ["denoised", "step_old"],
                                                            "step/sde_diff")],
                                  "step/sde_cdiff")], "sde_second")
    sde_noise = op("Mul", [op("Mul", [op("Mul", ["step_noise", c["sde_sigma"]],
                                         "step/sde_n1"), c["sde_scale"]], "step/sde_n2"),
                           c["s_noise"]], "step/sde_n3")
    op("Add", [first, sde_noise], "sde_first_noise")
    op("Add", [second, sde_noise], "sde_second_noise")
    kept = op("Mul", [c["ratio"], "step_x"], "step/ratio_x")
    op("Sub", [kept, op("Mul", [c["coeff"], "denoised"], "step/coeff_x0")], "dpmpp_2m_first")
    mixed = op("Sub", [op("Mul", [c["a"], "denoised"], "step/a_x0"),
                       op("Mul", [c["b"], "step_old"], "step/b_old")], "step/x0_2m")
    op("Sub", [kept, op("Mul", [c["coeff"], mixed], "step/coeff_x0_2m")], "dpmpp_2m")
    graph.output.extend(helper.make_tensor_value_info(name, f32, latent) for name in OUTPUTS)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(before + nodes + after)
    # The inner graph's declared shape of "sample"/"out_sample" no longer binds anything.
    keep = [v for v in graph.value_info if v.name not in ("sample", "out_sample")]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update({"comfyc.step_graph": str(STEP_GRAPH_VERSION), "comfyc.step_prediction": kind})
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    out.unlink(missing_ok=True)
    onnx.save_model(model, str(out))
    return out
