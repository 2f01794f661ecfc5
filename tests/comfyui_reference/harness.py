"""Run recorded cases through comfyc and compare with ComfyUI's PNGs (tests and bench share it).

* :class:`Reference` reads a recording set (``recordings/current``, ``recordings/legacy`` or
  ``recordings/sdxl``).
* :class:`Models` regenerates the seeded model files once per process and checks their SHA-256
  against the recording (a changed generator must fail loudly, not compare other weights).
* :class:`Runner` runs cases on the torch path (what ``comfyc run WORKFLOW`` does: validate,
  runtime params, :func:`~comfyc.compiler.lowering.program.lower_to_program`, ``program.run``)
  with one :class:`~comfyc.compiler.lowering.program.TorchModelCache` for every case, and
  through compiled artifacts (``compile_graph`` with ``--backend torch``, then
  :func:`comfyc.runtime.load`). To keep the SD1.5-size cost down, the artifact path compiles
  few artifacts: the txt2img workflow with ``sampler``, ``scheduler``, ``seed`` as runtime
  params (every sampler and scheduler case, legacy ones included), and per noise mode one
  workflow that holds every other chosen case side by side (their nodes renumbered; the
  checkpoint and equal prompts are shared by common-subexpression elimination as in any
  workflow). :meth:`Runner.run_cases` orders the work so that one SD1.5-size model set is
  loaded at a time (about 9 GB at the peak, while a LoRA variant is merged).
* Pixels are compared as 8-bit values, the PNGs comfyc writes against ComfyUI's.

Noise mode: each case runs with ``program.run(..., noise_mode=case.noise_mode)`` (what
``comfyc run --noise-mode`` passes): ``cpu`` for the current set, ``cpu-legacy`` for the set
recorded with ComfyUI before its #11528.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cases import CASES, LEGACY_CASES, SETS, Case
from .models import file_sha256, models_writer, write_inputs

__all__ = ["RECORDINGS", "Diff", "Models", "Reference", "Runner", "compare"]

RECORDINGS = Path(__file__).resolve().parent / "recordings"
_TXT2IMG_KINDS = ("sampler", "scheduler")
#: The SaveLatent node record.py adds to every recorded workflow.
_LATENT_NODE = "90"


@dataclass(frozen=True)
class Diff:
    """Pixel difference of one case, in 8-bit levels (0-255)."""

    max: float
    mean: float

    def __str__(self) -> str:
        return f"max {self.max:.0f}/255, mean {self.mean:.4f}/255"


def read_png(path: Path) -> np.ndarray:
    """An 8-bit RGB PNG as uint8 ``[H, W, 3]``."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_png_text(path: Path) -> dict[str, str]:
    """A PNG's text chunks (ComfyUI's ``prompt``, ``workflow``; comfyc's ``comfyc``)."""
    from PIL import Image

    with Image.open(path) as image:
        return dict(image.text)


def compare(got: list[np.ndarray], expected: list[np.ndarray]) -> Diff:
    """Max and mean absolute difference over every image of a case."""
    if len(got) != len(expected):
        raise AssertionError(f"comfyc wrote {len(got)} images, ComfyUI {len(expected)}")
    diffs = []
    for a, b in zip(got, expected, strict=True):
        if a.shape != b.shape:
            raise AssertionError(f"image shape {a.shape} != ComfyUI's {b.shape}")
        diffs.append(np.abs(a.astype(np.int16) - b.astype(np.int16)).astype(np.float64))
    stacked = np.concatenate([d.reshape(-1) for d in diffs])
    return Diff(float(stacked.max()), float(stacked.mean()))


