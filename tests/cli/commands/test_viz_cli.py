"""`comfyc viz`: formats, outputs, artifacts, and errors that leave no file behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyc.cli.main import main
from tests.compiler.viz.manifests import write_artifact
from tests.conftest import REPO

EXAMPLES = REPO / "examples"


@pytest.mark.parametrize("name,fmt,start", [("graph.html", None, "<!DOCTYPE html>"),
                                            ("graph.svg", None, "<?xml"),
                                            ("graph.gv", None, "// comfyc viz"),
                                            ("graph.out", "dot", "// comfyc viz")])
def test_format_follows_the_output_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        name: str, fmt: str | None, start: str) -> None:
    """The extension picks the format unless --format says otherwise."""
    target = tmp_path / name
    args = ["viz", str(EXAMPLES / "hires_lora.cfy"), "-o", str(target)]
    assert main(args + (["--format", fmt] if fmt else [])) == 0
    assert target.read_text(encoding="utf-8").startswith(start)
    err = capsys.readouterr().err
    assert f"wrote {target}" in err and "unet · ort-cpu" in err
    assert [p.name for p in tmp_path.iterdir()] == [name]  # No temporary file left.


def test_standard_output_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    """Without -o the text goes to standard output; --backend and --view reach the drawing."""
    assert main(["viz", str(EXAMPLES / "txt2img.cfy"), "--format", "dot",
                 "--backend", "unet=ort-cuda", "--view", "after"]) == 0
    out = capsys.readouterr().out
    assert 'label="unet · ort-cuda";' in out and 'label="vae_decoder · ort-cpu";' in out
    assert main(["viz", str(EXAMPLES / "txt2img.cfy"), "--format", "svg",
                 "--param", "5.steps=steps"]) == 0
    assert "param steps = 20" in capsys.readouterr().out


def test_artifact_page_shows_measured_stages(tmp_path: Path) -> None:
    """An artifact with the autotuner's record: backends and the chosen backend's median."""
    artifact = write_artifact(tmp_path)
    target = tmp_path / "page.html"
    assert main(["viz", str(artifact), "-o", str(target)]) == 0
    page = target.read_text(encoding="utf-8")
    for label in ("unet · ort-cuda · 12.3 ms", "text_encoder · ort-cpu", "vae_decoder · torch"):
        assert label in page
    assert "measured on cpu: test cpu" in page


@pytest.mark.parametrize("make,code,message", [
    (lambda d: d / "missing.cfy", 2, "no such file"),
    (lambda d: d, 2, "manifest.json is missing"),
    (lambda d: _write(d / "bad.cfy", 'x = KSampler(model=1)\n'), 1, "required_input_missing"),
    (lambda d: _write(d / "bad.cfy", 'x = = 1\n'), 1, "bad.cfy:1:"),
])
def test_bad_input_fails_and_writes_nothing(  # type: ignore[no-untyped-def]
        tmp_path: Path, capsys: pytest.CaptureFixture[str], make, code: int,
        message: str) -> None:
    """Unreadable input exits 2, an invalid workflow 1; the output file is never created."""
    source = make(tmp_path)
    target = tmp_path / "out" / "graph.html"
    assert main(["viz", str(source), "-o", str(target)]) == code
    assert message in capsys.readouterr().err
    assert not target.exists()


def test_bad_backend_map_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --backend map names the bad entry."""
    assert main(["viz", str(EXAMPLES / "txt2img.cfy"), "--backend", "unet=", "-o", "-"]) == 2
    assert "STAGE=BACKEND" in capsys.readouterr().err


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
