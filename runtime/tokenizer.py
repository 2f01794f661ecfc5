"""CLIP BPE tokenizer with ComfyUI's prompt weighting and chunking (numpy + stdlib only).

This is the tokenizer of SD1.x (OpenAI CLIP ViT-L/14) and SD2.x (OpenCLIP ViT-H/14; same
vocabulary, padded with 0 instead of EOS). It reads the BPE merges from the vocabulary that
ships with the package (`runtime/data/bpe_simple_vocab_16e6.txt.gz`, MIT, OpenAI) and never
touches a model hub.

Two layers:

* `ClipTokenizer.encode(text)` turns text into BPE ids without BOS/EOS, exactly as
  `transformers.CLIPTokenizer` (the `tokenizers`-backed class of transformers 5) does:
  NFC normalisation, runs of whitespace collapsed to one space, per-character lowercasing, then
  CLIP's pre-tokenisation pattern
  ``<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``
  and byte-level BPE with the ``</w>`` end-of-word suffix. The pattern needs Unicode
  properties that the stdlib `re` module lacks, so it is implemented as a small scanner over
  `unicodedata.category` (letters = categories L*, numbers = N*), not as a regex.
* `ClipTokenizer.tokenize_weighted(text)` follows ComfyUI's `SDTokenizer.tokenize_with_weights`
  (`comfy/sd1_clip.py`): `(text)` multiplies the weight by 1.1 (nesting multiplies),
  `(text:1.3)` sets it, `\\(` and `\\)` are literal parentheses, there is no `[text]`
  de-emphasis, `embedding:NAME` inserts textual-inversion vectors, and segments are packed into
  chunks of BOS + 75 tokens + EOS padded to 77.

Differences from other CLIP tokenizers (deliberate, documented):

* OpenAI's reference implementation and transformers' old "slow" tokenizer call `ftfy.fix_text`
  (mojibake repair, HTML unescaping) when ftfy is installed; we do not (no ftfy), which is what
  transformers 5 does too. Without ftfy the old slow tokenizer used BERT's BasicTokenizer, which
  also removed control characters and put spaces around CJK ideographs; transformers 5 does
  neither and neither do we, so e.g. "猫犬" is one pre-token here, as in transformers 5.
* Unicode tables are those of the running Python (`unicodedata.unidata_version`); characters
  assigned in a later Unicode version than Python's are treated as punctuation-like.
* Lowercasing is per character, without the context rule for a final Greek sigma, as in the
  `tokenizers` Lowercase normaliser (Python's `str.lower()` would give "ς" at a word end).
"""
from __future__ import annotations

import functools
import gzip
import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import Error

__all__ = [
    "BOS_TOKEN",
    "CHUNK_LENGTH",
    "DEFAULT_VOCAB_PATH",
    "EMBEDDING_PREFIX",
    "EOS_TOKEN",
    "SD2_PAD_TOKEN",
    "ClipTokenizer",
    "EmbeddingLookup",
    "EmbeddingRef",
    "Token",
    "TokenizerError",
    "WeightedToken",
    "bytes_to_unicode",
    "load_bpe_merges",
    "parse_prompt_weights",
]

_log = logging.getLogger(__name__)

#: The vocabulary that ships with comfyc (OpenAI's CLIP BPE, MIT license).
DEFAULT_VOCAB_PATH = Path(__file__).resolve().parent / "data" / "bpe_simple_vocab_16e6.txt.gz"

BOS_TOKEN = 49406  #: ``<|startoftext|>``
EOS_TOKEN = 49407  #: ``<|endoftext|>``; also SD1's pad token
SD2_PAD_TOKEN = 0  #: SD2 (OpenCLIP) pads with id 0 ("!")
CHUNK_LENGTH = 77  #: BOS + 75 tokens + EOS
EMBEDDING_PREFIX = "embedding:"

