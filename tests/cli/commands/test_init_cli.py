"""`comfyc init`: every starter parses and validates; two of them run on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyc.cli.commands.check import check_file
from comfyc.cli.main import main
from comfyc.cli.templates import TEMPLATES
from comfyc.compiler.catalog import default_catalog
from comfyc.runtime.model_paths import EMBEDDED_MODELS

TINY = EMBEDDED_MODELS["checkpoints"]["tiny-digits.safetensors"]


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("ckpt", [None, "sd15/v1-5-pruned-emaonly.safetensors"])
def test_every_template_validates(tmp_path: Path, template: str, ckpt: str | None) -> None:
    """The written file is valid DSL, names the model asked for and starts with comments."""
    target = tmp_path / f"{template}.cfy"
    assert main(["init", "--template", template, "-o", str(target)]
                + (["--ckpt", ckpt] if ckpt else [])) == 0
    text = target.read_text(encoding="utf-8")
    assert text.startswith("# ") and f"comfyc run {target}" in text
    if TEMPLATES[template].tiny:
        assert f'ckpt_name="{ckpt or "tiny-digits.safetensors"}"' in text
    else:  # SDXL/Flux/SD3 starters name real models; --ckpt replaces the first one.
        assert ckpt is None or f'="{ckpt}"' in text
    code, report = check_file(str(target), default_catalog())
    assert code == 0, report.get("errors")
    image = tmp_path / "input" / "digit.png"
    assert image.is_file() == ("LoadImage(" in text and ckpt is None)


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_every_template_is_formatted(tmp_path: Path, template: str) -> None:
    """What init writes is what `comfyc fmt` would write: `fmt --check` accepts it."""
    target = tmp_path / f"{template}.cfy"
    assert main(["init", "--template", template, "-o", str(target)]) == 0
    assert main(["fmt", "--check", str(target)]) == 0


def test_existing_file_is_kept_without_force(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A second init refuses to overwrite; --force replaces the file."""
    target = tmp_path / "wf.cfy"
    target.write_text("# mine\n", encoding="utf-8")
    assert main(["init", "-t", "txt2img", "-o", str(target)]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert target.read_text(encoding="utf-8") == "# mine\n"
    assert main(["init", "-t", "lora", "-o", str(target), "--force"]) == 0
    assert "LoraLoader(" in target.read_text(encoding="utf-8")


def test_unknown_template_is_a_usage_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """argparse names the templates that exist."""
    with pytest.raises(SystemExit) as exc:
        main(["init", "-t", "no-such-template", "-o", str(tmp_path / "x.cfy")])
    assert exc.value.code == 2
    assert "hires-fix" in capsys.readouterr().err
    assert not (tmp_path / "x.cfy").exists()


@pytest.mark.skipif(not TINY.is_file(), reason="the tiny model is not built yet")
@pytest.mark.parametrize("template", ["txt2img", "inpaint"])
def test_starter_runs_on_the_tiny_model(tmp_path: Path, template: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`comfyc run` on the starter (3 sampling steps to keep it short) writes its image."""
    target = tmp_path / f"{template}.cfy"
    assert main(["init", "-t", template, "-o", str(target)]) == 0
    text = target.read_text(encoding="utf-8")
    assert "steps=20," in text
    target.write_text(text.replace("steps=20,", "steps=3,"), encoding="utf-8")
    out = tmp_path / "output"
    capsys.readouterr()
    # NOTE: --json keeps the run's timing table (printed to a stderr bound at import) out of
    # pytest's capture.
    assert main(["run", str(target), "--output", str(out), "--input-dir", str(tmp_path / "input"),
                 "--quiet", "--param", "seed=3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    written = [Path(p).name for paths in summary["outputs"].values() for p in paths]
    assert written == [f"{template}_00001_.png"]
    assert (out / written[0]).is_file()
    # The PNG carries its workflow: viz draws it like any other form.
    page = tmp_path / "from-png.html"
    assert main(["viz", str(out / written[0]), "-o", str(page)]) == 0
    assert "unet · ort-cpu" in page.read_text(encoding="utf-8")
