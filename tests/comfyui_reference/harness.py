"""Run recorded cases through comfyc and compare with ComfyUI's PNGs (tests and bench share it).

* :class:`Reference` reads a recording set (``recordings/current`` or ``recordings/legacy``).
* :class:`Models` regenerates the seeded model files once per process and checks their SHA-256
  against the recording (a changed generator must fail loudly, not compare other weights).
* :class:`Runner` runs cases on the torch path (what ``comfyc run WORKFLOW`` does: validate,
  runtime params, :func:`~comfyc.compiler.lowering.program.lower_to_program`, ``program.run``)
  with one :class:`~comfyc.compiler.lowering.program.TorchModelCache` for every case, and
  through compiled artifacts (``compile_graph`` with ``--backend torch``, then
  :func:`comfyc.runtime.load`). To keep the SD1.5-size cost down, the artifact path compiles
  two artifacts for all cases: the txt2img workflow with ``sampler``, ``scheduler``, ``seed``
  as runtime params (every sampler and scheduler case, legacy ones included), and one workflow
  that holds every other case side by side (their nodes renumbered; the checkpoint and equal
  prompts are shared by common-subexpression elimination as in any workflow).
* Pixels are compared as 8-bit values, the PNGs comfyc writes against ComfyUI's.

Noise mode: until ``run``/``compile`` take a noise-mode param, a legacy case runs with
:func:`comfyc.runtime.samplers.sampler_noise_generator` swapped for the ``cpu-legacy`` one
(:func:`noise_mode`), the only draw that differs between ``cpu`` and ``cpu-legacy``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cases import CASES, LEGACY_CASES, Case
from .models import file_sha256, write_inputs, write_models

__all__ = ["RECORDINGS", "Diff", "Models", "Reference", "Runner", "compare", "noise_mode"]

RECORDINGS = Path(__file__).resolve().parent / "recordings"
_TXT2IMG_KINDS = ("sampler", "scheduler")


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
            c for c in {"current": CASES, "legacy": LEGACY_CASES}[which]
            if c.name in self.manifest["cases"]
        )

    @property
    def commit(self) -> str:
        """The ComfyUI commit the set was recorded with."""
        return str(self.manifest["comfyui_commit"])

    def images(self, case: Case) -> list[np.ndarray]:
        """ComfyUI's images of a case."""
        return [read_png(self.root / name) for name in self.manifest["cases"][case.name]["images"]]

    def latent(self, case: Case) -> np.ndarray:
        """ComfyUI's sampled LATENT of a case."""
        with np.load(self.root / "latents.npz") as z:
            return z[case.name]

    def check_workflow(self, case: Case) -> None:
        """The recorded workflow is the case's (the case code was not changed since)."""
        recorded = dict(self.manifest["cases"][case.name]["prompt"])
        recorded.pop("90", None)  # NOTE: the SaveLatent node record.py added
        if recorded != case.workflow():
            raise AssertionError(f"{case.name}: the workflow differs from the recorded one; "
                                 "re-record (tests/comfyui_reference/record.py)")


class Models:
    """The seeded model files, regenerated into ``root`` and checked against the recording."""

    def __init__(self, root: Path, expected: dict[str, str]) -> None:
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.input_dir = self.root / "input"
        started = time.perf_counter()
        paths = write_models(self.models_dir)
        self.write_s = time.perf_counter() - started
        write_inputs(self.input_dir)
        started = time.perf_counter()
        got = {name: file_sha256(path) for name, path in paths.items()}
        self.hash_s = time.perf_counter() - started
        if got != expected:
            raise AssertionError(
                "the regenerated model files differ from the recorded ones "
                f"(got {got}, recorded {expected}); the synthetic-weight generator changed: "
                "re-record with tests/comfyui_reference/record.py")


