"""SGP vs retrieve-top-1 vs closed-book vs oracle on paragraph-specific PolicyQA questions.

Protocol (one pass over test):

- questions: PolicyQA questions kept by :func:`edgekd.qa.specific.specific_questions` (not asked of
  any other paragraph of their split, and BM25 given the question alone ranks their own paragraph
  in its top ``--filter-k`` over all the split's paragraphs); a seeded sample of ``--dev-n`` from DEV
  (tuning) and ``--test-n`` from TEST (the table);
- retriever: BM25 (bm25s) over all the split's paragraphs; candidates = its top ``--k``;
- LM (scorer and answerer): the SmolLM2-135M-Instruct teacher (GGUF asset dequantised to fp32), the
  chat prompt the QA students are trained with (:func:`edgekd.qa.students.qa_prompt`), greedy, at
  most ``--max-new-tokens`` tokens, answer cut at the first newline;
- SGP settings (weight, terms, k) chosen on DEV by answer F1 (ties: paragraph-selection accuracy,
  then the larger retriever weight); TEST scored once with the chosen settings, next to the fixed
  rows (closed-book, top-1, oracle, SGP with the LM alone).

Every LM call goes through a memo (same prompt -> same answer, same text -> same log-probabilities), so
the grid costs one generation per (question, candidate) and one scoring pass per candidate.

  OMP_NUM_THREADS=2 python benchmarks/qa_sgp.py --dev-n 60 --test-n 100 --threads 2
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import command_line, machine_info, machine_string, now, versions_string  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


class MemoScorer:
    """An LMScorer that remembers: generate() per prompt, span_logprobs() per (text, spans)."""

    def __init__(self, inner):
        self.inner = inner
        self.gen: dict[tuple[str, int], str] = {}
        self.lp: dict[tuple[str, tuple], list] = {}
        self.qonly: dict[tuple[str, tuple], tuple] = {}
        self.seconds = {"generate": 0.0, "score": 0.0}
        self.calls = {"generate": 0, "score": 0}

    def generate(self, prompts, *, max_new_tokens=32):
        todo = list(dict.fromkeys(p for p in prompts if (p, max_new_tokens) not in self.gen))
        if todo:
            t0 = time.perf_counter()
            for p, a in zip(todo, self.inner.generate(todo, max_new_tokens=max_new_tokens)):
                self.gen[(p, max_new_tokens)] = a
            self.seconds["generate"] += time.perf_counter() - t0
            self.calls["generate"] += len(todo)
        return [self.gen[(p, max_new_tokens)] for p in prompts]

    def span_logprobs(self, texts, spans):
        keys = [(t, tuple(map(tuple, s))) for t, s in zip(texts, spans)]
        for k in keys:  # question term only (empty answer span at the end): the question's log-probability
            (q, (a0, a1)), text = k[1], k[0]  # does not depend on what follows it (causal LM): reuse a scored text
            if k not in self.lp and a0 == a1 == len(text) and (text, q) in self.qonly:
                self.lp[k] = [self.qonly[(text, q)], (0.0, 0)]
        todo = list(dict.fromkeys(k for k in keys if k not in self.lp))
        if todo:
            t0 = time.perf_counter()
            for k, v in zip(todo, self.inner.span_logprobs([k[0] for k in todo], [list(k[1]) for k in todo])):
                self.lp[k] = v
                self.qonly[(k[0][:k[1][1][0]], k[1][0])] = v[0]
            self.seconds["score"] += time.perf_counter() - t0
            self.calls["score"] += len(todo)
        return [self.lp[k] for k in keys]


def teacher(root: pathlib.Path):
    from edgekd.assets import asset_path
    from edgekd.llm.models import load_causal_lm, save_causal_lm

    d = root / "teacher-fp32"
    if not (d / "model.safetensors").is_file():
        model, tok = load_causal_lm(asset_path("smollm2"))
        save_causal_lm(model, d, tok)
        return model, tok
    return load_causal_lm(d)


def chat_format(tok):
    from edgekd.qa.sgp import RenderedPromptFormat
    from edgekd.qa.students import QA_SYSTEM, qa_prompt

    def render(context, question):
        if context is None:  # closed-book: the same system line, the question alone
            msgs = [{"role": "system", "content": QA_SYSTEM}, {"role": "user", "content": f"Question: {question}"}]
            return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return qa_prompt(tok, context, question)

    return RenderedPromptFormat(render, answer_sep="")


def split_set(split: str, args):
    from edgekd.qa.data import load_policyqa
    from edgekd.qa.specific import specific_questions
    from edgekd.runtime.retrieval import BM25Index

    paras, trips = load_policyqa(split)
    given = args.dev_questions if split == "dev" else args.test_questions
    if given:  # generated (or hand-written) questions about this split's paragraphs, same filter
        from edgekd.qa.types import read_jsonl

        trips = list(read_jsonl(given))
    index = BM25Index.build([p.id for p in paras], [p.text for p in paras])
    n = args.dev_n if split == "dev" else args.test_n
    kept, rep = specific_questions(trips, index, k=args.filter_k, max_paragraphs_per_question=args.max_paragraphs,
                                   limit=n, seed=args.seed)
    rep["paragraphs"] = len(paras)
    return index, kept, rep


def evaluate(split, index, qs, scorer, fmt, configs, args, oracle=True, closed=True):
    """{row name: {metrics, selection accuracy, answers}} for each mode and SGP config."""
    from edgekd.qa.metrics import qa_metrics, retrieval_metrics
    from edgekd.qa.sgp import answer_questions

    questions = [t.question for t in qs]
    golds = [t.meta["answers"] for t in qs]
    gold_ids = [t.context_id for t in qs]
    kmax = max(c.k for c in configs.values())
    hits = index.search_batch(questions, k=kmax)
    out = {"retrieval": retrieval_metrics([[p for p, _ in h] for h in hits], gold_ids, ks=(1, 3, 5))}
    # warm the memo: every (question, candidate) answer in one batched pass, then every score
    prompts = [fmt.prompt(index.text_of(p), q) for q, h in zip(questions, hits) for p, _ in h]
    t0 = time.perf_counter()
    scorer.generate(prompts, max_new_tokens=args.max_new_tokens)
    print(f"[{split}] {len(prompts)} candidate answers in {time.perf_counter() - t0:.0f} s", flush=True)
    modes = (["closed-book"] if closed else []) + ["top1"] + (["oracle"] if oracle else [])
    for mode in modes:
        from edgekd.qa.sgp import SGPConfig

        res = answer_questions(mode, questions, scorer, index=index, contexts=[index.text_of(g) for g in gold_ids],
                               context_ids=gold_ids, config=SGPConfig(max_new_tokens=args.max_new_tokens), prompt=fmt)
        out[mode] = {"metrics": qa_metrics([r.answer for r in res], golds),
                     "selected": None if mode == "closed-book" else
                     100.0 * sum(r.paragraph_id == g for r, g in zip(res, gold_ids)) / len(qs),
                     "answers": [r.answer for r in res]}
    t0 = time.perf_counter()
    # configs with the answer term first: their scoring pass also yields every question term
    for name, cfg in sorted(configs.items(), key=lambda x: "answer" not in x[1].terms):
        res = answer_questions("sgp", questions, scorer, index=index, config=cfg, prompt=fmt)
        out[name] = {"metrics": qa_metrics([r.answer for r in res], golds),
                     "selected": 100.0 * sum(r.paragraph_id == g for r, g in zip(res, gold_ids)) / len(qs),
                     "answers": [r.answer for r in res], "config": {"k": cfg.k, "weight": cfg.weight,
                                                                    "terms": list(cfg.terms)}}
    print(f"[{split}] {len(configs)} SGP settings in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dev-n", type=int, default=60)
    ap.add_argument("--test-n", type=int, default=100)
    ap.add_argument("--filter-k", type=int, default=10)
    ap.add_argument("--max-paragraphs", type=int, default=3,
                    help="drop a question text asked of more paragraphs than this (templates)")
    ap.add_argument("--k", type=int, nargs="+", default=[3, 5, 10], help="candidate counts in the SGP grid")
    ap.add_argument("--dev-only", action="store_true", help="smoke run: tune on dev, never read test")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/qa_sgp")
    ap.add_argument("--out", default=str(RESULTS / "legal_qa_sgp.md"))
    ap.add_argument("--dev-questions", help="JSONL triplets about PolicyQA DEV paragraphs (context_id = paragraph id) "
                                            "to use instead of the human DEV questions")
    ap.add_argument("--test-questions", help="the same for TEST (e.g. held-out generated questions)")
    ap.add_argument("--bundle", help="a generative bundle with retrieval (edgekd compile-lm --retrieval over PolicyQA "
                                     "TEST): score its ONNX LM, torch-free, with the bundle's own SGP settings on the "
                                     "test questions (no tuning; writes --bundle-out)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--bundle-out", default=str(RESULTS / "legal_qa_sgp_bundle.md"))
    ap.add_argument("--from-json", help="rewrite the markdown from a finished run's JSON (no LM calls)")
    args = ap.parse_args(argv)
    if args.from_json:
        res = json.loads(pathlib.Path(args.from_json).read_text())
        a = argparse.Namespace(**res["args"])
        write_md(pathlib.Path(args.out), res, a, res["machine"], res.get("command"))
        print(pathlib.Path(args.out).read_text())
        return 0

    if args.bundle:
        return bundle_run(args)
    import torch

    from edgekd.qa.sgp import SGPConfig, TorchLMScorer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info(args.threads)
    t_start, load0 = now(), os.getloadavg()
    model, tok = teacher(work)
    fmt = chat_format(tok)
    scorer = MemoScorer(TorchLMScorer(model, tok, batch_size=args.batch_size, max_length=1024))

    grid = {}
    for k, w, terms in itertools.product(args.k, [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9],
                                         [("question",), ("answer",), ("question", "answer")]):
        grid[f"sgp k={k} w={w} {'+'.join(terms)}"] = SGPConfig(k=k, weight=w, terms=terms,
                                                              max_new_tokens=args.max_new_tokens)
    dev_index, dev_qs, dev_rep = split_set("dev", args)
    print(f"dev: {dev_rep}", flush=True)
    dev = evaluate("dev", dev_index, dev_qs, scorer, fmt, grid, args, oracle=True, closed=False)
    best = max(grid, key=lambda n: (round(dev[n]["metrics"]["f1"], 6), dev[n]["selected"], grid[n].weight))
    print(f"dev pick: {best} F1 {dev[best]['metrics']['f1']:.1f} (top1 {dev['top1']['metrics']['f1']:.1f})", flush=True)
    if args.dev_only:
        for n in sorted(grid, key=lambda n: -dev[n]["metrics"]["f1"])[:10]:
            print(f"  {n}: F1 {dev[n]['metrics']['f1']:.1f} picked {dev[n]['selected']:.1f}")
        print(f"  top1: F1 {dev['top1']['metrics']['f1']:.1f} picked {dev['top1']['selected']:.1f}; oracle F1 "
              f"{dev['oracle']['metrics']['f1']:.1f}; LM s {scorer.seconds}")
        return 0
    lm_only = f"sgp k={max(args.k)} w=0.0 question"
    test_cfgs = {"sgp (dev-selected)": grid[best], "sgp (LM alone)": grid[lm_only]}
    test_index, test_qs, test_rep = split_set("test", args)
    print(f"test: {test_rep}", flush=True)
    test = evaluate("test", test_index, test_qs, scorer, fmt, test_cfgs, args)
    t_end, load1 = now(), os.getloadavg()

    res = {"args": vars(args), "command": command_line(), "machine": info, "started": t_start, "finished": t_end,
           "load": [load0, load1], "dev_filter": dev_rep, "test_filter": test_rep,
           "dev": {n: {k: v for k, v in r.items() if k != "answers"} for n, r in dev.items()},
           "dev_pick": best, "test": test, "lm_seconds": scorer.seconds, "lm_calls": scorer.calls,
           "test_questions": [{"q": t.question, "id": t.context_id, "answers": t.meta["answers"]} for t in test_qs]}
    (work / "qa_sgp.json").write_text(json.dumps(res, indent=1))
    out = pathlib.Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    write_md(out, res, args, info)
    print(out.read_text())
    return 0


def bundle_run(args) -> int:
    """The test rows again with the bundle's ONNX LM (OnnxLMScorer) and the SGP settings in its manifest."""
    from edgekd.runtime import GenerativeBundle
    from edgekd.runtime.sgp import BundleQA, OnnxLMScorer

    info = machine_info(args.threads)
    t_start, load0 = now(), os.getloadavg()
    t0 = time.perf_counter()
    lm = GenerativeBundle.load(args.bundle, precision=args.precision, threads=args.threads)
    qa = BundleQA(lm, batch_size=args.batch_size)
    index = qa.index
    load_s = time.perf_counter() - t0
    _, test_qs, test_rep = split_set("test", args)
    if set(index.ids) != {t.context_id for t in test_qs} | set(index.ids):
        raise SystemExit("the bundle's index is not over PolicyQA TEST paragraphs")
    scorer = MemoScorer(OnnxLMScorer(lm, batch_size=args.batch_size))
    cfg = qa.config
    args.max_new_tokens = cfg.max_new_tokens
    t0 = time.perf_counter()
    test = evaluate("test", index, test_qs, scorer, qa.prompt, {"sgp (bundle settings)": cfg}, args)
    wall = time.perf_counter() - t0
    # one question end to end through the public API (load excluded), as `edgekd answer` runs it
    t1 = time.perf_counter()
    one = qa.answer(test_qs[0].question)
    one_s = time.perf_counter() - t1
    res = {"args": vars(args), "command": command_line(), "machine": info, "started": t_start, "finished": now(),
           "load": [load0, os.getloadavg()], "test_filter": test_rep, "test": test, "bundle": str(args.bundle),
           "variant": lm.variant.get("precision"), "size_mb": lm.size_bytes / 1e6, "load_s": load_s,
           "eval_wall_s": wall, "one_answer_s": one_s, "one_answer": one.to_json(), "lm_seconds": scorer.seconds,
           "lm_calls": scorer.calls, "settings": qa.settings,
           "test_questions": [{"q": t.question, "id": t.context_id, "answers": t.meta["answers"]} for t in test_qs]}
    out = pathlib.Path(args.bundle_out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    L = [f"# SGP from a generative bundle, torch-free (issue 16): PolicyQA TEST paragraph-specific questions", "",
         f"Machine: {machine_string(info)}. {versions_string(info)}. Run {res['started']} -> {res['finished']}, "
         f"load average {res['load'][0][0]:.2f} -> {res['load'][1][0]:.2f} (2 cores).", "",
         f"Command: `{res['command']}`", "",
         f"Bundle: {args.bundle} ({res['variant']}, {res['size_mb']:.1f} MB with its BM25 index), settings from its "
         f"manifest: {json.dumps(res['settings'])}. Questions: the {len(test_qs)} of `legal_qa_sgp.md` (same filter, "
         "same seed). The LM is the bundle's ONNX decoder through `OnnxLMScorer` (numpy + onnxruntime, "
         f"{args.threads} threads); no torch.", "",
         "| mode | paragraph picked % | EM | F1 | ROUGE-L |", "|---|---:|---:|---:|---:|"]
    for name in ["closed-book", "top1", "sgp (bundle settings)", "oracle"]:
        r = test[name]
        sel = "-" if r["selected"] is None else f"{r['selected']:.1f}"
        m = r["metrics"]
        L.append(f"| {name} | {sel} | {m['exact_match']:.1f} | {m['f1']:.1f} | {m['rouge_l']:.1f} |")
    m, lo, hi, p = paired_bootstrap(test["sgp (bundle settings)"]["answers"], test["top1"]["answers"],
                                    [t.meta["answers"] for t in test_qs])
    L += ["", f"SGP - top-1 F1: {m:+.1f} (paired bootstrap 95 % interval {lo:+.1f} .. {hi:+.1f}; share <= 0: {p:.2f}).", "",
          f"Time: bundle + index load {load_s:.1f} s; all four modes over {len(test_qs)} questions {wall:.0f} s "
          f"(LM generating {scorer.seconds['generate']:.0f} s for {scorer.calls['generate']} prompts, scoring "
          f"{scorer.seconds['score']:.0f} s for {scorer.calls['score']} texts); one SGP answer through "
          f"`BundleQA.answer` (what `edgekd answer` runs after loading): {one_s:.2f} s.", ""]
    out.write_text("\n".join(L) + "\n")
    print(out.read_text())
    return 0


def paired_bootstrap(pred_a, pred_b, golds, n=10000, seed=0):
    """Mean F1(a) - F1(b) over questions, its 95 % percentile interval and the share of resamples <= 0."""
    import numpy as np

    from edgekd.qa.metrics import token_f1

    f = lambda p, g: 0.0 if p is None else token_f1(p, g)  # noqa: E731
    d = np.array([f(a, g) - f(b, g) for a, b, g in zip(pred_a, pred_b, golds)]) * 100
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)), float((means <= 0).mean())


