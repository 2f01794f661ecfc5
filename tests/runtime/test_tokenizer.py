"""Tests for comfyc.runtime.tokenizer: ids against transformers, ComfyUI weighting and chunking."""
from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfyc.runtime.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    ClipTokenizer,
    EmbeddingRef,
    TokenizerError,
    _pretokenize,
    parse_prompt_weights,
)

CAT = 2368  # "cat</w>"
DOG = 1929  # "dog</w>"


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return ClipTokenizer()


@pytest.fixture(scope="module")
def hf(tok: ClipTokenizer, tmp_path_factory: pytest.TempPathFactory):
    """transformers' CLIPTokenizer built offline from the same vocabulary (spikes.md §0)."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    (folder / "vocab.json").write_text(json.dumps(tok.vocab, ensure_ascii=False), "utf-8")
    merges = "".join(f"{a} {b}\n" for a, b in tok.merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges, "utf-8")
    hf_tok = transformers.CLIPTokenizer.from_pretrained(str(folder))
    hf_tok.model_max_length = 77
    return hf_tok


def _hf_ids(hf, text: str) -> list[int]:
    return hf(text)["input_ids"][1:-1]


PROMPTS = [
    "",
    "a photo of a cat",
    "A Photo Of A CAT",
    "masterpiece, best quality, 1girl, solo, looking at viewer",
    "a handwritten digit seven",
    "portrait of an astronaut, trending on artstation, 8k, octane render",
    "don't stop believin' it's we're they've I'm we'll you'd",
    "DON'T SHOUT; IT'S RUDE",
    "'s 't 're 've 'm 'll 'd ''s '''",
    "numbers 0123456789 3.14159 1,000,000 -42 +7 1e-5",
    "the year 2024 and 1girl 2boys 4k 8K uhd",
    "punctuation!!! ??? ... --- ___ *** ### @@@ $$$ %%% ^^^ &&& ~~~ ```",
    "brackets (a) [b] {c} <d> (e:1.2) [f:0.5] {g|h}",
    "quotes \"double\" 'single' `back` «guillemets» “curly” ‘curly’",
    "slashes / \\ // \\\\ a/b c\\d",
    "tabs\tand\nnewlines\r\nand   multiple    spaces",
    "   leading and trailing whitespace   ",
    "\u00a0non-breaking\u2003em-space\u3000ideographic-space",
    "café naïve résumé façade jalapeño",
    "e\u0301 combining acute vs é precomposed",
    "Straße Ærøskøbing Œuvre İstanbul ΣΟΦΙΑ ΟΔΟΣ",
    "Москва — столица России",
    "日本語のテキスト、東京タワー",
    "中文提示词：一只可爱的猫",
    "한국어 프롬프트 고양이",
    "العربية مرحبا بالعالم",
    "עברית שלום",
    "हिन्दी नमस्ते दुनिया",
    "ภาษาไทย สวัสดี",
    "emoji 🐱🐶🎨 ✨ 👩‍🚀 🏳️‍🌈",
    "fullwidth ＡＢＣ１２３！",
    "roman numerals Ⅻ ⅷ and circled ① ② and superscript x² y³ ½",
    "arabic-indic digits ٠١٢٣ and devanagari digits ०१२",
    "ligature ﬁ ﬂ and ß and ǅ titlecase",
    "zero\u200bwidth\u200cjoiners\u200d\ufeffbom",
    "control \x01\x02 chars \x1c\x1d\x1e\x1f here \x7f",
    "<|startoftext|>a cat<|endoftext|>",
    "<|ENDOFTEXT|> uppercase special",
    "<|endoftext|><|endoftext|>",
    "html &amp; entities &lt;b&gt; not unescaped",
    "url https://example.com/path?query=1&x=2#frag",
    "email someone@example.com and #hashtag @mention",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "a" * 300,
    "x" * 50 + " " + "ab" * 40,
    "embedding:EasyNegative, (worst quality:1.4), (low quality:1.4)",
    "(masterpiece:1.2), ((best quality)), [[lowres]], \\(escaped\\)",
    "a (red:1.3) ((cat)), [dog], (bird:abc), (fish",
    "((((deep nesting))))",
    "score_9, score_8_up, score_7_up, source_anime",
    "mixedCASEwordsWithCamelCase and snake_case_words and kebab-case-words",
    "1girl, solo, long hair, looking at viewer, smile, blue eyes, blonde hair, shirt, dress, "
    "holding, jewelry, sitting, closed mouth, standing, full body, flower, outdoors, sky, day, "
    "cloud, water, tree, blue sky, petals, grass, plant, building, scenery, reflection, "
    "walking, road, bush, house, street, path, stairs, bridge, lamppost, river",
]


def test_vocabulary_has_clip_size(tok: ClipTokenizer) -> None:
    """The packaged vocabulary gives CLIP's 49408 ids with the special tokens at the end."""
    assert len(tok.vocab) == 49408
    assert len(tok.merges) == 48894
    assert tok.vocab["<|startoftext|>"] == BOS_TOKEN
    assert tok.vocab["<|endoftext|>"] == EOS_TOKEN


