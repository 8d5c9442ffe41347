"""Legal QA students on PolicyQA: the SmolLM2 teacher prompted, a half-depth student by SFT and by KD,
and the extractive MiniLM reader, all scored with SQuAD EM / F1 and ROUGE-L on PolicyQA TEST.

Protocol (honest, one pass over the test questions):

- training pairs: PolicyQA DEV human QA pairs whose context has at most ``--max-context-words`` words,
  a seeded sample of ``--train-n`` spread over the dev policies (``edgekd qa train --sample``); or,
  with ``--triplets FILE.jsonl`` (``edgekd qa generate``), synthetic triplets (same sampling), which
  add rows labelled ``synthetic``. Every trained model carves its dev split (10 %, whole paragraphs)
  out of these pairs and keeps the checkpoint of the lowest dev loss; nothing is tuned on test.
- test: ``--test-n`` PolicyQA TEST questions (contexts under the same word limit, seeded sample over
  the test policies), each answered from its gold context; all gold answers count (SQuAD max).
- rows: teacher zero-shot and one-shot (the shot: the first training pair), the student with
  ``--keep-layers`` blocks chosen by block influence on the training prompts, trained by SFT (CE on
  the answer) and by KD (``(1 - w)`` forward KL to the teacher + ``w`` CE, ``--ce-weight``), and
  the extractive reader (MiniLM-L6 + span head). Speed: greedy generation tokens/s for the
  generative rows (answer tokens produced per second, batch ``--batch-size``); for the reader,
  the input tokens it reads per second (it writes no tokens).

Each row's result is cached under ``--work`` (``<row>.json``; delete one to redo it) and the table
``benchmarks/results/legal_qa.md`` is rewritten from all cached rows after every row.

  OMP_NUM_THREADS=2 nice -n 19 python benchmarks/qa_students.py --train-n 200 --test-n 100
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402

from common import command_line, machine_info, machine_string, now, versions_string  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
ROWS = ("teacher-0shot", "teacher-1shot", "student-sft", "student-kd", "reader")


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} / {b:.2f} / {c:.2f}"


def data(args):
    from edgekd.qa.bench import train_test_pairs
    from edgekd.qa.data import load_policyqa
    from edgekd.qa.types import read_jsonl

    if args.triplets:
        pool = list(read_jsonl(args.triplets))
        source = "synthetic"
    else:
        pool = load_policyqa("dev")[1]
        source = "human"
    train, test, pool_n = train_test_pairs(pool, load_policyqa("test")[1], train_n=args.train_n, test_n=args.test_n,
                                           max_context_words=args.max_context_words, seed=args.seed)
    return train, test, source, pool_n


def gen_eval(model, tok, test, args, shots=()):
    from edgekd.qa.bench import generative_eval

    r = generative_eval(model, tok, test, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, shots=shots)
    return r["metrics"], r["preds"], r["speed"]


def _teacher(root: pathlib.Path):
    """The SmolLM2 GGUF teacher, dequantised once to a plain fp32 directory under ``root`` (faster reloads)."""
    from edgekd.qa.bench import load_teacher

    return load_teacher("smollm2", root / "models" / "teacher-fp32")


def run_row(row: str, args, train, test, source, work: pathlib.Path) -> dict:
    from edgekd.llm.models import count_parameters
    from edgekd.qa.bench import model_size_mb

    out: dict = {"row": row, "source": source, "n_train": len(train), "triplets": args.triplets,
                 "started": now(), "load_start": _load()}
    if row == "reader":
        from edgekd.qa.bench import reader_eval
        from edgekd.qa.reader import ReaderConfig, load_reader, train_reader

        model, tok, _ = load_reader("minilm", seed=args.seed)
        cfg = ReaderConfig(max_length=384, doc_stride=128, epochs=args.reader_epochs, lr=args.reader_lr,
                           batch_size=8, seed=args.seed)
        res = train_reader(model, tok, train, cfg)
        ev = reader_eval(model, tok, test, cfg, batch_size=args.batch_size)
        out.update(metrics=ev["metrics"], speed=ev["speed"], params=count_parameters(model), size_mb=model_size_mb(model),
                   train=res.to_json(), preds=ev["preds"])
    else:
        from edgekd.qa.students import QAStudentConfig, make_student, train_qa_student

        teacher, tok = _teacher(work.parent)
        if row.startswith("teacher"):
            shots = [(train[0].context, train[0].question, train[0].answer)] if row == "teacher-1shot" else []
            m, preds, speed = gen_eval(teacher, tok, test, args, shots)
            out.update(metrics=m, speed=speed, params=count_parameters(teacher), size_mb=model_size_mb(teacher),
                       preds=preds, n_train=len(shots))
        else:
            kd = row == "student-kd"
            student, keep = make_student(teacher, args.keep_layers, train, tokenizer=tok, max_length=args.max_length)
            cfg = QAStudentConfig(loss="forward_kl" if kd else "ce", ce_weight=args.ce_weight, max_length=args.max_length,
                                  epochs=args.epochs, lr=args.lr, batch_size=4, seed=args.seed)
            res = train_qa_student(student, tok, train, teacher=teacher if kd else None, config=cfg)
            del teacher
            m, preds, speed = gen_eval(student, tok, test, args)
            out.update(metrics=m, speed=speed, params=count_parameters(student), size_mb=model_size_mb(student),
                       kept_layers=keep, train=res.to_json(), preds=preds)
    out.update(finished=now(), load_end=_load())
    return out


def write_md(args, work: pathlib.Path, info: dict, pool_n: int) -> pathlib.Path:
    rows = {}
    for f in sorted(work.glob("*/*.json")):  # <source>/<row>.json of every training source run so far
        r = json.loads(f.read_text())
        if isinstance(r, dict) and "metrics" in r:
            rows[f"{f.stem}@{f.parent.name}" if f.parent.name != "human" else f.stem] = r
    names = {"teacher-0shot": "teacher SmolLM2-135M-Instruct, zero-shot",
             "teacher-1shot": "teacher SmolLM2-135M-Instruct, one-shot",
             "student-sft": "student (half depth, block influence), SFT",
             "student-kd": "student (half depth, block influence), KD fwd-KL + CE",
             "reader": "extractive reader MiniLM-L6 + span head"}
    lines = ["| model | training data | EM | F1 | ROUGE-L | params | size MB (fp32) | tokens/s | s / question |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = [k for k in sorted(rows, key=lambda k: (ROWS.index(k.split("@")[0]) if k.split("@")[0] in ROWS else 9, k))]
    for k in order:
        r = rows[k]
        base = k.split("@")[0]
        m, sp = r["metrics"], r["speed"]
        if base.startswith("teacher"):
            data_s = "none" if base == "teacher-0shot" else "1 human pair (in the prompt)"
        else:
            data_s = f"{r['source']}, {r['n_train']} (dev split inside)" + (
                f" from `{pathlib.Path(r['triplets']).name}`" if r.get("triplets") else "")
        tps = f"{sp['tokens_per_s']:.1f}" + (" (input)" if base == "reader" else "")
        lines.append(f"| {names.get(base, base)} | {data_s} | {m['exact_match']:.1f} | {m['f1']:.1f} | {m['rouge_l']:.1f} | "
                     f"{r['params'] / 1e6:.1f}M | {r['size_mb']:.0f} | {tps} | {sp['s_per_question']:.2f} |")
    notes = []
    for k in order:
        r = rows[k]
        extra = [f"started {r['started']} (load {r['load_start']}), finished {r['finished']} (load {r['load_end']})"]
        if "kept_layers" in r:
            extra.append(f"kept layers {r['kept_layers']}")
        if "train" in r:
            t = r["train"]
            extra.append(f"{t['n_train']} train / {t['n_dev']} dev pairs, dev loss {t['dev_before']:.3f} -> "
                         f"{t['dev_after']:.3f} (best at step {t['best'] and t['best'].get('step')}), "
                         f"{t['seconds'] / 60:.1f} min training" + (f", {t['dropped']} without a span dropped"
                                                                    if "dropped" in t else ""))
        notes.append(f"- `{k}`: " + "; ".join(extra))
    ex = []
    first = rows.get("teacher-0shot") or (next(iter(rows.values())) if rows else None)
    if first:
        _, test, _, _ = data(args)
        for i in range(min(3, len(test))):
            t = test[i]
            ex.append(f"- Q: {t.question} | gold: {t.answer!r} | " +
                      " | ".join(f"{k}: {rows[k]['preds'][i]!r}" for k in order))
    todo = [r for r in ROWS if r not in rows]
    missing = (f"\nNot measured yet (CPU time ran out; rerun the command, finished rows are cached): "
               f"{', '.join(todo)}.\n") if todo else ""
    text = f"""# Legal QA students on PolicyQA (Ace-Attorney setting, issue 15)

