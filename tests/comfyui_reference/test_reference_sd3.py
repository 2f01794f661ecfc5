"""comfyc against the real ComfyUI on SD3 files (the ``sd3`` recording set; runs in CI).

The ``sd3`` set (``recordings/sd3``, ``record.py --set sd3``) was made by ComfyUI 4f874c5e on
the CPU from separate seeded random-weight files (``models.write_sd3_models``): an MMDiT that
ComfyUI's detection takes for SD3 (2 joint blocks of width 128; ComfyUI derives the depth from
the width, so the published 24-block width is not needed), SD3's published CLIP-L and CLIP-G
(ComfyUI builds them from fixed configs) and its published 16-channel VAE, loaded by
UNETLoader, DualCLIPLoader (type ``sd3``, no T5) and VAELoader as users load SD3. Cases:
euler/simple; ModelSamplingSD3 with shift 2 and euler_ancestral/sgm_uniform (the ancestral
noise of 16-channel latents); img2img through the SD3 VAE's encoder with dpmpp_2m/beta.

The test regenerates the files (1.8 GB), checks their SHA-256 against the recording, and runs
every case on comfyc's torch path and through one compiled artifact, comparing 8-bit pixels with
ComfyUI's PNGs within the SD1.5 set's bounds (max 1 level, mean 0.002) and the PNGs' prompt
chunks with ComfyUI's. ``COMFYC_REFERENCE_WORK=/some/folder`` keeps the regenerated files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import RECORDINGS, Models, Reference, Runner
from .test_reference import _check

HAVE_RECORDINGS = (RECORDINGS / "sd3" / "manifest.json").is_file()
pytestmark = pytest.mark.skipif(not HAVE_RECORDINGS,
                                reason="no sd3 recording (record.py --set sd3)")


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """The regenerated, hash-checked SD3 files and a runner for the sd3 cases."""
    reference = Reference("sd3")
    keep = os.environ.get("COMFYC_REFERENCE_WORK")
    root = Path(keep) / "sd3" if keep else tmp_path_factory.mktemp("comfyui-reference-sd3")
    try:
        models = Models(root, reference.manifest["model_sha256"], reuse=bool(keep), which="sd3")
        yield Runner(models, root / "work", artifact_cases=reference.cases)
    finally:
        shutil.rmtree(root / "work" if keep else root, ignore_errors=True)


def test_sd3_matches_comfyui(runner: Runner) -> None:
    """Every recorded SD3 case matches ComfyUI's PNGs on the torch path and from one artifact."""
    reference = Reference("sd3")
    cases = list(reference.cases)
    assert len(cases) == 3, "the sd3 recording lacks cases"
    failures = _check(runner, cases, cases, reference_of=lambda case: reference)
    assert not failures, "differences from ComfyUI:\n" + "\n".join(failures)
