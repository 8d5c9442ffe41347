"""``edgekd predict``, ``bench``, ``compare``, ``sign``, ``verify``, ``generate`` and ``answer`` (torch-free).

User errors (a bad bundle, data file, key or flag) are :class:`~edgekd.errors.EdgekdError`
subclasses; ``edgekd.cli.main`` prints them as one line and exits with code 2.
"""
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
    p.add_argument("--trusted-key", action="append", dest="trusted_keys", metavar="PUB",
                   help="refuse the bundle unless it is signed by this ed25519 public key (repeatable)")
    p.add_argument("--format", default="onnx", choices=["onnx", "ort"],
                   help="run the variant's ONNX file or its ORT-format copy (bundles compiled with --ort)")
    p.set_defaults(func=_predict)

    s = sub.add_parser("sign", help="sign a bundle's manifest with an ed25519 key (needs edgekd[sign])",
                       usage="edgekd sign BUNDLE --key KEY | edgekd sign --generate-key KEY")
    s.add_argument("bundle", nargs="?", help="bundle directory or .zip (verified first)")
    s.add_argument("--key", help="private key (PEM) to sign with")
    s.add_argument("--generate-key", metavar="KEY", help="write a new private key KEY (0600) and KEY.pub, then stop")
    s.set_defaults(func=_sign)

    v = sub.add_parser("verify", help="check every file, the manifest's digest and (with --trusted-key) its signature")
    v.add_argument("bundle", help="bundle directory or .zip")
    v.add_argument("--trusted-key", action="append", dest="trusted_keys", metavar="PUB",
                   help="ed25519 public key the bundle must be signed with (repeatable)")
    v.set_defaults(func=_verify)

    b = sub.add_parser("bench", help="benchmark a bundle on this machine (latency, throughput, RSS, size)")
    b.add_argument("bundle", help="bundle directory or .zip")
    b.add_argument("--target", default="auto", help="auto (this machine), x86_64, or arm64 (emulated instruction counts)")
    b.add_argument("--precision", default="auto", choices=["auto", "int8", "fp32", "int4"],
                   help="int4: generative bundles only")
    b.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: ORT's)")
    b.add_argument("--batches", type=_ints, default=[1, 8, 32])
    b.add_argument("--data", help="CSV (text[,label]) / JSONL / text file; default: synthetic texts from the vocabulary")
    _data_flags(b)
    b.add_argument("--min-time", type=float, default=1.0, help="seconds per batch size (at least 10 iterations)")
    b.add_argument("--count-instructions", action="store_true", help="also count x86 instructions (valgrind/perf)")
    b.add_argument("--json", dest="json_out", help="write the result as JSON here")
    b.add_argument("--markdown", dest="md_out", help="write a markdown summary here")
    b.add_argument("--record", action="store_true", help="store the profile in the bundle's manifest")
    b.add_argument("--prompt-tokens", dest="prompt_tokens", type=int, default=64, help="generative bundles: prompt length")
    b.add_argument("--new-tokens", dest="new_tokens", type=int, default=64, help="generative bundles: tokens generated")
    b.add_argument("--repeats", type=int, default=3, help="generative bundles: timed generations (median)")
    b.add_argument("--engine", default="ort", choices=["ort", "genai"], help="generative bundles: decoding engine")
    b.set_defaults(func=_bench)

    g = sub.add_parser("generate", help="complete a prompt with a generative bundle (torch-free runtime)")
    g.add_argument("bundle", help="generative bundle directory or .zip (edgekd compile-lm)")
    g.add_argument("prompt", nargs="+", help="prompt text; several: one batch, one JSON line each")
    g.add_argument("--chat", action="store_true", help="send each prompt as a user message through the chat template")
    g.add_argument("--system", help="with --chat: a system message first")
    g.add_argument("--stream", action="store_true", help="print text as it is generated (one prompt)")
    g.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    g.add_argument("--top-p", dest="top_p", type=float, default=1.0)
    g.add_argument("--top-k", dest="top_k", type=int, default=0)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--truncate", action="store_true", help="cut a too-long prompt to its last tokens instead of failing")
    g.add_argument("--precision", default="auto", choices=["auto", "int4", "int8", "fp32"])
    g.add_argument("--engine", default="ort", choices=["ort", "genai"],
                   help="ort (default): plain onnxruntime + edgekd's KV loop; genai: onnxruntime-genai")
    g.add_argument("--trusted-key", action="append", dest="trusted_keys", metavar="PUB")
    g.add_argument("--json", dest="json_lines", action="store_true", help="print JSON lines (text, tokens, timings)")
    from edgekd import cliflags

    cliflags.add_flags(g, "--seed", "--threads", seed=dict(default=None, help="sampling seed"),
                       threads=dict(default=None, help="onnxruntime intra-op threads"))
    g.set_defaults(func=_generate)

    a = sub.add_parser("answer", help="answer a question from a generative bundle's own documents (retrieval + SGP, "
                                      "torch-free runtime)")
    a.add_argument("bundle", help="generative bundle directory or .zip compiled with `edgekd compile-lm --retrieval`")
    a.add_argument("question", help="the question")
    a.add_argument("--mode", default="sgp", choices=["sgp", "top1", "closed-book"],
                   help="sgp (default): retriever and LM pick the paragraph; top1: the retriever's first; "
                        "closed-book: no paragraph")
    a.add_argument("--k", type=int, default=None, help="SGP candidate paragraphs (default: the bundle's setting)")
    a.add_argument("--weight", type=float, default=None, help="SGP: the retriever's share, 0..1 (default: the bundle's)")
    a.add_argument("--threshold", type=float, default=None, help="SGP: abstain below this score (default: the bundle's)")
    a.add_argument("--terms", default=None, help="SGP: LM terms, comma-separated: question,answer (default: the "
                                                 "bundle's)")
    a.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=None,
                   help="answer length cap (default: the bundle's)")
    a.add_argument("--precision", default="auto", choices=["auto", "int4", "int8", "fp32"])
    a.add_argument("--trusted-key", action="append", dest="trusted_keys", metavar="PUB")
    a.add_argument("--json", dest="json_out", action="store_true",
                   help="print one JSON object: the answer, the paragraph and every candidate's scores")
    from edgekd import cliflags

    cliflags.add_flags(a, "--threads", threads=dict(default=None, help="onnxruntime intra-op threads"))
    a.set_defaults(func=_answer)

    c = sub.add_parser("compare", help="DiXtill-style comparison table of several bundles against a baseline")
    c.add_argument("entries", nargs="+", help="BUNDLE[@precision[@target]] or a bench .json result")
    c.add_argument("--baseline", help="the entry the others are relative to (default: the first)")
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--data")
    _data_flags(c)
    c.add_argument("--min-time", type=float, default=1.0)
    c.add_argument("--json", dest="json_out")
    c.add_argument("--markdown", dest="md_out")
    c.set_defaults(func=_compare)