Machine: {machine_string(info)}. {versions_string(info)}. Shared CPU: the load average at the start and
end of each row is listed below (2 cores; other jobs ran at the same time, so times are upper bounds).
Report written {now()}.

Command: `{command_line()}`

Data: training pairs = PolicyQA DEV human QA pairs (rows marked human) or synthetic triplets generated from
PolicyQA DEV paragraphs (`--triplets`, rows marked synthetic), with contexts of at most {args.max_context_words} words
(this run's pool: {pool_n} pairs), a seeded sample of {args.train_n} spread over the policies; test = {args.test_n} PolicyQA TEST questions (contexts of at most {args.max_context_words} words,
seeded sample over the test policies), answered from the gold context, scored against all gold answers
(SQuAD EM / F1 normalisation, ROUGE-L F of rouge-score; percent). Every trained row picked its checkpoint
on a dev split carved from its training pairs (10 %, whole paragraphs, lowest dev loss); test was read once.

Generative rows: SmolLM2-135M-Instruct (GGUF asset, dequantised to fp32), chat-template prompt with a
one-line system instruction, greedy decoding of at most {args.max_new_tokens} tokens, answer cut at the
first newline. Students: {args.keep_layers} of 30 blocks by ShortGPT block influence on the training prompts,
AdamW lr {args.lr}, {args.epochs} epochs, batch 4, max length {args.max_length}; KD = {1 - args.ce_weight:g} x forward KL
(teacher live, temperature 1) + {args.ce_weight:g} x CE. Reader: MiniLM-L6 (all-MiniLM-L6-v2 weights) + a new
span head, 384-token windows / stride 128, lr {args.reader_lr}, {args.reader_epochs} epochs, batch 8, answers of at
most 30 tokens. tokens/s: answer tokens generated per second (batch {args.batch_size}); for the reader, input
tokens read per second.

