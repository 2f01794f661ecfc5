"""Textual-inversion embeddings: reading the common file formats and resolving ``embedding:NAME``.

Formats (ComfyUI's `load_embed` reads the same ones, in this order of preference):

* A1111 ``.pt``: ``{"string_to_param": {"*": tensor[n, dim]}, "name": ..., "step": ...}``
  (read with ``torch.load(weights_only=True)``).
* A1111 ``.safetensors``: ``{"emb_params": tensor[n, dim]}``.
* Per-encoder files: ``{"clip_l": ..., "clip_g": ...}`` (SD1 takes ``clip_l``; SD2 ``clip_h``).
  SDXL embeddings are of this kind: ``clip_l [n, 768]`` for CLIP-L and ``clip_g [n, 1280]`` for
  bigG; ComfyUI's ``SDXLTokenizer`` looks each encoder's key up separately (``embedding_key``
  ``clip_l`` / ``clip_g``, widths 768 / 1280), so one name gives both encoders their vectors.
* A list of dicts of tensors (old diffusers dumps): every tensor of the right width, in order.
* Anything else: the first tensor in the file.

`EmbeddingLibrary` resolves names in the models folder (`comfyc.runtime.model_paths`) and is a
ready-made ``embedding_lookup`` for `comfyc.runtime.tokenizer.ClipTokenizer`; an SDXL checkpoint
needs one library per encoder (`embedding_libraries`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from comfyc.compiler.models.errors import ModelFormatError
from comfyc.compiler.models.single_file import load_pickle_weights
from comfyc.runtime.embeddings import EmbeddingError, select_vectors
from comfyc.runtime.model_paths import find_embedding

__all__ = ["EmbeddingLibrary", "embedding_libraries", "load_embedding", "load_sdxl_embedding"]

_log = logging.getLogger(__name__)


def _select(loaded: Any, embedding_size: int | None, key: str | None, path: Path) -> torch.Tensor:
    """ComfyUI's choice of tensor (:func:`comfyc.runtime.embeddings.select_vectors`)."""
    try:
        return torch.from_numpy(select_vectors(loaded, embedding_size, key, repr(str(path))))
    except EmbeddingError as exc:
        raise ModelFormatError(str(exc)) from None


def load_embedding(
    path: str | os.PathLike[str],
    *,
    embedding_size: int | None = None,
    key: str | None = "clip_l",
) -> torch.Tensor:
    """Reads a textual-inversion embedding as a float32 ``[vectors, width]`` tensor.

    Args:
        path: ``.safetensors``, ``.pt``/``.bin`` (weights only).
        embedding_size: Expected width (768 SD1, 1024 SD2); checked when given.
        key: Which entry of a per-encoder file to take (``clip_l`` SD1, ``clip_h`` SD2).

    Returns:
        The vectors.

    Raises:
        ModelFormatError: Unreadable file, no tensor, or the wrong width.
    """
    file = Path(path)
    if file.suffix.lower() in (".safetensors", ".sft"):
        from safetensors.torch import load_file

        try:
            loaded: Any = load_file(str(file))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise ModelFormatError(f"cannot read embedding {str(file)!r}: {exc}") from exc
    else:
        loaded = load_pickle_weights(file)
    vectors = _select(loaded, embedding_size, key, file).detach().float()
    vectors = vectors.reshape(-1, vectors.shape[-1]) if vectors.ndim != 1 else vectors[None]
    if embedding_size is not None and vectors.shape[-1] != embedding_size:
        raise ModelFormatError(
            f"embedding {str(file)!r} has width {vectors.shape[-1]}, the text encoder expects "
            f"{embedding_size} (768 = SD1.x or SDXL's clip_l, 1024 = SD2.x, 1280 = SDXL's "
            "clip_g); use an embedding trained for this model family"
        )
    return vectors.contiguous()


