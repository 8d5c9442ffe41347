"""The ``[data]`` table of a run: which files, which columns, which rows (torch-free).

``limit`` is the FIRST N rows of the training file (file order); ``sample`` / ``valid_sample``
are class-stratified random samples (seeded by the run's seed), as ``--limit`` / ``--sample`` in
every ``edgekd`` command.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgekd.errors import EdgekdValueError


@dataclass
class DataConfig:
    """Data settings; ``train``/``valid`` None = Twitter Financial News Sentiment (local copy or hub)."""

    train: str | None = field(default=None, metadata={"help": "training data: CSV/TSV/JSONL/Parquet or HF datasets dir"})
    valid: str | None = field(default=None, metadata={"help": "validation data (give both train and valid, or neither)"})
    text_column: str = field(default="text", metadata={"help": "text column"})
    label_column: str = field(default="label", metadata={"help": "label column"})
    label_names: list[str] | None = field(default=None, metadata={"help": "class names in label-id order"})
    limit: int | None = field(default=None, metadata={"help": "use the FIRST N rows of the training file"})
    sample: int | None = field(default=None, metadata={
        "help": "students (and annotation) use a class-stratified sample of N training texts"})
    valid_sample: int | None = field(default=None, metadata={
        "help": "score on a class-stratified sample of N validation texts"})

    def validate(self) -> None:
        if (self.train is None) != (self.valid is None):
            raise EdgekdValueError("[data]: give both train and valid, or neither (TFNS)")
        for name in ("limit", "sample", "valid_sample"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise EdgekdValueError(f"[data] {name} must be an int >= 1 or None, got {v!r}")
