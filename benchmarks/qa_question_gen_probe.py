"""Probe: can the packaged generators write paragraph-specific questions when they are GIVEN the answer?

Answer-aware question generation is the easiest form of the task (the answer span is the human gold one,
so only the question is generated). For a seeded sample of PolicyQA DEV (paragraph, gold answer span)
pairs it asks each packaged generator, served by llama.cpp (``llama_cpp.server``, see
``tests/factories.py::llama_server_command``), for one question: Gemma 3 270M (base) with a two-shot
completion prompt, SmolLM2-135M-Instruct with a chat instruction. It prints every question next to
the human one and the usage; judge by reading (the output is small on purpose).

  python benchmarks/qa_question_gen_probe.py --n 12 --threads 2
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO)), sys.path.insert(0, str(REPO / "benchmarks"))

SHOTS = [("We retain your order history for seven years so that we can meet our tax obligations. After that period "
          "the records are deleted from our servers.", "seven years", "How long does the store keep my order history?"),
         ("If you sign up for the newsletter, we use your email address to send you weekly offers. You can unsubscribe "
          "with the link at the bottom of each email.", "the link at the bottom of each email",
          "How can I stop receiving the weekly newsletter offers?")]


def completion_prompt(c: str, a: str) -> str:
    s = "Write a question about the paragraph whose answer is the given phrase.\n\n"
    for sc, sa, sq in SHOTS:
        s += f"Paragraph: {sc}\nAnswer: {sa}\nQuestion: {sq}\n\n"
    return s + f"Paragraph: {c}\nAnswer: {a}\nQuestion:"


def chat_prompt(c: str, a: str) -> list[dict]:
    return [{"role": "user", "content": f"Paragraph: {c}\n\nWrite one question about this paragraph whose answer is: "
                                        f"\"{a}\". Use words from the paragraph. Reply with the question only."}]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/qa_qg_probe")
    args = ap.parse_args()

    from edgekd.assets import asset_path
    from edgekd.qa.data import load_policyqa
    from edgekd.qa.generators import OpenAICompatible
    from qa_synth import start_server

    _, trips = load_policyqa("dev")
    pool = [t for t in trips if 1 <= len(t.answer.split()) <= 12 and len(t.context.split()) <= 150]
    sample = random.Random(args.seed).sample(pool, args.n)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    for name, api, make in (("gemma3-270m", "completions", completion_prompt), ("smollm2", "chat", chat_prompt)):
        gguf = Path(asset_path(name))
        gguf = next(gguf.glob("*.gguf")) if gguf.is_dir() else gguf
        proc, url = start_server(gguf, args.threads, Path(args.work) / f"{name}.log")
        try:
            gen = OpenAICompatible(url, name, api=api, concurrency=1)
            t0 = time.perf_counter()
            outs = gen.generate([make(t.context, t.answer) for t in sample], max_new_tokens=40, stop=["\n"])
            print(f"== {name} ({api}): {time.perf_counter() - t0:.1f} s, {gen.usage}")
            for t, o in zip(sample, outs):
                print(f"  answer {t.answer!r} -> {o.text.strip()!r}  | human: {t.question}")
        finally:
            proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
