"""``edgekd qa ...``: legal question answering (:mod:`edgekd.qa`).

    edgekd qa generate --generator smollm2 --limit 40 --out synth/              # local model, in process
    python -m llama_cpp.server --model SmolLM2-135M-Instruct.Q4_1.gguf --port 8000 &
    edgekd qa generate --endpoint http://127.0.0.1:8000/v1 --model smollm2 --api chat --out synth/

``qa generate`` writes ``triplets.jsonl``, ``dataset/`` (Hugging Face ``datasets``), ``report.json``
and ``README.md`` under ``--out``, and caches raw completions in ``--out``/cache (``--cache``) so an
interrupted run resumes. Other ``qa`` sub-commands come from :mod:`edgekd.qa.cli_eval` and
:mod:`edgekd.qa.cli_train` when present (each exposes ``register_qa(qa_subparsers)``).
"""
from __future__ import annotations

import argparse
import importlib
import random
import sys
from pathlib import Path

from edgekd.errors import EdgekdValueError

# modules that add `qa` sub-commands through register_qa(qa_subparsers), if they exist
_QA_COMMAND_MODULES = ("edgekd.qa.cli_eval", "edgekd.qa.cli_train")


def load_paragraphs(source: str | None):
    """Paragraphs of ``source``: None -> PolicyQA dev; a SQuAD-format ``.json``; a ``.jsonl`` of
    paragraphs (``{"id", "text"[, "group"]}``) or of triplets (their distinct contexts)."""
    from edgekd.qa.data import load_policyqa, read_paragraph_file

    if source is None:
        return load_policyqa("dev")[0]
    try:
        return read_paragraph_file(source)
    except EdgekdValueError as exc:
        raise EdgekdValueError(f"--paragraphs: {exc}") from None


def select(paragraphs: list, limit: int | None, sample: int | None, seed: int) -> list:
    """``--limit N``: the first N; ``--sample N``: N drawn at random (seeded), spread over the
    documents (groups) in turn, kept in file order."""
    if limit is not None and sample is not None:
        raise EdgekdValueError("give --limit or --sample, not both")
    n = limit if limit is not None else sample
    if n is not None and n < 1:
        raise EdgekdValueError(f"--limit/--sample must be >= 1, got {n}")
    if limit is not None:
        return paragraphs[:limit]
    if sample is None or sample >= len(paragraphs):
        return paragraphs
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(paragraphs):
        groups.setdefault(p.group, []).append(i)
    for idx in groups.values():
        rng.shuffle(idx)
    order = list(groups)
    rng.shuffle(order)
    chosen: list[int] = []
    while len(chosen) < sample:
        for g in order:
            if groups[g] and len(chosen) < sample:
                chosen.append(groups[g].pop())
    return [paragraphs[i] for i in sorted(chosen)]


