"""Text -> model inputs, exactly as recorded in a bundle's manifest (shared by compile-time parity
checks and the device runtime, so both see the same ids)."""
from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from edgekd.errors import BundleError, EdgekdValueError
from edgekd.metrics import macro_f1  # noqa: F401  (deprecated location, kept for one release)

_SURROGATE = re.compile("[\ud800-\udfff]")
_WORD = re.compile(r"\S+")


@dataclass
class Batch:
    """Model feeds plus what is needed to map outputs back to words."""

    feeds: dict[str, np.ndarray]
    encodings: list[Any]  # tokenizers.Encoding per text
    empty: np.ndarray  # bool: the text had no (non-special) token; see Preprocessor
    texts: list[str]  # the texts as validated (see validate_texts): what the encodings' offsets index


class Preprocessor:
    """Tokenize with the bundle's ``tokenizer.json``, truncate to ``max_length``, post-pad with
    ``pad_id`` (to the longest text, and to at least ``min_length`` when the manifest sets one: a
    token-pruned model computes how many tokens it keeps from the padded length) and build
    ``attention_mask`` (and all-zero ``token_type_ids`` when the model takes them).

    Empty input: a text that yields no token (``""``, only spaces, only characters the tokenizer
    drops) cannot go through a masked softmax over zero positions, so it is fed as a single
    ``[UNK]`` token (id ``unk_id``) when the model adds no special tokens itself (the student),
    and as the tokenizer's own special-token frame (``[CLS] [SEP]``) otherwise (transformer
    teachers). Either way its ``empty`` flag is set, so callers can tell it apart; it never crashes.
    """

    def __init__(self, tokenizer_path: str, preprocessing: dict[str, Any], input_names: Sequence[str]):
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises its own Exception type for a bad file
            raise BundleError(f"bundle: cannot read the tokenizer {tokenizer_path}: {str(exc)[:300]}") from exc
        self.max_length = int(preprocessing["max_length"])
        if self.max_length < 1:
            raise EdgekdValueError(f"preprocessing.max_length: must be >= 1, got {self.max_length}")
        self.min_length = int(preprocessing.get("min_length", 1))
        if not 1 <= self.min_length <= self.max_length:
            raise EdgekdValueError(
                f"preprocessing.min_length: must be in [1, max_length={self.max_length}], got {self.min_length}")
        self.pad_id = int(preprocessing.get("pad_id", 0))
        self.unk_id = preprocessing.get("unk_id")
        vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        for key, val in (("pad_id", self.pad_id), ("unk_id", self.unk_id)):
            if val is not None and not 0 <= int(val) < vocab:
                raise BundleError(f"manifest: preprocessing.{key} {val} is outside the tokenizer's vocabulary "
                                  f"(size {vocab})")
        self.input_names = list(input_names)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)

    def __call__(self, texts: Sequence[str]) -> Batch:
        texts = validate_texts(texts)
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        ids_rows, empty = [], np.zeros(len(texts), dtype=bool)
        for k, enc in enumerate(encodings):
            ids = list(enc.ids)
            n_words = sum(1 for s in enc.special_tokens_mask if not s)
            if n_words == 0:
                empty[k] = True
                if not ids:
                    if self.unk_id is None:
                        raise EdgekdValueError("preprocessing: empty text and the bundle defines no unk_id")
                    ids = [int(self.unk_id)]
            ids_rows.append(ids)
        T = max(self.min_length, max(len(r) for r in ids_rows))
        input_ids = np.full((len(texts), T), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), T), dtype=np.int64)
        for k, r in enumerate(ids_rows):
            input_ids[k, :len(r)] = r
            mask[k, :len(r)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        unknown = set(self.input_names) - set(feeds)
        if unknown:
            raise EdgekdValueError(f"preprocessing: the model wants inputs {sorted(unknown)} that edgekd cannot build")
        return Batch(feeds={k: feeds[k] for k in self.input_names}, encodings=encodings, empty=empty, texts=texts)


def clean_text(text: str) -> str:
    """Replace surrogate code points, which are not Unicode text and which the tokenizer refuses:
    a high + low surrogate pair is joined into the character it encodes (as UTF-16 and JSON would
    read it); every lone surrogate (for instance from undecodable bytes read with
    ``surrogateescape``, as in ``sys.argv``) becomes U+FFFD, the replacement character."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def validate_texts(texts: Any) -> list[str]:
    """The texts of one call, checked; the rules:

    * a ``str`` is ONE text (never iterated character by character);
    * any other iterable (list, tuple, generator, numpy array of strings, ...) is read exactly
      once, in order, and every item must be a ``str`` (the error names the first bad index);
    * a mapping (``dict``) is refused: it would silently classify its keys; pass ``list(d.values())``;
      a ``set`` is refused too (its order is arbitrary, the results could not be matched up);
    * ``bytes`` are refused (decode them first);
    * surrogate code points are replaced as :func:`clean_text` says (the texts returned are the
      cleaned ones; the input is not modified).
    """
    if isinstance(texts, str):
        return [clean_text(texts)]
    if isinstance(texts, Mapping):
        raise EdgekdValueError(f"texts: got a {type(texts).__name__}; pass a list of strings (a dict would classify "
                               f"its keys: use list(d.values()) or list(d))")
    if isinstance(texts, (bytes, bytearray, memoryview, Set)) or not hasattr(texts, "__iter__"):
        raise EdgekdValueError(f"texts: expected a string or an ordered iterable of strings, got {type(texts).__name__}")
    out = list(texts)
    if not out:
        raise EdgekdValueError("texts: expected at least one text, got an empty list")
    for k, t in enumerate(out):
        if not isinstance(t, str):
            raise EdgekdValueError(f"texts[{k}]: expected a string, got {type(t).__name__}")
        out[k] = clean_text(t)
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def word_explanations(text: str, encoding: Any, weights: np.ndarray) -> list[tuple[str, float]]:
    """Sum token attention weights per original word: a word is a maximal run of non-whitespace
    characters of ``text`` exactly as written (case, punctuation and URLs such as
    ``https://t.co/G9Zdi1boy5`` kept whole), located through the tokens' character offsets.
    Words with no token (cut off by ``max_length``) are left out; special tokens are skipped."""
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    starts = [s for s, _ in spans]
    weight: dict[int, float] = {}
    for k, ((s, e), special) in enumerate(zip(encoding.offsets, encoding.special_tokens_mask)):
        if special or k >= len(weights) or e <= s:
            continue
        w = bisect.bisect_right(starts, s) - 1
        if w < 0 or s >= spans[w][1]:
            continue
        weight[w] = weight.get(w, 0.0) + float(weights[k])
    return [(text[spans[w][0]:spans[w][1]], weight[w]) for w in sorted(weight)]

