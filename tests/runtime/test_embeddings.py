"""The lean runtime's embedding reader (numpy and safetensors only; ComfyUI's choice of
tensor) and the models-folder lookup behind ``embedding:NAME``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from comfyc.runtime.embeddings import EmbeddingError, Embeddings, read_embedding


def _vectors(n: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)


def test_reads_float16_safetensors_without_torch_semantics(tmp_path: Path) -> None:
    vectors = _vectors(3, 768).astype(np.float16)
    save_file({"emb_params": vectors}, str(tmp_path / "a.safetensors"))
    got = read_embedding(tmp_path / "a.safetensors", width=768, key="clip_l")
    assert got.dtype == np.float32 and np.array_equal(got, vectors.astype(np.float32))


def test_per_encoder_keys_and_bundled_lora_embeddings(tmp_path: Path) -> None:
    """SDXL files: each encoder its own key; a LoRA with ``bundle_emb.NAME.clip_g`` tensors;
    without the key, ComfyUI takes the first tensor."""
    small, g = _vectors(2, 768, 1), _vectors(2, 1280, 2)
    save_file({"clip_g": g, "clip_l": small}, str(tmp_path / "xl.safetensors"))
    assert np.array_equal(read_embedding(tmp_path / "xl.safetensors", key="clip_l"), small)
    assert np.array_equal(read_embedding(tmp_path / "xl.safetensors", key="clip_g"), g)
    save_file({"lora_unet_x.alpha": np.ones(1, np.float32), "bundle_emb.style.clip_g": g},
              str(tmp_path / "lora.safetensors"))
    assert np.array_equal(read_embedding(tmp_path / "lora.safetensors", key="clip_g"), g)


def test_file_without_tensors_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EmbeddingError, match="cannot read embedding"):
        read_embedding(tmp_path / "bad.safetensors")


def test_lookup_counts_vectors_and_keeps_names_inside(tmp_path: Path) -> None:
    (tmp_path / "embeddings" / "sub").mkdir(parents=True)
    save_file({"emb_params": _vectors(4, 64)},
              str(tmp_path / "embeddings" / "sub" / "s.safetensors"))
    library = Embeddings(tmp_path)
    count = library.lookup("clip_l", 64)
    assert count("s") == 4 and count("sub/s.safetensors") == 4 and count("missing") is None
    # A name that would leave the folder is never read: ignored, as ComfyUI ignores it.
    (tmp_path / "secret.safetensors").write_bytes((tmp_path / "embeddings" / "sub" /
                                                   "s.safetensors").read_bytes())
    assert count("../secret") is None and count("/etc/passwd") is None