# NOTE: ComfyUI keeps a tokenized segment of fewer than this many tokens whole (moves it to the
# next chunk); longer ones may be split across a chunk boundary (`max_word_length` there).
_MAX_UNSPLIT_LENGTH = 8
# Number of merges used from the vocabulary file, as in OpenAI's simple_tokenizer.py:
# 49408 ids = 256 bytes + 256 bytes with "</w>" + 48894 merges + 2 special tokens.
_NUM_MERGES = 49152 - 256 - 2
_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# Characters that the `\s` of CLIP's patterns matches in `tokenizers` (Oniguruma, Unicode):
# the Unicode White_Space property. Unlike `str.isspace()` it excludes U+001C..U+001F.
_WHITESPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
# Private placeholders for ComfyUI's escaped parentheses (ComfyUI uses the same two pairs).
_ESCAPED_CLOSE = "\0\1"
_ESCAPED_OPEN = "\0\2"
_EMBEDDING_SPLIT = re.compile(" embedding:|\nembedding:")
_BPE_CACHE_LIMIT = 100_000


class TokenizerError(Error, ValueError):
    """A vocabulary file or a prompt that the tokenizer cannot handle."""


@dataclass(frozen=True, slots=True)
class EmbeddingRef:
    """One vector of a textual-inversion embedding in a tokenized prompt.

    The tokenizer only knows how many vectors an embedding has; the text encoder replaces each
    reference with vector ``index`` of the embedding file resolved from ``name``.

    Attributes:
        name: The name as written after ``embedding:`` (may carry an extension or subfolder).
        index: Which vector of the embedding this slot holds (0-based).
    """

    name: str
    index: int


Token = int | EmbeddingRef
WeightedToken = tuple[Token, float]
#: Returns the number of vectors of the named embedding, or None when there is no such file.
EmbeddingLookup = Callable[[str], "int | None"]


def bytes_to_unicode() -> dict[int, str]:
    """Returns the byte-to-character table of byte-level BPE (GPT-2 / CLIP).

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100 onwards, so that
    every byte string becomes a string of visible characters. The insertion order of the returned
    dict defines the first 256 vocabulary ids.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def load_bpe_merges(vocab_path: str | Path | None = None) -> list[tuple[str, str]]:
    """Reads the BPE merge list from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``.

    Args:
        vocab_path: The ``.txt.gz`` file (or an uncompressed ``.txt``); None for the packaged one.

    Returns:
        The 48894 merges in rank order.

    Raises:
        TokenizerError: The file is missing or does not look like the CLIP vocabulary.
    """
    path = Path(vocab_path) if vocab_path is not None else DEFAULT_VOCAB_PATH
    return list(_read_merges(str(path.resolve())))


@functools.lru_cache(maxsize=4)
def _read_merges(location: str) -> tuple[tuple[str, str], ...]:
    """Reads and checks the merges once per file (several tokenizers share the result)."""
    path = Path(location)
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise TokenizerError(
            f"cannot read the CLIP vocabulary {str(path)!r}: {exc}; expected OpenAI's "
            "bpe_simple_vocab_16e6.txt.gz (it ships in comfyc/runtime/data/; reinstall comfyc "
            "if it is missing)"
        ) from exc
    lines = text.split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
        raise TokenizerError(
            f"{str(path)!r} holds {len(merges)} well-formed merges, expected {_NUM_MERGES} lines "
            "of two symbols after the header: this is not the CLIP BPE vocabulary"
        )
    return tuple((m[0], m[1]) for m in merges)


@functools.lru_cache(maxsize=4096)
def _char_class(char: str) -> str:
    """Classifies a character for CLIP's pre-tokenisation: L, N, space (S) or other (P)."""
    if char in _WHITESPACE:
        return "S"
    major = unicodedata.category(char)[0]
    if major == "L" or major == "N":
        return major
    return "P"


def _normalize(text: str) -> str:
    """NFC, whitespace runs to one space, per-character lowercase (the tokenizers normaliser)."""
    text = unicodedata.normalize("NFC", text)
    out: list[str] = []
    in_space = False
    for char in text:
        if char in _WHITESPACE:
            if not in_space:
                out.append(" ")
            in_space = True
            continue
        in_space = False
        out.append(char.lower())
    return "".join(out)


