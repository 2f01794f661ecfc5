"""T5 SentencePiece tokenizer with ComfyUI's weighting and padding (no torch).

SD3 and Flux tokenize prompts for their T5-XXL v1.1 encoder with T5's Unigram SentencePiece
vocabulary (32,100 tokens: 32,000 pieces and 100 ``<extra_id_N>`` sentinels; ``<pad>`` 0,
``</s>`` 1, ``<unk>`` 2). The vocabulary ships with comfyc (``runtime/data/t5_tokenizer.json.gz``,
Apache-2.0, see its ``.LICENSE.txt``; nothing is fetched) and is read by the `tokenizers`
package: Hugging Face's Rust tokenizers, which ComfyUI reaches through transformers'
``T5TokenizerFast`` on the same file - so the ids are the same by construction, including its
normalisation (the SentencePiece ``nmt_nfkc`` character map, trailing spaces stripped, runs of
spaces collapsed) and its handling of special-token text such as ``</s>`` inside a prompt.
`tokenizers` is a compiled package without torch (a few MB); it is needed only when a prompt is
a runtime param of an SD3/Flux artifact (constant prompts are folded at compile time). A
pure-Python Unigram tokenizer would need the SentencePiece normaliser's Unicode grapheme
handling as well and could drift from ComfyUI on unusual text; the package cannot.

`T5Tokenizer.tokenize_weighted` follows ComfyUI's ``SDTokenizer.tokenize_with_weights`` with the
T5 settings of ``comfy/text_encoders/sd3_clip.py`` / ``flux.py`` (``T5XXLTokenizer``):

* the prompt is split into weighted segments by ComfyUI's syntax (``(text)`` x1.1, ``(text:w)``,
  ``\\(`` and ``\\)`` literal; `comfyc.runtime.tokenizer.parse_prompt_weights`), each segment is
  tokenized on its own and its trailing ``</s>`` dropped;
* there is no start token and no 77-token chunking (T5's maximum length is effectively
  unlimited): one sequence ``ids + [</s>]``, then ``min_padding`` pads, then pads (0) up to
  ``min_length`` - 77 for SD3, 256 for Flux (dev and schnell); a longer prompt is not truncated;
* ``embedding:NAME`` inserts textual-inversion vectors when an embedding lookup is given (T5
  embeddings are 4096 wide; ComfyUI looks them up under the key ``t5xxl``), and is dropped with a
  warning when the name is unknown; without a lookup it is text;
* ``T5TokenizerOptions`` sets ``min_length`` and ``min_padding`` (0 = none).

The weights are applied by the text encoder, not here (see
`comfyc.compiler.models.flow_conditioning`): special and pad tokens have weight 1.
"""
from __future__ import annotations

import functools
import gzip
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .tokenizer import (
    EMBEDDING_PREFIX,
    EmbeddingLookup,
    EmbeddingRef,
    TokenizerError,
    WeightedToken,
    parse_prompt_weights,
)

__all__ = [
    "DEFAULT_T5_VOCAB_PATH",
    "FLUX_T5_MIN_LENGTH",
    "SD3_T5_MIN_LENGTH",
    "T5_END_TOKEN",
    "T5_PAD_TOKEN",
    "T5_UNK_TOKEN",
    "T5_VOCAB_SIZE",
    "T5Tokenizer",
    "load_t5_tokenizer_json",
]

_log = logging.getLogger(__name__)

#: The T5 vocabulary that ships with comfyc (Google's T5 SentencePiece model, Apache-2.0).
DEFAULT_T5_VOCAB_PATH = Path(__file__).resolve().parent / "data" / "t5_tokenizer.json.gz"
T5_PAD_TOKEN = 0  #: ``<pad>``
T5_END_TOKEN = 1  #: ``</s>``
T5_UNK_TOKEN = 2  #: ``<unk>``
T5_VOCAB_SIZE = 32100  #: pieces + sentinels (the encoders' embedding tables have 32128 rows)
#: ComfyUI's minimum T5 length for SD3 (``sd3_clip.T5XXLTokenizer``).
SD3_T5_MIN_LENGTH = 77
#: ComfyUI's minimum T5 length for Flux (``flux.T5XXLTokenizer``), dev and schnell alike.
FLUX_T5_MIN_LENGTH = 256
# ComfyUI splits a segment where "embedding:" follows whitespace.
_EMBEDDING_SPLIT = re.compile(r"(?<=\s)" + re.escape(EMBEDDING_PREFIX))


@functools.lru_cache(maxsize=4)
def load_t5_tokenizer_json(path: str | None = None) -> str:
    """The tokenizer JSON text (the packaged vocabulary unless `path` names another file).

    Args:
        path: A ``tokenizer.json`` or ``.json.gz`` file; None for `DEFAULT_T5_VOCAB_PATH`.

    Raises:
        TokenizerError: The file is missing or unreadable.
    """
    file = Path(path) if path is not None else DEFAULT_T5_VOCAB_PATH
    try:
        data = file.read_bytes()
        if file.suffix == ".gz":
            data = gzip.decompress(data)
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        raise TokenizerError(f"cannot read the T5 vocabulary {str(file)!r}: {exc}") from exc