def _data_flags(p: argparse.ArgumentParser) -> None:
    from edgekd import cliflags

    cliflags.add_flags(p, "--limit", "--text-column", "--label-column",
                       limit=dict(default=512, help="use the FIRST N rows of --data (default: 512)"),
                       text_column=dict(default="text", help="text column/field of --data (default: text)"),
                       label_column=dict(default="label", help="label column/field of --data (default: label)"))


def _predict(args: argparse.Namespace) -> int:
    from edgekd.runtime.model import Bundle
    from edgekd.runtime.preprocess import validate_texts

    bundle = Bundle.load(args.bundle, target=args.target, precision=args.precision, trusted_keys=args.trusted_keys,
                         format=args.format)
    texts = validate_texts(args.texts)  # undecodable argv bytes (surrogateescape) become U+FFFD
    pred = bundle.predict(texts)
    for k, text in enumerate(texts):
        row: dict[str, Any] = {"text": text, "label": pred.labels[k],
                               "probabilities": dict(zip(bundle.label_names, map(float, pred.probabilities[k]))),
                               "empty": bool(pred.empty[k])}
        if pred.explanations is not None:
            row["explanation"] = pred.explanations[k]
        print(json.dumps(row, ensure_ascii=False))
    return 0


def _sign(args: argparse.Namespace) -> int:
    from edgekd.runtime.signing import generate_key, sign_bundle

    if args.generate_key:
        if args.bundle or args.key:
            raise EdgekdValueError("sign: --generate-key KEY takes no bundle and no --key")
        priv, pub = generate_key(args.generate_key)
        print(f"wrote private key {priv} (keep it secret) and public key {pub}")
        return 0
    if not args.bundle or not args.key:
        raise EdgekdValueError("sign: expected BUNDLE --key KEY (or --generate-key KEY)")
    kid = sign_bundle(args.bundle, args.key)
    print(f"signed {args.bundle} (key id {kid})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from edgekd.runtime.signing import verify_bundle

    r = verify_bundle(args.bundle, trusted_keys=args.trusted_keys)
    sig = "signature verified" if r["signature_checked"] else ("signed, signature not checked (no --trusted-key)"
                                                               if r["signed"] else "not signed")
    print(f"ok: {r['bundle']}: {r['files']} files, variants {', '.join(r['variants'])}, manifest sha256 "
          f"{r['digest'][:16]}..., {sig}")
    return 0


def _data(args: argparse.Namespace, bundles: list[str]):
    """--data read and checked by name; labels may be integers or the bundles' label names, and
    must lie in range for every bundle."""
    if not args.data:
        return None, None
    from edgekd.runtime.bench import load_texts
    from edgekd.runtime.bundle import peek_manifest

    names = [peek_manifest(b)["label_names"] for b in bundles]
    return load_texts(args.data, args.limit, text_column=args.text_column, label_column=args.label_column,
                      label_names=names[0] if names and all(n == names[0] for n in names) else None,
                      num_labels=min((len(n) for n in names), default=None))


def _write(args: argparse.Namespace, obj: Any, md: str) -> None:
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    if args.md_out:
        pathlib.Path(args.md_out).write_text(md, encoding="utf-8")
    sys.stdout.write(md)


def _bench(args: argparse.Namespace) -> int:
    from edgekd.runtime.bench import bench, bench_markdown, record_profile
    from edgekd.runtime.bundle import peek_manifest
    from edgekd.runtime.manifest import GENERATIVE_TASK

    if peek_manifest(args.bundle).get("task") == GENERATIVE_TASK:
        from edgekd.runtime.genbench import bench_generative, generative_markdown

        if args.target != "auto":
            raise EdgekdValueError("bench: --target is for classifier bundles; a generative bundle is timed on this machine")
        r = bench_generative(args.bundle, precision=args.precision, threads=args.threads, engine=args.engine,
                             prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, repeats=args.repeats)
        _write(args, r, generative_markdown(r))
        return 0

    texts, labels = _data(args, [args.bundle])
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


def _bench_json(entry: str) -> dict[str, Any]:
    from edgekd.data.readers import read_text_file

    try:
        r = json.loads(read_text_file(entry))
    except json.JSONDecodeError as exc:
        raise EdgekdValueError(f"compare: {entry}: not valid JSON ({exc})") from None
    if not isinstance(r, dict) or not {"variant", "size_bytes", "target"} <= set(r):
        raise EdgekdValueError(f"compare: {entry}: not an edgekd bench result (needs variant, target, size_bytes)")
    return r


def _compare(args: argparse.Namespace) -> int:
    from edgekd.runtime.bench import bench_subprocess, compare_markdown

    texts, labels = _data(args, [_split_entry(e)[0] for e in args.entries if not e.endswith(".json")])
    baseline = 0
    if args.baseline is not None:
        if args.baseline not in args.entries:
            raise EdgekdValueError(f"--baseline: {args.baseline!r} is not one of the entries {args.entries}")
        baseline = args.entries.index(args.baseline)
    results = []
    for entry in args.entries:
        if entry.endswith(".json"):
            results.append(_bench_json(entry))
            continue
        path, prec, tgt = _split_entry(entry)
        results.append(bench_subprocess(path, target=tgt, precision=prec, threads=args.threads, texts=texts,
                                        labels=labels, min_time=args.min_time))
    _write(args, {"baseline": baseline, "results": results}, compare_markdown(results, baseline))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from edgekd.runtime.generative import GenerativeBundle
    from edgekd.runtime.preprocess import validate_texts

    prompts = validate_texts(args.prompt)
    if args.chat:
        head = [{"role": "system", "content": args.system}] if args.system else []
        prompts = [head + [{"role": "user", "content": p}] for p in prompts]
    elif args.system:
        raise EdgekdValueError("generate: --system needs --chat")
    lm = GenerativeBundle.load(args.bundle, precision=args.precision, threads=args.threads, engine=args.engine,
                               trusted_keys=args.trusted_keys)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
              seed=args.seed, stop=args.stop, truncate=args.truncate)
    if args.stream:
        if len(prompts) != 1:
            raise EdgekdValueError("generate: --stream takes one prompt")
        for piece in lm.stream(prompts[0], **kw):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    gens = lm.generate(prompts, **kw)
    for p, g in zip(args.prompt, gens):
        if args.json_lines:
            print(json.dumps({"prompt": p, "text": g.text, "tokens": len(g.token_ids), "prompt_tokens": g.prompt_tokens,
                              "finish_reason": g.finish_reason, "ttft_ms": round(g.ttft_s * 1e3, 2),
                              "decode_tokens_per_s": round(g.decode_tokens_per_s, 2)}, ensure_ascii=False))
        else:
            print(g.text)
    return 0


def _answer(args: argparse.Namespace) -> int:
    from edgekd.runtime.generative import GenerativeBundle
    from edgekd.runtime.preprocess import validate_texts

    question = validate_texts([args.question])[0]  # undecodable argv bytes (surrogateescape) become U+FFFD
    if not question.strip():
        raise EdgekdValueError("answer: the question is empty")
    lm = GenerativeBundle.load(args.bundle, precision=args.precision, threads=args.threads,
                               trusted_keys=args.trusted_keys)
    overrides = {k: getattr(args, k) for k in ("weight", "threshold", "terms", "max_new_tokens") if getattr(args, k) is not None}
    r = lm.answer(question, args.mode, k=args.k, **overrides)
    if args.json_out:
        print(json.dumps({"mode": args.mode, **r.to_json()}, ensure_ascii=False, allow_nan=False))
        return 0
    if r.abstained:
        print(f"(no answer: the best SGP score {r.score:.4g} is below the threshold)")
    else:
        print(r.answer)
    if r.paragraph_id is not None:
        print(f"paragraph: {r.paragraph_id}" + (f" (score {r.score:.4g})" if r.score is not None else ""))
    return 0