def _pretokenize(text: str) -> list[str]:
    """Splits normalised text like CLIP's pattern (see the module docstring), without `regex`.

    At each position the alternatives are tried in the pattern's order: the contractions, a run
    of letters, a single number character, a run of characters that are neither whitespace,
    letters nor numbers. Whitespace is dropped.

    NOTE: the pattern's two special-token alternatives never match in transformers 5 (its
    pre-tokenizer splits "<|endoftext|>" into "<|", "endoftext", "|>"), so they are left out;
    verbatim special tokens are handled before normalisation by `ClipTokenizer.encode`.
    """
    pieces: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "'":
            contraction = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
            if contraction is not None:
                pieces.append(contraction)
                i += len(contraction)
                continue
        kind = _char_class(char)
        if kind == "S":
            i += 1
            continue
        j = i + 1
        if kind != "N":  # numbers are single characters; letters and "other" form runs
            while j < n and _char_class(text[j]) == kind:
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


def _split_groups(text: str) -> list[str]:
    """Splits text into top-level parenthesised groups and plain runs (ComfyUI's rules).

    Unbalanced parentheses are kept as text the way ComfyUI's `parse_parentheses` keeps them.
    """
    groups: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            if depth == 0:
                if current:
                    groups.append("".join(current))
                current = ["("]
            else:
                current.append(char)
            depth += 1
        elif char == ")":
            depth -= 1
            current.append(char)
            if depth == 0:
                groups.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        groups.append("".join(current))
    return groups


def _weighted_segments(text: str, weight: float) -> list[tuple[str, float]]:
    """Recursively assigns weights to the groups of `text` (ComfyUI's `token_weights`)."""
    out: list[tuple[str, float]] = []
    for group in _split_groups(text):
        if len(group) >= 2 and group[0] == "(" and group[-1] == ")":
            inner = group[1:-1]
            inner_weight = weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:  # NOTE: a colon at index 0 is text, as in ComfyUI
                try:
                    inner_weight = float(inner[colon + 1 :])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out.extend(_weighted_segments(inner, inner_weight))
        else:
            out.append((group, weight))
    return out


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """Splits a prompt into (text, weight) segments with ComfyUI's weighting syntax.

    Args:
        text: The prompt, e.g. ``"a (red:1.3) ((cat)), \\(not weighted\\)"``.

    Returns:
        Segments in order with escapes resolved, e.g. ``[("a ", 1.0), ("red", 1.3),
        ("cat", 1.2100000000000002), (", (not weighted)", 1.0)]``.
    """
    escaped = text.replace("\\)", _ESCAPED_CLOSE).replace("\\(", _ESCAPED_OPEN)
    return [
        (segment.replace(_ESCAPED_CLOSE, ")").replace(_ESCAPED_OPEN, "("), weight)
        for segment, weight in _weighted_segments(escaped, 1.0)
    ]


