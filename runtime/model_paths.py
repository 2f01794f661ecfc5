"""Resolves model names from workflows to files in a ComfyUI-style models folder (stdlib only).

A models folder has one subfolder per kind, as in ComfyUI::

    MODELS/checkpoints/  loras/  vae/  embeddings/  upscale_models/  controlnet/
           diffusion_models/ (or unet/)  text_encoders/ (or clip/)

As in ComfyUI's ``folder_paths``, ``diffusion_models`` also searches the older ``unet`` folder
and ``text_encoders`` the older ``clip`` folder (the new name first).

The folder comes from the ``--models-dir`` argument, else the ``COMFYC_MODELS`` environment
variable, else there is none. Names are resolved inside the kind's folder only: subfolders work
(``sd15/model.safetensors``, also written with Windows backslashes), while ``..``, absolute paths
and symlinks that lead outside the folder are refused with a `ModelPathError`. Linking a whole
kind folder elsewhere (``checkpoints -> /mnt/models``) is fine: the check is against the folder
as it resolves.

The embedded demo model ``tiny-digits.safetensors`` always resolves under ``checkpoints`` to the
file packaged with comfyc when the models folder does not hold a file of that name.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from .errors import Error
from .files import UnsafeName, is_inside, relative_name

__all__ = [
    "EMBEDDED_MODELS",
    "ENV_VAR",
    "MODEL_EXTENSIONS",
    "MODEL_KINDS",
    "KIND_FOLDERS",
    "ModelPathError",
    "find_embedding",
    "get_models_dir",
    "list_models",
    "resolve",
]

#: The kinds of model folders, named as in ComfyUI.
MODEL_KINDS = ("checkpoints", "loras", "vae", "embeddings", "upscale_models", "controlnet",
               "diffusion_models", "text_encoders")
#: The folders searched for a kind, in order (ComfyUI's legacy names after the new ones).
KIND_FOLDERS: dict[str, tuple[str, ...]] = {
    "diffusion_models": ("diffusion_models", "unet"),
    "text_encoders": ("text_encoders", "clip"),
}
#: Environment variable naming the models folder when ``--models-dir`` is not given.
ENV_VAR = "COMFYC_MODELS"
#: File extensions listed by `list_models` (ComfyUI's `supported_pt_extensions`).
MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")
# NOTE: ComfyUI tries these extensions, in this order, after the name as written.
_EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")

_PACKAGED_MODELS = Path(__file__).resolve().parent / "models"
#: Models that ship with comfyc: kind -> name -> packaged file.
EMBEDDED_MODELS: dict[str, dict[str, Path]] = {
    "checkpoints": {"tiny-digits.safetensors": _PACKAGED_MODELS / "tiny-digits.safetensors"},
    # A rank-4 LoRA for the tiny model, for the hires-fix + LoRA example and the LoRA tests.
    "loras": {"tiny-digits-lora.safetensors": _PACKAGED_MODELS / "tiny-digits-lora.safetensors"},
}


class ModelPathError(Error, ValueError):
    """A model name that cannot be resolved; the message says what, where and how to fix it.

    Attributes:
        kind: The model kind asked for (``"checkpoints"``, ...).
        name: The name as written in the workflow.
        searched: The folders that were searched (may be empty).
    """

    def __init__(self, message: str, kind: str, name: str, searched: list[Path]) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.searched = searched


def get_models_dir(models_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Returns the models folder: the argument, else ``$COMFYC_MODELS``, else None.

    Args:
        models_dir: The ``--models-dir`` value, if given.
    """
    if models_dir is not None and str(models_dir) != "":
        return Path(models_dir).expanduser()
    env = os.environ.get(ENV_VAR, "")
    return Path(env).expanduser() if env else None


def _check_kind(kind: str, name: str) -> None:
    if kind not in MODEL_KINDS:
        raise ModelPathError(
            f"unknown model kind {kind!r} for {name!r}; expected one of {', '.join(MODEL_KINDS)}",
            kind, name, [],
        )


def _normalize_name(kind: str, name: str) -> PurePosixPath:
    """Turns a workflow name into a relative POSIX path, refusing anything that could escape."""
    if not isinstance(name, str):
        raise ModelPathError(
            f"empty {kind} name {name!r}; expected a file name such as 'model.safetensors'",
            kind, str(name), [],
        )
    try:
        return relative_name(name)
    except UnsafeName as exc:
        messages = {
            "empty": f"empty {kind} name {name!r}; expected a file name such as "
                     f"'model.safetensors'",
            "nul": f"{kind} name {name!r} contains a NUL character",
            "absolute": f"{kind} name {name!r} is an absolute path; workflow model names are "
                        f"resolved inside the models folder only. Put the file in "
                        f"MODELS/{kind}/ and use its name relative to that folder",
            "parent": f"{kind} name {name!r} contains '..'; names may use subfolders of "
                      f"MODELS/{kind}/ but may not leave it. Move the file inside that folder",
        }
        raise ModelPathError(messages[exc.reason], kind, name, []) from None


