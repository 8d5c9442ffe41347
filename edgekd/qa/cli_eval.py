"""``edgekd qa index | evaluate | answer``: retrieval indexes, QA evaluation in four modes, one answer.

``register_qa(qa_sub)`` adds the three verbs to the ``qa`` command's sub-parsers (``edgekd/qa/cli.py``
builds the ``qa`` command and calls it).

::

    edgekd qa index --split test --kind hybrid --out policyqa-test-index
    edgekd qa evaluate --model student/ --split test --mode sgp --index policyqa-test-index --out sgp.json
    edgekd qa answer --index policyqa-test-index --model student/ "Do they share my location?"

Paragraphs (``--paragraphs``): a SQuAD-format JSON file (paragraph ids ``<title>#<j>``), a JSONL of
triplets (``edgekd qa generate``'s output: the distinct contexts) or a JSONL of ``{"id", "text"}``
paragraphs; ``--split dev|test`` is PolicyQA's. Dense and hybrid indexes embed with an ONNX
sentence embedder: ``--embedder DIR`` (from :func:`edgekd.qa.embedder.export_sentence_embedder`),
else MiniLM (``edgekd.assets``) is exported into the index folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgekd import cliflags
from edgekd.errors import EdgekdValueError

__all__ = ["register_qa", "read_paragraphs", "read_questions"]


# ------------------------------------------------------------------------------------ data
def read_paragraphs(path: str | None = None, split: str | None = None) -> tuple[list[str], list[str]]:
    """``(ids, texts)`` from ``path`` (SQuAD JSON, triplet JSONL or paragraph JSONL) or PolicyQA ``split``."""
    from edgekd.qa.data import load_policyqa, read_paragraph_file

    if (path is None) == (split is None):
        raise EdgekdValueError("give exactly one of --paragraphs FILE or --split dev|test")
    if split is not None:
        paras, _ = load_policyqa(split)
        return [p.id for p in paras], [p.text for p in paras]
    try:
        paras = read_paragraph_file(path)
    except EdgekdValueError as exc:
        raise EdgekdValueError(f"--paragraphs: {exc}") from None
    return [x.id for x in paras], [x.text for x in paras]


def read_questions(path: str | None = None, split: str | None = None):
    """Triplets (question, gold answers in ``meta["answers"]`` or ``answer``, gold ``context_id``)."""
    from edgekd.qa.data import load_policyqa, load_squad
    from edgekd.qa.types import read_jsonl

    if (path is None) == (split is None):
        raise EdgekdValueError("give exactly one of --data FILE or --split dev|test")
    if split is not None:
        return load_policyqa(split)[1]
    p = Path(path)
    if p.suffix.lower() == ".json":
        return load_squad(p)[1]
    rows = list(read_jsonl(p))
    if not rows:
        raise EdgekdValueError(f"{p}: no triplets")
    return rows


def _golds(t) -> list[str]:
    answers = t.meta.get("answers") if isinstance(t.meta, dict) else None
    return list(answers) if answers else [t.answer]


# ------------------------------------------------------------------------------------ verbs
def _index(args) -> int:
    from edgekd.runtime.retrieval import OnnxSentenceEmbedder, build_index

    ids, texts = read_paragraphs(args.paragraphs, args.split)
    if args.limit:
        ids, texts = ids[:args.limit], texts[:args.limit]
    out = Path(args.out)
    kw: dict = {}
    embedder = None
    if args.kind != "bm25":
        edir = Path(args.embedder) if args.embedder else None
        if edir is None:
            from edgekd.assets import asset_path
            from edgekd.qa.embedder import export_sentence_embedder

            edir = out / "embedder"
            if not (edir / "embedder.json").is_file():
                print(f"exporting MiniLM to ONNX in {edir} ...", file=sys.stderr)
                export_sentence_embedder(asset_path("minilm"), edir)
        embedder = OnnxSentenceEmbedder(edir, threads=args.threads, batch_size=args.batch_size)
    if args.kind == "hybrid":
        kw.update(weight=args.weight, fusion=args.fusion)
    t0 = time.perf_counter()
    index = build_index(args.kind, ids, texts, embedder=embedder, **kw)
    index.save(out)
    print(json.dumps({"index": str(out), "kind": args.kind, "paragraphs": len(ids),
                      "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


def _load_scorer(args):
    import torch

    from edgekd.llm.models import load_causal_lm
    from edgekd.qa.sgp import TorchLMScorer

    from edgekd.teacher.config import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_causal_lm(args.model, device=resolve_device(args.device))
    return TorchLMScorer(model, tok, batch_size=args.batch_size, max_length=args.max_length)


def _config(args):
    from edgekd.qa.sgp import SGPConfig

    return SGPConfig(k=args.k, weight=args.weight, threshold=args.threshold, terms=args.terms,
                     max_new_tokens=args.max_new_tokens)


def _evaluate(args) -> int:
    from edgekd.qa.metrics import qa_metrics, retrieval_metrics
    from edgekd.qa.sgp import answer_questions
    from edgekd.runtime.retrieval import BM25Index, load_index

    trips = read_questions(args.data, args.split)
    if args.limit:
        trips = trips[:args.limit]
    config = _config(args)
    index = None
    if args.mode in ("top1", "sgp"):
        if args.index:
            index = load_index(args.index, threads=args.threads)
        else:  # BM25 over the evaluated file's own paragraphs
            ids, texts = read_paragraphs(args.data, args.split)
            index = BM25Index.build(ids, texts)
    scorer = _load_scorer(args)
    t0 = time.perf_counter()
    results = answer_questions(args.mode, [t.question for t in trips], scorer, index=index,
                               contexts=[t.context for t in trips], context_ids=[t.context_id for t in trips],
                               config=config, progress=True)
    seconds = time.perf_counter() - t0
    metrics = qa_metrics([r.answer for r in results], [_golds(t) for t in trips])
    report = {"mode": args.mode, "model": str(args.model), "data": args.data or f"policyqa:{args.split}",
              "index": args.index, "metrics": metrics, "seconds": round(seconds, 2),
              "seconds_per_question": round(seconds / len(trips), 4)}
    if args.mode == "sgp":
        report["sgp"] = {"k": config.k, "weight": config.weight, "threshold": config.threshold,
                         "terms": list(config.terms)}
        ranked = [[c["id"] for c in sorted(r.candidates, key=lambda c: -c["combined"])] for r in results]
        report["paragraph_choice"] = retrieval_metrics(ranked, [t.context_id for t in trips], ks=(1,))
    elif args.mode == "top1":
        report["paragraph_choice"] = retrieval_metrics([[r.paragraph_id] for r in results],
                                                       [t.context_id for t in trips], ks=(1,))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, allow_nan=False), encoding="utf-8")
    if args.predictions:
        from edgekd.qa.types import write_jsonl

        write_jsonl(args.predictions, [{**r.to_json(), "gold": _golds(t), "gold_context_id": t.context_id}
                                       for r, t in zip(results, trips)])
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in metrics.items()}))
    return 0


def _answer(args) -> int:
    from edgekd.qa.sgp import answer_questions
    from edgekd.runtime.retrieval import load_index

    if not args.question.strip():
        raise EdgekdValueError("question: expected a non-empty question")
    index = load_index(args.index, threads=args.threads)
    scorer = _load_scorer(args)
    r = answer_questions(args.mode, [args.question], scorer, index=index, config=_config(args))[0]
    print(json.dumps(r.to_json(), ensure_ascii=False, indent=1))
    return 0


# ------------------------------------------------------------------------------------ parser
def _unit(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return v


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the generator: a model directory or a .gguf file")
    p.add_argument("--k", type=_positive, default=5, help="SGP: candidate paragraphs (default 5)")
    p.add_argument("--weight", type=_unit, default=0.5,
                   help="SGP: share of the normalised retriever score, 0..1 (default 0.5; choose on dev)")
    p.add_argument("--threshold", type=float, default=None,
                   help="SGP: abstain when the best combined score is below this (default: never)")
    p.add_argument("--terms", type=cliflags.parse_list, default=["question", "answer"],
                   help="SGP: LM terms, comma-separated: question,answer (default both)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=_positive, default=32,
                   help="longest answer in tokens (default 32)")
    cliflags.add_flags(p, "--batch-size", "--threads", "--max-length", "--device",
                       device=dict(default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N"),
                       batch_size=dict(type=_positive, default=8, help="LM sequences per batch (default 8)"),
                       max_length=dict(type=_positive, default=None,
                                       help="LM tokens per sequence; longer paragraphs lose their start "
                                            "(default: the model's limit)"))


def register_qa(qa_sub: argparse._SubParsersAction) -> None:
    """Add ``index``, ``evaluate`` and ``answer`` to the ``qa`` command's sub-parsers."""
    p = qa_sub.add_parser("index", help="build and save a retrieval index (BM25, dense or hybrid) over paragraphs",
                          description="Index paragraphs for `qa evaluate --mode top1|sgp` and `qa answer`.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--paragraphs", help="SQuAD JSON, triplet JSONL or {id, text} JSONL")
    src.add_argument("--split", choices=["dev", "test"], help="PolicyQA split")
    p.add_argument("--kind", choices=["bm25", "dense", "hybrid"], default="bm25")
    p.add_argument("--embedder", help="ONNX sentence embedder folder (default: MiniLM exported into OUT/embedder)")
    p.add_argument("--weight", type=_unit, default=0.5, help="hybrid: the dense side's weight (default 0.5)")
    p.add_argument("--fusion", choices=["rrf", "minmax"], default="rrf", help="hybrid: rank or score fusion")
    cliflags.add_flags(p, "--out", "--limit", "--batch-size", "--threads",
                       out=dict(required=True, help="index folder"),
                       limit=dict(type=_positive, metavar="N", help="index the FIRST N paragraphs"),
                       batch_size=dict(type=_positive, default=32, help="texts per embedding batch (default 32)"))
    p.set_defaults(func=_index)

    e = qa_sub.add_parser("evaluate", help="answer a QA split in one mode and score EM / F1 / ROUGE-L",
                          description="Modes: closed-book (no paragraph), top1 (retriever's first), oracle (gold "
                                      "paragraph), sgp (Selective Generative Paradigm, reconstructed).")
    data = e.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="SQuAD JSON or triplet JSONL with the questions and gold answers")
    data.add_argument("--split", choices=["dev", "test"], help="PolicyQA split")
    e.add_argument("--mode", choices=["closed-book", "top1", "oracle", "sgp"], default="sgp")
    e.add_argument("--index", help="index folder (top1/sgp; default: BM25 over the data's own paragraphs)")
    e.add_argument("--predictions", help="also write every answer and its scores to this JSONL file")
    _model_flags(e)
    cliflags.add_flags(e, "--out", "--limit", out=dict(required=True, help="metrics JSON file"),
                       limit=dict(type=_positive, metavar="N", help="the FIRST N questions"))
    e.set_defaults(func=_evaluate)

    a = qa_sub.add_parser("answer", help="answer one question from an index's paragraphs",
                          description="Prints the answer, the paragraph it came from and every candidate's scores.")
    a.add_argument("question")
    a.add_argument("--index", required=True, help="index folder (edgekd qa index)")
    a.add_argument("--mode", choices=["top1", "sgp"], default="sgp")
    _model_flags(a)
    a.set_defaults(func=_answer)

