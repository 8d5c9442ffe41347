"""The records of legal QA: a paragraph (a context a question can be answered from) and a triplet."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from edgekd.errors import EdgekdValueError

__all__ = ["Paragraph", "Triplet", "write_jsonl", "read_jsonl", "iter_json_lines"]


@dataclass(frozen=True)
class Paragraph:
    """One context: ``id`` is unique within its collection, ``group`` the document it comes from
    (a privacy policy for PolicyQA), so that splits can keep documents apart."""

    id: str
    text: str
    group: str = ""


@dataclass(frozen=True)
class Triplet:
    """(context, question, answer), with the id of the paragraph the context is.

    ``source``: ``"human"`` (a dataset's own question) or ``"synthetic"`` (generated);
    ``answer_start``: the character offset of ``answer`` in ``context`` when it is an exact span,
    else -1; ``meta``: free JSON-serialisable details (generator, filter scores, question type).
    """

    context: str
    question: str
    answer: str
    context_id: str = ""
    source: str = "human"
    answer_start: int = -1
    id: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Triplet":
        if not isinstance(d, dict):
            raise EdgekdValueError(f"a triplet must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("context", "question", "answer") if not isinstance(d.get(k), str)]
        if missing:
            raise EdgekdValueError(f"triplet is missing string field(s) {missing}: {str(d)[:120]}")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def write_jsonl(path: str | Path, rows: Iterable[Triplet | dict]) -> int:
    """Write rows (triplets or dicts) as JSON lines, atomically (temporary file + rename)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r.to_json() if isinstance(r, Triplet) else r, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for every non-blank line of ``path``; a missing file or a line that
    is not JSON raises naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise EdgekdValueError(f"{path}: no such file (not a file)")
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as exc:
                raise EdgekdValueError(f"{path}:{i}: not JSON ({exc.msg})") from None


def read_jsonl(path: str | Path) -> Iterator[Triplet]:
    """Read triplets written by :func:`write_jsonl`; a bad line raises naming the file and line."""
    for i, d in iter_json_lines(path):
        try:
            yield Triplet.from_json(d)
        except EdgekdValueError as exc:
            raise EdgekdValueError(f"{path}:{i}: {exc}") from None
