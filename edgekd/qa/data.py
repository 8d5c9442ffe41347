"""PolicyQA (Ahmad et al. 2020) and any SQuAD v1.1-format file as paragraphs and triplets.

``../shared/data/policyqa/{dev,test}.json`` in this project; any SQuAD-format JSON works. Dev and
test hold disjoint policies (20 + 20): dev paragraphs are what the generator sees and what training
uses, test is for the final tables only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from edgekd.errors import EdgekdValueError
from edgekd.qa.types import Paragraph, Triplet, iter_json_lines

__all__ = ["default_policyqa_dir", "load_squad", "load_policyqa", "paragraphs_of", "read_paragraph_file"]


def default_policyqa_dir() -> Path:
    """``$EDGEKD_POLICYQA`` if set, else ``shared/data/policyqa`` next to (or above) the checkout."""
    env = os.environ.get("EDGEKD_POLICYQA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for up in here.parents:
        cand = up / "shared" / "data" / "policyqa"
        if cand.is_dir():
            return cand
    return Path("../shared/data/policyqa")


def load_squad(path: str | Path, *, source: str = "human") -> tuple[list[Paragraph], list[Triplet]]:
    """Paragraphs and (context, question, first answer) triplets of a SQuAD v1.1 JSON file.

    Paragraph ids are ``<title>#<index>`` (stable across runs); each triplet keeps its question id,
    the answer's character offset and, in ``meta``, the question ``type`` where the file has one
    and every gold answer (``answers``) for the SQuAD metrics.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgekdValueError(f"{path}: no such SQuAD-format file (PolicyQA: shared/data/policyqa/dev.json)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EdgekdValueError(f"{path}: not JSON ({exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise EdgekdValueError(f"{path}: not SQuAD format (expected an object with a 'data' list)")
    paras: list[Paragraph] = []
    trips: list[Triplet] = []
    for art in doc["data"]:
        title = str(art.get("title", ""))
        for j, p in enumerate(art.get("paragraphs", [])):
            ctx = p.get("context", "")
            if not isinstance(ctx, str) or not ctx.strip():
                continue
            pid = f"{title}#{j}"
            paras.append(Paragraph(pid, ctx, title))
            for qa in p.get("qas", []):
                answers = [a for a in qa.get("answers", []) if isinstance(a.get("text"), str) and a["text"].strip()]
                if not answers or not str(qa.get("question", "")).strip():
                    continue
                a0 = answers[0]
                meta = {"answers": [a["text"] for a in answers]}
                if "type" in qa:
                    meta["type"] = qa["type"]
                trips.append(Triplet(ctx, qa["question"].strip(), a0["text"], pid, source,
                                     int(a0.get("answer_start", -1)), str(qa.get("id", "")), meta))
    if not paras:
        raise EdgekdValueError(f"{path}: no paragraphs with a context")
    return paras, trips


def load_policyqa(split: str, root: str | Path | None = None) -> tuple[list[Paragraph], list[Triplet]]:
    """PolicyQA ``split`` ("dev" or "test") from ``root`` (default: :func:`default_policyqa_dir`)."""
    if split not in ("dev", "test"):
        raise EdgekdValueError(f"PolicyQA split must be 'dev' or 'test', got {split!r}")
    return load_squad(Path(root or default_policyqa_dir()) / f"{split}.json")


def paragraphs_of(triplets: list[Triplet]) -> list[Paragraph]:
    """The distinct contexts of ``triplets`` as paragraphs, in first-seen order."""
    seen: dict[str, Paragraph] = {}
    for t in triplets:
        key = t.context_id or t.context
        if key not in seen:
            seen[key] = Paragraph(key, t.context)
    return list(seen.values())


def read_paragraph_file(path: str | os.PathLike) -> list[Paragraph]:
    """Paragraphs of a file: a SQuAD-format ``.json``, or a ``.jsonl`` whose lines are paragraphs
    (``{"id", "text"[, "group"]}``; a missing id becomes ``<stem>#<line>``) or triplets (their
    distinct contexts, after the paragraphs). A bad line raises naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise EdgekdValueError(f"{path}: no such file, or not a file (want a SQuAD-format .json or a .jsonl of paragraphs or triplets)")
    if path.suffix.lower() == ".json":
        return load_squad(path)[0]
    paras: list[Paragraph] = []
    triplets: list[Triplet] = []
    for i, d in iter_json_lines(path):
        if isinstance(d, dict) and "context" in d:
            try:
                triplets.append(Triplet.from_json(d))
            except EdgekdValueError as exc:
                raise EdgekdValueError(f"{path}:{i}: {exc}") from None
        elif isinstance(d, dict) and isinstance(d.get("text"), str) and d["text"].strip():
            paras.append(Paragraph(str(d.get("id", f"{path.stem}#{i}")), d["text"], str(d.get("group", ""))))
        else:
            raise EdgekdValueError(f"{path}:{i}: expected a paragraph {{\"id\", \"text\"}} or a triplet "
                                   "{\"context\", \"question\", \"answer\"}")
    paras += paragraphs_of(triplets)
    if not paras:
        raise EdgekdValueError(f"{path}: no paragraphs")
    return paras
