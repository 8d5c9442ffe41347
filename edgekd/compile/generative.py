"""``compile_causal_lm``: a causal LM (Hugging Face directory or GGUF file: a teacher, or a student
from :mod:`edgekd.llm`) -> a verified generative bundle (directory + zip) with fp32 / int8 / int4
variants, each with a KV cache, its held-out perplexity and its parity with PyTorch in the manifest.

Exporter: onnxruntime-genai's model builder (``python -m onnxruntime_genai.models.builder``, run
in a subprocess). Why it and not ``optimum`` or ``torch.onnx.export(dynamo=True)``: measured on
SmolLM2-135M (benchmarks/results/generative_bundles.md) it exports in seconds, writes fused
decoder graphs (GroupQueryAttention with rotary embedding, SkipSimplifiedLayerNormalization,
MatMulNBits int4/int8 weight-only blocks, a quantized embedding shared with the LM head) that
decode several times faster than an unfused graph, and its graphs use only operators of the
standard onnxruntime CPU build, so the device needs plain ``onnxruntime`` (any platform it has a
wheel for, ARM64 included) and no torch. ``optimum`` is not installed here (and its exports keep
unfused attention); ``torch.onnx.export`` is the fallback a user can take for an architecture
the builder does not know (not wired into bundles: the runtime's ``io`` convention is ``gqa``).

Quality records per variant (``variants[k].quality``): perplexity on ``eval_texts`` (each text
cut to ``max_eval_tokens``) computed with the bundle's own runtime, the PyTorch model's
perplexity on the same token ids, and the delta to fp32; ``parity``: max |logit difference| to
PyTorch on the same texts and greedy-token agreement on ``parity_prompts`` (fp32 must be
token-identical, else :class:`~edgekd.compile.pipeline.ParityError`).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Sequence

import numpy as np

from edgekd.errors import EdgekdValueError

LM_PRECISIONS = ("fp32", "int8", "int4")
BLOCK_SIZES = (16, 32, 64, 128, 256)
# the builder's weight-only quantization knobs (``--extra_options`` of onnxruntime-genai's builder):
# ``algo_config`` base method, and the MatMul groups ``matmul_mixed_precision`` can keep at int8
# inside an int4 model (last_matmul: the LM head, with a tied embedding also the embedding table;
# mixed_layers: llama.cpp's "mixed" choice, qkv/v/down projections of the first and last eighth of
# the layers and of every third layer)
QUANT_METHODS = ("default", "rtn", "k_quant")
INT8_MATMUL_GROUPS = ("last_matmul", "mixed_layers")
# the int4 defaults, tuned on a dev split (benchmarks/int4_tuning.py, benchmarks/results/int4_tuning.md)
INT4_DEFAULT_METHOD = "rtn"
INT4_DEFAULT_SYMMETRIC = False
INT4_DEFAULT_INT8_MATMULS = ("last_matmul",)
ACCURACY_LEVELS = (1, 2, 3, 4)
DEFAULT_PARITY_PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,")


def _builder_version() -> str:
    try:
        import onnxruntime_genai as og

        return og.__version__
    except ImportError as exc:
        raise EdgekdValueError("compile-lm: needs onnxruntime-genai's model builder "
                               "(pip install 'edgekd[export]' or pip install onnxruntime-genai)") from exc


def resolve_hf_dir(source: str | os.PathLike, workdir: pathlib.Path) -> pathlib.Path:
    """A Hugging Face model directory for ``source``: itself, or a GGUF file dequantised to fp32
    into ``workdir/hf`` (:func:`edgekd.llm.models.load_causal_lm`)."""
    p = pathlib.Path(source).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise EdgekdValueError(f"compile-lm: {p} has no config.json (not a Hugging Face model directory)")
        return p
    if p.is_file() and p.suffix.lower() == ".gguf":
        from edgekd.llm.models import load_causal_lm, save_causal_lm

        model, tok = load_causal_lm(p)
        return save_causal_lm(model, workdir / "hf", tok)
    raise EdgekdValueError(f"compile-lm: {source} is neither a model directory nor a .gguf file")


def builder_options(precision: str, *, block_size: int = 32, accuracy_level: int | None = None,
                    symmetric: bool = True, quant_method: str = "default",
                    int8_matmuls: Sequence[str] = ()) -> list[str]:
    """The builder's ``--extra_options`` (KEY=VALUE) for one precision (the knobs above; fp32: none)."""
    extra = ["hf_token=false"]
    if precision in ("int4", "int8"):
        extra.append(f"block_size={block_size}")
        if accuracy_level is not None:
            extra.append(f"accuracy_level={accuracy_level}")
        if not symmetric:
            extra.append("is_symmetric=false")
        if quant_method != "default":
            extra.append(f"algo_config={quant_method}")
        if precision == "int4" and int8_matmuls:
            extra.append("matmul_mixed_precision=" + ",".join(f"{g}:int8" for g in int8_matmuls))
    return extra


