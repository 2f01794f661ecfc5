"""comfyc against PNGs recorded from the real ComfyUI (``record.py``; bench/fidelity.py reports).

The recordings (``recordings/current``: ComfyUI at the commit in its manifest, noise mode
``cpu``; ``recordings/legacy``: ComfyUI before its #11528, noise mode ``cpu-legacy``) were made
on a seeded random-weight checkpoint with SD1.5's exact architecture (and, for the
``controlnet*`` cases, a seeded ControlNet at the published SD1.5 ControlNet architecture). The
tests regenerate the model files with the same seeded code, check their SHA-256 against the
recording, and run cases on comfyc's torch path and through a compiled artifact, comparing 8-bit
pixels with ComfyUI's. The SDXL set is ``test_reference_sdxl.py``'s (a heavy tier, off by
default).

Cost: the SD1.5-size checkpoint (2.1 GB regenerated, about 4 GB loaded) dominates, and each
compiled artifact costs a compile and a load of its own. ``test_matches_comfyui`` (one test
item, so that xdist workers do not load the model twice) runs ``CI_CASES`` on the torch path and
``CI_ARTIFACT_CASES`` through one artifact: a representative subset chosen to keep this folder
near three minutes on two free cores (about 9 GB of memory at the peak, 10 GB of disk while the
artifact exists; both freed afterwards). The ControlNet case adds about 25 s of that (measured
164 s -> 187 s for the test item on two busy cores: 15 s to write the 0.7 GB ControlNet, 10 s
on the torch path, the rest in the artifact). Every recorded case, both paths, runs with
``COMFYC_REFERENCE_ALL=1`` (``test_every_recorded_case``, marked slow too), and
``bench/fidelity.py`` prints the full table.

Bounds, in 8-bit levels: max 1 (the issue's 1/255) for every case (``bound_for``), including
the ancestral and SDE samplers, whose noise comfyc reproduces exactly; mean 0.002
(``mean_bound_for``: ComfyUI against itself with another attention kernel differs by a mean of
0.0001-0.0003; all 77 recorded cases measured at most 0.0004 on the torch path, apart from the
ones in ``WIDER_MEANS``; sigmas that were off in the last bits gave 0.0008-0.0018).
Each check also compares the PNG's ``prompt`` chunk with ComfyUI's for the same workflow.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from comfyc.runtime.samplers import noise_mode_matters

from .cases import CASES, LEGACY_CASES, SAMPLERS, SCHEDULERS, Case
from .harness import RECORDINGS, Diff, Models, Reference, Runner, compare

HAVE_RECORDINGS = (RECORDINGS / "current" / "manifest.json").is_file()
pytestmark = pytest.mark.skipif(not HAVE_RECORDINGS, reason="no recordings (run record.py)")

#: Cases the default test item runs on the torch path: ancestral noise of both ComfyUI versions
#: (with a batch and a seed above 2**63), an SDE sampler, img2img (LoadImage, VAEEncode, the
#: prompt chunk's is_changed), a LoRA, a textual-inversion embedding and a ControlNet with a
#: timestep range.
CI_CASES: tuple[str, ...] = (
    "sampler_dpmpp_2m_sde",
    "img2img",
    "lora",
    "embedding",
    "batch2_ancestral_large_seed",
    "legacy_euler_ancestral",
    "controlnet_range",
)
#: The CI cases that also run through a compiled artifact (one compile: they are side by side
#: in one workflow).
CI_ARTIFACT_CASES: tuple[str, ...] = ("img2img", "lora", "embedding",
                                      "batch2_ancestral_large_seed", "controlnet_range")

#: Cases allowed a wider max difference than 1/255 (levels), with the measured cause.
WIDER_BOUNDS: dict[str, float] = {}
#: Cases allowed a wider mean difference, with the measured cause.
#: (Empty: the LoRA case needed 0.05 until comfyc rounded the text encoders' LoRA-patched weights
#: to float16 as ComfyUI does; it measured 0.031 before and 0.0003 after.)
WIDER_MEANS: dict[str, float] = {}


def bound_for(case: Case) -> float:
    """The allowed max pixel difference (8-bit levels) for a case."""
    return WIDER_BOUNDS.get(case.name, 1.0)


def mean_bound_for(case: Case) -> float:
    """The allowed mean pixel difference (8-bit levels) for a case."""
    return WIDER_MEANS.get(case.name, 0.002)


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """Regenerated, hash-checked model files and one comfyc model cache for every case; the
    folder (2 GB of model files, artifacts) is deleted afterwards."""
    reference = Reference("current")
    root = tmp_path_factory.mktemp("comfyui-reference")
    try:
        models = Models(root, reference.manifest["model_sha256"])
        every = os.environ.get("COMFYC_REFERENCE_ALL") == "1"
        chosen = (*CASES, *LEGACY_CASES) if every else tuple(_cases(CI_ARTIFACT_CASES))
        yield Runner(models, root / "work", artifact_cases=chosen)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _reference_of(case: Case) -> Reference:
    return Reference("legacy" if case.noise_mode == "cpu-legacy" else "current")


def _check(runner: Runner, cases: list[Case], artifact_cases: list[Case],
           reference_of: Callable[[Case], Reference] = _reference_of) -> list[str]:
    """Run cases on the torch path and ``artifact_cases`` through artifacts too (either may be
    empty); returns one line per failure. ``reference_of`` gives each case's recording set."""
    failures = []
    by_name = {c.name: c for c in (*cases, *artifact_cases)}
    for case in by_name.values():
        reference_of(case).check_workflow(case)
    got = runner.run_cases(cases, ("torch",)) if cases else {}
    if artifact_cases:
        got.update(runner.run_cases(artifact_cases, ("artifact",)))
    for (name, path), images in got.items():
        case = by_name[name]
        diff: Diff = compare(images, reference_of(case).images(case))
        print(f"{name} ({path}): {diff}")
        if diff.max > bound_for(case) or diff.mean > mean_bound_for(case):
            failures.append(f"{name} ({path}): {diff} > max {bound_for(case):.0f}, "
                            f"mean {mean_bound_for(case)}")
    for case in cases:
        failures += _provenance(runner.png_text[case.name], reference_of(case), case)
    print("timings:", {k: round(v, 1) for k, v in runner.timings.items()})
    return failures