@functools.lru_cache(maxsize=4)
def _backend(path: str | None) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:  # pragma: no cover - exercised only without the package
        raise TokenizerError(
            "the T5 tokenizer (SD3/Flux prompts) needs the 'tokenizers' package: pip install "
            "tokenizers (comfyc's cpu extra)"
        ) from exc
    try:
        return Tokenizer.from_str(load_t5_tokenizer_json(path))
    except Exception as exc:  # noqa: BLE001 - the Rust error types are not exported
        raise TokenizerError(f"the T5 vocabulary is not a tokenizers JSON file: {exc}") from exc


class T5Tokenizer:
    """T5 tokenizer producing ComfyUI's weighted, padded T5 sequence.

    Args:
        vocab_path: A ``tokenizer.json(.gz)``; None for the packaged vocabulary.
        min_length: Pad to at least this length (`SD3_T5_MIN_LENGTH`, `FLUX_T5_MIN_LENGTH`;
            0 or None: no padding beyond ``</s>``).
        min_padding: Pads always appended after ``</s>`` (``T5TokenizerOptions``), or None.
        embedding_lookup: Resolves ``embedding:NAME`` to a vector count (None: plain text).

    Raises:
        TokenizerError: The `tokenizers` package or the vocabulary is missing.
    """

    pad_token = T5_PAD_TOKEN
    end_token = T5_END_TOKEN

    def __init__(
        self,
        vocab_path: str | Path | None = None,
        *,
        min_length: int | None = SD3_T5_MIN_LENGTH,
        min_padding: int | None = None,
        embedding_lookup: EmbeddingLookup | None = None,
    ) -> None:
        self._tokenizer = _backend(None if vocab_path is None else str(vocab_path))
        self.min_length = min_length
        self.min_padding = min_padding
        self.embedding_lookup = embedding_lookup

    @property
    def vocab_size(self) -> int:
        """Number of tokens (32,100)."""
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Token ids of a text without the closing ``</s>`` (ComfyUI's per-segment call).

        Equal to ``T5TokenizerFast(text)["input_ids"][:-1]`` on the same vocabulary.
        """
        return list(self._tokenizer.encode(text).ids[:-1])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (special tokens skipped)."""
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def _embedding_tokens(self, word: str, weight: float, lookup: EmbeddingLookup) -> tuple[
            list[WeightedToken], str]:
        """ComfyUI's ``_try_get_embedding``: reference tokens and the leftover text."""
        parts = word[len(EMBEDDING_PREFIX):].strip("\n").split()
        if not parts:
            _log.warning("prompt holds 'embedding:' without a name; ignoring it")
            return [], ""
        name, leftover = parts[0], " ".join(parts[1:])
        match = re.search(r"[<\[]", name)
        if match is not None:
            leftover = name[match.start():] + (" " + leftover if leftover else "")
            name = name[: match.start()]
        count = lookup(name)
        if count is None:
            stripped = name.strip(",")
            if len(stripped) < len(name):
                count = lookup(stripped) if stripped else None
                leftover = f"{name[len(stripped):]} {leftover}"
                name = stripped
        if count is None:
            _log.warning("embedding:%s does not exist; ignoring it (ComfyUI does the same)", name)
            return [], leftover
        return [(EmbeddingRef(name, k), weight) for k in range(count)], leftover

    def tokenize_weighted(
        self,
        text: str,
        *,
        min_length: int | None = -1,
        min_padding: int | None = -1,
        embedding_lookup: EmbeddingLookup | None = None,
    ) -> list[list[WeightedToken]]:
        """Tokenizes a prompt into ComfyUI's T5 token list (one chunk).

        Args:
            text: The prompt, with ComfyUI's weighting syntax.
            min_length: Overrides the tokenizer's minimum length (-1: keep it).
            min_padding: Overrides the tokenizer's extra padding (-1: keep it).
            embedding_lookup: Overrides the tokenizer's embedding lookup for this call.

        Returns:
            ``[[(token, weight), ...]]``: the ids (or `EmbeddingRef`), ``</s>``, then pads.
        """
        minimum = self.min_length if min_length == -1 else min_length
        padding = self.min_padding if min_padding == -1 else min_padding
        lookup = embedding_lookup if embedding_lookup is not None else self.embedding_lookup
        tokens: list[WeightedToken] = []
        for segment, weight in parse_prompt_weights(text):
            pieces = _EMBEDDING_SPLIT.split(segment)
            words = [pieces[0]] + [EMBEDDING_PREFIX + p for p in pieces[1:]]
            for word in words:
                if word == "":
                    continue
                if lookup is not None and word.startswith(EMBEDDING_PREFIX):
                    refs, leftover = self._embedding_tokens(word, weight, lookup)
                    tokens.extend(refs)
                    if leftover == "":
                        continue
                    word = leftover
                tokens.extend((token, weight) for token in self.encode(word))
        tokens.append((self.end_token, 1.0))
        pad: WeightedToken = (self.pad_token, 1.0)
        if padding:
            tokens.extend([pad] * padding)
        if minimum and len(tokens) < minimum:
            tokens.extend([pad] * (minimum - len(tokens)))
        return [tokens]

    @staticmethod
    def to_arrays(chunks: Sequence[Sequence[WeightedToken]]) -> tuple[np.ndarray, np.ndarray]:
        """Packs the token list into arrays for a text-encoder stage.

        Returns:
            ``(ids, weights)``: int64 ``[1, n]`` (-1 where an `EmbeddingRef` sits) and float32
            ``[1, n]``.
        """
        ids = np.array([[t if isinstance(t, int) else -1 for t, _ in c] for c in chunks],
                       np.int64)
        weights = np.array([[w for _, w in c] for c in chunks], np.float32)
        return ids, weights
