"""Textual-inversion embedding files and `embedding:NAME` resolution."""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from comfyc.compiler.models.embeddings import EmbeddingLibrary, load_embedding  # noqa: E402
from comfyc.compiler.models.errors import ModelFormatError  # noqa: E402
from comfyc.runtime.tokenizer import ClipTokenizer, EmbeddingRef  # noqa: E402


@pytest.fixture()
def vectors() -> torch.Tensor:
    return torch.randn(3, 768, generator=torch.Generator().manual_seed(0))


def test_a1111_pt_format(tmp_path: Path, vectors: torch.Tensor) -> None:
    """{"string_to_param": {"*": ...}} from A1111 .pt files."""
    path = tmp_path / "style.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors},
                "name": "style", "step": 3000}, path)
    assert torch.equal(load_embedding(path, embedding_size=768), vectors)


def test_safetensors_formats(tmp_path: Path, vectors: torch.Tensor) -> None:
    """emb_params, per-encoder clip_l/clip_g, and a bare tensor."""
    from safetensors.torch import save_file

    save_file({"emb_params": vectors}, tmp_path / "a.safetensors")
    save_file({"clip_g": torch.zeros(3, 1280), "clip_l": vectors}, tmp_path / "b.safetensors")
    save_file({"whatever": vectors[0]}, tmp_path / "c.safetensors")
    assert torch.equal(load_embedding(tmp_path / "a.safetensors"), vectors)
    assert torch.equal(load_embedding(tmp_path / "b.safetensors", key="clip_l"), vectors)
    assert load_embedding(tmp_path / "c.safetensors").shape == (1, 768)


def test_list_format(tmp_path: Path, vectors: torch.Tensor) -> None:
    """A list of dicts: every tensor of the right width, in order."""
    path = tmp_path / "list.pt"
    torch.save([{"a": vectors[:2], "skip": torch.zeros(4, 5)}, {"b": vectors[2]}], path)
    assert torch.equal(load_embedding(path, embedding_size=768), vectors)


def test_wrong_width_is_reported(tmp_path: Path) -> None:
    """An SD2 embedding used with SD1 names both widths."""
    path = tmp_path / "sd2.pt"
    torch.save({"string_to_param": {"*": torch.zeros(2, 1024)}}, path)
    with pytest.raises(ModelFormatError, match="width 1024.*expects 768"):
        load_embedding(path, embedding_size=768)


def test_library_resolves_and_feeds_the_tokenizer(tmp_path: Path, vectors: torch.Tensor,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """EmbeddingLibrary finds names in MODELS/embeddings and works as the tokenizer's lookup."""
    from safetensors.torch import save_file

    folder = tmp_path / "models" / "embeddings" / "neg"
    folder.mkdir(parents=True)
    save_file({"emb_params": vectors}, folder / "EasyNegative.safetensors")
    torch.save({"string_to_param": {"*": torch.zeros(2, 1024)}}, folder / "sd2only.pt")
    library = EmbeddingLibrary(tmp_path / "models")
    assert library.count("EasyNegative") == 3
    assert library("neg/EasyNegative.safetensors") == 3
    assert torch.equal(library.vectors("EasyNegative"), vectors)
    assert library.count("missing") is None
    assert library.count("sd2only") is None and "width 1024" in caplog.text
    tokenizer = ClipTokenizer(embedding_lookup=library)
    chunks = tokenizer.tokenize_weighted("embedding:EasyNegative, cat")
    assert [t for t, _ in chunks[0][1:4]] == [EmbeddingRef("EasyNegative", i) for i in range(3)]


def test_sdxl_embedding_files(tmp_path: Path) -> None:
    """SDXL embeddings hold clip_l [n, 768] and clip_g [n, 1280]; each encoder takes its own."""
    from safetensors.torch import save_file

    from comfyc.compiler.models.embeddings import load_sdxl_embedding

    generator = torch.Generator().manual_seed(1)
    clip_l, clip_g = torch.randn(2, 768, generator=generator), torch.randn(2, 1280,
                                                                          generator=generator)
    save_file({"clip_l": clip_l, "clip_g": clip_g}, tmp_path / "xl.safetensors")
    both = load_sdxl_embedding(tmp_path / "xl.safetensors")
    assert torch.equal(both["clip_l"], clip_l) and torch.equal(both["clip_g"], clip_g)
    assert torch.equal(load_embedding(tmp_path / "xl.safetensors", embedding_size=1280,
                                      key="clip_g"), clip_g)
    save_file({"clip_l": clip_l, "clip_g": clip_g[:1]}, tmp_path / "uneven.safetensors")
    with pytest.raises(ModelFormatError, match="same count"):
        load_sdxl_embedding(tmp_path / "uneven.safetensors")
    save_file({"emb_params": clip_l}, tmp_path / "sd1.safetensors")
    with pytest.raises(ModelFormatError, match="not an SDXL embedding.*emb_params"):
        load_sdxl_embedding(tmp_path / "sd1.safetensors")
    save_file({"clip_l": clip_l, "clip_g": clip_l.clone()}, tmp_path / "narrow.safetensors")
    with pytest.raises(ModelFormatError, match="clip_g has width 768, expected 1280"):
        load_sdxl_embedding(tmp_path / "narrow.safetensors")


def test_embedding_libraries_per_encoder(tmp_path: Path, sdxl_file: Path) -> None:
    """An SDXL checkpoint gets one library per encoder, each reading its own key and width."""
    from safetensors.torch import save_file

    from comfyc.compiler.models.embeddings import embedding_libraries
    from comfyc.compiler.models.single_file import load_checkpoint

    folder = tmp_path / "models" / "embeddings"
    folder.mkdir(parents=True)
    save_file({"clip_l": torch.ones(3, 64), "clip_g": torch.zeros(3, 128)},
              folder / "tiny-xl.safetensors")
    libraries = embedding_libraries(load_checkpoint(sdxl_file), tmp_path / "models")
    assert list(libraries) == ["clip_l", "clip_g"]
    assert torch.equal(libraries["clip_l"].vectors("tiny-xl"), torch.ones(3, 64))
    assert torch.equal(libraries["clip_g"].vectors("tiny-xl"), torch.zeros(3, 128))
    assert libraries["clip_g"].count("tiny-xl") == 3
