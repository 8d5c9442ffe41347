"""int4 weight quantization of the SmolLM2 teacher: which builder knobs keep its quality, at what
size and speed. Writes benchmarks/results/int4_tuning.md.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/int4_tuning.py --work /tmp/edgekd-int4tune

Teacher: SmolLM2-135M-Instruct, the packaged GGUF (``edgekd.assets.asset_path("smollm2")``: every
linear layer Q4_1, the tied embedding Q8_0) dequantised to an fp32 Hugging Face directory (as in
``bench_generative.py``). Each candidate is compiled by ``compile_causal_lm`` (one variant per
bundle) with the DEV texts as ``eval_texts``, so the manifest's perplexity is the dev perplexity.

DEV text (what the pick is made on): IMDB *train* reviews ``--dev-offset`` .. ``+--dev-limit``
(default rows 1000-1011; ``<br />`` removed, each cut to ``--max-dev-tokens`` tokens). Disjoint
from what ``bench_generative.py`` uses: its held-out perplexity text is the first IMDB *test*
reviews and its pruning calibration text the first 64 IMDB train reviews.

Per row: variant size (model files + tokenizer); dev perplexity, its delta to fp32, and on how many
dev texts the row's mean NLL beats the old default's; top-1 agreement with fp32 on the dev tokens
(teacher-forced: argmax of the next-token logits at every scored position); greedy agreement with
the fp32 ONNX variant on ``--greedy-prompts`` prompts x ``--greedy-tokens`` tokens (position-wise,
the manifest's definition, and the mean common-prefix length). Speed, two ways: (1) CPU time of
the decoder graph alone (onnxruntime session, 1 intra-op thread, process CPU time, so other jobs
on a shared machine barely move it): one ``--prompt-tokens`` prefill and one decode step after it,
medians; (2) ``edgekd bench`` wall clock (fresh process, ``--threads`` threads, median of
``--repeats`` after a warm-up: TTFT, prefill and decode tok/s), which on a loaded machine mostly
measures the load. The pick: among compile-lm int4 rows within ``--size-budget`` x the fp32 size,
the lowest dev perplexity; rows within ``--ppl-tie`` (relative) of it count as ties, broken by the
decode CPU time.

Experiment rows (``--no-grid`` skips them; not compile-lm options): the dequantised teacher's
linear weights lie exactly on their Q4_1 grids (w = d*q + m per block of 32 input features,
q in 0..15), and MatMulNBits can hold such a block exactly only with a float zero point (its
integer zero points shift the grid by up to d/2, a second rounding). ``grid float-zp``: the int4
nodes of the "asym RTN + int8 head" graph rewritten with the recovered codes, scales d and float
zero points -m/d. ``grid sym + block-sum correction``: symmetric codes (w = d*(q - 8)) plus
``y += blocksum32(x) @ C`` with C = m + 8d (a ReduceSum and an fp32 MatMul per node).

Profile rows: the same CPU-time measurement plus onnxruntime's per-node profile (share of the
LM head and of each operator type in one prefill) for fp32, the old default int4 at accuracy level
4 and 1, and the old default built with the builder's ``prune_lm_head=true`` (logits of the last
position only), and the packaged Q4_1 GGUF in llama.cpp (CPU time of the same prefill and decode
step), when ``llama_cpp`` is installed.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(ROOT))  # this checkout's edgekd
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_generative import LLAMA_PRELUDE  # noqa: E402

OLD_DEFAULT = "int4 sym default-RTN acc4 (old default)"
# name -> compile_causal_lm keyword arguments (precisions and the int4 knobs)
CONFIGS: dict[str, dict] = {  # every knob explicit: compile-lm's defaults may change
    "fp32": {"precisions": ("fp32",)},
    OLD_DEFAULT: {"precisions": ("int4",), "quant_method": "default", "symmetric": True, "int8_matmuls": ()},
    "int4 sym default-RTN acc1": {"precisions": ("int4",), "quant_method": "default", "symmetric": True,
                                  "int8_matmuls": (), "accuracy_level": 1},
    "int4 asym RTN": {"precisions": ("int4",), "quant_method": "rtn", "symmetric": False, "int8_matmuls": ()},
    "int4 k_quant": {"precisions": ("int4",), "quant_method": "k_quant", "symmetric": True, "int8_matmuls": ()},
    "int4 sym RTN + int8 head": {"precisions": ("int4",), "quant_method": "rtn", "symmetric": True,
                                 "int8_matmuls": ("last_matmul",)},
    "int4 asym RTN + int8 head": {"precisions": ("int4",), "quant_method": "rtn", "symmetric": False,
                                  "int8_matmuls": ("last_matmul",)},
    "int4 k_quant + int8 head": {"precisions": ("int4",), "quant_method": "k_quant", "symmetric": True,
                                 "int8_matmuls": ("last_matmul",)},
}
GRID_BASE = "int4 asym RTN + int8 head"  # the graph the grid experiments rewrite (its int8 head is kept)
GRID_ROWS = {"grid float-zp (experiment)": "float_zp", "grid sym + block-sum correction (experiment)": "correction"}
GREEDY_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
                  "The best way to learn a new language is", "Water boils at", "My favourite film of all time"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def dev_texts(path: str, offset: int, limit: int) -> list[str]:
    from edgekd.data.readers import read_texts

    rows = read_texts(path, offset + limit, label_column=None)[0][offset:]
    return [t.replace("<br />", " ") for t in rows if t.strip()]


def prepare_teacher(work: pathlib.Path) -> pathlib.Path:
    teacher = work / "teacher_hf"
    if not (teacher / "config.json").is_file():
        log("dequantising the SmolLM2 GGUF into a Hugging Face directory")
        from edgekd.assets import asset_path
        from edgekd.llm.models import load_causal_lm, save_causal_lm

        m, t = load_causal_lm(asset_path("smollm2"))
        save_causal_lm(m, teacher, t)
    return teacher


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def compile_one(teacher: pathlib.Path, out: pathlib.Path, kw: dict, texts: list[str], args) -> dict:
    from edgekd.compile.generative import compile_causal_lm

    if not (out / "manifest.json").is_file():
        t0 = time.perf_counter()
        compile_causal_lm(teacher, out, eval_texts=texts, block_size=32, context_length=args.context_length,
                          max_eval_tokens=args.max_dev_tokens, name=out.name, make_zip=False, overwrite=True,
                          check_parity=kw["precisions"] == ("fp32",), **kw)
        (out.parent / f"{out.name}.compile_s").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return json.loads((out / "manifest.json").read_text())


def score(bundle: pathlib.Path, texts: list[str], args) -> dict:
    """Per-text NLL, per-position argmax on the dev texts, greedy tokens on the prompts."""
    from edgekd.runtime.generative import GenerativeBundle

    lm = GenerativeBundle.load(bundle, threads=args.threads)
    top1, nll, n = [], [], []
    for t in texts:
        ids = lm.encode(t)[:args.max_dev_tokens]
        lg = lm.logits(ids).astype(np.float64)[:-1]
        top1.append(lg.argmax(axis=-1))
        lg -= lg.max(axis=-1, keepdims=True)
        lp = lg - np.log(np.exp(lg).sum(axis=-1, keepdims=True))
        nll.append(-float(lp[np.arange(len(ids) - 1), ids[1:]].sum()))
        n.append(len(ids) - 1)
    greedy = [lm.generate(p, max_new_tokens=args.greedy_tokens, ignore_eos=True).token_ids
              for p in GREEDY_PROMPTS[:args.greedy_prompts]]
    return {"top1": top1, "nll": nll, "n": n, "ppl": float(np.exp(sum(nll) / sum(n))), "greedy": greedy,
            "size": lm.size_bytes}


def bench(bundle: pathlib.Path, args) -> dict:
    out = bundle.parent / f"{bundle.name}.bench.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    r = subprocess.run([PY, "-m", "edgekd", "bench", str(bundle), "--threads", str(args.threads), "--prompt-tokens",
                        str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
                        "--json", str(out)], capture_output=True, text=True, cwd=ROOT, env=env)
    if r.returncode != 0:
        raise SystemExit(f"edgekd bench failed for {bundle}: {r.stderr[-2000:]}")
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------ CPU-time profile
CPU_CODE = r"""
import collections, json, statistics, sys, tempfile, time
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
path, tok_path, n, L, kvh, hd, filler, profile = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7], sys.argv[8] == "1"
def session(prefix=None):
    o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if prefix:
        o.enable_profiling = True; o.profile_file_prefix = prefix
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
ids = Tokenizer.from_file(tok_path).encode(filler * (n // 8 + 2), add_special_tokens=False).ids[:n]
feed = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, n), np.int64)}
for i in range(L):
    for kv in ("key", "value"):
        feed[f"past_key_values.{i}.{kv}"] = np.zeros((1, kvh, 0, hd), np.float32)
