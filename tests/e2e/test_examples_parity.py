"""Compiled artifacts on onnxruntime-CPU give the images of `comfyc run WORKFLOW` (PyTorch):
every example, and txt2img for every supported sampler, within 2/255 per pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
from comfyc.compiler.passes.base import PassContext, PassOptions
from comfyc.compiler.pipeline import run_pipeline
from comfyc.frontends.load import load_workflow
from comfyc.runtime import load
from comfyc.runtime.samplers import SUPPORTED_SAMPLERS
from tests.conftest import REPO

TINY = REPO / "runtime" / "models" / "tiny-digits.safetensors"
EXAMPLES = REPO / "examples"
INPUT = EXAMPLES / "input"

pytestmark = pytest.mark.skipif(not TINY.is_file(), reason="the tiny model is not built yet")


@pytest.fixture(scope="module")
def cache() -> TorchModelCache:
    """One model cache for the module."""
    return TorchModelCache()


def _torch_images(path: Path, cache: TorchModelCache, params: dict, bindings: list[str]
                  ) -> dict[str, np.ndarray]:
    graph = load_workflow(path)
    run_pipeline(graph, PassContext(options=PassOptions(param_bindings=bindings),
                                     models=cache))
    program = lower_to_program(graph, cache=cache)
    return program.run(params, input_dir=INPUT, save=False).images


def _sampler_binding(path: Path) -> list[str]:
    graph = load_workflow(path)
    node = next(n for n in graph.nodes if n.class_type == "KSampler")
    return [f"{node.id}.sampler_name=sampler"]


_COUNTS = ("nodes_before", "nodes_after", "eliminated", "merged", "folded", "lora_merged",
           "lora_runtime", "new_params", "schedules")


def _counts_agree(path: Path, artifact: Path) -> None:
    """`compile` (the manifest's stats), `inspect` (workflow and artifact) and `viz`
    (workflow and artifact) give the same count of everything the compiler did."""
    import argparse
    import io

    from comfyc.cli.commands.inspect import inspect_artifact, inspect_workflow
    from comfyc.cli.commands.viz import build_view
    from comfyc.runtime.artifact import read_manifest

    compiled = {k: read_manifest(artifact, verify=False).stats[k] for k in _COUNTS}
    args = argparse.Namespace(file=str(path), models_dir=None, param=[], json=True, after=None,
                              input_dir=str(INPUT), backend="ort-cpu", object_info=[])
    views = {
        "inspect": inspect_workflow(args, io.StringIO()),
        "inspect artifact": inspect_artifact(artifact)["stats"],
        "viz": build_view(path).stats,
        "viz artifact": build_view(artifact).stats,
    }
    for where, counts in views.items():
        assert {k: counts[k] for k in _COUNTS} == compiled, where


@pytest.mark.parametrize("name", ["txt2img", "img2img", "hires_lora", "inpaint", "area"])
def test_example_artifact_matches_torch(name: str, cache: TorchModelCache,
                                        tmp_path: Path) -> None:
    """Each example: ONNX artifact == PyTorch path within 2/255; every command reports the
    same counts of what the compiler did."""
    path = EXAMPLES / f"{name}.cfy"
    artifact = tmp_path / f"{name}.comfyc"
    compile_graph(load_workflow(path), artifact, CompileOptions(input_dir=str(INPUT)))
    _counts_agree(path, artifact)
    ours = load(artifact).run({}, input_dir=INPUT, save=False).images
    reference = _torch_images(path, cache, {}, [])
    assert ours.keys() == reference.keys() and ours
    for key in ours:
        diff = float(np.abs(ours[key] - reference[key]).max())
        assert diff <= 2 / 255, f"{name} output {key}: {diff * 255:.2f}/255"


def test_txt2img_every_sampler_matches_torch(cache: TorchModelCache, tmp_path: Path) -> None:
    """One artifact with the sampler as a runtime param, every supported sampler."""
    path = EXAMPLES / "txt2img.cfy"
    bindings = _sampler_binding(path)
    artifact = tmp_path / "samplers.comfyc"
    compile_graph(load_workflow(path), artifact, CompileOptions(param_bindings=bindings))
    program = load(artifact)
    worst = {}
    for sampler in SUPPORTED_SAMPLERS:
        params = {"sampler": sampler, "seed": 3}
        ours = program.run(params, save=False).images["image"]  # `output image`
        reference = _torch_images(path, cache, params, bindings)["image"]
        worst[sampler] = float(np.abs(ours - reference).max()) * 255
    bad = {k: v for k, v in worst.items() if v > 2}
    assert not bad, f"samplers over 2/255: {bad} (all: {worst})"