{chr(10).join(lines)}

Rows:

{chr(10).join(notes)}
{missing}

First test questions and answers:

{chr(10).join(ex)}

Caveats: one seed, one small training set ({args.train_n} pairs), no hyper-parameter search; a half-depth
student of a 135M model cut from 30 to {args.keep_layers} blocks has lost most of its language ability
(see llm_distill.md) and a few hundred QA pairs cannot heal it, so the student rows measure how far the
few-sample setting goes, not what KD can do with a real budget.
"""
    path = RESULTS / "legal_qa.md"
    path.write_text(text)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", choices=ROWS,
                   help="rows to run (default: all; with --triplets the trained rows only)")
    p.add_argument("--triplets", help="synthetic triplets JSONL (edgekd qa generate) instead of human dev pairs")
    p.add_argument("--train-n", type=int, default=200)
    p.add_argument("--test-n", type=int, default=100)
    p.add_argument("--max-context-words", type=int, default=120)
    p.add_argument("--keep-layers", type=int, default=15)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--ce-weight", type=float, default=0.5)
    p.add_argument("--max-length", type=int, default=320)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--reader-epochs", type=float, default=5.0)
    p.add_argument("--reader-lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8, help="questions per generation / reader batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=str(REPO / "runs" / "legal_qa"))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    train, test, source, pool_n = data(args)
    if args.rows is None:
        args.rows = [r for r in ROWS if not (args.triplets and r.startswith("teacher"))]
    root = pathlib.Path(args.work)
    work = root / (source if not args.triplets else "synthetic-" + pathlib.Path(args.triplets).stem)
    work.mkdir(parents=True, exist_ok=True)
    print(f"{len(train)} {source} training pairs (of {pool_n}), {len(test)} test questions; load {_load()}", flush=True)
    if not args.report_only:
        for row in args.rows:
            f = work / f"{row}.json"
            if f.is_file():
                print(f"{row}: cached", flush=True)
                continue
            t0 = time.perf_counter()
            r = run_row(row, args, train, test, source, work)
            tmp = f.with_suffix(".tmp")
            tmp.write_text(json.dumps(r, indent=1))
            os.replace(tmp, f)
            print(f"{row}: EM {r['metrics']['exact_match']:.1f} F1 {r['metrics']['f1']:.1f} "
                  f"({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
            write_md(args, root, info, pool_n)
    print(write_md(args, root, info, pool_n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
