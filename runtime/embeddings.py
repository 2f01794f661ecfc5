"""Textual-inversion embeddings for ``embedding:NAME`` in prompts, as ComfyUI applies them.

ComfyUI's tokenizer looks ``embedding:NAME`` up in the ``embeddings`` models folder
(:func:`comfyc.runtime.model_paths.find_embedding`), gives the prompt one slot per vector of
the file, and the text encoder puts each vector in place of a token embedding (position
embeddings are added as for any token; the pooled output stays at the first end token). A
missing file is ignored with a warning; a file whose width is not the encoder's is counted by
the tokenizer but dropped by the encoder, which pads the sequence at its end instead
(``comfy/sd1_clip.py``, ``process_tokens``) — both reproduced here.

Which tensor of a file is used follows ComfyUI's ``load_embed``: A1111's ``string_to_param``;
a list of dicts (every tensor of the encoder's width, in order); the encoder's own key
(``clip_l``, ``clip_g``, ``clip_h``, ``t5xxl``: SDXL files carry one per encoder); LoRA-bundled
``bundle_emb.*`` tensors; else the file's first tensor.

Only numpy and safetensors are needed for ``.safetensors`` files; ``.pt``/``.bin`` files need
PyTorch and are read with ``weights_only=True`` (no code runs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Error
from .model_paths import ModelPathError, find_embedding

__all__ = ["EmbeddingError", "Embeddings", "read_embedding", "select_vectors"]

_log = logging.getLogger(__name__)


class EmbeddingError(Error, ValueError):
    """An embedding file that cannot be read or holds no usable tensor."""


def _array(value: Any) -> np.ndarray:
    """A float32 numpy array from a numpy array or a torch tensor (any float dtype)."""
    if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no numpy dtype
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _rows(value: Any) -> np.ndarray:
    array = _array(value)
    return array[None] if array.ndim == 1 else array.reshape(-1, array.shape[-1])


def select_vectors(loaded: Any, width: int | None, key: str | None, where: str) -> np.ndarray:
    """The ``[vectors, width]`` float32 array ComfyUI's ``load_embed`` takes from a file's
    contents (a mapping or list of tensors), before any width check.

    Raises:
        EmbeddingError: Nothing in the file is a tensor.
    """
    if _is_array(loaded):
        return _rows(loaded)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("string_to_param"), Mapping):
        values = [v for v in loaded["string_to_param"].values() if _is_array(v)]
        if values:
            return _rows(values[0])
    if isinstance(loaded, list):
        parts = [_rows(t) for item in loaded if isinstance(item, Mapping) for t in item.values()
                 if _is_array(t) and (width is None or t.shape[-1] == width)]
        if parts:
            return np.concatenate(parts, axis=0)
    if isinstance(loaded, Mapping):
        if key is not None and _is_array(loaded.get(key)):
            return _rows(loaded[key])
        for suffix in (".string_to_param.*", f".{key}"):
            bundled = [_rows(v) for k, v in loaded.items() if isinstance(k, str)
                       and k.startswith("bundle_emb.") and k.endswith(suffix) and _is_array(v)]
            if bundled:
                return np.concatenate(bundled, axis=0)
        tensors = [v for v in loaded.values() if _is_array(v)]
        if tensors:
            return _rows(tensors[0])
    raise EmbeddingError(f"{where} holds no embedding tensor (expected A1111's "
                         f"string_to_param, emb_params, {key or 'clip_l'} or a bare tensor)")


def _load(path: Path) -> Any:
    if path.suffix.lower() in (".safetensors", ".sft"):
        try:
            from safetensors.numpy import load_file

            return load_file(str(path))
        except (TypeError, ValueError) as exc:
            if "bfloat16" not in str(exc) and "bf16" not in str(exc).lower():
                raise EmbeddingError(f"cannot read embedding {str(path)!r}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise EmbeddingError(f"cannot read embedding {str(path)!r}: {exc}") from exc
    # .pt/.bin (and bfloat16 safetensors): PyTorch, weights only.
    try:
        import torch
    except ImportError:
        raise EmbeddingError(
            f"embedding {str(path)!r} needs PyTorch to be read (a pickle or bfloat16 file); "
            "install comfyc[compiler] or convert the embedding to float16/float32 safetensors"
        ) from None
    try:
        if path.suffix.lower() in (".safetensors", ".sft"):
            from safetensors.torch import load_file as load_torch

            return load_torch(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - one clear message for every failure
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EmbeddingError(
            f"cannot read embedding {str(path)!r}: {first} (comfyc reads only tensors from "
            "pickles: torch.load(weights_only=True))") from exc


def read_embedding(path: str | os.PathLike[str], *, width: int | None = None,
                   key: str | None = "clip_l") -> np.ndarray:
    """Reads a textual-inversion embedding as float32 ``[vectors, width]``.

    Args:
        path: ``.safetensors``, ``.pt`` or ``.bin``.
        width: The encoder's width (filters list-of-dicts files; not checked here).
        key: The encoder's key in per-encoder files (``clip_l``, ``clip_g``, ``clip_h``).

    Raises:
        EmbeddingError: Unreadable file or no tensor in it.
    """
    file = Path(path)
    return np.ascontiguousarray(select_vectors(_load(file), width, key, repr(str(file))))


class Embeddings:
    """The embeddings of one models folder, read on demand.

    Names are looked up afresh each time (a file added to the folder while a server runs is
    found by its next prompt, as in ComfyUI); vectors are kept while their file is unchanged
    (same size and modification time).

    Args:
        models_dir: The models folder (``--models-dir``); None: ``$COMFYC_MODELS``.
    """

    def __init__(self, models_dir: str | os.PathLike[str] | None = None) -> None:
        self.models_dir = models_dir
        self._vectors: dict[tuple[Path, int, int, str | None, int | None], np.ndarray] = {}

    def path(self, name: str) -> Path | None:
        """The file for ``embedding:NAME`` (None when there is none, and for a name that
        would leave the embeddings folder: ComfyUI skips those too, with a warning)."""
        try:
            return find_embedding(name, self.models_dir)
        except ModelPathError as exc:
            _log.warning("ignoring embedding:%s: %s", name, exc)
            return None

    def vectors(self, name: str, key: str | None, width: int | None) -> np.ndarray | None:
        """The vectors of ``embedding:NAME`` for the encoder with this key and width (None
        when there is no such file; any width: the encoder drops a mismatched one)."""
        file = self.path(name)
        if file is None:
            return None
        try:
            stat = file.stat()
        except OSError:
            return None
        cache = (file, stat.st_size, stat.st_mtime_ns, key, width)
        if cache not in self._vectors:
            if len(self._vectors) >= 256:
                self._vectors.clear()
            self._vectors[cache] = read_embedding(file, width=width, key=key)
        return self._vectors[cache]

    def lookup(self, key: str | None, width: int | None) -> Any:
        """An ``embedding_lookup`` for the tokenizers: name -> vector count or None."""
        def count(name: str) -> int | None:
            vectors = self.vectors(name, key, width)
            return None if vectors is None else int(vectors.shape[0])
        return count

    def __repr__(self) -> str:
        return f"Embeddings({str(self.models_dir)!r})"