def _provenance(chunks: dict[str, str], reference: Reference, case: Case) -> list[str]:
    """comfyc's PNG carries ComfyUI's ``prompt`` chunk for the same workflow, and the noise
    mode when it shaped the image (``comfyc`` chunk)."""
    failures = []
    ours = json.loads(chunks["prompt"])
    if ours != reference.png_prompt(case):
        failures.append(f"{case.name}: the PNG's prompt chunk differs from ComfyUI's: {ours}")
    matters = any(noise_mode_matters(node["inputs"]["sampler_name"])
                  for node in case.prompt.values() if "sampler_name" in node["inputs"])
    record = json.loads(chunks["comfyc"]) if "comfyc" in chunks else None
    if record != ({"noise_mode": case.noise_mode} if matters else None):
        failures.append(f"{case.name}: the PNG's noise mode record is {record}")
    return failures


def _cases(names: tuple[str, ...]) -> list[Case]:
    by_name = {c.name: c for c in (*CASES, *LEGACY_CASES)}
    recorded = {c.name for which in ("current", "legacy")
                if (RECORDINGS / which / "manifest.json").is_file()
                for c in Reference(which).cases}
    return [by_name[n] for n in names if n in recorded]


def test_matches_comfyui(runner: Runner) -> None:
    """The CI subset matches ComfyUI's PNGs on the torch path and from an artifact."""
    cases = _cases(CI_CASES)
    assert cases, "no CI case is recorded"
    failures = _check(runner, cases, _cases(CI_ARTIFACT_CASES))
    assert not failures, "differences from ComfyUI:\n" + "\n".join(failures)
    if any(c.name == "embedding" for c in cases):
        _embedding_matters(runner)


def _embedding_matters(runner: Runner) -> None:
    """The control of the ``embedding`` case: with the ``embedding:NAME`` words taken out of
    its prompts, comfyc no longer gives ComfyUI's picture (the vectors decide pixels)."""
    import dataclasses
    import re

    case = next(c for c in CASES if c.name == "embedding")
    prompt = case.workflow()
    for node_id in ("2", "3"):
        text = prompt[node_id]["inputs"]["text"]
        prompt[node_id]["inputs"]["text"] = re.sub(r"\(?embedding:[^\s,)]+\)?", "", text)
    images = runner.torch_path(dataclasses.replace(case, prompt=prompt))
    diff = compare(images, _reference_of(case).images(case))
    print(f"embedding words removed (torch): {diff}")
    assert diff.max > 8, f"the embedding case does not depend on its embedding: {diff}"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("COMFYC_REFERENCE_ALL") != "1",
                    reason="every case takes about an hour on 2 cores; COMFYC_REFERENCE_ALL=1")