def test_known_ids(tok: ClipTokenizer) -> None:
    """'a photo of a cat' gives the real CLIP ids (spikes.md §0)."""
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_encode_matches_transformers(tok: ClipTokenizer, hf, prompt: str) -> None:
    """encode() gives transformers' CLIPTokenizer ids (without BOS/EOS)."""
    assert tok.encode(prompt) == _hf_ids(hf, prompt)


def test_encode_matches_transformers_on_unicode_sample(tok: ClipTokenizer, hf) -> None:
    """Every sampled assigned code point, inside letters and next to numbers, tokenizes alike."""
    rng = random.Random(0)
    points = [
        i for i in range(0x30000)
        if not 0xD800 <= i < 0xE000 and unicodedata.category(chr(i)) != "Cn"
    ]
    chars = rng.sample(points, 3000) + list(range(0x00, 0x250))
    texts = [f"a{chr(c)}b 1{chr(c)}2 {chr(c)}{chr(c)}." for c in chars]
    expected = hf(texts)["input_ids"]
    mismatched = [hex(c) for c, t, e in zip(chars, texts, expected) if tok.encode(t) != e[1:-1]]
    assert mismatched == []


_TEXT = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cn")), max_size=60
) | st.text(alphabet=st.sampled_from(list("aZ09 '\t\n.,:;()[]\\-_éß日🐱\u0301ΣİⅫ")), max_size=60)


@settings(max_examples=300, deadline=None)
@given(text=_TEXT)
def test_encode_matches_transformers_fuzz(tok: ClipTokenizer, hf, text: str) -> None:
    """Random text tokenizes like transformers."""
    assert tok.encode(text) == _hf_ids(hf, text)


@settings(max_examples=300, deadline=None)
@given(text=_TEXT)
def test_pretokenize_matches_regex_pattern(text: str) -> None:
    r"""The stdlib scanner splits like CLIP's \p{L}/\p{N} pattern run by the `regex` package."""
    regex = pytest.importorskip("regex")
    pattern = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
    # NOTE: `regex` may know newer Unicode than Python's unicodedata; compare assigned chars only.
    text = "".join(c for c in text if unicodedata.category(c) != "Cn")
    assert _pretokenize(text) == pattern.findall(text)


def test_decode_round_trip(tok: ClipTokenizer) -> None:
    """decode() inverts encode() up to case and whitespace."""
    assert tok.decode(tok.encode("A  Photo of  a Cat!")) == "a photo of a cat !"


def test_unpaired_surrogate_is_a_clear_error(tok: ClipTokenizer) -> None:
    """A lone surrogate is reported, not passed on as garbage."""
    with pytest.raises(TokenizerError, match="surrogate"):
        tok.encode("cat \ud800")


