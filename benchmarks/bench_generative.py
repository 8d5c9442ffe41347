"""Generative bundles vs PyTorch vs llama.cpp: size, time to first token, prefill and decode speed,
peak RSS, held-out perplexity; 1 and 2 threads. Writes benchmarks/results/generative_bundles.md.

    nice -n 19 python benchmarks/bench_generative.py --work /tmp/edgekd-genbench \\
        --eval-data ../shared/data/imdb/test.jsonl --calib-data ../shared/data/imdb/train.jsonl \\
        --convert-script /path/to/llama.cpp/convert_hf_to_gguf.py

Models: the teacher is SmolLM2-135M-Instruct (``edgekd.assets.asset_path("smollm2")``, a Q4_1 GGUF,
dequantised to fp32 by transformers); the student is the teacher depth-pruned to ``--keep-layers``
blocks by ``edgekd llm prune`` (block influence on ``--calib-data``; untrained: its perplexity is
high, its speed and size are what a trained student of that shape gets). Each is compiled with
``edgekd compile-lm`` (fp32 / int8 / int4, block 32) and timed with ``edgekd bench`` in a fresh
process per row (peak RSS is that process's). PyTorch rows: ``model.generate`` (greedy, KV cache).
llama.cpp rows (``llama_cpp`` package): the same weights as GGUF: f32 and Q8_0 from llama.cpp's
``convert_hf_to_gguf.py`` (``--convert-script``, found in llama.cpp's source tree, e.g. the
llama-cpp-python sdist's ``vendor/llama.cpp``), Q4_0 by ``llama_model_quantize``, plus the packaged
Q4_1 GGUF of the teacher. Same prompt (``--prompt-tokens`` tokens), ``--new-tokens`` greedy tokens,
EOS ignored, median of ``--repeats`` runs after one warm-up.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(ROOT))  # this checkout's edgekd, not an installed one


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], **kw) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kw)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def texts(path: str, limit: int) -> list[str]:
    from edgekd.data.readers import read_texts

    return [t.replace("<br />", " ") for t in read_texts(path, limit, label_column=None)[0] if t.strip()]


# ------------------------------------------------------------------------------------ models
def prepare_models(work: pathlib.Path, args) -> dict[str, pathlib.Path]:
    teacher, student = work / "teacher_hf", work / f"student{args.keep_layers}_hf"
    if not (teacher / "config.json").is_file():
        log("dequantising the SmolLM2 GGUF into a Hugging Face directory")
        run([PY, "-c", "from edgekd.assets import asset_path; from edgekd.llm.models import load_causal_lm, save_causal_lm;"
             f"m, t = load_causal_lm(asset_path('smollm2')); save_causal_lm(m, {str(teacher)!r}, t)"])
    if not (student / "config.json").is_file():
        log(f"pruning the teacher to {args.keep_layers} layers (edgekd llm prune, untrained)")
        calib = work / "calib.txt"
        calib.write_text("\n".join(t.replace("\n", " ") for t in texts(args.calib_data, 64)) + "\n")
        run([PY, "-m", "edgekd", "llm", "prune", "--model", str(teacher), "--calib", str(calib), "--keep-layers",
             str(args.keep_layers), "--out", str(student), "--max-length", "128"])
    return {"teacher": teacher, f"student{args.keep_layers}": student}


def compile_bundles(work: pathlib.Path, models: dict[str, pathlib.Path], args) -> dict[str, dict]:
    from edgekd.compile.generative import compile_causal_lm

    held = texts(args.eval_data, args.eval_limit)
    out = {}
    for name, src in models.items():
        b = work / "bundles" / name
        if not (b / "manifest.json").is_file():
            log(f"compile-lm {name}")
            t0 = time.perf_counter()
            compile_causal_lm(src, b, eval_texts=held, precisions=("fp32", "int8", "int4"), block_size=args.block_size,
                              context_length=args.context_length, max_eval_tokens=args.max_eval_tokens, name=name,
                              make_zip=False, overwrite=True, check_parity=name == "teacher")
            (b.parent / f"{name}.compile_s").write_text(f"{time.perf_counter() - t0:.1f}\n")
        out[name] = json.loads((b / "manifest.json").read_text())
    return out


# ------------------------------------------------------------------------------------ timing
def bench_bundle(bundle: pathlib.Path, precision: str, threads: int, engine: str, args) -> dict:
    out = bundle.parent / f"{bundle.name}.{precision}.{engine}.t{threads}.json"
    run([PY, "-m", "edgekd", "bench", str(bundle), "--precision", precision, "--threads", str(threads), "--engine", engine,
         "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--repeats",
         str(args.repeats), "--json", str(out)])
    return json.loads(out.read_text())


TORCH_CODE = r"""
import json, statistics, sys, time, resource, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
src, threads, n_prompt, n_new, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(src)
FILLER = sys.argv[6]
ids = tok(FILLER * (n_prompt // 8 + 2), add_special_tokens=False).input_ids[:n_prompt]
x = torch.tensor([ids]); am = torch.ones_like(x)
def gen(n):
    with torch.no_grad():
        t0 = time.perf_counter()
        m.generate(x, attention_mask=am, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0
gen(8)
ttft = statistics.median(gen(1) for _ in range(repeats))
full = statistics.median(gen(n_new) for _ in range(repeats))
rss = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(json.dumps({"ttft_ms": ttft * 1e3, "prefill_tokens_per_s": n_prompt / ttft,
                  "decode_tokens_per_s": (n_new - 1) / (full - ttft), "peak_rss_mb": int(rss) / 1024}))
"""

# llama-cpp-python 0.3.36 built here segfaults in llama_decode with the CPU "extra buffer types"
# (weight repacking; this VM's CPU reports AMX): they are turned off, which may cost llama.cpp speed.
# The first lines of every llama.cpp child process (also benchmarks/int4_tuning.py's).
LLAMA_PRELUDE = r"""
import llama_cpp
_default = llama_cpp.llama_model_default_params
def _params():
    p = _default(); p.use_extra_bufts = False; return p
llama_cpp.llama_model_default_params = _params
import llama_cpp.llama as _L
_L.llama_cpp.llama_model_default_params = _params
"""

LLAMA_CODE = LLAMA_PRELUDE + r"""
import json, statistics, sys, time, os
path, threads, n_prompt, n_new, repeats, filler = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
llm = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512, n_batch=512,
                      verbose=False, logits_all=False)
ids = llm.tokenize((filler * (n_prompt // 8 + 2)).encode(), add_bos=False, special=False)[:n_prompt]
def once(n):
    llm.reset()
    t0 = time.perf_counter(); t1 = None; k = 0
    for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        k += 1
        if t1 is None:
            t1 = time.perf_counter()
        if k >= n:
            break
    t2 = time.perf_counter()
    return t1 - t0, (n - 1) / (t2 - t1)
once(8)
runs = [once(n_new) for _ in range(repeats)]
ttft = statistics.median(r[0] for r in runs)
rss = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(json.dumps({"ttft_ms": ttft * 1e3, "prefill_tokens_per_s": len(ids) / ttft,
                  "decode_tokens_per_s": statistics.median(r[1] for r in runs), "peak_rss_mb": int(rss) / 1024,
                  "llama_cpp": llama_cpp.__version__}))
"""


def bench_code(code: str, argv: list[str], args) -> dict:
    from edgekd.runtime.genbench import FILLER

    cmd = [PY, "-X", "faulthandler", "-c", code, *argv, str(args.prompt_tokens), str(args.new_tokens),
           str(args.repeats), FILLER]
    for attempt in (1, 2):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=args.row_timeout)
        except subprocess.TimeoutExpired:
            log(f"row timed out after {args.row_timeout} s (attempt {attempt})")
            continue
        if r.returncode == 0:
            return json.loads(r.stdout.strip().splitlines()[-1])
        log(f"row failed (rc={r.returncode}, attempt {attempt}): {r.stderr.strip()[-600:]}")
    return None


def make_gguf(work: pathlib.Path, name: str, hf: pathlib.Path, args) -> dict[str, pathlib.Path]:
    """f32 and Q8_0 GGUF by llama.cpp's converter, Q4_0 by llama_model_quantize."""
    if not args.convert_script:
        return {}
    g = work / "gguf"
    g.mkdir(exist_ok=True)
    out = {}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pathlib.Path(args.convert_script).parent / "gguf-py"),
                                                       str(pathlib.Path(args.convert_script).parent)]))
    for outtype in ("f32", "q8_0"):
        p = g / f"{name}.{outtype}.gguf"
        if not p.is_file():
            log(f"convert_hf_to_gguf {name} {outtype}")
            r = subprocess.run([PY, args.convert_script, str(hf), "--outfile", str(p), "--outtype", outtype],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise SystemExit(f"convert failed: {r.stderr[-3000:]}")
        out[outtype.upper()] = p
    p = g / f"{name}.q4_0.gguf"
    if not p.is_file():
        run([PY, "-c", "import llama_cpp, sys; prm = llama_cpp.llama_model_quantize_default_params(); "
             "prm.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0; prm.nthread = 2; "
             "rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), prm); sys.exit(rc)",
             str(out["F32"]), str(p)])
    out["Q4_0"] = p
    return out


# ------------------------------------------------------------------------------------ report
def mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/edgekd-genbench")
    ap.add_argument("--eval-data", default=str(ROOT.parent / "shared/data/imdb/test.jsonl"))
    ap.add_argument("--calib-data", default=str(ROOT.parent / "shared/data/imdb/train.jsonl"))
    ap.add_argument("--eval-limit", type=int, default=16)
    ap.add_argument("--max-eval-tokens", type=int, default=256)
    ap.add_argument("--keep-layers", type=int, default=10)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--context-length", type=int, default=2048)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--convert-script", help="llama.cpp's convert_hf_to_gguf.py (with gguf-py and conversion/ next to it)")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--row-timeout", type=float, default=600, help="seconds before a PyTorch / llama.cpp row is given up")
    ap.add_argument("--no-edgekd", action="store_true", help="time only PyTorch / llama.cpp (no bundles needed)")
    ap.add_argument("--prepare-only", action="store_true", help="make the models, bundles and GGUF files, time nothing")
    ap.add_argument("--models", default="teacher,student", help="which of teacher, student to time")
    ap.add_argument("--precisions", default="fp32,int8,int4", help="edgekd bundle variants to time")
    ap.add_argument("--engines", default="ort,genai", help="edgekd engines to time (genai: int8/int4 and teacher fp32)")
    ap.add_argument("--gguf", default="F32,Q8_0,Q4_0,Q4_1 (packaged)", help="llama.cpp files to time")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/generative_bundles.md"))
    args = ap.parse_args()
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="minutes")
    models = prepare_models(work, args)
    models = {n: m for n, m in models.items() if any(n.startswith(w) for w in args.models.split(",") if w)}
    manifests = {n: None for n in models} if args.no_edgekd else compile_bundles(work, models, args)
    if args.prepare_only:
        if not args.no_llama_cpp:
            for name, hf in models.items():
                make_gguf(work, name, hf, args)
        log("prepared")
        return
    threads = [int(t) for t in args.threads.split(",") if t]
    rows = []
    want_models = [x for x in args.models.split(",") if x]
    for name, m in manifests.items():
        if not any(name.startswith(w) for w in want_models):
            continue
        b = work / "bundles" / name
        q = {v["precision"]: v for v in m["variants"]} if m else {}
        for t in threads:
            for prec in [x for x in args.precisions.split(",") if x and not args.no_edgekd]:
                engines = ("ort", "genai") if prec != "fp32" or name == "teacher" else ("ort",)
                for eng in [e for e in engines if e in args.engines.split(",")]:
                    log(f"bench {name} {prec} {eng} threads={t}")
                    r = bench_bundle(b, prec, t, eng, args)
                    rows.append(dict(model=name, runtime=f"edgekd ({'onnxruntime' if eng == 'ort' else 'onnxruntime-genai'})",
                                     weights=prec + (f" (b{args.block_size})" if prec != "fp32" else ""), threads=t,
                                     size=r["size_bytes"], ttft=r["ttft_ms"], prefill=r["prefill_tokens_per_s"],
                                     decode=r["decode_tokens_per_s"], rss=r["peak_rss_mb"],
                                     ppl=q[prec]["quality"]["perplexity"], agree=q[prec]["parity"]["greedy_token_agreement"]))
            if not args.no_torch:
                log(f"bench {name} pytorch threads={t}")
                r = bench_code(TORCH_CODE, [str(models[name]), str(t)], args)
                if r is None:
                    continue
                size = sum(p.stat().st_size for p in models[name].glob("*.safetensors"))
                rows.append(dict(model=name, runtime="PyTorch (transformers generate)", weights="fp32", threads=t, size=size,
                                 ttft=r["ttft_ms"], prefill=r["prefill_tokens_per_s"], decode=r["decode_tokens_per_s"],
                                 rss=r["peak_rss_mb"], agree=1.0,
                                 ppl=q["fp32"]["quality"]["pytorch_fp32_perplexity"] if "fp32" in q else None))
            if not args.no_llama_cpp:
                ggufs = make_gguf(work, name, models[name], args)
                if name == "teacher":
                    from edgekd.assets import asset_path

                    ggufs["Q4_1 (packaged)"] = asset_path("smollm2")
                for kind, path in [(k, v) for k, v in ggufs.items() if k in args.gguf.split(",")]:
                    log(f"bench {name} llama.cpp {kind} threads={t}")
                    r = bench_code(LLAMA_CODE, [str(path), str(t)], args)
                    if r is None:
                        continue
                    rows.append(dict(model=name, runtime=f"llama.cpp {r['llama_cpp']}", weights=kind, threads=t,
                                     size=path.stat().st_size, ttft=r["ttft_ms"], prefill=r["prefill_tokens_per_s"],
                                     decode=r["decode_tokens_per_s"], rss=r["peak_rss_mb"], ppl=None, agree=None))
    load_end = os.getloadavg()
    for r in rows:
        r["load_at_end"] = [round(x, 2) for x in load_end]
    # rows of earlier runs with other filters are kept (a row is replaced by a new one with its key)
    old = json.loads((work / "rows.json").read_text()) if (work / "rows.json").is_file() else []
    key = lambda r: (r["model"], r["runtime"], r["weights"], r["threads"])  # noqa: E731
    new_keys = {key(r) for r in rows}
    rows = [r for r in old if key(r) not in new_keys] + rows
    order = {"teacher": 0}
    rows.sort(key=lambda r: (order.get(r["model"], 1), r["threads"], r["weights"], r["runtime"]))
    (work / "rows.json").write_text(json.dumps(rows, indent=1))
    lines = ["| model | runtime | weights | threads | size MB | TTFT ms | prefill tok/s | decode tok/s | peak RSS MB "
             "| held-out ppl | greedy agreement vs PyTorch | load avg after the run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ppl = f"{r['ppl']:.2f}" if r["ppl"] is not None else "-"
        agree = f"{r['agree']:.2f}" if r["agree"] is not None else "-"
        lines.append(f"| {r['model']} | {r['runtime']} | {r['weights']} | {r['threads']} | {mb(r['size'])} | "
                     f"{r['ttft']:.1f} | {r['prefill']:.0f} | {r['decode']:.1f} | {r['rss']:.0f} | {ppl} | {agree} | "
                     f"{'/'.join(str(x) for x in r.get('load_at_end', []))} |")
    cmd = "nice -n 19 python " + " ".join([pathlib.Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    info = (f"Machine: {platform.machine()} {os.cpu_count()}-core VM, {platform.platform()}; Python "
            f"{platform.python_version()}. Started {started}; load average (1/5/15 min) at start "
            f"{'/'.join(f'{x:.2f}' for x in load_start)}, at end {'/'.join(f'{x:.2f}' for x in load_end)}.")
    table = "\n".join(lines)
    out = pathlib.Path(args.out)
    (work / "table.md").write_text(f"{info}\n\nCommand: `{cmd}`\n\n{table}\n")
    log(f"wrote {work / 'table.md'}")
    print(info)
    print(table)
    if out.is_file() and "<!-- TABLE -->" in out.read_text():
        text = out.read_text()
        head, _, rest = text.partition("<!-- TABLE -->")
        _, _, tail = rest.partition("<!-- /TABLE -->")
        out.write_text(f"{head}<!-- TABLE -->\n{info}\n\nCommand: `{cmd}`\n\n{table}\n<!-- /TABLE -->{tail}")


if __name__ == "__main__":
    main()
