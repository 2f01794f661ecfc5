"""write_diffusers_folder output loads in diffusers offline; `comfyc model` CLI."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from comfyc.cli.commands import model as cli  # noqa: E402
from comfyc.compiler.models.diffusers_folder import (  # noqa: E402
    load_diffusers_folder,
    write_diffusers_folder,
)
from comfyc.compiler.models.errors import ModelFormatError  # noqa: E402
from comfyc.compiler.models.single_file import load_checkpoint, save_single_file  # noqa: E402


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub access: diffusers/transformers must only read local files."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="comfyc")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def sd1_folder(sd1_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small SD1 checkpoint converted by `comfyc model convert --to diffusers`."""
    folder = tmp_path_factory.mktemp("cli") / "sd1-diffusers"
    args = _parse(["model", "convert", str(sd1_file), "--to", "diffusers", "-o", str(folder)])
    assert args.func is cli.run
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        assert cli.run(args) == 0
    return folder


def test_pipeline_from_pretrained_offline(small_sd1, sd1_folder: Path, offline: None) -> None:
    """StableDiffusionPipeline.from_pretrained loads the folder and runs with our tokenizer."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    index = json.loads((sd1_folder / "model_index.json").read_text())
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    pipe = StableDiffusionPipeline.from_pretrained(str(sd1_folder), local_files_only=True)
    assert isinstance(pipe.scheduler, PNDMScheduler)
    config = pipe.scheduler.config
    assert (config.beta_start, config.beta_end, config.beta_schedule) == (
        0.00085, 0.012, "scaled_linear")
    assert config.steps_offset == 1 and config.prediction_type == "epsilon"
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368,
                                                             49407]
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.tokenizer.pad_token_id == 49407
    assert torch.equal(pipe.unet.conv_in.weight, small_sd1.unet.conv_in.weight)
    # Written as the hub's folders are (transformers 4 would otherwise load a random text
    # encoder): prefixed text-encoder keys, and the slow tokenizer's files.
    from safetensors import safe_open

    with safe_open(str(sd1_folder / "text_encoder" / "model.safetensors"), "np") as fh:
        assert all(key.startswith("text_model.") for key in fh.keys())  # noqa: SIM118 (safe_open)
    assert (sd1_folder / "tokenizer" / "vocab.json").is_file()
    assert (sd1_folder / "tokenizer" / "merges.txt").is_file()
    want = dict(small_sd1.text_encoder.named_parameters())
    for name, value in pipe.text_encoder.named_parameters():
        assert torch.equal(value, want[name]), name
    image = pipe("a handwritten digit seven", num_inference_steps=1, height=32, width=32,
                 generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    back = load_diffusers_folder(sd1_folder)
    assert (back.family, back.prediction_type, back.default_clip_layer) == ("sd1", "epsilon", -1)


def test_sd2_folder_cuts_text_encoder(small_sd2, tmp_path: Path, offline: None) -> None:
    """SD2: DDIM with v-prediction, pad token 0, text encoder cut to the penultimate layer;
    the loaded checkpoint it was written from is left intact."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    path = save_single_file(tmp_path / "sd2.safetensors", small_sd2.unet, small_sd2.vae,
                            small_sd2.text_encoder, prediction_type="v_prediction")
    loaded = load_checkpoint(path)
    layers = loaded.text_encoder.config.num_hidden_layers
    out = write_diffusers_folder(loaded, tmp_path / "sd2-diffusers")
    assert loaded.text_encoder.config.num_hidden_layers == layers
    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.tokenizer.pad_token_id == 0
    assert pipe.text_encoder.config.num_hidden_layers == layers - 1
    ids = torch.tensor([pipe.tokenizer("a cat", padding="max_length").input_ids])
    text = small_sd2.text_encoder
    final_norm = getattr(text, "text_model", text).final_layer_norm
    with torch.no_grad():
        full = text(ids, output_hidden_states=True)
        penultimate = final_norm(full.hidden_states[-2])
        assert torch.allclose(pipe.text_encoder(ids).last_hidden_state, penultimate, atol=1e-6)
        assert torch.equal(loaded.text_encoder(ids).last_hidden_state, full.last_hidden_state)


def test_existing_output_is_not_overwritten(sd1_file: Path, tmp_path: Path) -> None:
    """A non-empty output folder is refused unless overwrite is asked for."""
    target = tmp_path / "exists"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(ModelFormatError, match="already exists"):
        write_diffusers_folder(sd1_file, target)
    assert (target / "keep.txt").exists()


def test_cli_convert_both_ways(small_sd1, sd1_folder: Path, tmp_path: Path, offline: None,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """`comfyc model convert` wrote a diffusers folder; it converts back to a single file."""
    assert (sd1_folder / "unet" / "config.json").is_file()
    single = tmp_path / "back.safetensors"
    args = _parse(["model", "convert", str(sd1_folder), "--to", "single-file", "-o", str(single),
                   "--dtype", "fp16"])
    assert cli.run(args) == 0
    loaded = load_checkpoint(single)
    assert torch.equal(loaded.unet.conv_in.weight, small_sd1.unet.conv_in.weight.half().float())
    assert cli.run(_parse(["model", "info", str(single)])) == 0
    assert "family:           sd1" in capsys.readouterr().out


def test_cli_resolves_names_and_reports_errors(sd1_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A bare name is looked up in MODELS/checkpoints; failures print one error line."""
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "small.safetensors").symlink_to(sd1_file)
    args = _parse(["model", "convert", "missing.safetensors", "-o", str(tmp_path / "x"),
                   "--models-dir", str(models)])
    assert cli.run(args) == 1
    assert "error: checkpoints model 'missing.safetensors' not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"")
    assert cli.run(_parse(["model", "info", str(bad)])) == 1
    assert "unsupported model file type" in capsys.readouterr().err


def test_cli_module_imports_without_torch() -> None:
    """Importing the CLI module does not import torch or diffusers (checked in a subprocess)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'diffusers', 'transformers'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import argparse\n"
        "from comfyc.cli.commands import model as cli\n"
        "p = argparse.ArgumentParser(); cli.add_parser(p.add_subparsers())\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == "ok", result.stderr