def test_bad_vocabulary_file(tmp_path: Path) -> None:
    """A file that is not the CLIP vocabulary is refused with what was found."""
    bad = tmp_path / "vocab.txt"
    bad.write_text("header\na b\n", "utf-8")
    with pytest.raises(TokenizerError, match="not the CLIP BPE vocabulary"):
        ClipTokenizer(bad)
    with pytest.raises(TokenizerError, match="cannot read"):
        ClipTokenizer(tmp_path / "missing.txt.gz")


# -- prompt weights --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("(cat)", [("cat", 1.1)]),
        ("((cat))", [("cat", 1.1 * 1.1)]),
        ("(((cat)))", [("cat", 1.1 * 1.1 * 1.1)]),
        ("(cat:1.3)", [("cat", 1.3)]),
        ("((cat:1.3))", [("cat", 1.3)]),
        ("((cat):1.5)", [("cat", 1.5 * 1.1)]),
        ("a (red:1.3) cat", [("a ", 1.0), ("red", 1.3), (" cat", 1.0)]),
        ("(a (b:1.5) c)", [("a ", 1.1), ("b", 1.5), (" c", 1.1)]),
        ("(a:b:0.5)", [("a:b", 0.5)]),
        ("(cat:abc)", [("cat:abc", 1.1)]),
        ("(:1.5)", [(":1.5", 1.1)]),
        ("(cat: 0.8 )", [("cat", 0.8)]),
        ("[cat]", [("[cat]", 1.0)]),
        ("\\(cat\\)", [("(cat)", 1.0)]),
        ("(\\(cat\\):1.2)", [("(cat)", 1.2)]),
        ("(cat", [("(cat", 1.0)]),
        ("cat)", [("cat)", 1.0)]),
        ("()", []),
        ("(a)(b)", [("a", 1.1), ("b", 1.1)]),
        ("", []),
    ],
)
def test_parse_prompt_weights(prompt: str, expected: list[tuple[str, float]]) -> None:
    """ComfyUI's weighting syntax: (x) = 1.1, nesting multiplies, (x:w), escapes, no [x]."""
    assert parse_prompt_weights(prompt) == expected


# -- chunking --------------------------------------------------------------------------------


def _ids(chunk: list) -> list:
    return [t for t, _ in chunk]


def _body(chunk: list, pad: int = EOS_TOKEN) -> list:
    """The tokens between BOS and the first EOS."""
    ids = _ids(chunk)
    assert ids[0] == BOS_TOKEN
    return ids[1 : ids.index(EOS_TOKEN, 1)]


def test_empty_prompt_is_one_chunk(tok: ClipTokenizer) -> None:
    """An empty prompt gives [BOS, EOS, pad...] of length 77, all weights 1."""
    (chunk,) = tok.tokenize_weighted("")
    assert _ids(chunk) == [BOS_TOKEN] + [EOS_TOKEN] * 76
    assert all(w == 1.0 for _, w in chunk)


def test_sd2_pads_with_zero() -> None:
    """SD2's tokenizer pads with id 0 after the EOS."""
    sd2 = ClipTokenizer(pad_token=0)
    (chunk,) = sd2.tokenize_weighted("a cat")
    assert _ids(chunk) == [BOS_TOKEN, 320, CAT, EOS_TOKEN] + [0] * 73


def test_short_prompt_matches_transformers_padding(tok: ClipTokenizer, hf) -> None:
    """One chunk equals transformers' ids padded to max_length with EOS."""
    text = "a photo of a cat, highly detailed"
    (chunk,) = tok.tokenize_weighted(text)
    assert _ids(chunk) == hf(text, padding="max_length", max_length=77)["input_ids"]


def test_long_single_segment_splits_in_order(tok: ClipTokenizer) -> None:
    """A long unweighted prompt fills chunks of 75 tokens; content concatenates to encode()."""
    text = " ".join(f"word{i}" for i in range(120))
    chunks = tok.tokenize_weighted(text)
    flat = [t for chunk in chunks for t in _body(chunk)]
    assert flat == tok.encode(text)
    assert all(len(c) == 77 for c in chunks)
    assert all(len(_body(c)) == 75 for c in chunks[:-1])