def _generate(args: argparse.Namespace) -> int:
    from edgekd import cliflags
    from edgekd.qa.generators import LocalCausalLM, make_generator
    from edgekd.qa.synth import SynthConfig, bm25_retriever, generate_triplets, generator_reader, save_dataset

    if args.generator is None and args.endpoint is None:
        raise EdgekdValueError("give a generator: --generator smollm2|gemma3-270m|PATH (a model directory or "
                               ".gguf file) or --endpoint URL --model NAME")
    every = load_paragraphs(args.paragraphs)
    paras = select(every, args.limit, args.sample, args.seed)
    values = cliflags.dataclass_values(args, args._synth_flags)
    gen = make_generator(local=args.generator, endpoint=args.endpoint, model=args.model, api=args.api,
                         api_key=args.api_key, concurrency=args.concurrency, timeout=args.timeout,
                         max_retries=args.max_retries, batch_size=args.batch_size or 8, threads=args.threads)
    if "template" not in values:  # instruct models (chat API, a chat template) get chat; else few-shot
        if isinstance(gen, LocalCausalLM):
            values["template"] = "chat" if getattr(gen.tokenizer, "chat_template", None) else "fewshot"
        else:
            values["template"] = "chat" if args.api == "chat" else "fewshot"
    if values["template"] == "fewshot" and values.get("per_context", 2) > 1 and "temperature" not in values:
        values["temperature"] = 0.7  # one pair per completion: several pairs need sampling
    if args.batch_size:
        values["batch_size"] = args.batch_size
    elif args.endpoint:
        values["batch_size"] = max(8, 2 * args.concurrency)
    cfg = SynthConfig(seed=args.seed, **values).check()
    if args.endpoint:
        gen.models()  # fail fast, with the URL, when the server is down
    retrieve = bm25_retriever(every) if args.specificity_k else None
    if args.specificity_k:
        cfg.specificity_k = args.specificity_k
    read = generator_reader(gen, chat=cfg.prompt.kind == "chat") if args.round_trip else None
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "cache"
    triplets, report = generate_triplets(paras, gen, cfg, cache, progress=not args.quiet,
                                         retrieve=retrieve, read=read)
    report["source"] = args.paragraphs or "PolicyQA dev"
    report["selection"] = {"limit": args.limit, "sample": args.sample, "seed": args.seed,
                           "retrieval_pool": len(every) if retrieve else 0}
    report["command"] = "edgekd " + " ".join(sys.argv[1:]) if sys.argv and "edgekd" in sys.argv[0] else None
    save_dataset(triplets, report, out)
    gen.close()
    u = report["generator"]["usage"]
    print(f"{report['kept']} triplets from {report['paragraphs']} paragraphs "
          f"({report['completions']} completions, {report['completions_from_cache']} from cache) -> {out}")
    for name, f in report["filters"].items():
        print(f"  {name:12s} in {f['in']:5d}  dropped {f['dropped']:5d}  out {f['out']:5d}"
              + ("  (skipped)" if f.get("skipped") else ""))
    print(f"  generator {report['generator']['name']}: {u['completion_tokens']} completion tokens in "
          f"{u['seconds']} s ({u['completion_tokens_per_second']} tokens/s)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from edgekd import cliflags
    from edgekd.qa.synth import SynthConfig

    p = sub.add_parser("qa", help="legal QA: synthetic triplets, students, retrieval + generation",
                       description="Legal question answering (Ace-Attorney): generate synthetic (context, "
                                   "question, answer) triplets with a frozen LLM, train and evaluate students.")
    qsub = p.add_subparsers(dest="qa_command", metavar="COMMAND")

    g = qsub.add_parser("generate", help="synthetic (context, question, answer) triplets from paragraphs",
                        description="Prompt a local model or an OpenAI-compatible endpoint for question/answer "
                                    "pairs about each paragraph, keep the parsed, grounded, specific ones, and "
                                    "write triplets.jsonl, a datasets directory and a dataset card.")
    g.add_argument("--paragraphs", help="SQuAD-format .json or .jsonl of paragraphs/triplets "
                                        "(default: PolicyQA dev, shared/data/policyqa/dev.json)")
    src = g.add_argument_group("generator (one of)")
    src.add_argument("--generator", metavar="MODEL",
                     help="local model: smollm2, gemma3-270m (assets), a model directory or a .gguf file")
    src.add_argument("--endpoint", metavar="URL",
                     help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp, Ollama)")
    src.add_argument("--model", help="with --endpoint: the model name the server serves")
    src.add_argument("--api", choices=["chat", "completions"], default="chat",
                     help="with --endpoint: /chat/completions (instruct models) or /completions (base models)")
    src.add_argument("--api-key", dest="api_key", help="with --endpoint: bearer token (default $OPENAI_API_KEY)")
    src.add_argument("--concurrency", type=int, default=4, help="with --endpoint: requests in flight (default 4)")
    src.add_argument("--timeout", type=float, default=120.0, help="with --endpoint: seconds per request")
    src.add_argument("--max-retries", dest="max_retries", type=int, default=4,
                     help="with --endpoint: retries (exponential backoff) on connection errors, 5xx, 429")
    cliflags.add_flags(g, "--out", "--limit", "--sample", "--seed", "--batch-size", "--threads",
                       out=dict(required=True, help="output directory (triplets.jsonl, dataset/, README.md)"),
                       limit=dict(help="use the FIRST N paragraphs"),
                       sample=dict(help="use N paragraphs drawn at random (seeded by --seed), spread over documents"),
                       seed=dict(default=0), batch_size=dict(help="prompts per generator call (default 8)"),
                       threads=dict(help="torch CPU threads of a local --generator"))
    g._synth_flags = cliflags.add_dataclass_flags(  # noqa: SLF001
        g, SynthConfig, skip=("seed", "batch_size", "specificity_k"), group="generation and filters",
        helps={"template": "chat (instruct models) or fewshot (base models); default: chat for --api chat or a "
                           "model with a chat template, else fewshot"})
    g.add_argument("--specificity-k", dest="specificity_k", type=int, default=5,
                   help="keep a question only if BM25 over all paragraphs ranks its own in the top K (0: off)")
    g.add_argument("--round-trip", dest="round_trip", action="store_true",
                   help="keep a question only if the generator, asked it about the paragraph, gives the same "
                        "answer (token F1 >= --round-trip-f1)")
    g.add_argument("--cache", help="raw-completion cache directory (default: OUT/cache)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_generate, _synth_flags=g._synth_flags)  # noqa: SLF001

    for mod in _QA_COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
            continue
        if hasattr(module, "register_qa"):
            module.register_qa(qsub)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
