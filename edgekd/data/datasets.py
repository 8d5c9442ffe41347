"""Loaders for labelled text datasets.

Every loader returns a :class:`TextDataset` (parallel lists of texts and integer labels, plus the
label names). Bad input never passes silently: a missing column, an empty text or an unknown label
raises :class:`~edgekd.errors.EdgekdValueError` naming the file and the row.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from edgekd.data.readers import FILE_FORMATS, check_columns, file_format, label_as_int, read_rows
from edgekd.errors import EdgekdValueError

TFNS_LABEL_NAMES: list[str] = ["bearish", "bullish", "neutral"]
TFNS_HUB_NAME = "zeroshot/twitter-financial-news-sentiment"
_TFNS_FILES = {"train": "sent_train.csv", "validation": "sent_valid.csv", "valid": "sent_valid.csv"}

_FORMATS = ("csv", "tsv", "jsonl", "parquet", "hf_disk", "hub")


@dataclass
class TextDataset:
    """Texts with integer labels ``0 .. num_classes-1`` and the names of those labels."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise EdgekdValueError(
                f"TextDataset: texts and labels differ in length ({len(self.texts)} != {len(self.labels)})"
            )
        n = len(self.label_names)
        for i, y in enumerate(self.labels):
            if not isinstance(y, int) or not 0 <= y < n:
                raise EdgekdValueError(
                    f"TextDataset {self.source or ''}: label {y!r} at index {i} is not in 0..{n - 1} "
                    f"(label names {self.label_names})"
                )

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(zip(self.texts, self.labels))

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def select(self, indices: Sequence[int]) -> "TextDataset":
        """The rows at ``indices``, in that order."""
        n = len(self)
        for i in indices:
            if not 0 <= int(i) < n:
                raise EdgekdValueError(f"select: index {i} out of range for a dataset of {n} rows")
        return TextDataset(
            [self.texts[int(i)] for i in indices],
            [self.labels[int(i)] for i in indices],
            list(self.label_names),
            source=self.source,
            meta=dict(self.meta, subset=len(indices)),
        )

    def head(self, n: int | None) -> "TextDataset":
        """The first ``n`` rows (all rows when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise EdgekdValueError(f"head: n must be >= 1, got {n}")
        return self.select(range(n))

    def stratified_indices(self, n: int, seed: int = 0) -> list[int]:
        """Sorted indices of a class-stratified random subset of ``n`` rows."""
        if not 1 <= n <= len(self):
            raise EdgekdValueError(f"stratified_indices: n must be in 1..{len(self)}, got {n}")
        rng = random.Random(seed)
        by_class: dict[int, list[int]] = {}
        for i, y in enumerate(self.labels):
            by_class.setdefault(y, []).append(i)
        total = len(self)
        # largest-remainder allocation so the subset has exactly n rows
        quotas = {c: n * len(ix) / total for c, ix in by_class.items()}
        counts = {c: int(q) for c, q in quotas.items()}
        rest = n - sum(counts.values())
        for c in sorted(quotas, key=lambda c: quotas[c] - counts[c], reverse=True)[:rest]:
            counts[c] += 1
        chosen: list[int] = []
        for c, ix in sorted(by_class.items()):
            chosen.extend(rng.sample(ix, counts[c]))
        return sorted(chosen)

    def stratified_sample(self, n: int | None, seed: int = 0) -> "TextDataset":
        """A class-stratified random subset of ``n`` rows (original order kept); all rows if ``n`` is None."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise EdgekdValueError(f"stratified_sample: n must be >= 1, got {n}")
        return self.select(self.stratified_indices(n, seed))

    def fingerprint(self) -> str:
        """sha256 over texts, labels and label names (used as a cache key)."""
        h = hashlib.sha256()
        h.update(json.dumps(self.label_names).encode())
        for t, y in zip(self.texts, self.labels):
            h.update(len(t).to_bytes(8, "little"))
            h.update(t.encode("utf-8"))
            h.update(int(y).to_bytes(4, "little"))
        return h.hexdigest()

    def class_counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.label_names}
        for y in self.labels:
            counts[self.label_names[y]] += 1
        return counts


# --------------------------------------------------------------------------------------------
# label handling