@pytest.mark.parametrize(("count", "chunks"), [(74, 1), (75, 1), (76, 2), (150, 2), (151, 3)])
def test_chunk_boundaries(tok: ClipTokenizer, count: int, chunks: int) -> None:
    """75 tokens fit one chunk; the 76th opens a second one."""
    result = tok.tokenize_weighted(" ".join(["cat"] * count))
    assert len(result) == chunks
    assert sum(len(_body(c)) for c in result) == count


def test_short_segment_moves_whole_to_next_chunk(tok: ClipTokenizer) -> None:
    """A weighted segment of 7 tokens that does not fit closes the chunk and moves whole."""
    text = " ".join(["cat"] * 70) + " (" + " ".join(["dog"] * 7) + ":1.2)"
    first, second = tok.tokenize_weighted(text)
    assert _ids(first) == [BOS_TOKEN] + [CAT] * 70 + [EOS_TOKEN] * 6
    assert _ids(second) == [BOS_TOKEN] + [DOG] * 7 + [EOS_TOKEN] * 69
    assert [w for _, w in second[1:8]] == [1.2] * 7


def test_sd2_short_segment_pads_closed_chunk_with_pad_token() -> None:
    """A chunk closed early is EOS then pad tokens (0 for SD2)."""
    sd2 = ClipTokenizer(pad_token=0)
    text = " ".join(["cat"] * 70) + " (" + " ".join(["dog"] * 7) + ":1.2)"
    first, _ = sd2.tokenize_weighted(text)
    assert _ids(first) == [BOS_TOKEN] + [CAT] * 70 + [EOS_TOKEN] + [0] * 5


def test_long_segment_splits_across_chunks(tok: ClipTokenizer) -> None:
    """A weighted segment of 8 tokens may be split at the chunk boundary."""
    text = " ".join(["cat"] * 70) + " (" + " ".join(["dog"] * 8) + ":1.2)"
    first, second = tok.tokenize_weighted(text)
    assert _ids(first) == [BOS_TOKEN] + [CAT] * 70 + [DOG] * 5 + [EOS_TOKEN]
    assert _ids(second) == [BOS_TOKEN] + [DOG] * 3 + [EOS_TOKEN] * 73
    assert [w for _, w in first[71:76]] == [1.2] * 5


def test_weights_follow_tokens(tok: ClipTokenizer) -> None:
    """Each token carries its segment's weight; BOS/EOS/pad carry 1.0."""
    (chunk,) = tok.tokenize_weighted("a (red:1.3) ((cat)) \\(dog\\)")
    red = tok.encode("red")
    expected_ids = [BOS_TOKEN, 320, *red, CAT, 263, DOG, 264, EOS_TOKEN]
    assert _ids(chunk)[: len(expected_ids)] == expected_ids
    weights = [w for _, w in chunk][: len(expected_ids)]
    assert weights == [1.0, 1.0] + [1.3] * len(red) + [1.1 * 1.1, 1.0, 1.0, 1.0, 1.0]


def test_square_brackets_are_plain_text(tok: ClipTokenizer) -> None:
    """ComfyUI has no [x] de-emphasis: brackets are tokens and the weight stays 1."""
    (chunk,) = tok.tokenize_weighted("[cat]")
    assert _body(chunk) == tok.encode("[cat]")
    assert {w for _, w in chunk} == {1.0}


def test_segments_are_tokenized_separately(tok: ClipTokenizer) -> None:
    """Each weighted segment is tokenized on its own (no BPE across a group boundary)."""
    (chunk,) = tok.tokenize_weighted("(ca:1.1)t")
    assert _body(chunk) == tok.encode("ca") + tok.encode("t")


# -- embeddings ------------------------------------------------------------------------------


def _lookup(name: str) -> int | None:
    return {"myemb": 3, "sub/one.pt": 1, "big": 10}.get(name)


