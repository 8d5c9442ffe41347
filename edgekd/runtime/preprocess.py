"""Text -> model inputs, exactly as recorded in a bundle's manifest (shared by compile-time parity
checks and the device runtime, so both see the same ids)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from edgekd.errors import EdgekdValueError
from edgekd.metrics import macro_f1  # noqa: F401  (deprecated location, kept for one release)


@dataclass
class Batch:
    """Model feeds plus what is needed to map outputs back to words."""

    feeds: dict[str, np.ndarray]
    encodings: list[Any]  # tokenizers.Encoding per text
    empty: np.ndarray  # bool: the text had no (non-special) token; see Preprocessor


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

        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.max_length = int(preprocessing["max_length"])
        if self.max_length < 1:
            raise EdgekdValueError(f"preprocessing.max_length: must be >= 1, got {self.max_length}")
        self.min_length = int(preprocessing.get("min_length", 1))
        if not 1 <= self.min_length <= self.max_length:
            raise EdgekdValueError(
                f"preprocessing.min_length: must be in [1, max_length={self.max_length}], got {self.min_length}")
        self.pad_id = int(preprocessing.get("pad_id", 0))
        self.unk_id = preprocessing.get("unk_id")
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
        return Batch(feeds={k: feeds[k] for k in self.input_names}, encodings=encodings, empty=empty)


def validate_texts(texts: Any) -> list[str]:
    """Accept one string or a non-empty sequence of strings."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise EdgekdValueError(f"texts: expected a string or a list of strings, got {type(texts).__name__}")
    out = list(texts)
    if not out:
        raise EdgekdValueError("texts: expected at least one text, got an empty list")
    for k, t in enumerate(out):
        if not isinstance(t, str):
            raise EdgekdValueError(f"texts[{k}]: expected a string, got {type(t).__name__}")
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def word_explanations(text: str, encoding: Any, weights: np.ndarray) -> list[tuple[str, float]]:
    """Sum token attention weights per original word (``encoding.word_ids`` and offsets give the
    word's text as written, before lowercasing); special tokens are skipped."""
    words: dict[int, list] = {}
    order: list[int] = []
    for k, (wid, (s, e), special) in enumerate(zip(encoding.word_ids, encoding.offsets, encoding.special_tokens_mask)):
        if special or wid is None or k >= len(weights):
            continue
        if wid not in words:
            words[wid] = [s, e, 0.0]
            order.append(wid)
        w = words[wid]
        w[0], w[1], w[2] = min(w[0], s), max(w[1], e), w[2] + float(weights[k])
    return [(text[words[w][0]:words[w][1]], words[w][2]) for w in order]
