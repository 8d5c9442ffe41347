"""The one reader of text files: CSV/TSV, JSONL, Parquet and plain text (one text a line).

Torch-free (stdlib; pyarrow only for Parquet), so the device runtime reads its ``--data`` files with
it too. Every problem is an :class:`~edgekd.errors.EdgekdValueError` that names the file and the
row or line: a file that is not UTF-8 (Latin-1, UTF-16, binary), a bad JSONL line, a missing
column, a folder or device instead of a file, a label that is not a class id. A UTF-8 byte-order
mark is dropped.

* :func:`read_rows` yields ``(text, label, where)`` for :func:`edgekd.data.load_dataset`, which
  resolves label names.
* :func:`read_texts` returns texts and integer labels (``None`` when the file has no label column)
  for the runtime's and the benchmarks' evaluation data.
"""
from __future__ import annotations

import codecs
import csv
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from edgekd.errors import EdgekdValueError

FILE_FORMATS = ("csv", "tsv", "jsonl", "parquet")
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
             ".parquet": "parquet", ".pq": "parquet", ".txt": "text"}
_SNIFF = 4096


def file_format(path: str | os.PathLike) -> str | None:
    """``csv``, ``tsv``, ``jsonl``, ``parquet`` or ``text`` from the suffix (None if unknown)."""
    return _SUFFIXES.get(Path(path).suffix.lower())