def test_embedding_becomes_references(tok: ClipTokenizer) -> None:
    """embedding:NAME gives one EmbeddingRef per vector, in the weight of its segment."""
    (chunk,) = tok.tokenize_weighted("a embedding:myemb cat", _lookup)
    refs = [EmbeddingRef("myemb", k) for k in range(3)]
    assert _ids(chunk)[:7] == [BOS_TOKEN, 320, *refs, CAT, EOS_TOKEN]
    (chunk,) = tok.tokenize_weighted("(embedding:sub/one.pt:1.2), cat", _lookup)
    assert chunk[1] == (EmbeddingRef("sub/one.pt", 0), 1.2)
    assert _ids(chunk)[2:5] == [267, CAT, EOS_TOKEN]


def test_embedding_with_trailing_comma(tok: ClipTokenizer) -> None:
    """embedding:NAME, keeps the comma as text after the vectors (ComfyUI's stripping rule)."""
    (chunk,) = tok.tokenize_weighted("embedding:myemb, cat", _lookup)
    refs = [EmbeddingRef("myemb", k) for k in range(3)]
    assert _ids(chunk)[:7] == [BOS_TOKEN, *refs, 267, CAT, EOS_TOKEN]


def test_missing_embedding_is_dropped(tok: ClipTokenizer, caplog: pytest.LogCaptureFixture) -> None:
    """A missing embedding is ignored with a warning; the text after it stays."""
    (chunk,) = tok.tokenize_weighted("a embedding:nothere cat", _lookup)
    assert _body(chunk) == [320, CAT]
    assert "nothere" in caplog.text
    (chunk,) = tok.tokenize_weighted("a embedding:", _lookup)
    assert _body(chunk) == [320]


def test_embedding_without_lookup_is_text(tok: ClipTokenizer) -> None:
    """Without an embedding lookup, embedding:NAME is tokenized as text (ComfyUI, no folder)."""
    (chunk,) = tok.tokenize_weighted("embedding:myemb")
    assert _body(chunk) == tok.encode("embedding:myemb")


def test_embedding_in_middle_of_word_is_text(tok: ClipTokenizer) -> None:
    """Only 'embedding:' at a segment start or after a space/newline names an embedding."""
    (chunk,) = tok.tokenize_weighted("x,embedding:myemb", _lookup)
    assert _body(chunk) == tok.encode("x,embedding:myemb")


def test_large_embedding_may_split(tok: ClipTokenizer) -> None:
    """An embedding of 8 or more vectors is a long group and may straddle chunks."""
    text = " ".join(["cat"] * 70) + " embedding:big"
    first, second = tok.tokenize_weighted(text, _lookup)
    assert _ids(first)[71:76] == [EmbeddingRef("big", k) for k in range(5)]
    assert _ids(second)[1:7] == [*[EmbeddingRef("big", k) for k in range(5, 10)], EOS_TOKEN]


def test_to_arrays(tok: ClipTokenizer) -> None:
    """to_arrays packs ids (-1 for embeddings) and float32 weights."""
    chunks = tok.tokenize_weighted("(embedding:myemb:1.5) cat " + "dog " * 80, _lookup)
    ids, weights = tok.to_arrays(chunks)
    assert ids.shape == weights.shape == (2, 77)
    assert ids.dtype.name == "int64" and weights.dtype.name == "float32"
    assert list(ids[0, :5]) == [BOS_TOKEN, -1, -1, -1, CAT]
    assert weights[0, 1] == pytest.approx(1.5)


def test_runtime_modules_import_without_heavy_packages() -> None:
    """tokenizer and model_paths import and work with torch/transformers/regex blocked."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'diffusers', 'regex',\n"
        "                                  'tokenizers', 'ftfy'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from comfyc.runtime.tokenizer import ClipTokenizer\n"
        "from comfyc.runtime import model_paths\n"
        "print(ClipTokenizer().encode('a photo of a cat'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == "[320, 1125, 539, 320, 2368]", result.stderr
