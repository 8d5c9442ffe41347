"""``edgekd predict``, ``edgekd bench`` and ``edgekd compare`` (torch-free)."""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from edgekd.errors import EdgekdValueError


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from exc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify texts with a bundle (torch-free runtime)")
    p.add_argument("bundle")
    p.add_argument("texts", nargs="+")
    p.add_argument("--target", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "int8", "fp32"])
    p.add_argument("--format", default="onnx", choices=["onnx", "ort"],
                   help="run the variant's ONNX file or its ORT-format copy (bundles compiled with --ort)")
    p.set_defaults(func=_predict)

    b = sub.add_parser("bench", help="benchmark a bundle on this machine (latency, throughput, RSS, size)")
    b.add_argument("bundle", help="bundle directory or .zip")
    b.add_argument("--target", default="auto", help="auto (this machine), x86_64, or arm64 (emulated instruction counts)")
    b.add_argument("--precision", default="auto", choices=["auto", "int8", "fp32"])
    b.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: ORT's)")
    b.add_argument("--batches", type=_ints, default=[1, 8, 32])
    b.add_argument("--data", help="CSV (text[,label]) / JSONL / text file; default: synthetic texts from the vocabulary")
    b.add_argument("--limit", type=int, default=512, help="use at most this many texts of --data")
    b.add_argument("--min-time", type=float, default=1.0, help="seconds per batch size (at least 10 iterations)")
    b.add_argument("--count-instructions", action="store_true", help="also count x86 instructions (valgrind/perf)")
    b.add_argument("--json", dest="json_out", help="write the result as JSON here")
    b.add_argument("--markdown", dest="md_out", help="write a markdown summary here")
    b.add_argument("--record", action="store_true", help="store the profile in the bundle's manifest")
    b.set_defaults(func=_bench)

    c = sub.add_parser("compare", help="DiXtill-style comparison table of several bundles against a baseline")
    c.add_argument("entries", nargs="+", help="BUNDLE[@precision[@target]] or a bench .json result")
    c.add_argument("--baseline", help="the entry the others are relative to (default: the first)")
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--data")
    c.add_argument("--limit", type=int, default=512)
    c.add_argument("--min-time", type=float, default=1.0)
    c.add_argument("--json", dest="json_out")
    c.add_argument("--markdown", dest="md_out")
    c.set_defaults(func=_compare)


def _predict(args: argparse.Namespace) -> int:
    from edgekd.runtime.model import Bundle

    bundle = Bundle.load(args.bundle, target=args.target, precision=args.precision, format=args.format)
    pred = bundle.predict(args.texts)
    for k, text in enumerate(args.texts):
        row: dict[str, Any] = {"text": text, "label": pred.labels[k],
                               "probabilities": dict(zip(bundle.label_names, map(float, pred.probabilities[k]))),
                               "empty": bool(pred.empty[k])}
        if pred.explanations is not None:
            row["explanation"] = pred.explanations[k]
        print(json.dumps(row, ensure_ascii=False))
    return 0


def _data(args: argparse.Namespace):
    if not args.data:
        return None, None
    from edgekd.runtime.bench import load_texts

    return load_texts(args.data, args.limit)


def _write(args: argparse.Namespace, obj: Any, md: str) -> None:
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    if args.md_out:
        pathlib.Path(args.md_out).write_text(md, encoding="utf-8")
    sys.stdout.write(md)


def _bench(args: argparse.Namespace) -> int:
    from edgekd.runtime.bench import bench, bench_markdown, record_profile

    texts, labels = _data(args)
    r = bench(args.bundle, target=args.target, precision=args.precision, batches=args.batches, threads=args.threads,
              texts=texts, labels=labels, min_time=args.min_time, count_instructions=args.count_instructions)
    _write(args, r, bench_markdown(r))
    if args.record:
        record_profile(args.bundle, r)
        print(f"recorded profile of {r['variant']} in {args.bundle}")
    return 0


def _split_entry(entry: str) -> tuple[str, str, str]:
    parts = entry.split("@")
    path, prec, tgt = parts[0], parts[1] if len(parts) > 1 else "auto", parts[2] if len(parts) > 2 else "auto"
    if len(parts) > 3:
        raise EdgekdValueError(f"compare: entry {entry!r}: expected BUNDLE[@precision[@target]]")
    return path, prec, tgt


def _compare(args: argparse.Namespace) -> int:
    from edgekd.runtime.bench import bench_subprocess, compare_markdown

    texts, labels = _data(args)
    baseline = 0
    if args.baseline is not None:
        if args.baseline not in args.entries:
            raise EdgekdValueError(f"--baseline: {args.baseline!r} is not one of the entries {args.entries}")
        baseline = args.entries.index(args.baseline)
    results = []
    for entry in args.entries:
        if entry.endswith(".json"):
            results.append(json.loads(pathlib.Path(entry).read_text(encoding="utf-8")))
            continue
        path, prec, tgt = _split_entry(entry)
        results.append(bench_subprocess(path, target=tgt, precision=prec, threads=args.threads, texts=texts,
                                        labels=labels, min_time=args.min_time))
    _write(args, {"baseline": baseline, "results": results}, compare_markdown(results, baseline))
    return 0
