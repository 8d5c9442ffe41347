"""``edgekd qa train``: train a QA student (generative, pruned from the teacher) or the extractive reader.

    edgekd qa train --kind generative --human --teacher smollm2 --keep-layers 15 --loss ce --sample 200 --out sft/
    edgekd qa train --kind generative --triplets synth.jsonl --loss fkl --ce-weight 0.5 --out kd/
    edgekd qa train --kind extractive --human --model minilm --sample 200 --out reader/

``--triplets``: a JSONL file of triplets (``edgekd qa generate``); ``--human [FILE]``: the question /
answer pairs of a SQuAD-format file (default: PolicyQA dev). ``--limit N`` keeps the first N
triplets, ``--sample N`` a seeded random N spread over the documents (round-robin over the
paragraphs' documents, so few dozen samples still cover many policies).

Generative: the student is ``--student DIR`` if given, else ``--keep-layers`` blocks of ``--teacher``
chosen by block influence on the training prompts (:func:`edgekd.qa.students.make_student`);
``--loss ce`` is SFT, any KD loss (``fkl``, ``rkl``, ``jsd``, ...) distils from the teacher with
``--ce-weight`` CE. ``--out`` gets the model directory and ``qa_train.json`` (settings, kept layers,
dev losses). Extractive: ``--model`` (``minilm`` or an encoder directory) gets a span head;
``--out`` gets the reader (:mod:`edgekd.qa.reader`).
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Sequence

from edgekd.errors import EdgekdValueError

__all__ = ["register_qa", "load_training_triplets", "select_triplets"]


def select_triplets(triplets: Sequence, *, limit: int | None = None, sample: int | None = None, seed: int = 0) -> list:
    """The first ``limit`` triplets, or a seeded random ``sample`` spread over documents: shuffled,
    then taken round-robin over the documents (the part of ``context_id`` before ``#``, else the
    paragraph), so N samples cover min(N, documents) documents."""
    trips = list(triplets)
    if limit is not None and sample is not None:
        raise EdgekdValueError("give --limit or --sample, not both")
    for name, v in (("limit", limit), ("sample", sample)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise EdgekdValueError(f"--{name} must be an int >= 1, got {v!r}")
    if limit is not None:
        return trips[:limit]
    if sample is None or sample >= len(trips):
        return trips
    rng = random.Random(seed)
    order = list(range(len(trips)))
    rng.shuffle(order)
    groups: dict[str, list[int]] = {}
    for i in order:
        cid = trips[i].context_id or trips[i].context
        groups.setdefault(cid.split("#")[0], []).append(i)
    keys = list(groups)
    picked: list[int] = []
    depth = 0
    while len(picked) < sample:
        for k in keys:
            if depth < len(groups[k]) and len(picked) < sample:
                picked.append(groups[k][depth])
        depth += 1
    return [trips[i] for i in sorted(picked)]


def load_training_triplets(triplets: str | None = None, human: str | None = None) -> list:
    """Triplets of a JSONL file, or the human QA pairs of a SQuAD-format file (``"dev"``: PolicyQA dev)."""
    from edgekd.qa.data import load_policyqa, load_squad
    from edgekd.qa.types import read_jsonl

    if (triplets is None) == (human is None):
        raise EdgekdValueError("give exactly one of --triplets FILE.jsonl or --human [SQUAD.json]")
    if triplets is not None:
        rows = list(read_jsonl(triplets))
        if not rows:
            raise EdgekdValueError(f"{triplets}: no triplets")
        return rows
    return load_policyqa("dev")[1] if human == "dev" else load_squad(human)[1]


def register_qa(qa_sub: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``edgekd qa`` sub-commands."""
    from edgekd import cliflags

    p = qa_sub.add_parser("train", help="train a QA student (generative, pruned from the teacher) or an extractive "
                                        "reader on triplets",
                          description="SFT or token-level KD of a pruned generative student, or a MiniLM span "
                                      "reader, on (context, question, answer) triplets.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--triplets", help="triplets JSONL (edgekd qa generate)")
    src.add_argument("--human", nargs="?", const="dev", metavar="SQUAD_JSON",
                     help="the human QA pairs of a SQuAD-format file (default: PolicyQA dev)")
    p.add_argument("--kind", choices=["generative", "extractive"], default="generative")
    p.add_argument("--teacher", default="smollm2", help="generative: smollm2 (asset), a model directory or .gguf")
    p.add_argument("--student", help="generative: start from this student directory instead of pruning the teacher")
    p.add_argument("--keep-layers", dest="keep_layers", type=int,
                   help="generative: decoder blocks kept (default: half of the teacher's)")
    p.add_argument("--prune-method", dest="prune_method", choices=["block-influence", "even"],
                   default="block-influence")
    p.add_argument("--loss", default="ce", help="ce (SFT) or a KD loss: fkl, rkl, jsd, tv, akl, ... (default ce)")
    p.add_argument("--ce-weight", dest="ce_weight", type=float, default=0.5, help="KD: (1 - w) KD + w CE")
    p.add_argument("--temperature", type=float, default=1.0, help="KD temperature")
    p.add_argument("--model", default="minilm", help="extractive: minilm (asset) or an encoder directory")
    p.add_argument("--doc-stride", dest="doc_stride", type=int, default=128, help="extractive: window overlap")
    p.add_argument("--max-answer-tokens", dest="max_answer_tokens", type=int, default=30)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, help="learning rate (default 5e-5)")
    p.add_argument("--dev-fraction", dest="dev_fraction", type=float, default=0.1,
                   help="share of the triplets (whole paragraphs) held out to pick the checkpoint")
    cliflags.add_flags(
        p, "--out", "--limit", "--sample", "--batch-size", "--max-length", "--seed", "--threads",
        out=dict(required=True, help="output model directory"),
        limit=dict(metavar="N", help="use the FIRST N triplets"),
        sample=dict(metavar="N", help="use a seeded random N triplets spread over the documents"),
        batch_size=dict(default=4, help="examples per batch (default 4)"),
        max_length=dict(default=384, help="tokens per training sequence / reader window (default 384)"),
        seed=dict(default=0))
    p.set_defaults(func=_train)