def _resolve_in(
    kind: str, name: str, rel: PurePosixPath, folder: Path, boundary: Path | None = None
) -> Path | None:
    """Returns the file `rel` inside `folder`, None when absent.

    Symlinks are followed but the target must stay inside `boundary` (default: `folder`).
    """
    candidate = folder.resolve().joinpath(*rel.parts)
    base = (boundary if boundary is not None else folder).resolve()
    if not (candidate.exists() or candidate.is_symlink()):
        return None
    target = candidate.resolve()
    if not is_inside(target, base):
        raise ModelPathError(
            f"{kind} name {name!r} resolves through a symlink to {str(target)!r}, outside the "
            f"{kind} folder {str(base)!r}; comfyc refuses links that leave the folder. Copy or "
            f"move the file into {str(base)!r}, or make the whole {kind} folder a link",
            kind, name, [base],
        )
    if not target.is_file():
        raise ModelPathError(
            f"{kind} name {name!r} is {str(target)!r}, which is not a file; expected a model "
            "file such as 'model.safetensors'",
            kind, name, [base],
        )
    return target


def resolve(kind: str, name: str, models_dir: str | os.PathLike[str] | None = None) -> Path:
    """Resolves a model name from a workflow to a file.

    Args:
        kind: One of `MODEL_KINDS`.
        name: The name as written in the workflow (``"sd15/model.safetensors"``, backslashes ok).
        models_dir: The ``--models-dir`` value; None falls back to ``$COMFYC_MODELS``.

    Returns:
        The absolute path of the file (symlinks resolved).

    Raises:
        ModelPathError: Unknown kind, unsafe name, or no such file.
    """
    _check_kind(kind, name)
    rel = _normalize_name(kind, name)
    root = get_models_dir(models_dir)
    searched: list[Path] = []
    if root is not None:
        for sub in _folders(kind):
            folder = root / sub
            searched.append(folder)
            if folder.is_dir():
                found = _resolve_in(kind, name, rel, folder)
                if found is not None:
                    return found
    embedded = EMBEDDED_MODELS.get(kind, {}).get(rel.as_posix())
    if embedded is not None and embedded.is_file():
        return embedded
    if root is None:
        hint = (
            f"no models folder is set: pass --models-dir MODELS or set {ENV_VAR}=MODELS, with "
            f"the file at MODELS/{kind}/{rel.as_posix()}"
        )
    elif not any((root / sub).is_dir() for sub in _folders(kind)):
        hint = (
            f"the folder {str(root / kind)!r} does not exist; create it (ComfyUI layout: "
            f"{', '.join(MODEL_KINDS)}) and put the file there"
        )
    else:
        available = list_models(kind, root)
        shown = ", ".join(repr(a) for a in available[:8]) or "none"
        more = f" (and {len(available) - 8} more)" if len(available) > 8 else ""
        hint = (
            f"put the file at {str(root / kind / rel.as_posix())!r} or use one of the "
            f"available names: {shown}{more}"
        )
    if embedded is not None:
        hint += f"; the packaged copy {str(embedded)!r} is missing too (reinstall comfyc)"
    raise ModelPathError(f"{kind} model {name!r} not found; {hint}", kind, name, searched)


def _folders(kind: str) -> tuple[str, ...]:
    return KIND_FOLDERS.get(kind, (kind,))


def _walk_files(folder: Path) -> Iterator[Path]:
    """Yields files under `folder` (following links that stay inside), sorted, recursively."""
    base = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        here = Path(dirpath)
        if not is_inside(here.resolve(), base):
            dirnames[:] = []
            continue
        dirnames.sort()
        for filename in sorted(filenames):
            path = here / filename
            if is_inside(path.resolve(), base) and path.is_file():
                yield path


def list_models(kind: str, models_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Lists model names of one kind, as a ComfyUI combo box would (sorted, POSIX separators).

    Files whose links lead outside the folder are left out; embedded models are included.

    Args:
        kind: One of `MODEL_KINDS`.
        models_dir: The ``--models-dir`` value; None falls back to ``$COMFYC_MODELS``.
    """
    _check_kind(kind, kind)
    names: set[str] = set()
    root = get_models_dir(models_dir)
    for sub in _folders(kind) if root is not None else ():
        if not (root / sub).is_dir():
            continue
        base = (root / sub).resolve()
        for path in _walk_files(base):
            if path.suffix.lower() in MODEL_EXTENSIONS:
                names.add(path.relative_to(base).as_posix())
    for name, packaged in EMBEDDED_MODELS.get(kind, {}).items():
        if packaged.is_file():
            names.add(name)
    return sorted(names)


def find_embedding(name: str, models_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Finds a textual-inversion embedding the way ComfyUI's ``embedding:NAME`` does.

    The embeddings folder and each of its subfolders (sorted) are searched for ``NAME``, then
    ``NAME.safetensors``, ``NAME.pt`` and ``NAME.bin``.

    Args:
        name: The name after ``embedding:`` (extension optional, subfolders allowed).
        models_dir: The ``--models-dir`` value; None falls back to ``$COMFYC_MODELS``.

    Returns:
        The file, or None when there is none (ComfyUI then ignores the embedding with a warning).

    Raises:
        ModelPathError: The name is unsafe (absolute, ``..``) or a link leaves the folder.
    """
    rel = _normalize_name("embeddings", name)
    root = get_models_dir(models_dir)
    if root is None or not (root / "embeddings").is_dir():
        return None
    base = (root / "embeddings").resolve()
    folders = [base]
    for dirpath, dirnames, _ in os.walk(base, followlinks=True):
        dirnames.sort()
        here = Path(dirpath).resolve()
        if here != base and is_inside(here, base):
            folders.append(here)
    for folder in folders:
        for candidate in [rel.as_posix()] + [rel.as_posix() + ext for ext in _EMBEDDING_EXTENSIONS]:
            found = _resolve_in("embeddings", name, PurePosixPath(candidate), folder, base)
            if found is not None:
                return found
    return None