def check_file(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path` if it is a regular, readable file; else a clear error."""
    p = Path(path)
    if not p.exists():
        raise EdgekdValueError(f"{p}: does not exist")
    if p.is_dir():
        raise EdgekdValueError(f"{p}: is a directory, expected a data file")
    if not p.is_file():
        raise EdgekdValueError(f"{p}: is not a regular file (a device or pipe?), expected a data file")
    return p


def check_columns(available: Sequence[str], text_column: str, label_column: str | None, source: str) -> None:
    missing = [c for c in (text_column, label_column) if c is not None and c not in available]
    if missing:
        raise EdgekdValueError(
            f"{source}: missing column(s) {missing}; the file has columns {list(available)} "
            f"(choose them with text_column= / label_column=, --text-column / --label-column)"
        )


# ----------------------------------------------------------------------------------- decoding
def _sniff(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(_SNIFF)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise EdgekdValueError(f"{path}: is UTF-16 text (byte-order mark); save it as UTF-8")
    if b"\x00" in head:
        line = head.count(b"\n", 0, head.index(b"\x00")) + 1
        raise EdgekdValueError(
            f"{path}: line {line} holds NUL bytes: a binary or UTF-16 file, not UTF-8 text")


def _decode_error(path: Path) -> EdgekdValueError:
    """Find the first line that is not UTF-8 (after the decoder failed somewhere) and name it."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if b"\x00" in raw:
                return EdgekdValueError(f"{path}: line {n} holds NUL bytes: a binary file, not UTF-8 text")
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return EdgekdValueError(
                    f"{path}: line {n} is not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the "
                    f"line); save the file as UTF-8 (it may be Latin-1 or Windows-1252)")
    return EdgekdValueError(f"{path}: is not UTF-8 text")  # pragma: no cover (a split multi-byte char at EOF)


def _lines(path: Path) -> Iterator[str]:
    """The file's lines as text (newlines kept, as ``open(newline="")`` gives them to :mod:`csv`)."""
    _sniff(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield from f
    except UnicodeDecodeError:
        raise _decode_error(path) from None


# ----------------------------------------------------------------------------------- formats
def _rows_csv(path: Path, delimiter: str, text_column: str, label_column: str | None):
    src = str(path)
    reader = csv.DictReader(_lines(path), delimiter=delimiter)
    try:
        if reader.fieldnames is None:
            raise EdgekdValueError(f"{src}: empty file (no header row)")
        check_columns(reader.fieldnames, text_column, label_column, src)
        for k, row in enumerate(reader, start=1):
            if None in row:  # more fields than the header
                raise EdgekdValueError(
                    f"{src}: row {k} (ending at line {reader.line_num}) has more fields than the header")
            where = f"row {k} (line {reader.line_num})"
            yield row.get(text_column), (row.get(label_column) if label_column else None), where
    except csv.Error as exc:
        raise EdgekdValueError(f"{src}: line {reader.line_num}: {exc}") from None


def _rows_jsonl(path: Path, text_column: str, label_column: str | None):
    src = str(path)
    k = 0
    for line_no, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        k += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EdgekdValueError(f"{src}: line {line_no} is not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise EdgekdValueError(f"{src}: line {line_no} is not a JSON object")
        check_columns(list(obj), text_column, label_column, f"{src} line {line_no}")
        yield obj[text_column], (obj[label_column] if label_column else None), f"row {k} (line {line_no})"


def _rows_parquet(path: Path, text_column: str, label_column: str | None):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover
        raise EdgekdValueError(f"{path}: reading Parquet needs pyarrow (pip install 'edgekd[distill]')") from exc
    src = str(path)
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise EdgekdValueError(f"{src}: not a readable Parquet file ({exc})") from None
    check_columns(table.column_names, text_column, label_column, src)
    texts = table.column(text_column).to_pylist()
    labels = table.column(label_column).to_pylist() if label_column else [None] * len(texts)
    for k, (t, y) in enumerate(zip(texts, labels), start=1):
        yield t, y, f"row {k}"


def _rows_text(path: Path):
    k = 0
    for line_no, line in enumerate(_lines(path), start=1):
        line = line.rstrip("\r\n")
        if line.strip():
            k += 1
            yield line, None, f"row {k} (line {line_no})"


def read_rows(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str | None = "label",
    format: str | None = None,
) -> Iterator[tuple[Any, Any, str]]:
    """Yield ``(text, raw label, where)`` per row of a CSV/TSV/JSONL/Parquet/text file (``where`` =
    ``"row k (line n)"``). ``label_column=None`` reads texts only (the label is then ``None``)."""
    p = check_file(path)
    fmt = format or file_format(p)
    if fmt is None:
        raise EdgekdValueError(
            f"{p}: cannot tell the format from the suffix {p.suffix or '(none)'}; "
            f"use one of {sorted(_SUFFIXES)} or pass format= one of {FILE_FORMATS + ('text',)}")
    if fmt in ("csv", "tsv"):
        return _rows_csv(p, "," if fmt == "csv" else "\t", text_column, label_column)
    if fmt == "jsonl":
        return _rows_jsonl(p, text_column, label_column)
    if fmt == "parquet":
        return _rows_parquet(p, text_column, label_column)
    if fmt == "text":
        if label_column is not None:
            raise EdgekdValueError(f"{p}: a plain text file (one text a line) has no label column")
        return _rows_text(p)
    raise EdgekdValueError(f"{p}: unknown format {fmt!r}; expected one of {FILE_FORMATS + ('text',)}")


def label_as_int(v: Any) -> int | None:
    """A class id from ``1``, ``"1"``, ``1.0`` (a float, not the string) or a numpy integer; None for
    anything else."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        s = v.strip()
        return int(s) if s.lstrip("-").isdigit() else None
    if type(v).__module__ == "numpy" and hasattr(v, "dtype") and v.dtype.kind in "iu":
        return int(v)
    return None


def _header(path: Path, fmt: str) -> list[str]:
    """The column names (of the first object, for JSONL); [] when they cannot be read (read_rows
    then raises the precise error)."""
    if fmt == "jsonl":
        for line in _lines(path):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    return []
                return list(obj) if isinstance(obj, dict) else []
        return []
    if fmt in ("csv", "tsv"):
        for line in csv.reader(_lines(path), delimiter="," if fmt == "csv" else "\t"):
            return line
        raise EdgekdValueError(f"{path}: empty file (no header row)")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as exc:
            raise EdgekdValueError(f"{path}: not a readable Parquet file ({exc})") from None
    return []


def read_texts(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str = "label",
    limit: int | None = None,
    format: str | None = None,
) -> tuple[list[str], list[int] | None]:
    """Texts and integer class ids (``None`` when the file has no ``label_column``) from the first
    ``limit`` rows of a CSV/TSV/JSONL/Parquet file, or texts from a plain text file (one a line)."""
    if limit is not None and limit < 1:
        raise EdgekdValueError(f"limit must be >= 1, got {limit}")
    p = check_file(path)
    fmt = format or file_format(p) or "text"
    has_label = fmt != "text" and label_column in _header(p, fmt)
    texts: list[str] = []
    labels: list[int | None] = []
    unlabelled: str | None = None  # where the first row without a label is
    for text, label, where in read_rows(p, text_column, label_column if has_label else None, fmt):
        if not isinstance(text, str):
            what = "missing" if text is None else f"a {type(text).__name__}, not a string"
            raise EdgekdValueError(f"{p}: the text at {where} is {what}")
        texts.append(text)
        if has_label:
            if label is None or (isinstance(label, str) and not label.strip()):
                labels.append(None)
                unlabelled = unlabelled or where
            else:
                y = label_as_int(label)
                if y is None or y < 0:
                    raise EdgekdValueError(
                        f"{p}: the label {label!r} at {where} is not a class id (an integer >= 0)")
                labels.append(y)
        if limit is not None and len(texts) >= limit:
            break
    if not texts:
        raise EdgekdValueError(f"{p}: holds no texts")
    if all(y is None for y in labels):  # no label column, or an empty one: an unlabelled file
        return texts, None
    if unlabelled is not None:
        raise EdgekdValueError(f"{p}: no label at {unlabelled} while other rows have one; label all rows or none")
    return texts, labels  # type: ignore[return-value]


__all__ = ["FILE_FORMATS", "check_file", "check_columns", "file_format", "label_as_int", "read_rows", "read_texts"]