def run_builder(hf_dir: pathlib.Path, out: pathlib.Path, precision: str, cache: pathlib.Path, *,
                block_size: int = 32, accuracy_level: int | None = None, symmetric: bool = True,
                quant_method: str = "default", int8_matmuls: Sequence[str] = ()) -> pathlib.Path:
    """Run onnxruntime-genai's model builder for one precision on CPU; returns ``out``."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(cache)]
    extra = builder_options(precision, block_size=block_size, accuracy_level=accuracy_level, symmetric=symmetric,
                            quant_method=quant_method, int8_matmuls=int8_matmuls)
    cmd += ["--extra_options", *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0 or not (out / "model.onnx").is_file():
        tail = (r.stdout + r.stderr).strip().splitlines()[-8:]
        raise EdgekdValueError(f"compile-lm: onnxruntime-genai's builder failed for {precision} (exit "
                               f"{r.returncode}): {' | '.join(tail)[-1500:]}")
    return out


def quantized_graph_summary(model_path: str | os.PathLike) -> dict[str, Any]:
    """What the built graph really holds (read from its node attributes, weights not loaded):
    ``matmul_nbits``: count of MatMulNBits nodes per bit width, ``accuracy_levels``: the distinct
    ``accuracy_level`` attributes of those nodes (4: int8 activations), ``block_sizes``, ``zero_points``:
    whether any node carries zero points (asymmetric), ``embedding``: the embedding lookup
    (``GatherBlockQuantized int4`` / ``int8``, or ``Gather`` = float), ``float_matmuls``: MatMul
    nodes left in float (attention score products excluded: those are fused into GroupQueryAttention)."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    nbits: dict[str, int] = {}
    levels, blocks, zp, emb, float_mm = set(), set(), False, None, 0
    for n in m.graph.node:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        if n.op_type == "MatMulNBits":
            key = str(int(a.get("bits", 4)))
            nbits[key] = nbits.get(key, 0) + 1
            levels.add(int(a.get("accuracy_level", 0)))
            blocks.add(int(a["block_size"]))
            zp |= len(n.input) > 3 and bool(n.input[3])
        elif n.op_type == "GatherBlockQuantized" and "embed" in n.name:
            emb = f"GatherBlockQuantized int{int(a.get('bits', 4))}"
            zp |= len(n.input) > 3 and bool(n.input[3])
        elif n.op_type == "Gather" and "embed_tokens" in n.name and emb is None:
            emb = "Gather"
        elif n.op_type == "MatMul":
            float_mm += 1
    return {"matmul_nbits": dict(sorted(nbits.items())), "accuracy_levels": sorted(levels),
            "block_sizes": sorted(blocks), "zero_points": bool(zp), "embedding": emb, "float_matmuls": float_mm}