def load_sdxl_embedding(
    path: str | os.PathLike[str], *, widths: Mapping[str, int] | None = None
) -> dict[str, torch.Tensor]:
    """Reads an SDXL textual-inversion file: one ``[n, width]`` tensor per encoder.

    Args:
        path: ``.safetensors`` or ``.pt`` with ``clip_l`` and ``clip_g`` tensors.
        widths: Expected widths per key (default ``{"clip_l": 768, "clip_g": 1280}``; comfyc's
            tiny SDXL models have other widths).

    Returns:
        ``{"clip_l": [n, 768], "clip_g": [n, 1280]}`` float32.

    Raises:
        ModelFormatError: A key is missing, a width is wrong, or the two vector counts differ
            (the two token streams would no longer line up).
    """
    file = Path(path)
    expected = dict(widths or {"clip_l": 768, "clip_g": 1280})
    if file.suffix.lower() in (".safetensors", ".sft"):
        from safetensors.torch import load_file

        try:
            loaded: Any = load_file(str(file))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise ModelFormatError(f"cannot read embedding {str(file)!r}: {exc}") from exc
    else:
        loaded = load_pickle_weights(file)
    if not isinstance(loaded, Mapping) or any(
            not isinstance(loaded.get(k), torch.Tensor) for k in expected):
        found = sorted(loaded) if isinstance(loaded, Mapping) else type(loaded).__name__
        raise ModelFormatError(
            f"{str(file)!r} is not an SDXL embedding: expected tensors {sorted(expected)}, found "
            f"{found}. SD1.x/SD2.x embeddings do not work with SDXL's two text encoders"
        )
    out = {}
    for key, width in expected.items():
        vectors = loaded[key].detach().float()
        vectors = vectors.reshape(-1, vectors.shape[-1]) if vectors.ndim != 1 else vectors[None]
        if vectors.shape[-1] != width:
            raise ModelFormatError(
                f"embedding {str(file)!r}: {key} has width {vectors.shape[-1]}, expected {width}"
            )
        out[key] = vectors.contiguous()
    counts = {k: int(v.shape[0]) for k, v in out.items()}
    if len(set(counts.values())) > 1:
        raise ModelFormatError(
            f"embedding {str(file)!r} has {counts} vectors; SDXL embeddings need the same count "
            "for every encoder"
        )
    return out


class EmbeddingLibrary:
    """Embeddings of one models folder, loaded on demand and cached.

    Calling the library with a name returns its vector count (or None), so it can be passed as
    ``embedding_lookup`` to `ClipTokenizer`. An embedding of the wrong width counts as missing
    (with a warning): it cannot be used with this text encoder.

    Args:
        models_dir: The models folder (``--models-dir``); None uses ``$COMFYC_MODELS``.
        embedding_size: Text-encoder width (768 SD1, 1024 SD2).
        key: Entry of per-encoder files (``clip_l`` SD1, ``clip_h`` SD2).
    """

    def __init__(
        self,
        models_dir: str | os.PathLike[str] | None = None,
        *,
        embedding_size: int = 768,
        key: str = "clip_l",
    ) -> None:
        self.models_dir = models_dir
        self.embedding_size = embedding_size
        self.key = key
        self._cache: dict[str, torch.Tensor | None] = {}

    def path(self, name: str) -> Path | None:
        """The file for ``embedding:NAME``, or None."""
        return find_embedding(name, self.models_dir)

    def vectors(self, name: str) -> torch.Tensor | None:
        """The ``[n, width]`` vectors of an embedding, or None when it is missing or unusable."""
        if name not in self._cache:
            file = self.path(name)
            vectors = None
            if file is not None:
                try:
                    vectors = load_embedding(file, embedding_size=self.embedding_size, key=self.key)
                except ModelFormatError as exc:
                    _log.warning("ignoring embedding:%s: %s", name, exc)
            self._cache[name] = vectors
        return self._cache[name]

    def count(self, name: str) -> int | None:
        """Number of vectors of an embedding, or None."""
        vectors = self.vectors(name)
        return None if vectors is None else int(vectors.shape[0])

    __call__ = count


def embedding_libraries(
    checkpoint: Any, models_dir: str | os.PathLike[str] | None = None
) -> dict[str, EmbeddingLibrary]:
    """One `EmbeddingLibrary` per prompt encoder of a checkpoint, keyed by encoder name.

    SD1: ``{"clip_l": 768}``; SD2: ``{"clip_h": 1024}``; SDXL: ``{"clip_l": 768,
    "clip_g": 1280}`` (each reads its own key of the embedding files); refiner: ``clip_g``.

    Args:
        checkpoint: A `LoadedCheckpoint`.
        models_dir: The models folder; None uses ``$COMFYC_MODELS``.

    Returns:
        ``{encoder name: library}`` in context order.
    """
    return {
        spec.name: EmbeddingLibrary(models_dir, embedding_size=spec.width, key=spec.name)
        for spec in checkpoint.text_encoders
    }
