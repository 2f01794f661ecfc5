"""Compile the txt2img example for the embedded tiny model and draw the ten digits.

Writes ten PNGs (digit_0 … digit_9), a contact sheet, the graph page (graph.html: the
workflow, what the compiler did to it, its stages with their backends and the times measured
here), and prints a timing table comparing the compiled artifact (onnxruntime) with the
in-memory PyTorch path. When scikit-learn and the repository's examples/ folder are present,
an independent digit classifier also reads the contact sheet. Needs no models folder and no
network: the tiny model ships with comfyc.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import require_extra

__all__ = ["DIGITS", "add_arguments", "run"]

#: Shown at the end of ``comfyc demo --help``.
EXAMPLES = """\
examples:
  comfyc demo
  comfyc demo -o /tmp/demo --seed 7
"""

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc demo``."""
    parser.add_argument("-o", "--output", default="demo-out", metavar="DIR",
                        help="where the images, contact sheet and artifact go")
    parser.add_argument("--seed", type=int, default=42, help="seed for every digit")


def _workflow_text() -> str:
    from comfyc import examples

    return examples.read_text("txt2img.cfy")


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc demo``."""
    require_extra("compiler")
    import numpy as np
    from PIL import Image

    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
    from comfyc.compiler.passes.base import PassContext
    from comfyc.compiler.pipeline import run_pipeline
    from comfyc.frontends.dsl import parse_dsl
    from comfyc.runtime import load
    from comfyc.runtime.files import make_tree_readable
    from comfyc.runtime.image_io import png_metadata

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    text = _workflow_text()

    def say(message: str) -> None:
        print(f"[demo] {message}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    artifact = out / "txt2img.comfyc"
    compile_graph(parse_dsl(text, "txt2img.cfy", default_catalog()), artifact,
                  CompileOptions(), progress=say)
    make_tree_readable(artifact)
    compile_s = time.perf_counter() - start
    program = load(artifact)
    images, times, stage_ms = [], [], {}
    for index, word in enumerate(DIGITS):
        params = program.resolve_params({"seed": args.seed,
                                         "prompt": f"a handwritten digit {word}"})
        t0 = time.perf_counter()
        result = program.run(params, output_dir=out, save=False)
        times.append(time.perf_counter() - t0)
        for name, row in result.timings.get("stages", {}).items():
            stage_ms.setdefault(name, []).append(1000 * float(row["median_s"]))
        image = next(iter(result.images.values()))
        # SaveImage's pixels (truncation) and chunks: each digit carries the workflow with
        # its own prompt and seed, so ComfyUI or `comfyc run digit_N.png` redraws it.
        pixels = (np.clip(image[0], 0, 1) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(out / f"digit_{index}.png", pnginfo=png_metadata(
            program.executed_prompt(params), program.executed_extra_pnginfo(params)))
        images.append(pixels)
        say(f"{params['prompt']!r}: {times[-1] * 1000:.0f} ms -> {out / f'digit_{index}.png'}")
    sheet = np.concatenate(images, axis=1)
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2),
                                  Image.NEAREST).save(out / "contact_sheet.png")
    graph_page = _write_graph_page(text, artifact, out / "graph.html", stage_ms)
    say(f"graph page -> {graph_page}")

    say("running the same workflow on the PyTorch path for comparison")
    graph = parse_dsl(text, "txt2img.cfy", default_catalog())
    cache = TorchModelCache()
    run_pipeline(graph, PassContext(models=cache))
    torch_program = lower_to_program(graph, cache=cache)
    torch_program.run({"seed": args.seed}, save=False)  # Warm-up.
    torch_times = []
    for word in DIGITS[:3]:
        t0 = time.perf_counter()
        torch_program.run({"seed": args.seed, "prompt": f"a handwritten digit {word}"},
                          save=False)
        torch_times.append(time.perf_counter() - t0)
    artifact_ms = 1000 * float(np.median(times[1:]))
    torch_ms = 1000 * float(np.median(torch_times))
    print(f"{'path':<34} {'per image':>10}")
    print(f"{'compiled artifact (onnxruntime)':<34} {artifact_ms:>7.0f} ms")
    print(f"{'in-memory program (PyTorch)':<34} {torch_ms:>7.0f} ms")
    print(f"{'speed-up':<34} {torch_ms / artifact_ms:>9.1f}x")
    print(f"{'compile time':<34} {compile_s:>8.1f} s")
    print(f"images: {out}/digit_0..9.png, contact sheet: {out / 'contact_sheet.png'}")
    print(f"graph page: {graph_page} (open it in a browser)")
    verdict = _classify(np.stack(images))
    if verdict:
        print(verdict)
    return 0


def _write_graph_page(text: str, artifact: Path, target: Path,
                      stage_ms: dict[str, list[float]]) -> Path:
    """graph.html for the artifact, with the stage times measured by this demo."""
    import statistics

    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.viz import render
    from comfyc.frontends.dsl import parse_dsl

    from .common import write_output
    from .viz import artifact_view

    source = parse_dsl(text, "txt2img.cfy", default_catalog())
    source.source.file = "examples/txt2img.cfy"
    view = artifact_view(artifact, source=source)
    view.title = "txt2img.cfy (comfyc demo)"
    for name, stage in view.stages.items():
        samples = stage_ms.get(name) or next(
            (v for k, v in stage_ms.items() if name.startswith(k) or k.startswith(name)), None)
        if samples and stage.median_ms is None:
            stage.median_ms = statistics.median(samples)
            stage.detail = (f"median over the demo's {len(samples)} images on "
                            f"{stage.backend}")
    write_output(render(view, "html"), str(target))
    return target


def _classify(images: object) -> str | None:
    """The independent digit classifier's verdict, when scikit-learn and examples/ exist."""
    import importlib.util

    import numpy as np

    path = _EXAMPLES / "tiny_model" / "classifier.py"
    if not path.is_file() or importlib.util.find_spec("sklearn") is None:
        return None
    spec = importlib.util.spec_from_file_location("comfyc_demo_classifier", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    predicted = [int(d) for d in module.train_classifier().classify(
        np.asarray(images, dtype=np.float32) / 255.0)]
    right = sum(p == d for d, p in enumerate(predicted))
    return (f"digit classifier (examples/tiny_model/classifier.py): {right}/10 recognised "
            f"(read as {predicted})")
