"""The autotuner measures thread counts as well as backends, and the runtime uses the count
it chose (never above the cores free when the stage is made)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.compiler.lowering.autotune import autotune
from comfyc.frontends.dsl import parse_dsl
from comfyc.runtime.artifact import load, read_manifest, write_manifest
from comfyc.runtime.backends import threads

REPO = Path(__file__).resolve().parents[3]


def test_thread_counts_are_measured_and_used(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    text = re.sub(r"steps=\d+", "steps=2", (REPO / "examples" / "txt2img.cfy").read_text())
    root = tmp_path / "a.comfyc"
    compile_graph(parse_dsl(text, "t.cfy", default_catalog()), root, CompileOptions())
    tuned = autotune(root, read_manifest(root), backends=["ort-cpu"], calls=2, warmup=1,
                     threads=[1, 2])
    for name, row in tuned.autotune["stages"].items():
        measured = row["measurements"]["ort-cpu"]
        assert set(measured["by_threads"]) == {"1", "2"}
        assert row["threads"] == measured["threads"] in (1, 2)
        assert tuned.stage_entries()[name].info["threads"] == row["threads"]
    write_manifest(root, tuned)
    # At load the tuned count is capped by the cores free now.
    monkeypatch.setattr(threads, "cores", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (7.0, 0.0, 0.0))
    program = load(root)
    for stage in program.stages.values():
        members = stage.values() if isinstance(stage, dict) else [stage]
        for member in members:
            if member is not None and hasattr(member, "session"):
                assert member.session.threads == 1