def _train(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    trips = load_training_triplets(args.triplets, args.human)
    trips = select_triplets(trips, limit=args.limit, sample=args.sample, seed=args.seed)
    source = "synthetic" if args.triplets else "human"
    out = Path(args.out)
    if args.kind == "extractive":
        return _train_reader(args, trips, source, out)
    return _train_generative(args, trips, source, out)


def _write_meta(out: Path, meta: dict) -> None:
    import os

    tmp = out / "qa_train.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out / "qa_train.json")


def _train_reader(args, trips, source, out) -> int:
    from edgekd.qa.reader import ReaderConfig, load_reader, save_reader, train_reader

    cfg = ReaderConfig(max_length=args.max_length, doc_stride=args.doc_stride, max_answer_tokens=args.max_answer_tokens,
                       epochs=args.epochs, lr=args.lr or 5e-5, batch_size=args.batch_size,
                       dev_fraction=args.dev_fraction, seed=args.seed)
    cfg.validate()
    model, tok, _ = load_reader(args.model, seed=args.seed)
    res = train_reader(model, tok, trips, cfg)
    save_reader(model, tok, out, cfg, extra={"training": {"source": source, "n": len(trips), **res.to_json()}})
    _write_meta(out, {"kind": "extractive", "model": str(args.model), "source": source, "n": len(trips),
                      "result": res.to_json()})
    print(f"reader: {res.n_train} train / {res.n_dev} dev triplets ({res.dropped} without a span dropped); "
          f"dev loss {res.dev_before:.3f} -> {res.dev_after:.3f} -> {out}")
    return 0


def _load_teacher(spec: str):
    from edgekd.llm.models import load_causal_lm

    if spec == "smollm2":
        from edgekd.assets import asset_path

        spec = str(asset_path("smollm2"))
    return load_causal_lm(spec)


def _train_generative(args, trips, source, out) -> int:
    from edgekd.llm.models import count_parameters, load_causal_lm, save_causal_lm
    from edgekd.qa.students import QAStudentConfig, make_student, resolve_loss, train_qa_student

    cfg = QAStudentConfig(loss=resolve_loss(args.loss), ce_weight=args.ce_weight, temperature=args.temperature,
                          max_length=args.max_length, epochs=args.epochs, lr=args.lr or 5e-5,
                          batch_size=args.batch_size, dev_fraction=args.dev_fraction, seed=args.seed)
    cfg.validate()
    kd = cfg.loss != "ce"
    need_teacher = kd or args.student is None
    teacher, tok = _load_teacher(args.teacher) if need_teacher else (None, None)
    keep = None
    if args.student:
        student, s_tok = load_causal_lm(args.student)
        tok = tok or s_tok
    else:
        n = teacher.config.num_hidden_layers
        k = args.keep_layers if args.keep_layers is not None else max(1, n // 2)
        student, keep = make_student(teacher, k, trips, tokenizer=tok, method=args.prune_method,
                                     max_length=args.max_length, batch_size=args.batch_size)
    student.train()
    res = train_qa_student(student, tok, trips, teacher=teacher if kd else None, config=cfg)
    save_causal_lm(student, out, tok)
    _write_meta(out, {"kind": "generative", "teacher": str(args.teacher) if need_teacher else None,
                      "student": args.student, "kept_layers": keep, "source": source, "n": len(trips),
                      "parameters": count_parameters(student), "result": res.to_json()})
    print(f"{'KD ' + cfg.loss if kd else 'SFT'}: {res.n_train} train / {res.n_dev} dev triplets; "
          f"dev answer loss {res.dev_before:.3f} -> {res.dev_after:.3f}; kept layers {keep} -> {out}")
    return 0
