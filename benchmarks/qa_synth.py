"""Synthetic legal-QA triplets from PolicyQA dev paragraphs with small GGUF generators behind llama.cpp's
OpenAI-compatible server: counts per filter, tokens/s, which generator keeps more.

    nice -n 19 python benchmarks/qa_synth.py --sample 40 --threads 2 --models smollm2 gemma3-270m \\
        --work /tmp/qa_synth --out benchmarks/results/qa_synth.json

Per model: start ``python -m llama_cpp.server`` on a free port, run :func:`edgekd.qa.synth.generate_triplets`
through :class:`edgekd.qa.generators.OpenAICompatible` (instruct models: chat API + chat template asking for
``--per-context`` pairs; base models: completions API + few-shot template, ``--per-context`` sampled
completions at temperature 0.7), specificity against BM25 over all dev paragraphs, then stop the server.
``--local`` adds the same generation in process (transformers, :class:`LocalCausalLM`) on ``--local-limit``
paragraphs: the alternative without a server.
"""
from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# model asset -> (API, template)
MODELS = {"smollm2": ("chat", "chat"), "gemma3-270m": ("completions", "fewshot")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: Path, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    out = open(log, "wb")
    # the launcher of tests/factories.py: llama.cpp without its extra weight buffers (their AMX
    # kernel faults on this VM), else `python -m llama_cpp.server` unchanged
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from factories import llama_server_command

    proc = subprocess.Popen(llama_server_command(gguf, port, threads=threads, n_ctx=2048), stdout=out,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3-270m"], choices=sorted(MODELS))
    ap.add_argument("--sample", type=int, default=40, help="PolicyQA dev paragraphs (seeded, spread over policies)")
    ap.add_argument("--first", type=int, help="only the first K of the sampled paragraphs (a cached run's prefix)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-context", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--round-trip", action="store_true", help="round-trip filter with the generator as reader")
    ap.add_argument("--template", help="template of the instruct (chat) models: chat or chat-example")
    ap.add_argument("--local", action="store_true", help="also generate in process with transformers")
    ap.add_argument("--local-limit", type=int, default=8)
    ap.add_argument("--work", default="/tmp/qa_synth")
    ap.add_argument("--out", default="benchmarks/results/qa_synth.json")
    args = ap.parse_args()

    from edgekd.assets import asset_path
    from edgekd.qa.cli import select
    from edgekd.qa.data import load_policyqa
    from edgekd.qa.generators import LocalCausalLM, OpenAICompatible
    from edgekd.qa.synth import SynthConfig, bm25_retriever, generate_triplets, generator_reader, save_dataset

    every = load_policyqa("dev")[0]
    paras = select(every, None, args.sample, args.seed)[:args.first]
    retrieve = bm25_retriever(every)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        api, template = MODELS[name]
        if args.template and api == "chat":
            template = args.template
        cfg = SynthConfig(template=template, per_context=args.per_context, max_new_tokens=args.max_new_tokens,
                          temperature=0.0 if template != "fewshot" else 0.7, seed=args.seed,
                          batch_size=max(4, 2 * args.concurrency))
        gguf = Path(asset_path(name))
        proc, url = start_server(gguf, args.threads, work / f"{name}.server.log")
        try:
            gen = OpenAICompatible(url, gguf.stem, api=api, concurrency=args.concurrency, timeout=600)
            t0 = time.perf_counter()
            read = generator_reader(gen, chat=api == "chat") if args.round_trip else None
            trips, rep = generate_triplets(paras, gen, cfg, work / "cache", retrieve=retrieve, read=read)
            wall = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(30)
        save_dataset(trips, rep, work / f"{name}-{template}")
        rows.append({"model": name, "backend": "llama.cpp server", "api": api, "template": cfg.template,
                     "wall_s": round(wall, 1), "report": rep})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "report"} | {"kept": rep["kept"],
                         "filters": rep["filters"], "usage": rep["generator"]["usage"]}, indent=1), flush=True)
        if args.local:
            lgen = LocalCausalLM(name, batch_size=4, threads=args.threads)
            t0 = time.perf_counter()
            ltrips, lrep = generate_triplets(paras[:args.local_limit], lgen, cfg, work / "cache", retrieve=retrieve)
            rows.append({"model": name, "backend": "transformers in process", "api": "-", "template": cfg.template,
                         "wall_s": round(time.perf_counter() - t0, 1), "report": lrep})
            print(json.dumps({"local": name, "kept": lrep["kept"], "usage": lrep["generator"]["usage"]}), flush=True)
    meta = {"command": " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "paragraphs": [p.id for p in paras]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