class Reference:
    """One recording set: its manifest, ComfyUI's images and latents."""

    def __init__(self, which: str) -> None:
        self.which = which
        self.root = RECORDINGS / which
        self.manifest: dict[str, Any] = json.loads((self.root / "manifest.json").read_text())
        self.cases: tuple[Case, ...] = tuple(
            c for c in SETS[which]
            if c.name in self.manifest["cases"]
        )

    @property
    def commit(self) -> str:
        """The ComfyUI commit the set was recorded with."""
        return str(self.manifest["comfyui_commit"])

    def images(self, case: Case) -> list[np.ndarray]:
        """ComfyUI's images of a case."""
        return [read_png(self.root / name) for name in self.manifest["cases"][case.name]["images"]]

    def png_prompt(self, case: Case) -> dict[str, Any]:
        """The ``prompt`` chunk of ComfyUI's first PNG of a case, without record.py's
        SaveLatent node: what comfyc's PNG of the same workflow must carry."""
        name = self.manifest["cases"][case.name]["images"][0]
        prompt = json.loads(read_png_text(self.root / name)["prompt"])
        prompt.pop(_LATENT_NODE, None)
        return prompt

    def latent(self, case: Case) -> np.ndarray:
        """ComfyUI's sampled LATENT of a case."""
        with np.load(self.root / "latents.npz") as z:
            return z[case.name]

    def check_workflow(self, case: Case) -> None:
        """The recorded workflow is the case's (the case code was not changed since)."""
        recorded = dict(self.manifest["cases"][case.name]["prompt"])
        recorded.pop(_LATENT_NODE, None)
        if recorded != case.workflow():
            raise AssertionError(f"{case.name}: the workflow differs from the recorded one; "
                                 "re-record (tests/comfyui_reference/record.py)")


class Models:
    """The seeded model files, regenerated into ``root`` and checked against the recording
    (``which``: the recording set whose files they are; ``sdxl`` has its own checkpoint)."""

    def __init__(self, root: Path, expected: dict[str, str], reuse: bool = False,
                 which: str = "current") -> None:
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.input_dir = self.root / "input"
        self.write_s = 0.0
        got: dict[str, str] = {}
        existing = {name: self.models_dir / name for name in expected}
        started = time.perf_counter()
        if reuse and all(p.is_file() for p in existing.values()):
            # NOTE: files left by an earlier run are used when their hashes still match.
            got = {name: file_sha256(path) for name, path in existing.items()}
        self.hash_s = time.perf_counter() - started
        if got != expected:
            started = time.perf_counter()
            paths = models_writer(which)(self.models_dir)
            self.write_s = time.perf_counter() - started
            started = time.perf_counter()
            # NOTE: files added to the set after a recording (the embedding, the ControlNet)
            # are not in it.
            got = {name: file_sha256(path) for name, path in paths.items() if name in expected}
            self.hash_s = time.perf_counter() - started
        write_inputs(self.input_dir)
        if got != expected:
            raise AssertionError(
                "the regenerated model files differ from the recorded ones "
                f"(got {got}, recorded {expected}); the synthetic-weight generator changed: "
                "re-record with tests/comfyui_reference/record.py")


def _renumber(prompt: dict[str, Any], offset: int) -> dict[str, Any]:
    """A workflow's node ids shifted by ``offset`` (links follow)."""
    out: dict[str, Any] = {}
    for node_id, node in prompt.items():
        inputs = {k: ([str(int(v[0]) + offset), v[1]] if isinstance(v, list) else v)
                  for k, v in node["inputs"].items()}
        out[str(int(node_id) + offset)] = {"class_type": node["class_type"], "inputs": inputs}
    return out