s = session()
out = s.run(None, feed)
pre = []
for _ in range(5):
    c0 = time.process_time(); s.run(None, feed); pre.append(time.process_time() - c0)
names = [o.name for o in s.get_outputs()]
past = {k.replace("present.", "past_key_values."): v for k, v in zip(names[1:], out[1:])}
step = {"input_ids": np.array([[int(out[0][0, -1].argmax())]], np.int64), "attention_mask": np.ones((1, n + 1), np.int64), **past}
s.run(None, step)
dec = []
for _ in range(15):
    c0 = time.process_time(); s.run(None, step); dec.append(time.process_time() - c0)
res = {"prefill_cpu_ms": statistics.median(pre) * 1e3, "decode_cpu_ms": statistics.median(dec) * 1e3,
       "logits_shape": list(out[0].shape)}
if profile:
    d = tempfile.mkdtemp(); s2 = session(d + "/p"); s2.run(None, feed); s2.run(None, feed)
    ev = json.load(open(s2.end_profiling()))
    last = [e for e in ev if e.get("cat") == "Session" and e.get("name") == "model_run"][-1]["ts"]
    per_op, head, tot = collections.Counter(), 0, 0
    for e in ev:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last:
            per_op[e["args"]["op_name"]] += e["dur"]; tot += e["dur"]
            head += e["dur"] if e["name"].startswith("/lm_head/") else 0
    res["lm_head_share"] = head / tot
    res["op_share"] = {k: v / tot for k, v in per_op.most_common()}
