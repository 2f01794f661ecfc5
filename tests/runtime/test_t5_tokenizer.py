"""The lean runtime's T5 tokenizer: transformers' ids, ComfyUI's weighting and padding, no torch.

``t5_comfyui_tokens.json`` beside this file holds ComfyUI's own ``T5XXLTokenizer`` output (SD3's
min length 77 and Flux's 256) for `PROMPTS`. With ``COMFYUI_SRC`` set (and ``COMFYUI_PYTHON``, a
Python with ComfyUI's dependencies) `test_recording_is_current` re-records it in a subprocess;
``COMFYC_UPDATE_RECORDING=1`` rewrites the file.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from comfyc.runtime.t5_tokenizer import (
    DEFAULT_T5_VOCAB_PATH,
    FLUX_T5_MIN_LENGTH,
    SD3_T5_MIN_LENGTH,
    T5Tokenizer,
)
from comfyc.runtime.tokenizer import EmbeddingRef

_RECORDING = Path(__file__).with_name("t5_comfyui_tokens.json")
_VOCAB_SHA256 = "6cd1badb7467cdab971403bbeb1945070ca385652385a2b6549f672b08089dfc"

#: Prompts recorded through ComfyUI: weighting syntax, escapes, whitespace, Unicode, specials.
PROMPTS = [
    "",
    "a cat",
    "A photo of a cat sitting on a windowsill, golden hour, 35mm",
    "a (red:1.5) cat",
    "a ((blue)) dog and (green) bird",
    "(masterpiece:1.2), (best quality), ultra-detailed, (bad hands:-0.5)",
    "nested (outer (inner:1.3) text:0.8) end",
    "escaped \\(not weighted\\) and \\(still\\)",
    "(unbalanced paren",
    "unbalanced) paren",
    "(:1.2) empty weight",
    "(a:b:1.1) colons",
    "(text:notanumber)",
    "  leading and trailing spaces  ",
    "multiple   internal    spaces",
    "tabs\tand\nnewlines\r\nhere",
    "café naïve façade crème brûlée",
    "ﬁ ligature ① circled ½ fraction Ｆｕｌｌｗｉｄｔｈ",
    "猫と犬 🐱🐶 emoji",
    "Привет мир, Ελληνικά",
    "numbers 12345 3.14159 1,000,000 and 2024-01-01",
    "punctuation!?.,;:'\"-_/\\|@#$%^&*+=~`<>[]{}",
    "special </s> <pad> <unk> <extra_id_0> tokens in text",
    "UPPER lower MiXeD CaSe",
    "hyphen-ated words and snake_case and CamelCase",
    "embedding:foo a prompt with an embedding word",
    "a long prompt " + " ".join(f"word{i}" for i in range(120)),
    "The quick brown fox jumps over the lazy dog. " * 8,
    "(a:1.1)(b:1.2)(c:1.3)",
    ", , , commas",
    "trailing comma,",
    "'quoted' \"double\"",
    "e.g. i.e. etc. Mr. Dr.",
    "zero-width\u200bspace and\u00a0nbsp",
    "\u3000ideographic space",
    "x" * 300,
]


def _pairs(chunks: list[list[tuple[object, float]]]) -> list[list[float]]:
    return [[int(t), float(w)] for t, w in chunks[0]]  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def tokenizer() -> T5Tokenizer:
    """The packaged tokenizer with SD3's minimum length."""
    return T5Tokenizer()


