"""`comfyc init`: every starter parses and validates; two of them run on the tiny model. As a
user runs it (a subprocess: exit code, message, no traceback): the message says what the
starter needs (the tiny model, or which files in which models folder, and --ckpt), --help lists
every template as written, and every written file passes `comfyc fmt --check` and `comfyc check`
(issue #18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfyc.cli.commands.check import check_file
from comfyc.cli.main import main
from comfyc.cli.templates import TEMPLATES, model_files, replaced_by_ckpt
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


def _comfyc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("COMFYC_MODELS", None)
    return subprocess.run([sys.executable, "-m", "comfyc.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    """Every template written by `comfyc init` in one folder, with what each call printed."""
    folder = tmp_path_factory.mktemp("starters")
    return folder, {name: _comfyc("init", "-t", name, "-o", f"{name}.cfy", cwd=folder)
                    for name in TEMPLATES}


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_init_says_what_the_starter_needs(
        written: tuple[Path, dict[str, subprocess.CompletedProcess[str]]], template: str
) -> None:
    """Exit 0; the message names the starter as its example describes it (capitals kept),
    says whether it runs on the embedded tiny model or lists the model files it reads (folder
    and name, as in the file's header), shows --ckpt, and the next command has --models-dir
    exactly when files are needed."""
    folder, results = written
    result = results[template]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    headline = TEMPLATES[template].headline
    assert headline[0].isupper() or headline[0].isdigit(), headline
    assert lines[0] == f"wrote {template}.cfy: {headline}"
    text = (folder / f"{template}.cfy").read_text(encoding="utf-8")
    files = model_files(text)
    assert ("embedded tiny model" in result.stderr) == TEMPLATES[template].tiny
    if TEMPLATES[template].tiny and not files:
        assert "nothing to download" in result.stderr
    for kind, name in files:
        assert f"  {kind}/{name}" in lines  # in the message ...
        assert f"#   {kind}/{name}" in text  # ... and in the file's header
    assert "models folder (--models-dir DIR or $COMFYC_MODELS)" in result.stderr or not files
    kind, first = replaced_by_ckpt(template)
    assert f"comfyc init -t {template} -o {template}.cfy --ckpt NAME --force" in result.stderr
    if not TEMPLATES[template].tiny:
        assert f"in place of {kind}/{first}" in result.stderr and (kind, first) in files
    [next_line] = [line for line in lines if line.startswith("next: ")]
    assert next_line.startswith(f"next: comfyc run {template}.cfy")
    assert ("--models-dir" in next_line) == bool(files)


def test_model_starters_name_their_files(
        written: tuple[Path, dict[str, subprocess.CompletedProcess[str]]]) -> None:
    """The SDXL, Flux and SD3 starters list the published files in their folders; the
    upscale starter runs on the tiny model and names its upscale model."""
    _, results = written
    assert "  checkpoints/sd_xl_base_1.0.safetensors" in results["sdxl"].stderr
    assert "  checkpoints/sd_xl_refiner_1.0.safetensors" in results["sdxl-refiner"].stderr
    flux = results["flux"].stderr
    for path in ("diffusion_models/flux1-dev.safetensors", "text_encoders/clip_l.safetensors",
                 "text_encoders/t5xxl_fp16.safetensors", "vae/ae.safetensors"):
        assert f"  {path}" in flux, path
    assert "  checkpoints/sd3.5_medium.safetensors" in results["sd3"].stderr
    assert "  text_encoders/clip_g.safetensors" in results["sd3"].stderr
    upscale = results["upscale"].stderr
    assert "embedded tiny model" in upscale and "  upscale_models/RealESRGAN_x2.pth" in upscale


def test_every_written_starter_passes_fmt_and_check(
        written: tuple[Path, dict[str, subprocess.CompletedProcess[str]]]) -> None:
    """`comfyc fmt --check` and `comfyc check` accept every file init wrote, as written."""
    folder, _ = written
    files = [f"{name}.cfy" for name in TEMPLATES]
    result = _comfyc("fmt", "--check", *files, cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    result = _comfyc("check", *files, cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_ckpt_on_a_model_starter_says_what_it_reads(tmp_path: Path) -> None:
    """--ckpt on the SDXL starter: the message and header name the user's checkpoint in
    place of the published base model (the refiner stays), and no tiny model."""
    result = _comfyc("init", "-t", "sdxl-refiner", "-o", "mine.cfy", "--ckpt",
                     "juggernaut.safetensors", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tiny model" not in result.stderr and "Traceback" not in result.stderr
    assert "  checkpoints/juggernaut.safetensors" in result.stderr
    assert "  checkpoints/sd_xl_refiner_1.0.safetensors" in result.stderr
    assert "sd_xl_base_1.0" not in result.stderr
    text = (tmp_path / "mine.cfy").read_text(encoding="utf-8")
    assert "in place of checkpoints/sd_xl_base_1.0.safetensors" in text
    assert "#   checkpoints/juggernaut.safetensors" in text


def test_help_lists_every_template_as_written(tmp_path: Path) -> None:
    """`comfyc init --help` lists the template table itself, each with its example's first
    sentence as written ("SDXL", not "sDXL")."""
    result = _comfyc("init", "--help", cwd=tmp_path)
    assert result.returncode == 0
    flat = " ".join(result.stdout.split())
    for name, template in TEMPLATES.items():
        assert f" {name} " in flat, name
        assert " ".join(template.headline.split()) in flat, name
    assert "sDXL" not in flat and "Templates: txt2img, img2img, inpaint, hires-fix" not in flat