@dataclass
class Runner:
    """Runs cases on comfyc's torch path and through compiled artifacts (shared model cache)."""

    models: Models
    work: Path
    #: Cases that may go through artifacts: the non-txt2img ones of each noise mode share one
    #: merged artifact, compiled for exactly these cases (pick the ones you will run).
    artifact_cases: tuple[Case, ...] = (*CASES, *LEGACY_CASES)
    timings: dict[str, float] = field(default_factory=dict)
    #: The text chunks of the first PNG each case wrote on the torch path (provenance checks).
    png_text: dict[str, dict[str, str]] = field(default_factory=dict)
    _cache: Any = None
    _artifacts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from comfyc.compiler.lowering.program import TorchModelCache

        self.work.mkdir(parents=True, exist_ok=True)
        self._cache = TorchModelCache(str(self.models.models_dir))

    def _graph(self, prompt: dict[str, Any], name: str) -> Any:
        from comfyc.frontends.load import load_workflow

        path = self.work / f"{name}.json"
        path.write_text(json.dumps(prompt))
        return load_workflow(str(path), self._catalog())

    @staticmethod
    def _catalog() -> Any:
        from comfyc.compiler.catalog import default_catalog

        return default_catalog()

    def _images(self, output_dir: Path, prefix: str) -> list[np.ndarray]:
        # NOTE: exactly SaveImage's ``<prefix>_<counter>_.png``: in a merged artifact's output
        # folder ``controlnet_*`` would also match the ``controlnet_range_*`` files.
        files = sorted(p for p in output_dir.glob(f"{prefix}_*_.png")
                       if p.name[len(prefix) + 1:-len("_.png")].isdigit())
        return [read_png(p) for p in files]

    def torch_path(self, case: Case) -> list[np.ndarray]:
        """``comfyc run WORKFLOW`` (torch backend) in this process; the written PNGs."""
        from comfyc.compiler.lowering.program import lower_to_program
        from comfyc.compiler.passes.base import PassContext, PassManager
        from comfyc.compiler.passes.runtime_params import RuntimeParamsPass
        from comfyc.compiler.passes.validate import ValidatePass

        catalog = self._catalog()
        graph = self._graph(case.workflow(), case.name)
        context = PassContext(catalog)
        PassManager([ValidatePass(context), RuntimeParamsPass(context)])(graph)
        started = time.perf_counter()
        program = lower_to_program(graph, catalog, cache=self._cache)
        out = Path(tempfile.mkdtemp(prefix=f"{case.name}-", dir=self.work))
        program.run({}, output_dir=str(out), input_dir=str(self.models.input_dir),
                    noise_mode=case.noise_mode)
        self.timings[f"torch:{case.name}"] = time.perf_counter() - started
        self.png_text[case.name] = read_png_text(sorted(out.glob(f"{case.name}_*.png"))[0])
        return self._images(out, case.name)

    def _compile(self, key: str, prompt: dict[str, Any], params: list[str]) -> Any:
        """Compile once per key (torch stages) and load the artifact.

        NOTE: compile_graph loads the checkpoint with a model cache of its own, which is gone
        when it returns (sharing the runner's saved a load, but the compile lets go of the
        modules of folded stages in the cache it is given, and holding both at once was more
        memory than a 2-core CI machine has).
        """
        if key in self._artifacts:
            return self._artifacts[key]
        from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
        from comfyc.runtime import load

        graph = self._graph(prompt, key)
        options = CompileOptions(backend="torch", models_dir=str(self.models.models_dir),
                                 input_dir=str(self.models.input_dir),
                                 param_bindings=list(params))
        started = time.perf_counter()
        path = self.work / f"{key}.comfyc"
        compile_graph(graph, path, options)
        gc.collect()
        program = load(str(path))
        self.timings[f"compile:{key}"] = time.perf_counter() - started
        self._artifacts[key] = program
        return program

    def release(self) -> None:
        """Let go of the loaded checkpoint and artifacts, and delete the artifact folders
        (gigabytes each: torch stages store the weights); the next call loads what it needs."""
        self._cache.loaded.clear()
        for key in [k for k, v in self._artifacts.items() if not isinstance(v, Path)]:
            self._drop_artifact(key)
        gc.collect()

    def _drop_artifact(self, key: str) -> None:
        self._artifacts.pop(key, None)
        shutil.rmtree(self.work / f"{key}.comfyc", ignore_errors=True)

    def run_cases(self, cases: list[Case], paths: tuple[str, ...] = ("torch", "artifact"),
                  done: Callable[[Case, str, list[np.ndarray]], None] | None = None
                  ) -> dict[tuple[str, str], list[np.ndarray]]:
        """Every case on each path, in the order that holds the fewest models at once: all
        torch-path cases on one loaded checkpoint, then the artifacts one at a time.

        Args:
            cases: The cases.
            paths: ``torch`` and/or ``artifact``.
            done: ``done(case, path, images)`` after each case (progress reports).

        Returns:
            Images by ``(case name, path)``.
        """
        out: dict[tuple[str, str], list[np.ndarray]] = {}

        def one(case: Case, path: str) -> None:
            run = self.torch_path if path == "torch" else self.artifact_path
            out[(case.name, path)] = run(case)
            if done is not None:
                done(case, path, out[(case.name, path)])

        if "torch" in paths:
            for case in cases:
                one(case, "torch")
            self.release()
        if "artifact" in paths:
            for case in (c for c in cases if c.kind in _TXT2IMG_KINDS):
                one(case, "artifact")
            self.release()
            for case in sorted((c for c in cases if c.kind not in _TXT2IMG_KINDS),
                               key=lambda c: c.noise_mode):
                one(case, "artifact")
            self.release()
        return out

    def _txt2img_artifact(self) -> Any:
        template = next(c for c in CASES if c.kind == "sampler").workflow()
        return self._compile("txt2img", template, ["5.sampler_name=sampler",
                                                   "5.scheduler=scheduler", "5.seed=seed"])

    def _others_artifact(self, mode: str) -> Any:
        merged: dict[str, Any] = {}
        chosen = [c for c in self.artifact_cases
                  if c.kind not in _TXT2IMG_KINDS and c.noise_mode == mode]
        for index, case in enumerate(chosen):
            merged.update(_renumber(case.workflow(), 1000 * (index + 1)))
        return self._compile(f"others-{mode}", merged, [])

    def artifact_path(self, case: Case) -> list[np.ndarray]:
        """The case's images from a compiled artifact (``comfyc.runtime.load(...).run``)."""
        out = Path(tempfile.mkdtemp(prefix=f"{case.name}-artifact-", dir=self.work))
        if case.kind in _TXT2IMG_KINDS:
            program = self._txt2img_artifact()
            node = case.prompt["5"]["inputs"]
            params = {"sampler": node["sampler_name"], "scheduler": node["scheduler"],
                      "seed": node["seed"]}
            started = time.perf_counter()
            program.run(params, output_dir=str(out), input_dir=str(self.models.input_dir),
                        noise_mode=case.noise_mode)
            self.timings[f"artifact:{case.name}"] = time.perf_counter() - started
            # NOTE: the template's SaveImage prefix is the first sampler case's name.
            template_prefix = next(c for c in CASES if c.kind == "sampler").name
            return self._images(out, template_prefix)
        if case not in self.artifact_cases:
            raise ValueError(f"{case.name} is not among the runner's artifact_cases")
        key = f"others-{case.noise_mode}-run"
        if key not in self._artifacts:
            program = self._others_artifact(case.noise_mode)
            all_out = self.work / f"others-{case.noise_mode}-out"
            # NOTE: SaveImage counts on from files already there (a reused work folder).
            shutil.rmtree(all_out, ignore_errors=True)
            started = time.perf_counter()
            program.run({}, output_dir=str(all_out), input_dir=str(self.models.input_dir),
                        noise_mode=case.noise_mode)
            self.timings[f"artifact:others-{case.noise_mode}"] = time.perf_counter() - started
            # NOTE: its images are on disk; the program (its models) is not needed any more.
            self._drop_artifact(f"others-{case.noise_mode}")
            gc.collect()
            self._artifacts[key] = all_out
        return self._images(self._artifacts[key], case.name)


def default_work_dir() -> Path:
    """``$COMFYC_REFERENCE_WORK`` or a new temporary folder."""
    env = os.environ.get("COMFYC_REFERENCE_WORK")
    if env:
        Path(env).mkdir(parents=True, exist_ok=True)
        return Path(env)
    return Path(tempfile.mkdtemp(prefix="comfyc-reference-"))