@contextlib.contextmanager
def noise_mode(mode: str) -> Iterator[None]:
    """Run the enclosed comfyc calls with ``mode``'s ancestral noise (see the module docstring).

    NOTE: a stand-in until the program takes a noise-mode param; then pass it there instead.
    """
    from comfyc.runtime import samplers
    from comfyc.runtime.noise import sampler_noise_generator

    if mode == "cpu":
        yield
        return
    original = samplers.sampler_noise_generator
    samplers.sampler_noise_generator = lambda _mode, seed: sampler_noise_generator(mode, seed)
    try:
        yield
    finally:
        samplers.sampler_noise_generator = original


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
    timings: dict[str, float] = field(default_factory=dict)
    _cache: Any = None
    _artifacts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from comfyc.compiler.lowering.program import TorchModelCache

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
        files = sorted(output_dir.glob(f"{prefix}_*.png"))
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
        with noise_mode(case.noise_mode):
            program.run({}, output_dir=str(out), input_dir=str(self.models.input_dir))
        self.timings[f"torch:{case.name}"] = time.perf_counter() - started
        return self._images(out, case.name)

    def _compile(self, key: str, prompt: dict[str, Any], params: list[str]) -> Any:
        """Compile once per key (torch stages), sharing this runner's loaded checkpoint."""
        if key in self._artifacts:
            return self._artifacts[key]
        from comfyc.compiler.lowering import program as program_module
        from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
        from comfyc.runtime import load

        graph = self._graph(prompt, key)
        options = CompileOptions(backend="torch", models_dir=str(self.models.models_dir),
                                 input_dir=str(self.models.input_dir),
                                 param_bindings=tuple(params))
        started = time.perf_counter()
        # NOTE: compile_graph makes its own model cache; handing it this runner's (the same
        # files) avoids loading the SD1.5-size checkpoint once more per artifact.
        original = program_module.TorchModelCache
        shared = self._cache
        program_module.TorchModelCache = lambda models_dir=None: shared  # type: ignore[assignment]
        try:
            compile_graph(graph, self.work / f"{key}.comfyc", options)
        finally:
            program_module.TorchModelCache = original  # type: ignore[assignment]
        program = load(str(self.work / f"{key}.comfyc"))
        self.timings[f"compile:{key}"] = time.perf_counter() - started
        self._artifacts[key] = program
        return program

    def _txt2img_artifact(self) -> Any:
        template = next(c for c in CASES if c.kind == "sampler").workflow()
        return self._compile("txt2img", template, ["5.sampler_name=sampler",
                                                   "5.scheduler=scheduler", "5.seed=seed"])

    def _others_artifact(self) -> Any:
        merged: dict[str, Any] = {}
        for index, case in enumerate(c for c in CASES if c.kind not in _TXT2IMG_KINDS):
            merged.update(_renumber(case.workflow(), 1000 * (index + 1)))
        return self._compile("others", merged, [])

    def artifact_path(self, case: Case) -> list[np.ndarray]:
        """The case's images from a compiled artifact (``comfyc.runtime.load(...).run``)."""
        out = Path(tempfile.mkdtemp(prefix=f"{case.name}-artifact-", dir=self.work))
        if case.kind in _TXT2IMG_KINDS:
            program = self._txt2img_artifact()
            node = case.prompt["5"]["inputs"]
            params = {"sampler": node["sampler_name"], "scheduler": node["scheduler"],
                      "seed": node["seed"]}
            saved = case.prompt["9"]["inputs"]["filename_prefix"]
            started = time.perf_counter()
            with noise_mode(case.noise_mode):
                program.run(params, output_dir=str(out), input_dir=str(self.models.input_dir),
                            )
            self.timings[f"artifact:{case.name}"] = time.perf_counter() - started
            # NOTE: the template's SaveImage prefix is the first sampler case's name.
            template_prefix = next(c for c in CASES if c.kind == "sampler").name
            images = self._images(out, template_prefix)
            del saved
            return images
        key = "others-run"
        if key not in self._artifacts:
            program = self._others_artifact()
            all_out = self.work / "others-out"
            started = time.perf_counter()
            program.run({}, output_dir=str(all_out), input_dir=str(self.models.input_dir))
            self.timings["artifact:others"] = time.perf_counter() - started
            self._artifacts[key] = all_out
        return self._images(self._artifacts[key], case.name)


def default_work_dir() -> Path:
    """``$COMFYC_REFERENCE_WORK`` or a new temporary folder."""
    env = os.environ.get("COMFYC_REFERENCE_WORK")
    if env:
        Path(env).mkdir(parents=True, exist_ok=True)
        return Path(env)
    return Path(tempfile.mkdtemp(prefix="comfyc-reference-"))