def write_md(out: pathlib.Path, res: dict, args, info, command: str | None = None) -> None:
    t, d = res["test"], res["dev"]
    tr = t["retrieval"]
    L = [f"# SGP vs retrieve-top-1 on paragraph-specific PolicyQA questions (issue 15)", "",
         f"Machine: {machine_string(info)}. {versions_string(info)}. Run {res['started']} -> {res['finished']}, "
         f"load average {res['load'][0][0]:.2f} -> {res['load'][1][0]:.2f} (2 cores).", "",
         f"Command: `{command or res.get('command') or command_line()}`", "",
         "## Questions", "",
         "PolicyQA's questions are templates asked of many paragraphs; these rows use only the ones that pass "
         "`edgekd.qa.specific.specific_questions` (the issue's specificity test, the one the synthetic-triplet "
         f"filter uses): asked of no other paragraph of the split, and BM25 given the question alone ranks its "
         f"own paragraph in the top {args.filter_k} of all the split's paragraphs.", "",
         "| split | paragraphs | question rows | distinct (question, paragraph) | dropped: template | dropped: not in BM25 top k | kept | sampled |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in (("dev (tuning)", res["dev_filter"]), ("test (table)", res["test_filter"])):
        L.append(f"| {name} | {r['paragraphs']} | {r['rows']} | {r['distinct_question_paragraph_pairs']} | "
                 f"{r['dropped_template']} | {r['dropped_not_in_top_k']} | {r['kept']} | {r.get('sampled', r['kept'])} |")
    L += ["", f"By construction every kept question has its paragraph in BM25's top {args.filter_k}: top-{args.filter_k} "
          "recall is 100 % and the table measures **which of the candidates gets picked**. BM25 on the test "
          f"questions: top-1 {tr['top1']:.1f} %, top-3 {tr['top3']:.1f} %, top-5 {tr['top5']:.1f} %, MRR {tr['mrr']:.3f}.", "",
          "## Test (read once)", "",
          "LM: SmolLM2-135M-Instruct (the teacher; GGUF dequantised to fp32), the students' chat prompt, greedy, "
          f"at most {args.max_new_tokens} new tokens. Paragraph picked = percent of questions answered from their "
          "own paragraph. EM / F1 / ROUGE-L in percent (SQuAD normalisation, all gold answers).", "",
          "| mode | paragraph picked % | EM | F1 | ROUGE-L |", "|---|---:|---:|---:|---:|"]
    for name in ["closed-book", "top1", "sgp (dev-selected)", "sgp (LM alone)", "oracle"]:
        r = t[name]
        sel = "-" if r["selected"] is None else f"{r['selected']:.1f}"
        label = {"top1": "retrieve-top-1 (BM25)", "oracle": "oracle (gold paragraph)"}.get(name, name)
        if "config" in r:
            c = r["config"]
            label += f": k {c['k']}, retriever weight {c['weight']}, terms {'+'.join(c['terms'])}"
        m = r["metrics"]
        L.append(f"| {label} | {sel} | {m['exact_match']:.1f} | {m['f1']:.1f} | {m['rouge_l']:.1f} |")
    L += ["", "Paired bootstrap over the test questions (10,000 resamples, seed 0) of the F1 difference, in F1 points:", ""]
    for a, b in (("sgp (dev-selected)", "top1"), ("sgp (LM alone)", "top1"), ("oracle", "top1"), ("top1", "closed-book")):
        m, lo, hi, p = paired_bootstrap(t[a]["answers"], t[b]["answers"], [q["answers"] for q in res["test_questions"]])
        L.append(f"- {a} - {b}: {m:+.1f} (95 % interval {lo:+.1f} .. {hi:+.1f}; share of resamples <= 0: {p:.2f})")
    L += ["", "## Dev grid (tuning; 'sgp k w terms': candidates, retriever weight, LM terms)", "",
          "| setting | paragraph picked % | F1 |", "|---|---:|---:|"]
    L.append(f"| retrieve-top-1 | {d['top1']['selected']:.1f} | {d['top1']['metrics']['f1']:.1f} |")
    L.append(f"| oracle | {d['oracle']['selected']:.1f} | {d['oracle']['metrics']['f1']:.1f} |")
    for n, r in sorted(((n, r) for n, r in d.items() if n.startswith("sgp")), key=lambda x: -x[1]["metrics"]["f1"]):
        L.append(f"| {n}{' (picked)' if n == res['dev_pick'] else ''} | {r['selected']:.1f} | {r['metrics']['f1']:.1f} |")
    L += ["", f"LM time: {res['lm_seconds']['generate']:.0f} s generating ({res['lm_calls']['generate']} prompts), "
          f"{res['lm_seconds']['score']:.0f} s scoring ({res['lm_calls']['score']} texts).", ""]
    out.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
