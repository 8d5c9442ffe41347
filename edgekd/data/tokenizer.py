"""The student's word-level tokenizer.

A Hugging Face ``tokenizers`` WordLevel model with ``[PAD]`` = 0 and ``[UNK]`` = 1, built on the
training texts. Everything (URL folding, lower-casing, the word splitting rules, truncation) lives
inside the saved ``tokenizer.json``, so the torch-free device runtime gets the same ids with
``tokenizers.Tokenizer.from_file(path).encode(text).ids``: one id per word, no special tokens.

Word rules (after lower-casing): ``$tickers`` (``$aapl``, ``$brk.b``) stay one word; numbers keep
their decimal/thousands separators and a trailing percent (``3.5%``, ``1,000``, ``-2.1``); URLs
become the word ``httpurl``; words keep inner apostrophes (``don't``); every other non-space
character is a word of its own.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from edgekd.errors import EdgekdValueError

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
PAD_ID = 0
UNK_ID = 1
URL_TOKEN = "httpurl"

# order matters: earlier alternatives win at the same position
_WORD_PATTERN = (
    r"\$[a-z][a-z0-9]*(?:[._][a-z0-9]+)*"  # $tickers
    r"|[+-]?\d+(?:[.,:]\d+)*%?"  # numbers: 3.5%  1,000  -2.1  10:30
    r"|[a-z0-9_]+(?:['’][a-z]+)*"  # words, with inner apostrophes
    r"|[^\sa-z0-9_]"  # any other single character
)
_URL_PATTERN = r"(?:https?://|www\.)\S+"
_URL_RE = re.compile(_URL_PATTERN)


def _normalizer():
    from tokenizers import Regex, normalizers

    return normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Replace(Regex(_URL_PATTERN), f" {URL_TOKEN} "),
            normalizers.Lowercase(),
        ]
    )


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="isolated"),
        ]
    )


class WordTokenizer:
    """Word-level tokenizer for the student (wraps a ``tokenizers.Tokenizer``)."""

    def __init__(self, tokenizer, max_length: int | None = None) -> None:
        self._tok = tokenizer
        vocab = tokenizer.get_vocab()
        if vocab.get(PAD_TOKEN) != PAD_ID or vocab.get(UNK_TOKEN) != UNK_ID:
            raise EdgekdValueError(
                f"WordTokenizer: expected {PAD_TOKEN}=0 and {UNK_TOKEN}=1, got "
                f"{PAD_TOKEN}={vocab.get(PAD_TOKEN)} {UNK_TOKEN}={vocab.get(UNK_TOKEN)}"
            )
        if max_length is not None:
            self.set_max_length(max_length)

    # ----------------------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        *,
        min_frequency: int = 1,
        max_vocab: int | None = 30000,
        max_length: int | None = 64,
    ) -> "WordTokenizer":
        """Build the vocabulary from ``texts`` (words seen at least ``min_frequency`` times, the
        ``max_vocab`` most frequent, including the two special tokens)."""
        from tokenizers import Tokenizer, models, trainers

        if min_frequency < 1:
            raise EdgekdValueError(f"WordTokenizer.train: min_frequency must be >= 1, got {min_frequency}")
        if max_vocab is not None and max_vocab < 3:
            raise EdgekdValueError(f"WordTokenizer.train: max_vocab must be >= 3, got {max_vocab}")
        texts = list(texts)
        if not texts:
            raise EdgekdValueError("WordTokenizer.train: no texts")
        tok = Tokenizer(models.WordLevel(vocab={PAD_TOKEN: PAD_ID, UNK_TOKEN: UNK_ID}, unk_token=UNK_TOKEN))
        tok.normalizer = _normalizer()
        tok.pre_tokenizer = _pre_tokenizer()
        trainer = trainers.WordLevelTrainer(
            vocab_size=max_vocab if max_vocab is not None else 10**9,
            min_frequency=min_frequency,
            special_tokens=[PAD_TOKEN, UNK_TOKEN],
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, max_length=max_length)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "WordTokenizer":
        """Load a ``tokenizer.json`` (a file, or a directory holding one)."""
        from tokenizers import Tokenizer

        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise EdgekdValueError(f"WordTokenizer.from_file: {p} does not exist")
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as exc:
            raise EdgekdValueError(f"WordTokenizer.from_file: {p} is not a tokenizers JSON file ({exc})") from None
        return cls(tok)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (``path`` may be a directory or the file name)."""
        p = Path(path)
        if p.suffix != ".json":
            p.mkdir(parents=True, exist_ok=True)
            p = p / "tokenizer.json"
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(p))
        return p

    # ----------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def max_length(self) -> int | None:
        t = self._tok.truncation
        return None if t is None else int(t["max_length"])

    def set_max_length(self, max_length: int | None) -> None:
        """Truncate encodings to ``max_length`` words (stored in tokenizer.json)."""
        if max_length is None:
            self._tok.no_truncation()
            return
        if max_length < 1:
            raise EdgekdValueError(f"WordTokenizer: max_length must be >= 1, got {max_length}")
        self._tok.enable_truncation(max_length=int(max_length))

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab()

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> list[int]:
        """Word ids of ``text`` (at least one id: an empty text gives ``[UNK]``)."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ids if ids else [UNK_ID]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[str], list[tuple[int, int]]]:
        """Ids, normalised words and their character spans in the original ``text``."""
        enc = self._tok.encode(text, add_special_tokens=False)
        if not enc.ids:
            return [UNK_ID], [UNK_TOKEN], [(0, len(text))]
        offsets = [tuple(o) for o in enc.offsets]
        tokens = list(enc.tokens)
        if URL_TOKEN in tokens:
            # the Replace normalizer aligns the replacement with the URL's last character only;
            # give each URL word the span of the URL it replaced
            spans = [m.span() for m in _URL_RE.finditer(text)]
            k = 0
            for i, t in enumerate(tokens):
                if t == URL_TOKEN and k < len(spans):
                    while k < len(spans) and spans[k][1] < offsets[i][1]:
                        k += 1
                    if k < len(spans) and spans[k][0] <= offsets[i][0] < spans[k][1]:
                        offsets[i] = spans[k]
                        k += 1
        return list(enc.ids), tokens, offsets

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids if e.ids else [UNK_ID] for e in encs]

    def pad_batch(self, batch: Sequence[Sequence[int]], length: int | None = None):
        """Right-pad id lists into ``(input_ids, attention_mask)`` int64 tensors."""
        import torch

        n = max((len(x) for x in batch), default=1) if length is None else length
        ids = torch.zeros((len(batch), n), dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, x in enumerate(batch):
            x = list(x)[:n]
            ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, : len(x)] = 1
        return ids, mask

    def to_json(self) -> str:
        return self._tok.to_str()

    def oov_rate(self, texts: Iterable[str]) -> float:
        """Fraction of words mapped to ``[UNK]``."""
        n = unk = 0
        for ids in self.encode_batch(list(texts)):
            n += len(ids)
            unk += sum(1 for i in ids if i == UNK_ID)
        return unk / max(n, 1)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"