def test_every_recorded_case(runner: Runner) -> None:
    """Every recorded case (both sets) matches ComfyUI on both paths."""
    cases = [*Reference("current").cases]
    if (RECORDINGS / "legacy" / "manifest.json").is_file():
        cases += Reference("legacy").cases
    failures = _check(runner, cases, cases)
    assert not failures, "differences from ComfyUI:\n" + "\n".join(failures)


def test_every_case_is_recorded() -> None:
    """Every case of cases.py has a recording (both sets); an unfinished recording is xfail."""
    missing = [c.name for c in CASES if c.name not in Reference("current").manifest["cases"]]
    legacy = RECORDINGS / "legacy" / "manifest.json"
    recorded_legacy = Reference("legacy").manifest["cases"] if legacy.is_file() else {}
    # NOTE: ComfyUI before #11528 has no exp_heun_2_x0_sde; that legacy case cannot exist.
    missing += [c.name for c in LEGACY_CASES
                if c.name not in recorded_legacy and c.sampler != "exp_heun_2_x0_sde"]
    if missing:
        pytest.xfail(f"{len(missing)} cases not recorded yet (record.py --only NAMES): "
                     + " ".join(missing))


def test_recordings_are_consistent() -> None:
    """Recorded cases carry the workflow cases.py builds, ComfyUI's commit, PNGs and latents."""
    reference = Reference("current")
    manifest = reference.manifest
    assert len(manifest["comfyui_commit"]) == 40
    covered = {c.sampler for c in CASES if c.kind == "sampler"}
    assert covered == set(SAMPLERS) and len(SAMPLERS) == 44
    assert {c.prompt["5"]["inputs"]["scheduler"] for c in CASES if c.kind == "scheduler"} == \
        set(SCHEDULERS)
    for case in reference.cases:
        reference.check_workflow(case)
        images = reference.images(case)
        assert images and all(i.dtype == np.uint8 for i in images)
        assert reference.latent(case).ndim == 4


def test_controlnet_decides_pixels() -> None:
    """The control of the ``controlnet`` cases: ComfyUI's picture with the random-weight
    ControlNet is far from the same workflow without it (``sampler_euler``), so matching it
    checks the ControlNet's residuals, not just the sampler."""
    reference = Reference("current")
    recorded = {c.name: c for c in reference.cases}
    if "controlnet" not in recorded or "sampler_euler" not in recorded:
        pytest.skip("the controlnet or sampler_euler case is not recorded")
    diff = compare(reference.images(recorded["controlnet"]),
                   reference.images(recorded["sampler_euler"]))
    assert diff.max > 32 and diff.mean > 4, f"the ControlNet hardly changes the picture: {diff}"


def test_comfyui_png_prompt_chunk() -> None:
    """ComfyUI's PNGs carry the workflow as its ``prompt`` text chunk (provenance reference)."""
    from PIL import Image

    reference = Reference("current")
    case = reference.cases[0]
    name = reference.manifest["cases"][case.name]["images"][0]
    with Image.open(Path(reference.root) / name) as image:
        prompt = json.loads(image.text["prompt"])
    assert prompt == reference.manifest["cases"][case.name]["prompt"]


@pytest.mark.skipif(not (RECORDINGS / "legacy" / "manifest.json").is_file(),
                    reason="no legacy recording")
def test_legacy_recording_is_older_comfyui() -> None:
    """The legacy set comes from another ComfyUI commit, with the same model files (the
    current set has more: the embedding was added after the legacy recording)."""
    legacy, current = Reference("legacy"), Reference("current")
    assert legacy.commit != current.commit
    used = legacy.manifest["model_sha256"]
    assert used and all(current.manifest["model_sha256"].get(k) == v for k, v in used.items())
    assert all(c.noise_mode == "cpu-legacy" for c in legacy.cases)
