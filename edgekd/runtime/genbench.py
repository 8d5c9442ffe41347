"""``edgekd bench`` on a generative bundle (torch-free): time to first token, prefill and decode
tokens per second, peak RSS and size, at the given thread count.

Protocol: a fixed synthetic prompt of ``prompt_tokens`` tokens (a neutral English paragraph
repeated and cut), greedy decoding of exactly ``new_tokens`` tokens (EOS ignored), ``warmup``
untimed generations, then ``repeats`` timed ones; medians are reported. ``ttft`` is measured from
the call (tokenisation included) to the first sampled token; ``prefill tok/s`` is prompt tokens
/ ttft; ``decode tok/s`` is (new_tokens - 1) / (time from the first to the last token).
"""
from __future__ import annotations

import datetime as _dt
import os
import statistics
from typing import Any

from edgekd.errors import EdgekdValueError

FILLER = ("The weather report for the coming week says that the mornings will be cool and the afternoons warm, "
          "with a light wind from the west and a small chance of rain on the weekend. ")


def bench_prompt(lm, prompt_tokens: int) -> str:
    """A prompt string of exactly ``prompt_tokens`` tokens under ``lm``'s tokenizer (when possible)."""
    text = FILLER * (prompt_tokens // 8 + 2)
    ids = lm.tokenizer.encode(text, add_special_tokens=False).ids[:prompt_tokens]
    out = lm.tokenizer.decode(ids)
    return out


def bench_generative(bundle_path: str | os.PathLike, *, precision: str = "auto", threads: int | None = None,
                     engine: str = "ort", prompt_tokens: int = 64, new_tokens: int = 64, repeats: int = 3,
                     warmup: int = 1) -> dict[str, Any]:
    from edgekd.runtime.bench import machine_info, peak_rss_mb
    from edgekd.runtime.generative import GenerativeBundle

    for key, v in (("prompt_tokens", prompt_tokens), ("new_tokens", new_tokens), ("repeats", repeats)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise EdgekdValueError(f"{key}: expected a positive int, got {v!r}")
    lm = GenerativeBundle.load(bundle_path, precision=precision, threads=threads, engine=engine)
    if prompt_tokens + new_tokens > lm.context_length:
        raise EdgekdValueError(f"bench: prompt_tokens + new_tokens = {prompt_tokens + new_tokens} exceed the bundle's "
                               f"context of {lm.context_length}")
    prompt = bench_prompt(lm, prompt_tokens)
    for _ in range(warmup):
        lm.generate(prompt, max_new_tokens=min(new_tokens, 8), ignore_eos=True)
    runs = [lm.generate(prompt, max_new_tokens=new_tokens, ignore_eos=True) for _ in range(repeats)]
    ttft = statistics.median(g.ttft_s for g in runs)
    n_prompt = runs[0].prompt_tokens
    return {
        "bundle": str(bundle_path), "name": lm.manifest.get("name"), "model_kind": lm.manifest.get("model_kind"),
        "task": lm.manifest.get("task"), "variant": lm.variant["id"], "precision": lm.variant["precision"],
        "engine": engine, "threads": threads, "machine": machine_info(),
        "prompt_tokens": n_prompt, "new_tokens": new_tokens, "repeats": repeats,
        "ttft_ms": ttft * 1e3, "prefill_tokens_per_s": n_prompt / ttft if ttft > 0 else 0.0,
        "decode_tokens_per_s": statistics.median(g.decode_tokens_per_s for g in runs),
        "peak_rss_mb": peak_rss_mb(), "size_bytes": lm.size_bytes,
        "quality": lm.variant.get("quality"),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def generative_markdown(r: dict[str, Any]) -> str:
    q = r.get("quality") or {}
    ppl = f"{q['perplexity']:.3f}" if "perplexity" in q else "-"
    return ("| bundle | variant | engine | threads | size MB | TTFT ms | prefill tok/s | decode tok/s | peak RSS MB | ppl |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n"
            f"| {r['name']} | {r['variant']} | {r['engine']} | {r['threads'] or 'default'} | {r['size_bytes'] / 1e6:.1f} | "
            f"{r['ttft_ms']:.1f} | {r['prefill_tokens_per_s']:.0f} | {r['decode_tokens_per_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {ppl} |\n")
