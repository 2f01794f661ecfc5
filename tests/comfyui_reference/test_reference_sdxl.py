"""comfyc against the real ComfyUI on an SDXL-architecture checkpoint (heavy; off by default).

The ``sdxl`` recording set (``recordings/sdxl``, ``record.py --set sdxl``) was made by ComfyUI on
the CPU with a seeded random-weight checkpoint at SDXL's published architecture
(``models.write_sdxl_models``: 6.9 GB in float16; ComfyUI's detection takes nothing smaller for
SDXL). The tests regenerate that file from its seed, check its SHA-256 against the recording,
and run every SDXL case on comfyc's torch path and through one compiled artifact (both cases
side by side), comparing 8-bit pixels with ComfyUI's PNGs within the SD1.5 set's bounds (max 1
level, mean 0.002).

Cost (measured on two busy cores): about 17 GB of disk at the peak (the 6.9 GB checkpoint and a
10 GB artifact), 14-15 GB of memory (the UNet in float32) and 2-3 minutes, so it runs only when
asked (``make test`` skips it)::

    COMFYC_REFERENCE_HEAVY=1 .venv/bin/python -m pytest -q -m slow \\
        tests/comfyui_reference/test_reference_sdxl.py

``COMFYC_REFERENCE_WORK=/some/folder`` keeps the regenerated checkpoint there (reused while its
hash matches) instead of a temporary folder that is deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import RECORDINGS, Models, Reference, Runner
from .test_reference import _check

HAVE_RECORDINGS = (RECORDINGS / "sdxl" / "manifest.json").is_file()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_RECORDINGS, reason="no sdxl recording (record.py --set sdxl)"),
    pytest.mark.skipif(os.environ.get("COMFYC_REFERENCE_HEAVY") != "1",
                       reason="SDXL-size: 7 GB of weights, ~16 GB of memory; "
                              "COMFYC_REFERENCE_HEAVY=1"),
]


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """The regenerated, hash-checked SDXL checkpoint and a runner for the sdxl cases."""
    reference = Reference("sdxl")
    keep = os.environ.get("COMFYC_REFERENCE_WORK")
    root = Path(keep) if keep else tmp_path_factory.mktemp("comfyui-reference-sdxl")
    try:
        models = Models(root, reference.manifest["model_sha256"], reuse=bool(keep),
                        which="sdxl")
        yield Runner(models, root / "work", artifact_cases=reference.cases)
    finally:
        if keep:
            shutil.rmtree(root / "work", ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


def _check_path(runner: Runner, path: str) -> None:
    reference = Reference("sdxl")
    cases = list(reference.cases)
    assert cases, "no sdxl case is recorded"
    failures = _check(runner, cases if path == "torch" else [],
                      cases if path == "artifact" else [], reference_of=lambda case: reference)
    assert not failures, "differences from ComfyUI:\n" + "\n".join(failures)


def test_sdxl_torch_path_matches_comfyui(runner: Runner) -> None:
    """Every recorded SDXL case matches ComfyUI's PNGs on the torch path."""
    _check_path(runner, "torch")


def test_sdxl_artifact_matches_comfyui(runner: Runner) -> None:
    """Every recorded SDXL case matches ComfyUI's PNGs from one compiled artifact."""
    _check_path(runner, "artifact")