def _resolve_labels(
    raw: list[tuple[Any, str]], label_names: Sequence[str] | None, source: str
) -> tuple[list[int], list[str]]:
    """Turn raw label values (with a 'where' string each) into ints and label names.

    Integer-like labels (``1``, ``"1"``, ``1.0``) are class ids; other strings are class names.
    With ``label_names`` given, names must be among them and ids must be below their count.
    """

    ints = [label_as_int(v) for v, _ in raw]
    if raw and all(i is not None for i in ints):
        if label_names is None:
            hi = max(ints)  # type: ignore[type-var]
            label_names = [str(i) for i in range(hi + 1)]
        names = list(label_names)
        for i, (v, where) in zip(ints, raw):
            if not 0 <= i < len(names):  # type: ignore[operator]
                raise EdgekdValueError(
                    f"{source}: unknown label {v!r} at {where}; expected a class id in 0..{len(names) - 1} "
                    f"({names})"
                )
        return [int(i) for i in ints], names  # type: ignore[arg-type]
    # string labels
    for (v, where), i in zip(raw, ints):
        if i is None and not isinstance(v, str):
            raise EdgekdValueError(f"{source}: label {v!r} at {where} is neither a class id nor a class name")
    if label_names is None:
        label_names = sorted({str(v).strip() for v, _ in raw})
    names = list(label_names)
    index = {n: k for k, n in enumerate(names)}
    lower = {n.lower(): k for k, n in enumerate(names)}
    out = []
    for v, where in raw:
        s = str(v).strip()
        k = index.get(s, lower.get(s.lower()))
        if k is None:
            raise EdgekdValueError(f"{source}: unknown label {v!r} at {where}; expected one of {names}")
        out.append(k)
    return out, names


def _build(
    rows: Iterable[tuple[Any, Any, str]],
    label_names: Sequence[str] | None,
    source: str,
    limit: int | None,
) -> TextDataset:
    texts: list[str] = []
    raw: list[tuple[Any, str]] = []
    for text, label, where in rows:
        if text is None or (isinstance(text, float) and text != text):
            raise EdgekdValueError(f"{source}: missing text at {where}")
        if not isinstance(text, str):
            raise EdgekdValueError(f"{source}: text at {where} is {type(text).__name__}, expected a string")
        if not text.strip():
            raise EdgekdValueError(f"{source}: empty text at {where}")
        if label is None or (isinstance(label, float) and label != label) or (isinstance(label, str) and not label.strip()):
            raise EdgekdValueError(f"{source}: missing label at {where}")
        texts.append(text)
        raw.append((label, where))
        if limit is not None and len(texts) >= limit:
            break
    if not texts:
        raise EdgekdValueError(f"{source}: no rows")
    labels, names = _resolve_labels(raw, label_names, source)
    return TextDataset(texts, labels, names, source=source)


def _hf_label_names(features: Any, label_column: str) -> list[str] | None:
    feat = features.get(label_column) if features is not None else None
    names = getattr(feat, "names", None)
    return list(names) if names else None


def _rows_hf(ds: Any, text_column: str, label_column: str, src: str) -> Iterator[tuple[Any, Any, str]]:
    check_columns(ds.column_names, text_column, label_column, src)
    for k, row in enumerate(ds, start=1):
        yield row[text_column], row[label_column], f"row {k}"


def _import_datasets(what: str):
    try:
        import datasets  # noqa: F401
    except ImportError as exc:
        raise EdgekdValueError(
            f"{what} needs the optional package 'datasets' (pip install datasets)"
        ) from exc
    return datasets


def _detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists() or (
            path / "dataset_info.json"
        ).exists():
            return "hf_disk"
        raise EdgekdValueError(
            f"{path}: a directory, but not a Hugging Face datasets directory (no dataset_dict.json/state.json)"
        )
    fmt = file_format(path)
    if fmt in FILE_FORMATS:
        return fmt
    suffixes = "".join(path.suffixes[-2:]).lower()
    raise EdgekdValueError(
        f"{path}: cannot tell the format from the suffix {suffixes or '(none)'}; pass format= one of {_FORMATS}"
    )


