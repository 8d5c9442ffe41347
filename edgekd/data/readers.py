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
* :func:`read_text_file` returns a whole file as text after the same checks (JSON files).

Limits: a field or text longer than :data:`MAX_FIELD_CHARS` characters is refused, naming the line.
Messages read ``<file>: line <n>: <problem>`` (``row <k>`` for Parquet).
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
MAX_FIELD_CHARS = 131_072  # csv's default field limit, applied to every format


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
        needs = f"a {missing[0]!r} column" if len(missing) == 1 else " and ".join(map(repr, missing)) + " columns"
        raise EdgekdValueError(
            f"{source}: needs {needs}, missing column(s) {missing}; the file has columns {list(available)[:20]} "
            f"(choose them with text_column= / label_column=, --text-column / --label-column)"
        )


# ----------------------------------------------------------------------------------- decoding
def _sniff(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(_SNIFF)
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise EdgekdValueError(f"{path}: is UTF-32 text (byte-order mark); save it as UTF-8")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise EdgekdValueError(f"{path}: is UTF-16 text (byte-order mark); save it as UTF-8")
    if b"\x00" in head:
        line = head.count(b"\n", 0, head.index(b"\x00")) + 1
        raise EdgekdValueError(
            f"{path}: line {line}: holds NUL bytes: a binary or UTF-16 file, not UTF-8 text")


def _decode_error(path: Path) -> EdgekdValueError:
    """Find the first line that is not UTF-8 (after the decoder failed somewhere) and name it."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if b"\x00" in raw:
                return EdgekdValueError(f"{path}: line {n}: holds NUL bytes: a binary file, not UTF-8 text")
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return EdgekdValueError(
                    f"{path}: line {n}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the "
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


def read_text_file(path: str | os.PathLike) -> str:
    """The whole file as text: a regular UTF-8 file (BOM dropped); else an error naming the line."""
    return "".join(_lines(check_file(path)))


# ----------------------------------------------------------------------------------- formats
def _rows_csv(path: Path, delimiter: str, text_column: str, label_column: str | None):
    src = str(path)
    reader = csv.DictReader(_lines(path), delimiter=delimiter)
    old_limit = csv.field_size_limit(MAX_FIELD_CHARS)
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
        raise EdgekdValueError(f"{src}: line {reader.line_num + 1}: {exc} (fields are limited to "
                               f"{MAX_FIELD_CHARS:,} characters)") from None
    finally:
        csv.field_size_limit(old_limit)


def _rows_jsonl(path: Path, text_column: str, label_column: str | None):
    src = str(path)
    k = 0
    for line_no, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        k += 1
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise EdgekdValueError(f"{src}: line {line_no}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(obj, dict):
            raise EdgekdValueError(f"{src}: line {line_no}: not a JSON object but a {type(obj).__name__}")
        if text_column not in obj:
            raise EdgekdValueError(f"{src}: line {line_no}: no {text_column!r} field (--text-column), "
                                   f"has {sorted(obj)[:10]}")
        check_columns(list(obj), text_column, label_column, f"{src}: line {line_no}")
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


def _at(where: str) -> str:
    """``row 2 (line 3)`` -> ``line 3``; ``row 4`` (Parquet) stays."""
    return where[where.index("(") + 1:-1] if "(line " in where else where


def read_texts(
    path: str | os.PathLike,
    limit: int | None = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    num_labels: int | None = None,
    format: str | None = None,
) -> tuple[list[str], list[int] | None]:
    """Texts and integer class ids (``None`` when the file has no ``label_column`` or it is empty)
    from the first ``limit`` rows of a CSV/TSV/JSONL/Parquet file, or texts from a plain text file
    (one a line). Labels are integers (``2``, ``"2"``) or, with ``label_names``, one of those names;
    with ``num_labels`` (default: ``len(label_names)``) each must lie in ``[0, num_labels)``. Every
    row has a label or none has."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise EdgekdValueError(f"limit: expected a positive integer, got {limit!r}")
    p = check_file(path)
    fmt = format or file_format(p) or "text"
    has_label = fmt != "text" and label_column in _header(p, fmt)
    names = list(label_names) if label_names is not None else None
    n = num_labels if num_labels is not None else (len(names) if names is not None else None)
    texts: list[str] = []
    labels: list[int | None] = []
    unlabelled: str | None = None  # where the first row without a label is
    for text, label, where in read_rows(p, text_column, label_column if has_label else None, fmt):
        at = _at(where)
        if not isinstance(text, str):
            what = f"no {text_column!r} field" if text is None else f"{text_column!r} is a {type(text).__name__}, not a string"
            raise EdgekdValueError(f"{p}: {at}: {what}")
        if len(text) > MAX_FIELD_CHARS:
            raise EdgekdValueError(f"{p}: {at}: the text is {len(text):,} characters, over the limit of "
                                   f"{MAX_FIELD_CHARS:,}")
        texts.append(text)
        if has_label:
            if label is None or (isinstance(label, str) and not label.strip()):
                labels.append(None)
                unlabelled = unlabelled or at
            else:
                y = label_as_int(label)
                if y is None and names is not None and isinstance(label, str) and label.strip() in names:
                    y = names.index(label.strip())
                if y is None:
                    alt = f" or one of {names}" if names is not None else ""
                    raise EdgekdValueError(f"{p}: {at}: label {label!r:.40} is not an integer (a class id){alt}")
                if y < 0 or (n is not None and y >= n):
                    raise EdgekdValueError(f"{p}: {at}: label {y} is outside [0, {n if n is not None else 'inf'})")
                labels.append(y)
            if unlabelled is not None and any(v is not None for v in labels):
                raise EdgekdValueError(f"{p}: {unlabelled}: no label while other rows have one "
                                       "(label every row or none)")
        if limit is not None and len(texts) >= limit:
            break
    if not texts:
        raise EdgekdValueError(f"{p}: holds no texts")
    if all(y is None for y in labels):  # no label column, or an empty one: an unlabelled file
        return texts, None
    return texts, labels  # type: ignore[return-value]


__all__ = ["FILE_FORMATS", "MAX_FIELD_CHARS", "check_file", "check_columns", "file_format", "label_as_int",
           "read_rows", "read_text_file", "read_texts"]