def _torch_reference(hf_dir: pathlib.Path):
    from edgekd.llm.models import load_causal_lm

    model, _ = load_causal_lm(hf_dir, tokenizer=False)
    return model


def _torch_logits(model, ids: Sequence[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].double().numpy()


def _torch_greedy(model, ids: Sequence[int], n: int, eos: set[int]) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([list(ids)]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=model.config.pad_token_id or 0)
    toks = out[0, len(ids):].tolist()
    for k, t in enumerate(toks):
        if t in eos:
            return toks[:k]
    return toks


def _nll(logits: np.ndarray, ids: Sequence[int]) -> float:
    lg = logits[:-1] - logits[:-1].max(axis=-1, keepdims=True)
    lp = lg - np.log(np.exp(lg).sum(axis=-1, keepdims=True))
    return -float(lp[np.arange(len(ids) - 1), list(ids[1:])].sum())


def _eos_ids(cfg: dict[str, Any], gen_cfg: dict[str, Any]) -> list[int]:
    eos = gen_cfg.get("eos_token_id", cfg.get("eos_token_id"))
    eos = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    return sorted({int(e) for e in eos})


def matmul_input_dims(cfg: dict[str, Any]) -> dict[str, int]:
    """The reduction sizes K of a decoder's MatMuls (from a Hugging Face ``config.json``): hidden
    size (q/k/v, gate/up and the LM head), attention width (o_proj), intermediate size (down_proj)."""
    hidden = int(cfg["hidden_size"])
    heads = int(cfg.get("num_attention_heads") or 1)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    dims = {"hidden_size": hidden, "num_attention_heads x head_dim": heads * head_dim}
    if cfg.get("intermediate_size"):
        dims["intermediate_size"] = int(cfg["intermediate_size"])
    return dims


def resolve_quantization(precisions: Sequence[str], symmetric: bool | None = None, quant_method: str | None = None,
                         int8_matmuls: Sequence[str] | str | None = None, *, block_size: int = 32,
                         k_dims: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """``{precision: {"method", "int8_matmuls", "symmetric", "note"}}`` for the int8/int4 entries of
    ``precisions``: the defaults of :func:`compile_causal_lm` applied, and the combinations the
    builder cannot export refused (:class:`EdgekdValueError`). ``k_dims``
    (:func:`matmul_input_dims`): int4 zero points (asymmetric, or any ``k_quant``) are packed two a
    byte along K, which the builder (0.18) only gets right when every K is a multiple of
    ``2 * block_size``; the default then falls back to symmetric, an explicit request is refused."""
    if symmetric is not None and not isinstance(symmetric, bool):
        raise EdgekdValueError(f"symmetric: expected True, False or None, got {symmetric!r}")
    if quant_method is not None and quant_method not in QUANT_METHODS:
        raise EdgekdValueError(f"quant_method: expected one of {list(QUANT_METHODS)} or None, got {quant_method!r}")
    if int8_matmuls is None:
        groups = list(INT4_DEFAULT_INT8_MATMULS)
    else:
        if isinstance(int8_matmuls, str):
            int8_matmuls = [g for g in int8_matmuls.split(",") if g]
        groups = list(dict.fromkeys(int8_matmuls))
        bad = [g for g in groups if g not in INT8_MATMUL_GROUPS]
        if bad:
            raise EdgekdValueError(f"int8_matmuls: expected some of {list(INT8_MATMUL_GROUPS)}, got {bad}")
        if groups and "int4" not in precisions:
            raise EdgekdValueError(f"int8_matmuls: keeps MatMul groups of the int4 variant at int8, but precisions "
                                   f"{list(precisions)} has no int4")
    odd = {k: v for k, v in (k_dims or {}).items() if v % (2 * block_size)}
    quant: dict[str, dict[str, Any]] = {}
    for prec in precisions:
        if prec == "fp32":
            continue
        note = None
        if prec == "int4":
            method = quant_method or INT4_DEFAULT_METHOD
            # not given: the tuned default (asymmetric), but the MLAS quantizer only exports symmetric
            sym = (True if method == "default" else INT4_DEFAULT_SYMMETRIC) if symmetric is None else symmetric
            if odd and (not sym or method == "k_quant"):
                if symmetric is None and quant_method is None:
                    sym, note = True, (f"symmetric: the default's zero points need every K to be a multiple of "
                                       f"{2 * block_size}, and {odd} are not")
                else:
                    what = "k_quant" if method == "k_quant" else "symmetric=False"
                    raise EdgekdValueError(
                        f"{what}: int4 zero points need every MatMul's K to be a multiple of 2 x block_size = "
                        f"{2 * block_size} (the builder packs them two a byte), but {odd} are not; use symmetric "
                        f"rtn/default or another block_size")
        else:
            sym = True if symmetric is None else symmetric
            method = quant_method or ("default" if sym else "rtn")
        ups = groups if prec == "int4" else []
        # the builder (0.18) writes graphs onnxruntime cannot load for these with its "default" (MLAS)
        # quantizer: asymmetric int4 -> the tied embedding's Reshape gets uint8 data; an int8 LM head
        # -> the tied embedding points at an initializer that was never written
        if method == "default" and (not sym or ups):
            what = "symmetric=False" if not sym else f"int8_matmuls={ups}"
            raise EdgekdValueError(f"{what}: needs quant_method 'rtn' or 'k_quant' (the builder's 'default' "
                                   f"quantizer writes a graph onnxruntime cannot load with it)")
        quant[prec] = {"method": method, "int8_matmuls": ups, "symmetric": sym, "note": note}
    return quant


def add_logits_index(model_path: str | os.PathLike) -> None:
    """Rewrite a model-builder decoder (in place; its external weights are not touched) so that the
    LM head runs only at chosen positions: a new int64 input ``logits_index`` (batch, K) picks, per
    row, K positions of the final hidden states (``Unsqueeze`` + ``GatherND`` with ``batch_dims=1``)
    before the LM head; ``logits`` becomes (batch, K, vocab). At prefill the runtime asks for each
    row's last prompt token only: the prompt's other positions skip the (vocab x hidden) product,
    which is most of a short model's prefill (``benchmarks/results/int4_tuning.md``)."""
    import onnx
    from onnx import TensorProto, helper

    path = pathlib.Path(model_path)
    m = onnx.load(str(path), load_external_data=False)
    g = m.graph
    if any(i.name == "logits_index" for i in g.input):
        raise EdgekdValueError(f"{path}: the decoder already has a logits_index input")
    prod = {o: n for n in g.node for o in n.output}
    head = prod.get("logits")
    if head is None or head.op_type not in ("MatMul", "MatMulNBits") or not g.output or g.output[0].name != "logits":
        raise EdgekdValueError(f"{path}: no LM-head MatMul producing 'logits' (got "
                               f"{head.op_type if head is not None else None}); not a model-builder decoder?")
    g.input.append(helper.make_tensor_value_info("logits_index", TensorProto.INT64, ["batch_size", "num_logits"]))
    g.initializer.append(helper.make_tensor("/lm_head/logits_index_axes", TensorProto.INT64, [1], [-1]))
    pos = list(g.node).index(head)
    g.node.insert(pos, helper.make_node("Unsqueeze", ["logits_index", "/lm_head/logits_index_axes"],
                                        ["/lm_head/logits_index_3d"], name="/lm_head/LogitsIndexUnsqueeze"))
    g.node.insert(pos + 1, helper.make_node("GatherND", [head.input[0], "/lm_head/logits_index_3d"],
                                            ["/lm_head/gathered_hidden"], name="/lm_head/LogitsIndexGather",
                                            batch_dims=1))
    head.input[0] = "/lm_head/gathered_hidden"
    dims = g.output[0].type.tensor_type.shape.dim
    if len(dims) == 3:
        dims[1].Clear()
        dims[1].dim_param = "num_logits"
    onnx.save(m, str(path))


def compile_causal_lm(source: str | os.PathLike, out: str | os.PathLike, *, eval_texts: Sequence[str],
                      precisions: Sequence[str] = LM_PRECISIONS, block_size: int = 32,
                      accuracy_level: int | None = None, symmetric: bool | None = None, quant_method: str | None = None,
                      int8_matmuls: Sequence[str] | None = None, last_logits: bool = False,
                      context_length: int | None = None,
                      parity_prompts: Sequence[str] = DEFAULT_PARITY_PROMPTS, parity_tokens: int = 16,
                      max_eval_tokens: int = 256, name: str | None = None, retrieval_dir: str | os.PathLike | None = None,
                      sgp: dict[str, Any] | None = None, make_zip: bool = True, overwrite: bool = False,
                      check_parity: bool = True) -> pathlib.Path:
    """Export ``source`` into a generative bundle at ``out`` (see the module doc); returns ``out``.

    ``precisions``: any of fp32, int8, int4 (MatMulNBits weight-only, ``block_size`` weights per
    scale; ``accuracy_level`` 1..4 = the activations' type inside MatMulNBits, builder default 4 =
    int8 on CPU). Weight quantization of int8/int4 (the builder's options): ``symmetric`` (False:
    a zero point per block, uint4/uint8; None: asymmetric int4, symmetric int8), ``quant_method``
    (one of :data:`QUANT_METHODS`: the builder's ``algo_config``; ``default`` (onnxruntime's MLAS
    quantizer) and ``rtn`` round to nearest, ``k_quant`` searches each block's scale and zero point;
    None: ``rtn`` for int4 and for asymmetric int8, ``default`` for symmetric int8),
    ``int8_matmuls`` (int4 only: MatMul groups of :data:`INT8_MATMUL_GROUPS` kept at int8; None:
    the LM head, ``("last_matmul",)``; ``()``: none). The int4 default (asymmetric rtn, LM head at
    int8) was picked on a dev split (``benchmarks/results/int4_tuning.md``); where a MatMul's K is
    not a multiple of ``2 * block_size`` the builder cannot pack int4 zero points, and the default
    falls back to symmetric (:func:`resolve_quantization`). Every variant records its settings and
    what its graph really holds (:func:`quantized_graph_summary`) in ``variants[k].weights``.
    ``last_logits``: add a ``logits_index`` input to every decoder (:func:`add_logits_index`) so
    that the LM head runs only where the runtime asks (prefill: each row's last prompt token),
    ``generation.io = "gqa+logits_index"``; such bundles run with ``engine="ort"`` only.
    ``context_length``: the hard cap the runtime enforces (default: the config's
    ``max_position_embeddings``). ``retrieval_dir``: a retrieval index folder
    (:mod:`edgekd.runtime.retrieval`, saved with its paragraph texts: ``edgekd qa index``), copied
    to ``retrieval/`` and listed in the manifest with the SGP settings ``sgp`` (keys and defaults:
    :data:`edgekd.runtime.sgp.SGP_SETTING_KEYS`; ``prompt`` defaults to ``"chat"`` when the model
    has a chat template), which ``GenerativeBundle.answer`` / ``edgekd answer`` use."""
    from edgekd.compile.pipeline import ParityError
    from edgekd.runtime.bundle import write_manifest, write_zip
    from edgekd.runtime.generative import GenerativeBundle
    from edgekd.runtime.manifest import GENERATIVE_TASK, SCHEMA_VERSION, BUNDLE_FORMAT
    from edgekd.runtime.sgp import sgp_settings

    version = _builder_version()
    precisions = list(dict.fromkeys(precisions))
    bad = [p for p in precisions if p not in LM_PRECISIONS]
    if not precisions or bad:
        raise EdgekdValueError(f"precisions: expected some of {list(LM_PRECISIONS)}, got {list(precisions)}")
    if block_size not in BLOCK_SIZES:
        raise EdgekdValueError(f"block_size: expected one of {list(BLOCK_SIZES)}, got {block_size!r}")
    if accuracy_level is not None and (isinstance(accuracy_level, bool) or accuracy_level not in ACCURACY_LEVELS):
        raise EdgekdValueError(f"accuracy_level: expected 1, 2, 3 or 4 (or None: the builder's default, 4 on CPU), "
                               f"got {accuracy_level!r}")
    resolve_quantization(precisions, symmetric, quant_method, int8_matmuls, block_size=block_size)  # early errors
    if isinstance(eval_texts, str) or not eval_texts or not all(isinstance(t, str) and t.strip() for t in eval_texts):
        raise EdgekdValueError("eval_texts: a non-empty list of non-blank held-out texts is required (perplexity)")
    if retrieval_dir is not None:
        _check_retrieval_index(retrieval_dir)
        sgp_settings(sgp, has_chat_template=True, what="sgp")  # bad settings fail before the export (chat: below)
    elif sgp is not None:
        raise EdgekdValueError("sgp: SGP settings need a retrieval index (retrieval_dir=, --retrieval INDEX_DIR)")
    out = pathlib.Path(out)
    if out.exists():
        if not overwrite:
            raise EdgekdValueError(f"compile-lm: {out} exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out)
    work = pathlib.Path(tempfile.mkdtemp(prefix="edgekd-lm-"))
    try:
        hf_dir = resolve_hf_dir(source, work)
        cfg = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
        quant = resolve_quantization(precisions, symmetric, quant_method, int8_matmuls, block_size=block_size,
                                     k_dims=matmul_input_dims(cfg))
        gen_path = hf_dir / "generation_config.json"
        gen_cfg = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.is_file() else {}
        max_pos = int(cfg.get("max_position_embeddings") or 2048)
        ctx = int(context_length or max_pos)
        if not 2 <= ctx <= max_pos:
            raise EdgekdValueError(f"context_length: expected 2..{max_pos} (the model's max_position_embeddings), got {ctx}")
        out.parent.mkdir(parents=True, exist_ok=True)  # a private staging folder: concurrent compiles never clash
        tmp_out = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        variants: list[dict[str, Any]] = []
        for prec in precisions:
            q = quant.get(prec, {"method": "default", "int8_matmuls": [], "symmetric": True, "note": None})
            method, groups, sym = q["method"], q["int8_matmuls"], q["symmetric"]
            built = run_builder(hf_dir, work / prec, prec, work / "cache", block_size=block_size,
                                accuracy_level=accuracy_level, symmetric=sym, quant_method=method,
                                int8_matmuls=groups)
            vdir = tmp_out / "variants" / prec
            vdir.mkdir(parents=True)
            for f in ("model.onnx", "model.onnx.data"):
                if (built / f).is_file():
                    shutil.move(str(built / f), vdir / f)
            if last_logits:
                add_logits_index(vdir / "model.onnx")
            gcfg = json.loads((built / "genai_config.json").read_text(encoding="utf-8"))
            gcfg["model"]["context_length"] = ctx
            gcfg["search"]["max_length"] = ctx
            (vdir / "genai_config.json").write_text(json.dumps(gcfg, indent=2) + "\n", encoding="utf-8")
            v: dict[str, Any] = {"id": prec, "target": "any", "precision": prec, "file": f"variants/{prec}/model.onnx",
                                 "genai_config": f"variants/{prec}/genai_config.json"}
            if prec != "fp32":
                graph = quantized_graph_summary(vdir / "model.onnx")
                levels = graph["accuracy_levels"]
                v["weights"] = {"scheme": f"MatMulNBits weight-only, {'symmetric' if sym else 'asymmetric'}",
                                "bits": 4 if prec == "int4" else 8, "block_size": block_size,
                                "symmetric": sym, "method": method, "int8_matmuls": list(groups),
                                "accuracy_level": levels[0] if len(levels) == 1 else levels,
                                "builder_options": builder_options(
                                    prec, block_size=block_size, accuracy_level=accuracy_level, symmetric=sym,
                                    quant_method=method, int8_matmuls=groups)[1:],
                                "graph": graph}
                if q["note"]:
                    v["weights"]["note"] = q["note"]
            variants.append(v)
            first = built
        shutil.copy(first / "tokenizer.json", tmp_out / "tokenizer.json")
        for f in ("chat_template.jinja",):
            if (first / f).is_file():
                shutil.copy(first / f, tmp_out / f)
        template = None
        if (tmp_out / "chat_template.jinja").is_file():
            template = "chat_template.jinja"
        else:
            tc = first / "tokenizer_config.json"
            t = json.loads(tc.read_text(encoding="utf-8")).get("chat_template") if tc.is_file() else None
            if isinstance(t, str) and t:
                (tmp_out / "chat_template.jinja").write_text(t, encoding="utf-8")
                template = "chat_template.jinja"
        if retrieval_dir is not None:
            shutil.copytree(retrieval_dir, tmp_out / "retrieval")
        gc = gcfg["model"]
        dec = gc["decoder"]
        eos = _eos_ids(cfg, gen_cfg) or [int(gc["eos_token_id"])]
        pad = gc.get("pad_token_id")
        pad = int(pad[0] if isinstance(pad, list) else pad) if pad is not None else eos[0]
        bos = gen_cfg.get("bos_token_id", cfg.get("bos_token_id"))
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT, "schema_version": SCHEMA_VERSION, "name": name or hf_dir.name,
            "task": GENERATIVE_TASK, "model_kind": "causal_lm",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "exporter": f"onnxruntime-genai model builder {version}",
            "source_model": {"model_type": cfg.get("model_type"), "architectures": cfg.get("architectures"),
                             "num_hidden_layers": cfg.get("num_hidden_layers"), "hidden_size": cfg.get("hidden_size")},
            "preprocessing": {"tokenizer": "tokenizer.json", "max_length": ctx, "pad_id": pad},
            "generation": {"context_length": ctx, "num_layers": int(dec["num_hidden_layers"]),
                           "num_kv_heads": int(dec["num_key_value_heads"]), "head_dim": int(dec["head_size"]),
                           "vocab_size": int(gc["vocab_size"]), "eos_token_ids": eos, "pad_token_id": pad,
                           "bos_token_id": int(bos) if bos is not None else None,
                           "io": "gqa+logits_index" if last_logits else "gqa",
                           "chat_template": template},
            "variants": variants,
        }
        if retrieval_dir is not None:
            manifest["retrieval"] = {"dir": "retrieval", "sgp": sgp_settings(sgp, has_chat_template=template is not None,
                                                                             what="sgp")}
        write_manifest(tmp_out, manifest)
        _measure(tmp_out, manifest, hf_dir, list(eval_texts), list(parity_prompts), parity_tokens, max_eval_tokens,
                 check_parity, GenerativeBundle, ParityError)
        write_manifest(tmp_out, manifest)
        os.replace(tmp_out, out)
        if make_zip:
            write_zip(out, out.with_suffix(".zip"))
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if "tmp_out" in locals() and tmp_out.exists():
            shutil.rmtree(tmp_out, ignore_errors=True)


def _check_retrieval_index(folder: str | os.PathLike) -> None:
    """``folder`` is a retrieval index (every file it lists verified) that holds its paragraph texts."""
    from edgekd.runtime.retrieval import verify_index_files

    try:
        doc = verify_index_files(folder)
    except EdgekdValueError as exc:
        raise EdgekdValueError(f"compile-lm: --retrieval {folder}: not a usable retrieval index ({exc}); build one "
                               "with `edgekd qa index` or edgekd.runtime.retrieval's build_index(...).save(DIR)") from None
    if not doc.get("has_texts"):
        raise EdgekdValueError(f"compile-lm: --retrieval {folder}: the index holds no paragraph texts, which the "
                               "bundle answers from; rebuild it with them (keep_texts=True)")


def _measure(bundle_dir: pathlib.Path, manifest: dict[str, Any], hf_dir: pathlib.Path, texts: list[str],
             prompts: list[str], n_tokens: int, max_eval_tokens: int, check_parity: bool, GenerativeBundle,
             ParityError) -> None:
    """Fill ``quality`` and ``parity`` of every variant (in place)."""
    model = _torch_reference(hf_dir)
    eos = set(manifest["generation"]["eos_token_ids"])
    ref_nll, ref_n, ref_logits, ref_greedy = 0.0, 0, {}, {}
    fp32_ppl = None
    for v in manifest["variants"]:
        lm = GenerativeBundle.load(bundle_dir, precision=v["precision"], verify="selected")
        cap = min(lm.context_length, max_eval_tokens)
        nll, n, max_diff = 0.0, 0, 0.0
        for k, t in enumerate(texts):
            ids = lm.encode(t)[:cap]
            if len(ids) < 2:
                continue
            lg = lm.logits(ids).astype(np.float64)
            if k not in ref_logits:
                ref_logits[k] = _torch_logits(model, ids)
                ref_nll += _nll(ref_logits[k], ids)
                ref_n += len(ids) - 1
            nll += _nll(lg, ids)
            n += len(ids) - 1
            scale = max(1.0, float(np.abs(ref_logits[k]).max()))
            max_diff = max(max_diff, float(np.abs(lg - ref_logits[k]).max()) / scale)
        if n == 0:
            raise EdgekdValueError("eval_texts: no text has 2 or more tokens; perplexity needs longer held-out texts")
        same, total, identical = 0, 0, True
        for p in prompts:
            ids = lm.encode(p)
            if p not in ref_greedy:
                ref_greedy[p] = _torch_greedy(model, ids, n_tokens, eos)
            got = lm.generate(p, max_new_tokens=n_tokens).token_ids
            want = ref_greedy[p]
            identical &= got == want
            same += sum(a == b for a, b in zip(got, want))
            total += max(len(got), len(want))
        ppl = float(np.exp(nll / n))
        if v["precision"] == "fp32":
            fp32_ppl = ppl
        v["quality"] = {"perplexity": ppl, "pytorch_fp32_perplexity": float(np.exp(ref_nll / ref_n)),
                        "perplexity_delta_vs_pytorch": ppl - float(np.exp(ref_nll / ref_n)),
                        "eval_texts": len(texts), "eval_tokens": n}
        v["parity"] = {"max_rel_logit_diff": max_diff, "greedy_prompts": len(prompts), "greedy_tokens": n_tokens,
                       "greedy_identical": bool(identical),
                       "greedy_token_agreement": same / total if total else 1.0}
        if check_parity and v["precision"] == "fp32" and not identical:
            raise ParityError(f"compile-lm: the fp32 bundle's greedy tokens differ from PyTorch's "
                              f"(agreement {v['parity']['greedy_token_agreement']:.3f}); not writing the bundle")
    for v in manifest["variants"]:
        if fp32_ppl is not None:
            v["quality"]["perplexity_delta_vs_fp32"] = v["quality"]["perplexity"] - fp32_ppl


__all__ = ["compile_causal_lm", "add_logits_index", "run_builder", "builder_options", "resolve_quantization", "quantized_graph_summary",
           "resolve_hf_dir", "LM_PRECISIONS", "BLOCK_SIZES", "QUANT_METHODS", "INT8_MATMUL_GROUPS", "ACCURACY_LEVELS",
           "INT4_DEFAULT_METHOD", "INT4_DEFAULT_SYMMETRIC", "INT4_DEFAULT_INT8_MATMULS", "matmul_input_dims"]
