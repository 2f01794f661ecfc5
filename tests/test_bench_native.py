"""The overhead benchmark's strict reference (``bench/native_graph.py``) does the program's
model work: one onnxruntime call of the unrolled graph gives the program's image.

A reference that did less (a step dropped, the wrong head, the latent left unscaled) would
make the runtime's overhead look larger than it is; one that did something else would make
it look smaller. The benchmark refuses to time a graph whose image is off, and this runs that
check on every CI run on a short schedule.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_the_unrolled_graph_gives_the_programs_image(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from bench_overhead_floor import _native
    from common import TXT2IMG

    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.frontends.dsl import parse_dsl
    from comfyc.runtime import load

    text = textwrap.dedent(TXT2IMG.format(ckpt="tiny-digits.safetensors",
                                          prompt="a handwritten digit three", size=64, steps=3,
                                          cfg=5.0))
    artifact = tmp_path / "native.comfyc"
    compile_graph(parse_dsl(text, "native.cfy", default_catalog()), artifact, CompileOptions())
    program = load(artifact, intra_op_threads=1)
    (unet,) = [s for s in program.stages.values() if getattr(s, "kind", None) == "unet"]
    assert hasattr(unet, "step_session"), "the tiny UNet should get a sampler-step graph"

    session, feeds, diff = _native(program, unet, tmp_path)

    assert diff < 1e-4
    assert len(feeds["coefs"]) == 3
    image = session.run(None, feeds)[0]
    assert image.shape == (1, 64, 64, 3)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0 and np.ptp(image) > 0.1
    # NOTE: the recording wrappers are gone: the program's UNet steps as before.
    assert "step" not in vars(unet)
    calls = unet.step_calls
    program.run({"seed": 42}, save=False)
    assert unet.step_calls == calls + 3