def load_dataset(
    source: str | os.PathLike,
    split: str | None = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    format: str | None = None,
    limit: int | None = None,
) -> TextDataset:
    """Load labelled texts.

    Args:
        source: a file (``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``), a directory written by
            ``datasets.Dataset(Dict).save_to_disk``, or (``format="hub"`` or a name that is not a
            local path) a Hugging Face hub dataset name, loaded with ``datasets.load_dataset``.
        split: the split of a ``DatasetDict`` directory or hub dataset (e.g. ``"train"``).
        text_column, label_column: column names.
        label_names: class names in id order. Integer labels must be below their count; string
            labels must be among them. Default: from the dataset's features, else ``0..max`` for
            integer labels or the sorted distinct strings.
        format: force a format, one of ``csv, tsv, jsonl, parquet, hf_disk, hub``.
        limit: read at most this many rows (from the top).

    Raises:
        EdgekdValueError: missing file or column, empty text, unknown label (naming file and row).
    """
    if limit is not None and limit < 1:
        raise EdgekdValueError(f"load_dataset: limit must be >= 1, got {limit}")
    if format is not None and format not in _FORMATS:
        raise EdgekdValueError(f"load_dataset: format must be one of {_FORMATS}, got {format!r}")
    path = Path(source)
    if format is None:
        if path.exists():
            format = _detect_format(path)
        elif "/" in str(source) and not str(source).startswith((".", "/")) and not path.suffix:
            format = "hub"
        else:
            raise EdgekdValueError(f"load_dataset: {source} does not exist")
    elif format != "hub" and not path.exists():
        raise EdgekdValueError(f"load_dataset: {source} does not exist")

    src = str(source)
    if format in FILE_FORMATS:
        rows = read_rows(path, text_column, label_column, format)
    elif format in ("hf_disk", "hub"):
        datasets = _import_datasets(f"loading {src}")
        if format == "hf_disk":
            ds = datasets.load_from_disk(str(path))
        else:
            try:
                ds = datasets.load_dataset(src)
            except Exception as exc:
                raise EdgekdValueError(f"could not load hub dataset {src!r}: {exc}") from None
        if isinstance(ds, datasets.DatasetDict):
            if split is None:
                raise EdgekdValueError(f"{src}: holds splits {list(ds)}; choose one with split=")
            if split not in ds:
                raise EdgekdValueError(f"{src}: no split {split!r}; available {list(ds)}")
            ds = ds[split]
            src = f"{src}[{split}]"
        if label_names is None:
            label_names = _hf_label_names(ds.features, label_column)
        rows = _rows_hf(ds, text_column, label_column, src)
    else:  # pragma: no cover
        raise AssertionError(format)
    out = _build(rows, label_names, src, limit)
    out.meta["format"] = format
    return out


def find_tfns_dir(root: str | os.PathLike | None = None) -> Path | None:
    """The local TFNS folder: ``root`` if given, else ``$EDGEKD_TFNS_DIR``, else
    ``../shared/data/tfns`` relative to the working directory or to the source checkout."""
    cands: list[Path] = []
    if root is not None:
        p = Path(root)
        if not (p / "sent_train.csv").exists():
            raise EdgekdValueError(f"load_tfns: {p} does not hold sent_train.csv")
        return p
    env = os.environ.get("EDGEKD_TFNS_DIR")
    if env:
        cands.append(Path(env))
    cands.append(Path.cwd() / ".." / "shared" / "data" / "tfns")
    cands.append(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tfns")
    for c in cands:
        if (c / "sent_train.csv").exists():
            return c.resolve()
    return None


def load_tfns(split: str = "train", root: str | os.PathLike | None = None, limit: int | None = None) -> TextDataset:
    """Twitter Financial News Sentiment (bearish / bullish / neutral).

    ``split`` is ``"train"`` or ``"validation"`` (``"valid"``). Read from the local copy
    (:func:`find_tfns_dir`), else from the hub (``zeroshot/twitter-financial-news-sentiment``,
    needs network and the ``datasets`` package).
    """
    if split not in _TFNS_FILES:
        raise EdgekdValueError(f"load_tfns: split must be one of {sorted(_TFNS_FILES)}, got {split!r}")
    d = find_tfns_dir(root)
    if d is not None:
        return load_dataset(d / _TFNS_FILES[split], label_names=TFNS_LABEL_NAMES, limit=limit)
    hub_split = "validation" if split in ("valid", "validation") else "train"
    return load_dataset(TFNS_HUB_NAME, split=hub_split, format="hub", label_names=TFNS_LABEL_NAMES, limit=limit)
