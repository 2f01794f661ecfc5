"""Tests for comfyc.runtime.model_paths: ComfyUI folder layout and safe name resolution."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from comfyc.runtime import model_paths
from comfyc.runtime.model_paths import (
    ENV_VAR,
    ModelPathError,
    find_embedding,
    get_models_dir,
    list_models,
    resolve,
)


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture()
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A models folder with a few files; no environment variable, no packaged tiny model."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(
        model_paths, "EMBEDDED_MODELS",
        {"checkpoints": {"tiny-digits.safetensors": tmp_path / "pkg" / "tiny-digits.safetensors"}},
    )
    root = tmp_path / "models"
    for kind in model_paths.MODEL_KINDS:
        (root / kind).mkdir(parents=True)
    _touch(root / "checkpoints" / "v1-5.safetensors")
    _touch(root / "checkpoints" / "sd15" / "model.safetensors")
    _touch(root / "checkpoints" / "notes.txt")
    _touch(root / "loras" / "style.safetensors")
    _touch(root / "embeddings" / "EasyNegative.safetensors")
    _touch(root / "embeddings" / "sub" / "deep.pt")
    return root


def test_models_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--models-dir wins over $COMFYC_MODELS, which wins over nothing."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert get_models_dir() is None
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert get_models_dir() == tmp_path / "env"
    assert get_models_dir(tmp_path / "arg") == tmp_path / "arg"


def test_resolve_plain_and_subfolder(models: Path) -> None:
    """Plain names and subfolder names resolve inside the kind's folder."""
    assert resolve("checkpoints", "v1-5.safetensors", models) == (
        models / "checkpoints" / "v1-5.safetensors").resolve()
    expected = (models / "checkpoints" / "sd15" / "model.safetensors").resolve()
    assert resolve("checkpoints", "sd15/model.safetensors", models) == expected
    assert resolve("checkpoints", "sd15\\model.safetensors", models) == expected
    assert resolve("checkpoints", "./sd15//model.safetensors", models) == expected