print(json.dumps(res))
"""

# the CPU "extra buffer types" (weight repacking) crash llama_decode of this build: bench_generative's prelude
LLAMA_CODE = LLAMA_PRELUDE + r"""
import json, statistics, sys, time
path, n, filler = sys.argv[1], int(sys.argv[2]), sys.argv[3]
llm = llama_cpp.Llama(model_path=path, n_threads=1, n_threads_batch=1, n_ctx=512, n_batch=512, verbose=False)
ids = llm.tokenize((filler * (n // 8 + 2)).encode(), add_bos=False, special=False)[:n]
pre, dec = [], []
for r in range(6):
    llm.reset(); c0 = time.process_time(); llm.eval(ids); c1 = time.process_time()
    tok = int(llm.scores[llm.n_tokens - 1].argmax())
    steps = []
    for _ in range(8):
        c2 = time.process_time(); llm.eval([tok]); steps.append(time.process_time() - c2)
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
    if r:
        pre.append(c1 - c0); dec.append(statistics.median(steps))
print(json.dumps({"prefill_cpu_ms": statistics.median(pre) * 1e3, "decode_cpu_ms": statistics.median(dec) * 1e3,
                  "llama_cpp": llama_cpp.__version__}))
"""


def cpu_profile(graph: pathlib.Path, tokenizer: pathlib.Path, gen: dict, args, profile: bool = False) -> dict:
    from edgekd.runtime.genbench import FILLER

    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([PY, "-c", CPU_CODE, str(graph), str(tokenizer), str(args.prompt_tokens), str(gen["num_layers"]),
                        str(gen["num_kv_heads"]), str(gen["head_dim"]), FILLER, "1" if profile else "0"],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"CPU profile failed for {graph}: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def llama_profile(args) -> dict | None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return None
    from edgekd.assets import asset_path
    from edgekd.runtime.genbench import FILLER

    r = subprocess.run([PY, "-c", LLAMA_CODE, str(asset_path("smollm2")), str(args.prompt_tokens), FILLER],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if r.returncode != 0:
        log(f"llama.cpp profile failed: {r.stderr[-800:]}")
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ grid experiment
def grid_rewrite(fp32_graph: pathlib.Path, src_dir: pathlib.Path, out_dir: pathlib.Path, mode: str) -> dict:
    """Rewrite the 4-bit MatMulNBits nodes of ``src_dir``'s graph with the Q4_1 grid recovered from
    the fp32 graph's weights (see the module doc); returns the worst absolute reconstruction error."""
    import onnx
    from onnx import helper, numpy_helper

    fp = onnx.load(str(fp32_graph))
    weights = {i.name: i for i in fp.graph.initializer}
    fp_matmul = {n.name: n for n in fp.graph.node if n.op_type == "MatMul"}
    m = onnx.load(str(src_dir / "model.onnx"))
    inits = {i.name: i for i in m.graph.initializer}
    nodes, worst, count = [], 0.0, 0
    for node in list(m.graph.node):
        nodes.append(node)
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        if node.op_type != "MatMulNBits" or a["bits"] != 4:
            continue
        w = numpy_helper.to_array(weights[fp_matmul[node.name.removesuffix("_Q4")].input[1]]).astype(np.float64)
        K, N = w.shape
        bs = a["block_size"]
        blk = w.T.reshape(N, K // bs, bs)
        lo, hi = blk.min(-1), blk.max(-1)
        d = (hi - lo) / 15.0
        d1 = np.where(d == 0, 1.0, d)
        q = np.clip(np.rint((blk - lo[..., None]) / d1[..., None]), 0, 15)
        worst = max(worst, float(np.abs(d[..., None] * q + lo[..., None] - blk).max()))
        q = q.astype(np.uint8)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array((q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8),
                                                              node.input[1]))
        base = node.name
        if mode == "float_zp":  # w = scale * (q - zp): scale d, zp -m/d (a constant block: q 0, scale m, zp -1)
            scale, zp = np.where(d == 0, lo, d), np.where(d == 0, -1.0, -lo / d1)
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(scale.astype(np.float32), node.input[2]))
            m.graph.initializer.append(numpy_helper.from_array(zp.astype(np.float32), base + "/grid_zp"))
            node.input[3] = base + "/grid_zp"
        else:  # symmetric codes: w = d * (q - 8); the rest, (m + 8d) per block, through block sums of x
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(d.astype(np.float32), node.input[2]))
            del node.input[3:]
            for name, arr in (("/grid_C", (lo + 8 * d).T.astype(np.float32)),
                              ("/grid_shape", np.array([0, 0, K // bs, bs], np.int64)),
                              ("/grid_axes", np.array([-1], np.int64))):
                m.graph.initializer.append(numpy_helper.from_array(arr, base + name))
            y = node.output[0]
            node.output[0] = y + "/grid_main"
            nodes += [helper.make_node("Reshape", [node.input[0], base + "/grid_shape"], [base + "/grid_r"]),
                      helper.make_node("ReduceSum", [base + "/grid_r", base + "/grid_axes"], [base + "/grid_s"],
                                       keepdims=0),
                      helper.make_node("MatMul", [base + "/grid_s", base + "/grid_C"], [base + "/grid_c"]),
                      helper.make_node("Add", [y + "/grid_main", base + "/grid_c"], [y])]
        count += 1
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    used = {i for n in m.graph.node for i in n.input}
    keep = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(out_dir / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data")
    return {"nodes": count, "worst_abs_error": worst}


def grid_bundle(work: pathlib.Path, name: str, mode: str) -> pathlib.Path:
    """A copy of the GRID_BASE bundle whose int4 graph is rewritten by :func:`grid_rewrite`."""
    from edgekd.compile.generative import quantized_graph_summary
    from edgekd.runtime.bundle import write_manifest

    out = work / "bundles" / slug(name)
    if (out / "manifest.json").is_file():
        return out
    src = work / "bundles" / slug(GRID_BASE)
    tmp = work / "graphs" / slug(name)
    info = grid_rewrite(work / "bundles/fp32/variants/fp32/model.onnx", src / "variants/int4", tmp, mode)
    log(f"  rewrote {info['nodes']} nodes, worst reconstruction error {info['worst_abs_error']:.3g}")
    shutil.copytree(src, out)
    for f in ("model.onnx", "model.onnx.data"):
        shutil.copy(tmp / f, out / "variants/int4" / f)
    man = json.loads((out / "manifest.json").read_text())
    man["name"] = out.name
    v = man["variants"][0]
    v["weights"] = {"scheme": f"experiment: Q4_1 grid recovered ({mode})", "base": GRID_BASE,
                    "graph": quantized_graph_summary(out / v["file"]), "accuracy_level": 4, **info}
    v.pop("quality", None)
    v.pop("parity", None)
    write_manifest(out, man)
    return out


def build_graph(teacher: pathlib.Path, work: pathlib.Path, precision: str, options: list[str]) -> pathlib.Path:
    """A bare builder graph (no bundle) for the profile rows; cached under WORK/graphs."""
    out = work / "graphs" / slug(f"{precision}_{'_'.join(options)}")
    if not (out / "model.onnx").is_file():
        log(f"build {precision} {' '.join(options)}")
        r = subprocess.run([PY, "-m", "onnxruntime_genai.models.builder", "-i", str(teacher), "-o", str(out), "-p",
                            precision, "-e", "cpu", "-c", str(work / "cache"), "--extra_options", "hf_token=false",
                            *options], capture_output=True, text=True,
                           env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
        if r.returncode != 0:
            raise SystemExit(f"builder failed: {r.stderr[-2000:]}")
    return out / "model.onnx"


def pick_kw(name: str) -> dict:
    kw = {k: v for k, v in CONFIGS[name].items() if k != "precisions"}
    return {"block_size": 32, **kw}


# ------------------------------------------------------------------------------------ held-out check
HELDOUT_ROWS = ["fp32", OLD_DEFAULT, "int4 sym RTN + int8 head", "int4 asym RTN + int8 head", "int4 k_quant + int8 head"]


def heldout(args) -> None:
    """Confirm the choice on the held-out text of bench_generative.py (the first ``--heldout-limit``
    IMDB test reviews, each cut to ``--heldout-tokens``), with the bundles of a finished run; writes
    the table between the HELDOUT markers of ``--out``."""
    from edgekd.runtime.generative import GenerativeBundle, perplexity

    work = pathlib.Path(args.work)
    texts = dev_texts(args.heldout_data, 0, args.heldout_limit)
    load_start, started = load(), _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="minutes")
    res = {}
    for name in HELDOUT_ROWS:
        b = work / "bundles" / slug(name)
        if not (b / "manifest.json").is_file():
            continue
        log(f"held-out perplexity: {name}")
        res[name] = perplexity(GenerativeBundle.load(b, threads=args.threads), texts, args.heldout_tokens)
    ref = res["fp32"]["perplexity"]
    lines = [f"Held-out check ({started}, load average before {load_start}, after {load()}): perplexity on the first "
             f"{len(texts)} IMDB test reviews (`<br />` removed), each cut to {args.heldout_tokens} tokens "
             f"({res['fp32']['tokens']} scored tokens), the held-out text of `bench_generative.py`. Command: `OMP_NUM_THREADS=1 nice -n 19 python benchmarks/int4_tuning.py --heldout-only`.",
             "", "| config | held-out ppl | delta vs fp32 |", "|---|---|---|"]
    for name, r in res.items():
        lines.append(f"| {name} | {r['perplexity']:.2f} | {(r['perplexity'] / ref - 1) * 100:+.1f} % |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = pathlib.Path(args.out)
    body = out.read_text()
    if "<!-- HELDOUT -->" in body:
        head, _, rest = body.partition("<!-- HELDOUT -->")
        _, _, tail = rest.partition("<!-- /HELDOUT -->")
        out.write_text(f"{head}<!-- HELDOUT -->\n{text}<!-- /HELDOUT -->{tail}")
    else:
        out.write_text(f"{body}\n<!-- HELDOUT -->\n{text}<!-- /HELDOUT -->\n")


# ------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/edgekd-int4tune")
    ap.add_argument("--dev-data", default=str(ROOT.parent / "shared/data/imdb/train.jsonl"))
    ap.add_argument("--dev-offset", type=int, default=1000)
    ap.add_argument("--dev-limit", type=int, default=12)
    ap.add_argument("--max-dev-tokens", type=int, default=128)
    ap.add_argument("--context-length", type=int, default=2048)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names of CONFIGS (fp32 always runs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--greedy-prompts", type=int, default=6)
    ap.add_argument("--greedy-tokens", type=int, default=24)
    ap.add_argument("--size-budget", type=float, default=0.25, help="max size as a fraction of the fp32 variant")
    ap.add_argument("--ppl-tie", type=float, default=0.01, help="relative dev-perplexity difference treated as a tie")
    ap.add_argument("--no-grid", action="store_true", help="skip the Q4_1-grid experiment rows")
    ap.add_argument("--no-profile", action="store_true", help="skip the profile rows")
    ap.add_argument("--profile-layers", type=int, default=10,
                    help="also profile graphs of the teacher's first N layers (0: none)")
    ap.add_argument("--heldout-only", action="store_true", help="only the held-out check (after a run)")
    ap.add_argument("--heldout-data", default=str(ROOT.parent / "shared/data/imdb/test.jsonl"))
    ap.add_argument("--heldout-limit", type=int, default=16)
    ap.add_argument("--heldout-tokens", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/int4_tuning.md"))
    args = ap.parse_args()
    if args.heldout_only:
        heldout(args)
        return
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="minutes")
    load_start = load()
    t_start = time.perf_counter()
    names = ["fp32"] + [n for n in args.configs.split(",") if n and n != "fp32"]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    if not args.no_grid and GRID_BASE not in names:
        names.append(GRID_BASE)
    teacher = prepare_teacher(work)
    texts = dev_texts(args.dev_data, args.dev_offset, args.dev_limit)
    log(f"{len(texts)} dev texts (IMDB train rows {args.dev_offset}..{args.dev_offset + args.dev_limit - 1})")
    plan = [(n, "compile") for n in names] + ([] if args.no_grid else [(n, "grid") for n in GRID_ROWS])
    rows, ref, old = [], None, None
    gen = None
    for name, kind in plan:
        if kind == "compile":
            log(f"compile {name}")
            b = work / "bundles" / slug(name)
            compile_one(teacher, b, CONFIGS[name], texts, args)
        else:
            log(f"build {name}")
            b = grid_bundle(work, name, GRID_ROWS[name])
        m = json.loads((b / "manifest.json").read_text())
        v = m["variants"][0]
        gen = m["generation"]
        log(f"score {name}")
        s = score(b, texts, args)
        ref = ref or s
        if name == OLD_DEFAULT:
            old = s
        log(f"time {name}")
        cpu = cpu_profile(b / v["file"], b / m["preprocessing"]["tokenizer"], gen, args)
        r = bench(b, args)
        top1 = float(np.mean(np.concatenate([a == c for a, c in zip(s["top1"], ref["top1"])])))
        same = total = 0
        prefix = []
        for g, w in zip(s["greedy"], ref["greedy"]):
            same += sum(x == y for x, y in zip(g, w))
            total += max(len(g), len(w))
            k = 0
            while k < min(len(g), len(w)) and g[k] == w[k]:
                k += 1
            prefix.append(k)
        rows.append({"name": name, "kind": kind, "precision": v["precision"], "weights": v.get("weights"),
                     "size": s["size"], "ppl": s["ppl"], "manifest_ppl": (v.get("quality") or {}).get("perplexity"),
                     "nll": s["nll"], "n": s["n"], "tokens": sum(s["n"]), "top1": top1,
                     "greedy": same / total if total else 1.0, "prefix": statistics.mean(prefix),
                     "prefill_cpu_ms": cpu["prefill_cpu_ms"], "decode_cpu_ms": cpu["decode_cpu_ms"],
                     "ttft": r["ttft_ms"], "prefill": r["prefill_tokens_per_s"], "decode": r["decode_tokens_per_s"],
                     "rss": r["peak_rss_mb"], "load_after": load(),
                     "compile_s": float((b.parent / f"{b.name}.compile_s").read_text())
                     if (b.parent / f"{b.name}.compile_s").is_file() else None})
        log(f"  {rows[-1]['size'] / 1e6:.1f} MB ppl {s['ppl']:.2f} top1 {top1:.3f} greedy {rows[-1]['greedy']:.2f} "
            f"prefill {cpu['prefill_cpu_ms']:.0f} ms CPU, decode {cpu['decode_cpu_ms']:.1f} ms CPU/token")
    if old is not None:
        for r in rows:
            r["beats_old"] = sum(a / k < b / k for a, b, k in zip(r["nll"], old["nll"], r["n"]))
    fp32 = rows[0]
    budget = args.size_budget * fp32["size"]
    cands = [r for r in rows if r["kind"] == "compile" and r["precision"] == "int4" and r["size"] <= budget]
    best_ppl = min(r["ppl"] for r in cands)
    pick = min([r for r in cands if r["ppl"] <= best_ppl * (1 + args.ppl_tie)], key=lambda r: r["decode_cpu_ms"])

    profile = {}
    if not args.no_profile:
        from edgekd.compile.generative import builder_options

        tok = work / "bundles/fp32/tokenizer.json"
        graphs = {"fp32": work / "bundles/fp32/variants/fp32/model.onnx"}
        for name in (OLD_DEFAULT, "int4 sym default-RTN acc1"):
            if name in names:
                graphs[name] = work / "bundles" / slug(name) / "variants/int4/model.onnx"
        graphs[OLD_DEFAULT.replace(" (old default)", "") + " + prune_lm_head"] = build_graph(
            teacher, work, "int4", ["block_size=32", "prune_lm_head=true"])
        graphs.setdefault(pick["name"], work / "bundles" / slug(pick["name"]) / "variants/int4/model.onnx")
        # the first --profile-layers blocks of the teacher (the builder's num_hidden_layers): the
        # shape, hence the speed, of a depth-pruned student (bench_generative.py's student10)
        L = args.profile_layers
        if L:
            cut = ["num_hidden_layers=%d" % L]
            graphs[f"{L}-layer cut: fp32"] = build_graph(teacher, work, "fp32", cut)
            graphs[f"{L}-layer cut: {OLD_DEFAULT}"] = build_graph(teacher, work, "int4", cut + ["block_size=32"])
            graphs[f"{L}-layer cut: int4 old default + prune_lm_head"] = build_graph(
                teacher, work, "int4", cut + ["block_size=32", "prune_lm_head=true"])
            graphs[f"{L}-layer cut: int4 old default acc1"] = build_graph(
                teacher, work, "int4", cut + ["block_size=32", "accuracy_level=1"])
            graphs[f"{L}-layer cut: {pick['name']}"] = build_graph(
                teacher, work, "int4", cut + builder_options("int4", **pick_kw(pick["name"]))[1:])
        for name, path in graphs.items():
            log(f"profile {name}")
            g = dict(gen, num_layers=L) if name.startswith(f"{L}-layer cut") else gen
            profile[name] = cpu_profile(path, tok, g, args, profile=True) | {"load_after": load()}
        lc = llama_profile(args)
        if lc:
            profile[f"llama.cpp {lc['llama_cpp']}, packaged Q4_1 GGUF"] = lc | {"load_after": load()}

    load_end = load()
    minutes = (time.perf_counter() - t_start) / 60
    report(rows, pick, budget, profile, args, started, load_start, load_end, minutes)


def fmt_weights(w: dict | None) -> str:
    if not w:
        return "-"
    g = w["graph"]
    nb = ", ".join(f"{n} x int{b}" for b, n in g["matmul_nbits"].items())
    zp = "float zero points" if "float_zp" in w.get("scheme", "") else ("zero points" if g["zero_points"] else "no zero points")
    return f"{nb}; embedding {g['embedding']}; {zp}; acc {w['accuracy_level']}"


def report(rows, pick, budget, profile, args, started, load_start, load_end, minutes) -> None:
    fp32 = rows[0]
    lines = ["| config | size MB | size / fp32 | dev ppl | delta vs fp32 | texts better than old default | top-1 agreement "
             "vs fp32 | greedy agreement vs fp32 | greedy common prefix | prefill CPU ms (64 tok) | decode CPU ms/token "
             "| TTFT ms (wall) | prefill tok/s (wall) | decode tok/s (wall) | peak RSS MB | graph | load avg after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        beats = f"{r['beats_old']}/{len(r['nll'])}" if "beats_old" in r and r["name"] != OLD_DEFAULT else "-"
        lines.append(
            f"| {r['name']}{' **(pick)**' if r is pick else ''} | {r['size'] / 1e6:.1f} | {r['size'] / fp32['size']:.3f} | "
            f"{r['ppl']:.2f} | {r['ppl'] - fp32['ppl']:+.2f} ({(r['ppl'] / fp32['ppl'] - 1) * 100:+.1f} %) | {beats} | "
            f"{r['top1']:.3f} | {r['greedy']:.2f} | {r['prefix']:.1f} / {args.greedy_tokens} | {r['prefill_cpu_ms']:.0f} | "
            f"{r['decode_cpu_ms']:.1f} | {r['ttft']:.0f} | {r['prefill']:.0f} | {r['decode']:.1f} | {r['rss']:.0f} | "
            f"{fmt_weights(r['weights'])} | {r['load_after']} |")
    plines = []
    if profile:
        ops = ["MatMulNBits", "MatMul", "GroupQueryAttention"]
        plines = ["| graph | logits shape | prefill CPU ms (64 tok) | prefill tok/s (CPU time) | decode CPU ms/token | "
                  "LM head share of prefill | " + " | ".join(f"{o} share" for o in ops) + " | load avg after |",
                  "|---|---|---|---|---|---|" + "---|" * len(ops) + "---|"]
        for name, p in profile.items():
            shares = p.get("op_share")
            plines.append(
                f"| {name} | {p.get('logits_shape', '-')} | {p['prefill_cpu_ms']:.0f} | "
                f"{args.prompt_tokens / p['prefill_cpu_ms'] * 1e3:.0f} | {p['decode_cpu_ms']:.1f} | "
                + (f"{p['lm_head_share'] * 100:.0f} % | " if "lm_head_share" in p else "- | ")
                + " | ".join(f"{shares.get(o, 0) * 100:.0f} %" if shares else "-" for o in ops)
                + f" | {p['load_after']} |")
    cmd = "OMP_NUM_THREADS=1 nice -n 19 python " + " ".join([pathlib.Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    info = (f"Machine: {platform.machine()} {os.cpu_count()}-core VM, {platform.platform()}, Python "
            f"{platform.python_version()}; started {started}, {minutes:.1f} min. Load average (1/5/15 min) before "
            f"{load_start}, after {load_end}.")
    body = {"rows": rows, "pick": pick["name"], "profile": profile}
    pathlib.Path(args.work, "int4_tuning.json").write_text(json.dumps(body, indent=1, default=str))
    text = "\n".join([info, "", f"Command: `{cmd}`", "", *lines, "",
                      f"Pick (lowest dev perplexity among compile-lm int4 rows of at most {args.size_budget:g} x fp32 = "
                      f"{budget / 1e6:.1f} MB; rows within {args.ppl_tie * 100:g} % of it are ties, broken by decode "
                      f"CPU time): **{pick['name']}**.", "", *plines, ""])
    pathlib.Path(args.work, "table.md").write_text(text)
    print(text)
    out = pathlib.Path(args.out)
    if out.is_file() and "<!-- TABLE -->" in out.read_text():
        head, _, rest = out.read_text().partition("<!-- TABLE -->")
        _, _, tail = rest.partition("<!-- /TABLE -->")
        out.write_text(f"{head}<!-- TABLE -->\n{text}<!-- /TABLE -->{tail}")
    else:
        out.write_text(f"# int4 tuning of the SmolLM2 teacher\n\n<!-- TABLE -->\n{text}<!-- /TABLE -->\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