@pytest.fixture(scope="module")
def transformers_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """transformers' T5 fast tokenizer on the same vocabulary (a temporary folder)."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("t5tok")
    (folder / "tokenizer.json").write_bytes(gzip.decompress(DEFAULT_T5_VOCAB_PATH.read_bytes()))
    return transformers.T5TokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))


def _generated_prompts(count: int = 300, seed: int = 0) -> list[str]:
    """Seeded random prompts from words, weights, punctuation, spacing and Unicode."""
    vocabulary = ("a cat dog portrait photo of the in on with golden hour cinematic lighting 4k "
                  "ultra detailed masterpiece landscape mountains river city night neon "
                  "cyberpunk oil painting watercolor sketch anime woman man child robot dragon "
                  "castle forest café résumé naïve 東京 ñandú Ölgemälde straße ﬁnal ½ ② x-ray "
                  "t-shirt don't it's COLOR colour 1990s 35mm f/1.8 16:9 #hashtag @user ~tilde")
    words = vocabulary.split(" ")
    joiners = [" ", " ", " ", ", ", ",", "  ", " | ", ". ", "\n", " - "]
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 25)):
            word = rng.choice(words)
            roll = rng.random()
            if roll < 0.1:
                word = f"({word}:{rng.choice(['0.5', '1.2', '1.5', '2'])})"
            elif roll < 0.15:
                word = f"(({word}))"
            elif roll < 0.18:
                word = f"\\({word}\\)"
            parts.append(word)
            parts.append(rng.choice(joiners))
        out.append("".join(parts).rstrip() if rng.random() < 0.5 else "".join(parts))
    return out


def test_packaged_vocabulary() -> None:
    """The shipped vocabulary is ComfyUI's file (pinned hash), licensed, 32,100 tokens."""
    data = gzip.decompress(DEFAULT_T5_VOCAB_PATH.read_bytes())
    assert hashlib.sha256(data).hexdigest() == _VOCAB_SHA256
    license_text = DEFAULT_T5_VOCAB_PATH.with_name("t5_tokenizer.LICENSE.txt").read_text()
    assert "Apache License" in license_text and _VOCAB_SHA256 in license_text
    assert T5Tokenizer().vocab_size == 32100


def test_ids_match_transformers(tokenizer: T5Tokenizer, transformers_tokenizer) -> None:
    """encode() equals T5TokenizerFast's ids without the closing </s>, on every segment
    ComfyUI tokenizes (the curated prompts and 300 generated ones, whole and per weighted
    segment)."""
    from comfyc.runtime.tokenizer import parse_prompt_weights

    texts = PROMPTS + _generated_prompts()
    segments = [s for text in texts for s, _ in parse_prompt_weights(text)]
    mismatches = [t for t in texts + segments
                  if tokenizer.encode(t) != transformers_tokenizer(t)["input_ids"][:-1]]
    assert not mismatches, mismatches[:5]
    assert tokenizer.decode(tokenizer.encode("a photo of a cat")) == "a photo of a cat"


def test_matches_comfyui_recording(tokenizer: T5Tokenizer) -> None:
    """tokenize_weighted equals ComfyUI's T5XXLTokenizer for SD3 (77) and Flux (256)."""
    recording = json.loads(_RECORDING.read_text("utf-8"))
    assert [r["text"] for r in recording["prompts"]] == PROMPTS
    for entry in recording["prompts"]:
        for key, minimum in (("sd3", SD3_T5_MIN_LENGTH), ("flux", FLUX_T5_MIN_LENGTH)):
            length = entry[f"{key}_length"]
            want = entry["tokens"] + [[0, 1.0]] * (length - len(entry["tokens"]))
            got = _pairs(tokenizer.tokenize_weighted(entry["text"], min_length=minimum))
            assert got == want, (key, entry["text"])


def test_padding_and_options(tokenizer: T5Tokenizer) -> None:
    """</s> then pads to the minimum; min_padding first; no truncation; T5TokenizerOptions."""
    (chunk,) = tokenizer.tokenize_weighted("a cat")
    assert [t for t, _ in chunk[:4]] == [3, 9, 1712, 1] and len(chunk) == SD3_T5_MIN_LENGTH
    assert all(t == 0 and w == 1.0 for t, w in chunk[4:])
    (flux,) = T5Tokenizer(min_length=FLUX_T5_MIN_LENGTH).tokenize_weighted("a cat")
    assert len(flux) == 256 and flux[:4] == chunk[:4]
    (bare,) = tokenizer.tokenize_weighted("a cat", min_length=0)
    assert [t for t, _ in bare] == [3, 9, 1712, 1]
    (padded,) = tokenizer.tokenize_weighted("a cat", min_length=0, min_padding=3)
    assert [t for t, _ in padded] == [3, 9, 1712, 1, 0, 0, 0]
    long_text = " ".join(f"word{i}" for i in range(200))
    (long_chunk,) = tokenizer.tokenize_weighted(long_text, min_length=256)
    assert len(long_chunk) > 256 and long_chunk[-1] == (1, 1.0)
    ids, weights = tokenizer.to_arrays(tokenizer.tokenize_weighted("a (red:1.5) cat"))
    assert ids.shape == weights.shape == (1, 77) and ids.dtype.name == "int64"
    assert weights[0, 2] == pytest.approx(1.5) and weights[0, 0] == 1.0