class ClipTokenizer:
    """CLIP BPE tokenizer producing ComfyUI-compatible weighted 77-token chunks.

    Args:
        vocab_path: OpenAI's ``bpe_simple_vocab_16e6.txt.gz``; None for the packaged copy.
        pad_token: Id used for padding: 49407 (EOS) for SD1, 0 for SD2.
        embedding_lookup: Resolves ``embedding:NAME`` to a vector count (None: no such
            embedding). Without a lookup, ``embedding:NAME`` is ordinary text, as in ComfyUI
            without an embeddings directory.
        max_length: Chunk length including BOS and EOS (77 for SD1/SD2).

    Example:
        >>> tok = ClipTokenizer()
        >>> tok.encode("a photo of a cat")
        [320, 1125, 539, 320, 2368]
    """

    def __init__(
        self,
        vocab_path: str | Path | None = None,
        pad_token: int = EOS_TOKEN,
        *,
        embedding_lookup: EmbeddingLookup | None = None,
        max_length: int = CHUNK_LENGTH,
    ) -> None:
        if max_length < 3:
            raise TokenizerError(f"max_length is {max_length}; it must leave room for BOS, a "
                                 "token and EOS (3 or more; SD uses 77)")
        self.merges = load_bpe_merges(vocab_path)
        byte_chars = list(bytes_to_unicode().values())
        tokens = byte_chars + [c + "</w>" for c in byte_chars]
        tokens += ["".join(pair) for pair in self.merges]
        tokens += list(_SPECIAL_TOKENS)
        #: Token string to id (49408 entries; the same as the hub's ``vocab.json``).
        self.vocab: dict[str, int] = {token: i for i, token in enumerate(tokens)}
        self._id_to_token = tokens
        self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self._byte_chars = bytes_to_unicode()
        self._cache: dict[str, list[int]] = {}
        self.pad_token = pad_token
        self.max_length = max_length
        self.embedding_lookup = embedding_lookup
        self.bos_token = BOS_TOKEN
        self.eos_token = EOS_TOKEN

    # -- plain BPE ---------------------------------------------------------------------------

    def _bpe(self, piece: str) -> list[int]:
        """Byte-pair-encodes one pre-token (already mapped to byte characters) into ids."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        word = [*piece[:-1], piece[-1] + "</w>"]
        ranks = self._ranks
        while len(word) > 1:
            best_rank, best = len(ranks), None
            for pair in zip(word, word[1:]):
                rank = ranks.get(pair)
                if rank is not None and rank < best_rank:
                    best_rank, best = rank, pair
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = [self.vocab[symbol] for symbol in word]
        if len(self._cache) >= _BPE_CACHE_LIMIT:
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        """Encodes text containing no special-token spellings."""
        ids: list[int] = []
        for piece in _pretokenize(_normalize(text)):
            try:
                data = piece.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise TokenizerError(
                    f"the prompt holds an unpaired surrogate {piece!r} that cannot be encoded as "
                    "UTF-8; remove it (it usually comes from a broken \\ud8xx escape in JSON)"
                ) from exc
            ids.extend(self._bpe("".join(self._byte_chars[b] for b in data)))
        return ids

    def encode(self, text: str) -> list[int]:
        """Encodes text into CLIP BPE ids, without BOS/EOS and without weighting syntax.

        ``<|startoftext|>`` and ``<|endoftext|>`` written verbatim become the special ids, as
        in transformers.

        Args:
            text: Any text.

        Returns:
            The token ids.
        """
        ids: list[int] = []
        start = 0
        # NOTE: special tokens are matched on the raw text, case-sensitively, before
        # normalisation (transformers' added-token splitting); other spellings go through BPE.
        for match in re.finditer("<\\|startoftext\\|>|<\\|endoftext\\|>", text):
            ids.extend(self._encode_plain(text[start : match.start()]))
            ids.append(self.vocab[match.group(0)])
            start = match.end()
        ids.extend(self._encode_plain(text[start:]))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Turns ids back into text (lowercased, whitespace between words), for debugging."""
        byte_values = {char: byte for byte, char in self._byte_chars.items()}
        text = "".join(self._id_to_token[i] for i in ids)
        data = bytearray()
        for char in text.replace("</w>", " "):
            data.append(byte_values.get(char, ord(" ")))
        return data.decode("utf-8", errors="replace").strip()

    # -- ComfyUI weighting and chunking ------------------------------------------------------

    def _embedding_group(
        self, word: str, weight: float, lookup: EmbeddingLookup
    ) -> tuple[list[WeightedToken], str]:
        """Resolves ``embedding:NAME rest`` into reference tokens and the leftover text."""
        parts = word[len(EMBEDDING_PREFIX) :].strip("\n").split()
        if not parts:  # NOTE: ComfyUI crashes on a bare "embedding:"; we drop it with a warning
            _log.warning("prompt holds 'embedding:' without a name; ignoring it")
            return [], ""
        name, leftover = parts[0], " ".join(parts[1:])
        count = lookup(name)
        if count is None:
            stripped = name.strip(",")
            if len(stripped) < len(name):
                # NOTE: ComfyUI's rule, including its slicing: "emb," -> name "emb", leftover ",".
                count = lookup(stripped) if stripped else None
                leftover = f"{name[len(stripped):]} {leftover}"
                name = stripped
        if count is None:
            _log.warning("embedding:%s does not exist; ignoring it (ComfyUI does the same)", name)
            return [], leftover
        return [(EmbeddingRef(name, k), weight) for k in range(count)], leftover

    def _token_groups(
        self, text: str, lookup: EmbeddingLookup | None
    ) -> list[list[WeightedToken]]:
        """Tokenizes each weighted segment (and each embedding) into one group."""
        groups: list[list[WeightedToken]] = []
        for segment, weight in parse_prompt_weights(text):
            pieces = _EMBEDDING_SPLIT.split(segment)
            words = [pieces[0]] + [EMBEDDING_PREFIX + p for p in pieces[1:]]
            for word in words:
                if word == "":
                    continue
                if lookup is not None and word.startswith(EMBEDDING_PREFIX):
                    refs, leftover = self._embedding_group(word, weight, lookup)
                    if refs:
                        groups.append(refs)
                    if leftover == "":
                        continue
                    word = leftover
                groups.append([(token, weight) for token in self.encode(word)])
        return groups

    def tokenize_weighted(
        self, text: str, embedding_lookup: EmbeddingLookup | None = None
    ) -> list[list[WeightedToken]]:
        """Tokenizes a prompt into ComfyUI's weighted chunks.

        Each chunk is ``[BOS, up to 75 tokens, EOS, pad...]`` of length `max_length`; special and
        pad tokens have weight 1.0. A segment of 8 or more tokens may be split across chunks; a
        shorter one that does not fit closes the chunk and moves whole to the next. An empty
        prompt gives one chunk.

        Args:
            text: The prompt with ComfyUI weighting syntax.
            embedding_lookup: Overrides the tokenizer's lookup for this call.

        Returns:
            A list of chunks; each is a list of `(token, weight)` where token is an id or an
            `EmbeddingRef`.
        """
        lookup = embedding_lookup if embedding_lookup is not None else self.embedding_lookup
        body = self.max_length - 1  # room before the EOS that closes every chunk
        bos: WeightedToken = (self.bos_token, 1.0)
        eos: WeightedToken = (self.eos_token, 1.0)
        pad: WeightedToken = (self.pad_token, 1.0)
        chunks: list[list[WeightedToken]] = []
        chunk: list[WeightedToken] = [bos]
        for group in self._token_groups(text, lookup):
            splittable = len(group) >= _MAX_UNSPLIT_LENGTH
            while group:
                if len(chunk) + len(group) <= body:
                    chunk.extend(group)
                    break
                room = body - len(chunk)
                if splittable:
                    chunk.extend(group[:room])
                    group = group[room:]
                    chunk.append(eos)
                else:
                    chunk.append(eos)
                    chunk.extend([pad] * room)
                chunks.append(chunk)
                chunk = [bos]
        chunk.append(eos)
        chunk.extend([pad] * (self.max_length - len(chunk)))
        chunks.append(chunk)
        return chunks

    def to_arrays(
        self, chunks: Sequence[Sequence[WeightedToken]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Packs weighted chunks into numpy arrays for a text-encoder stage.

        Args:
            chunks: The output of `tokenize_weighted`.

        Returns:
            ``(ids, weights)``: int64 ``[k, max_length]`` with -1 where an `EmbeddingRef` sits,
            and float32 ``[k, max_length]``.
        """
        ids = np.array(
            [[t if isinstance(t, int) else -1 for t, _ in chunk] for chunk in chunks], np.int64
        )
        weights = np.array([[w for _, w in chunk] for chunk in chunks], np.float32)
        return ids, weights