def test_resolve_uses_environment(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --models-dir the COMFYC_MODELS folder is used."""
    monkeypatch.setenv(ENV_VAR, str(models))
    assert resolve("loras", "style.safetensors").name == "style.safetensors"


@pytest.mark.parametrize(
    "name",
    ["../secret.safetensors", "sd15/../../secret.safetensors", "..\\secret.safetensors"],
)
def test_parent_references_refused(models: Path, name: str) -> None:
    """'..' is refused even when it would stay inside the folder."""
    with pytest.raises(ModelPathError, match=r"contains '\.\.'") as info:
        resolve("checkpoints", name, models)
    assert info.value.name == name and info.value.kind == "checkpoints"


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "C:\\models\\x.safetensors", "c:/x.safetensors", "\\\\server\\x.ckpt"]
)
def test_absolute_paths_refused(models: Path, name: str) -> None:
    """POSIX, drive-letter and UNC absolute paths are refused with the fix."""
    with pytest.raises(ModelPathError, match="absolute path.*MODELS/checkpoints/"):
        resolve("checkpoints", name, models)


def test_symlink_escape_refused(models: Path, tmp_path: Path) -> None:
    """A link inside the folder pointing outside it is refused."""
    outside = _touch(tmp_path / "outside" / "secret.safetensors")
    (models / "checkpoints" / "evil.safetensors").symlink_to(outside)
    (models / "checkpoints" / "evil_dir").symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(ModelPathError, match="symlink.*outside") as info:
        resolve("checkpoints", "evil.safetensors", models)
    assert info.value.searched
    with pytest.raises(ModelPathError, match="symlink.*outside"):
        resolve("checkpoints", "evil_dir/secret.safetensors", models)
    assert "evil.safetensors" not in list_models("checkpoints", models)
    assert "evil_dir/secret.safetensors" not in list_models("checkpoints", models)


def test_symlink_inside_allowed(models: Path) -> None:
    """A link that stays inside the folder resolves to its target."""
    (models / "checkpoints" / "alias.safetensors").symlink_to(
        models / "checkpoints" / "v1-5.safetensors")
    assert resolve("checkpoints", "alias.safetensors", models).name == "v1-5.safetensors"


def test_linked_kind_folder_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kind folder itself may be a link to another disk."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    store = tmp_path / "disk" / "ckpts"
    _touch(store / "big.safetensors")
    root = tmp_path / "models"
    root.mkdir()
    (root / "checkpoints").symlink_to(store, target_is_directory=True)
    assert resolve("checkpoints", "big.safetensors", root) == (store / "big.safetensors").resolve()
    assert "big.safetensors" in list_models("checkpoints", root)


def test_missing_file_lists_alternatives(models: Path) -> None:
    """A missing name says where it looked and which names exist."""
    with pytest.raises(ModelPathError, match="not found.*'sd15/model.safetensors'") as info:
        resolve("checkpoints", "nope.safetensors", models)
    assert info.value.searched == [models / "checkpoints"]
    with pytest.raises(ModelPathError, match="not a file"):
        resolve("checkpoints", "sd15", models)


def test_no_models_dir_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without any models folder the error names --models-dir and COMFYC_MODELS."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(ModelPathError, match="--models-dir.*COMFYC_MODELS"):
        resolve("loras", "x.safetensors")


def test_missing_kind_folder(tmp_path: Path) -> None:
    """A models folder without the kind's subfolder says which folder to create."""
    with pytest.raises(ModelPathError, match="does not exist"):
        resolve("vae", "x.safetensors", tmp_path)


def test_unknown_kind_and_empty_name(models: Path) -> None:
    """Unknown kinds and empty names are refused."""
    with pytest.raises(ModelPathError, match="unknown model kind"):
        resolve("unet", "x.safetensors", models)
    with pytest.raises(ModelPathError, match="empty"):
        resolve("checkpoints", "  ", models)


def test_embedded_tiny_model(models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tiny-digits.safetensors falls back to the packaged file; a local copy wins."""
    packaged = model_paths.EMBEDDED_MODELS["checkpoints"]["tiny-digits.safetensors"]
    with pytest.raises(ModelPathError, match="packaged copy"):
        resolve("checkpoints", "tiny-digits.safetensors", models)
    _touch(packaged)
    assert resolve("checkpoints", "tiny-digits.safetensors", models) == packaged
    assert resolve("checkpoints", "tiny-digits.safetensors") == packaged  # no models dir at all
    assert "tiny-digits.safetensors" in list_models("checkpoints", models)
    local = _touch(models / "checkpoints" / "tiny-digits.safetensors")
    assert resolve("checkpoints", "tiny-digits.safetensors", models) == local.resolve()
    with pytest.raises(ModelPathError):
        resolve("loras", "tiny-digits.safetensors", models)


def test_packaged_tiny_model_path() -> None:
    """The real table points at runtime/models/tiny-digits.safetensors in the package."""
    path = model_paths._PACKAGED_MODELS / "tiny-digits.safetensors"
    assert path.parent.name == "models" and path.parent.parent.name == "runtime"


def test_list_models(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listings are sorted POSIX names filtered to model extensions."""
    assert list_models("checkpoints", models) == ["sd15/model.safetensors", "v1-5.safetensors"]
    assert list_models("embeddings", models) == ["EasyNegative.safetensors", "sub/deep.pt"]
    assert list_models("controlnet", models) == []
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert list_models("loras") == []


def test_find_embedding(models: Path, tmp_path: Path) -> None:
    """Embeddings resolve with or without extension, in subfolders, like ComfyUI."""
    base = (models / "embeddings").resolve()
    assert find_embedding("EasyNegative", models) == base / "EasyNegative.safetensors"
    assert find_embedding("EasyNegative.safetensors", models) == base / "EasyNegative.safetensors"
    assert find_embedding("deep", models) == base / "sub" / "deep.pt"
    assert find_embedding("sub/deep", models) == base / "sub" / "deep.pt"
    assert find_embedding("nothere", models) is None
    assert find_embedding("x", tmp_path / "no-such-dir") is None
    with pytest.raises(ModelPathError):
        find_embedding("../checkpoints/v1-5", models)
    outside = _touch(tmp_path / "elsewhere.pt")
    os.symlink(outside, models / "embeddings" / "link.pt")
    with pytest.raises(ModelPathError, match="outside"):
        find_embedding("link", models)
