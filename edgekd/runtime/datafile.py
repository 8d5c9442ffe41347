"""Reading texts (and labels) from a user's file, with every problem named (torch-free).

Formats, chosen by suffix: ``.csv`` (a header row; ``text_column`` and optional ``label_column``),
``.jsonl`` (one JSON object a line with those fields), anything else: plain text, one text a line
(blank lines skipped). Rules:

* the path must be a regular file (a directory, ``/dev/null`` or a FIFO is refused by name);
* the file must be UTF-8: a UTF-8 byte-order mark is accepted and dropped; UTF-16/32 (by their
  BOM), binary files (NUL bytes) and invalid UTF-8 are refused naming the line;
* a CSV field or a text over :data:`MAX_FIELD_CHARS` characters is refused naming the row;
* labels are integers (``"2"``, ``2``; in a CSV also ``"2.0"`` is refused) or, when
  ``label_names`` are given, one of those names; every row has a label or none has: a file where
  some rows lack one is refused (no silent fall-back); with ``num_labels`` each label must lie in
  ``[0, num_labels)``;
* ``limit`` keeps the first ``limit`` rows.
"""
from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import stat
from typing import Any, Iterator, Sequence

from edgekd.errors import EdgekdValueError

MAX_FIELD_CHARS = 131_072  # csv's default field limit, applied to every format


def _bad(path: Any, msg: str) -> EdgekdValueError:
    return EdgekdValueError(f"data: {path}: {msg}")


def read_text_file(path: str | os.PathLike) -> str:
    """The whole file as text, after the checks of the module doc (regular file, UTF-8)."""
    p = pathlib.Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise _bad(path, "does not exist") from None
    except OSError as exc:
        raise _bad(path, f"cannot be read: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise _bad(path, "is a directory, not a data file")
    if not stat.S_ISREG(st.st_mode):
        raise _bad(path, "is not a regular file (a device, FIFO or socket)")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise _bad(path, f"cannot be read: {exc.strerror}") from None
    if data[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        raise _bad(path, "is UTF-32; save it as UTF-8")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise _bad(path, "is UTF-16; save it as UTF-8")
    if b"\x00" in data:
        line = data[:data.index(b"\x00")].count(b"\n") + 1
        raise _bad(path, f"line {line}: holds NUL bytes (a binary file?)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise _bad(path, f"line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                         f"save the file as UTF-8") from None


def _label(value: Any, where: str, path: Any, label_names: Sequence[str] | None, num_labels: int | None) -> int:
    if isinstance(value, bool):
        raise _bad(path, f"{where}: label {value!r} is not an integer")
    if isinstance(value, int):
        y = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        y = int(value.strip())
    elif isinstance(value, str) and label_names is not None and value in label_names:
        y = list(label_names).index(value)
    else:
        names = f" or one of {list(label_names)}" if label_names is not None else ""
        raise _bad(path, f"{where}: label {value!r:.40} is not an integer{names}")
    n = num_labels if num_labels is not None else (len(label_names) if label_names is not None else None)
    if n is not None and not 0 <= y < n:
        raise _bad(path, f"{where}: label {y} is outside [0, {n})")
    return y


def _rows(path: Any, text: str, suffix: str, text_column: str, label_column: str) -> Iterator[tuple[str, Any, Any]]:
    """(where, text, label or None) per row."""
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            fields = reader.fieldnames
        except csv.Error as exc:
            raise _bad(path, f"line 1: {exc}") from None
        if not fields or text_column not in fields:
            raise _bad(path, f"needs a {text_column!r} column (--text-column), has {fields}")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise _bad(path, f"line {reader.line_num + 1}: {exc} (fields are limited to {MAX_FIELD_CHARS:,} "
                                 f"characters)") from None
            where = f"line {reader.line_num}"
            if row.get(text_column) is None:
                raise _bad(path, f"{where}: no {text_column!r} field")
            lab = row.get(label_column) if label_column in fields else None
            yield where, row[text_column], (None if lab in (None, "") else lab)
    elif suffix == ".jsonl":
        for k, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"line {k}"
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise _bad(path, f"{where}: not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise _bad(path, f"{where}: expected a JSON object, got {type(obj).__name__}")
            if text_column not in obj:
                raise _bad(path, f"{where}: no {text_column!r} field (--text-column), has {sorted(obj)[:10]}")
            if not isinstance(obj[text_column], str):
                raise _bad(path, f"{where}: {text_column!r} must be a string, got {type(obj[text_column]).__name__}")
            yield where, obj[text_column], obj.get(label_column)
    else:
        for k, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield f"line {k}", line, None


def read_texts(path: str | os.PathLike, limit: int | None = None, *, text_column: str = "text",
               label_column: str = "label", label_names: Sequence[str] | None = None,
               num_labels: int | None = None) -> tuple[list[str], list[int] | None]:
    """Texts and labels (``None`` when the file has none) of ``path``; see the module doc."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise EdgekdValueError(f"--limit: expected a positive integer, got {limit!r}")
    text = read_text_file(path)
    suffix = pathlib.Path(path).suffix.lower()
    texts: list[str] = []
    labels: list[int] = []
    unlabelled: str | None = None
    old_limit = csv.field_size_limit()
    csv.field_size_limit(MAX_FIELD_CHARS)
    try:
        for where, t, lab in _rows(path, text, suffix, text_column, label_column):
            if len(t) > MAX_FIELD_CHARS:
                raise _bad(path, f"{where}: the text is {len(t):,} characters, over the limit of {MAX_FIELD_CHARS:,}")
            if lab is None:
                unlabelled = unlabelled or where
            else:
                labels.append(_label(lab, where, path, label_names, num_labels))
            if labels and unlabelled:
                raise _bad(path, f"{unlabelled}: no label while other rows have one (label every row or none)")
            texts.append(t)
            if limit and len(texts) >= limit:
                break
    finally:
        csv.field_size_limit(old_limit)
    if not texts:
        raise _bad(path, "holds no texts")
    return texts, (labels or None)