def test_embeddings(tokenizer: T5Tokenizer) -> None:
    """embedding:NAME becomes reference tokens with a lookup, is dropped when unknown, and is
    plain text without a lookup (as ComfyUI with no embeddings folder)."""
    def lookup(name: str) -> int | None:
        return 2 if name == "style" else None

    (chunk,) = tokenizer.tokenize_weighted("a embedding:style cat", min_length=0,
                                           embedding_lookup=lookup)
    refs = [t for t, _ in chunk if isinstance(t, EmbeddingRef)]
    assert refs == [EmbeddingRef("style", 0), EmbeddingRef("style", 1)]
    (dropped,) = tokenizer.tokenize_weighted("a embedding:missing cat", min_length=0,
                                             embedding_lookup=lookup)
    assert [t for t, _ in dropped] == tokenizer.encode("a ") + tokenizer.encode("cat") + [1]
    (plain,) = tokenizer.tokenize_weighted("a embedding:style cat", min_length=0)
    assert [t for t, _ in plain] == tokenizer.encode("a embedding:style cat") + [1]
    ids, _ = tokenizer.to_arrays([chunk])
    assert (ids == -1).sum() == 2


def test_imports_without_torch(tmp_path: Path) -> None:
    """The tokenizer imports and runs where importing torch fails (the lean runtime)."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'diffusers'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from comfyc.runtime.t5_tokenizer import T5Tokenizer\n"
        "print(T5Tokenizer(min_length=0).tokenize_weighted('a cat')[0])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(1712, 1.0), (1, 1.0)" in result.stdout


_RECORDER = r'''
import json, sys
sys.argv = ["comfyui", "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
from comfy.text_encoders import flux, sd3_clip
prompts = json.loads(sys.stdin.read())
sd3 = sd3_clip.T5XXLTokenizer()
fx = flux.T5XXLTokenizer()
def trimmed(chunk):
    pairs = [[int(t), float(w)] for t, w in chunk]
    while pairs and pairs[-1] == [0, 1.0]:
        pairs.pop()
    return pairs, len(chunk)
out = []
for text in prompts:
    (a,) = sd3.tokenize_with_weights(text)
    (b,) = fx.tokenize_with_weights(text)
    tokens, sd3_length = trimmed(a)
    flux_tokens, flux_length = trimmed(b)
    assert tokens == flux_tokens, text
    out.append({"text": text, "tokens": tokens, "sd3_length": sd3_length,
                "flux_length": flux_length})
print("RESULT " + json.dumps(out, ensure_ascii=False))
'''


@pytest.mark.skipif(not os.environ.get("COMFYUI_SRC"),
                    reason="set COMFYUI_SRC (and COMFYUI_PYTHON) to re-record ComfyUI's output")
def test_recording_is_current() -> None:
    """ComfyUI's tokenizer, run now, gives the stored recording (rewrites it on request)."""
    source = os.environ["COMFYUI_SRC"]
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = dict(os.environ, PYTHONPATH=source)
    result = subprocess.run([python, "-c", _RECORDER], input=json.dumps(PROMPTS),
                            capture_output=True, text=True, cwd=source, env=env, timeout=600,
                            check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stderr[-3000:]
    recorded = json.loads(lines[-1][len("RESULT "):])
    commit_file = Path(source) / "COMFYUI_COMMIT"
    commit = commit_file.read_text().strip() if commit_file.is_file() else "unknown"
    if os.environ.get("COMFYC_UPDATE_RECORDING") == "1":
        _RECORDING.write_text(json.dumps({"comfyui_commit": commit, "prompts": recorded},
                                         ensure_ascii=False, separators=(",", ":")) + "\n",
                              "utf-8")
    stored = json.loads(_RECORDING.read_text("utf-8"))
    assert stored["prompts"] == recorded
