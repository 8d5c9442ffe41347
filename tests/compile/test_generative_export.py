"""compile_causal_lm: onnxruntime-genai builder export -> generative bundle; parity with PyTorch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from factories import LM_CORPUS, save_tiny_causal_lm
from numerics import assert_close_f64
from edgekd.compile.generative import compile_causal_lm, quantized_graph_summary, resolve_quantization
from edgekd.errors import EdgekdValueError
from edgekd.runtime.generative import GenerativeBundle

PROMPTS = ["The quick brown fox", "Stocks rose on", "def add(a, b):"]


@pytest.fixture(scope="module")
def torch_lm(tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float64).eval()


def test_manifest_records_quality_and_parity(lm_bundle):
    m = json.loads((lm_bundle / "manifest.json").read_text())
    assert m["task"] == "text-generation" and "label_names" not in m
    assert [v["precision"] for v in m["variants"]] == ["fp32", "int4"]
    fp32, int4 = m["variants"]
    assert fp32["parity"]["greedy_identical"] is True
    w = int4["weights"]
    assert w["bits"] == 4 and w["block_size"] == 32
    # the recorded knobs are the int4 defaults (tuned: benchmarks/results/int4_tuning.md) except the
    # zero points: this model's intermediate size 96 is not a multiple of 2 x 32, so the default fell
    # back to symmetric and says why. What the graph holds is read from the graph itself: the LM head
    # and the embedding tied to it at 8 bits, every other MatMul at 4, at the builder's default
    # accuracy level on CPU, 4 (int8 activations)
    assert "'intermediate_size': 96" in w["note"]
    assert w["symmetric"] is True and w["method"] == "rtn" and w["int8_matmuls"] == ["last_matmul"]
    assert w["accuracy_level"] == 4 and w["graph"]["accuracy_levels"] == [4]
    assert w["graph"]["matmul_nbits"] == {"4": 10, "8": 1}  # 2 layers x (qkv, o, gate, up, down) at 4; the LM head
    assert w["graph"]["embedding"] == "GatherBlockQuantized int8" and w["graph"]["zero_points"] is False
    assert "weights" not in fp32
    for v in (fp32, int4):
        q = v["quality"]
        assert q["eval_texts"] == 3 and q["eval_tokens"] > 10
        assert np.isfinite(q["perplexity"]) and q["perplexity"] > 1
        assert q["perplexity_delta_vs_fp32"] == pytest.approx(q["perplexity"] - fp32["quality"]["perplexity"])
    assert abs(fp32["quality"]["perplexity_delta_vs_pytorch"]) < 1e-3 * fp32["quality"]["perplexity"]
    # int4 is much smaller than fp32 (only the tokenizer-sized embedding table keeps it above 1/8)
    files = m["files"]
    size = lambda p: sum(e["size"] for r, e in files.items() if r.startswith(f"variants/{p}/"))  # noqa: E731
    assert size("int4") < size("fp32") / 3
    assert (lm_bundle.with_suffix(".zip")).is_file()


def test_fp32_logits_match_float64_pytorch(lm_bundle, torch_lm):
    lm = GenerativeBundle.load(lm_bundle, precision="fp32")
    cfg = torch_lm.config
    for text in LM_CORPUS[:4]:
        ids = lm.encode(text)
        got = torch.from_numpy(lm.logits(ids))
        with torch.no_grad():
            ref = torch_lm(torch.tensor([ids])).logits[0]
        assert_close_f64(got, ref, n=cfg.hidden_size * cfg.num_hidden_layers * 4, name=f"logits {text[:12]!r}")


def test_fp32_greedy_token_identical_to_pytorch(lm_bundle, torch_lm):
    lm = GenerativeBundle.load(lm_bundle, precision="fp32")
    for p in PROMPTS:
        ids = lm.encode(p)
        with torch.no_grad():
            out = torch_lm.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=20, do_sample=False, pad_token_id=0)
        want = out[0, len(ids):].tolist()
        got = lm.generate(p, max_new_tokens=20)
        n = len(got.token_ids)
        assert got.token_ids == want[:n]
        assert n == 20 or want[n] in lm.eos_ids  # stopped early only on EOS


def test_bad_arguments_are_refused(tiny_lm_dir, tmp_path):
    with pytest.raises(EdgekdValueError, match="precisions"):
        compile_causal_lm(tiny_lm_dir, tmp_path / "b", eval_texts=LM_CORPUS, precisions=("int3",))
    with pytest.raises(EdgekdValueError, match="block_size"):
        compile_causal_lm(tiny_lm_dir, tmp_path / "b", eval_texts=LM_CORPUS, block_size=48)
    with pytest.raises(EdgekdValueError, match="eval_texts"):
        compile_causal_lm(tiny_lm_dir, tmp_path / "b", eval_texts=[])
    with pytest.raises(EdgekdValueError, match="context_length"):
        compile_causal_lm(tiny_lm_dir, tmp_path / "b", eval_texts=LM_CORPUS, context_length=10_000)
    with pytest.raises(EdgekdValueError, match="neither"):
        compile_causal_lm(tmp_path / "nothing", tmp_path / "b", eval_texts=LM_CORPUS)
    (tmp_path / "exists").mkdir()
    with pytest.raises(EdgekdValueError, match="exists"):
        compile_causal_lm(tiny_lm_dir, tmp_path / "exists", eval_texts=LM_CORPUS)


@pytest.fixture(scope="module")
def lm128_dir(tmp_path_factory):
    # intermediate size 128: the down projection's K = 128 is 4 blocks of 32, so the zero points of
    # the builder's rtn / k_quant (two 4-bit points a byte) fill whole bytes (K = 96 makes it fail)
    return save_tiny_causal_lm(tmp_path_factory.mktemp("lm128") / "tiny_lm", intermediate_size=128)


def test_quantization_defaults_resolve_per_precision():
    def r(*a, **k):
        return {p: (q["method"], q["int8_matmuls"], q["symmetric"], q["note"] is not None)
                for p, q in resolve_quantization(*a, **k).items()}

    # int4: asymmetric rtn with the LM head at int8; int8: the builder's symmetric default quantizer
    assert r(["fp32", "int8", "int4"]) == {"int8": ("default", [], True, False),
                                           "int4": ("rtn", ["last_matmul"], False, False)}
    # asymmetric int8 needs rtn (the default quantizer cannot); explicit values win; () = all int4
    assert r(["int8"], symmetric=False) == {"int8": ("rtn", [], False, False)}
    assert r(["int4"], quant_method="k_quant", int8_matmuls=()) == {"int4": ("k_quant", [], False, False)}
    assert r(["int4"], True, int8_matmuls="mixed_layers,last_matmul,last_matmul") == \
        {"int4": ("rtn", ["mixed_layers", "last_matmul"], True, False)}
    assert r(["fp32"]) == {}
    assert r(["int4"], quant_method="default", int8_matmuls=()) == {"int4": ("default", [], True, False)}  # old default
    # int4 zero points need K % (2 x block_size) == 0: the default falls back to symmetric (with a
    # note), an explicit asymmetric or k_quant request is refused, symmetric rtn is fine
    dims = {"hidden_size": 64, "intermediate_size": 96}
    assert r(["int4"], k_dims=dims) == {"int4": ("rtn", ["last_matmul"], True, True)}
    assert r(["int4"], k_dims=dims, block_size=16) == {"int4": ("rtn", ["last_matmul"], False, False)}
    assert r(["int4"], True, "rtn", k_dims=dims) == {"int4": ("rtn", ["last_matmul"], True, False)}
    for kw in ({"symmetric": False}, {"quant_method": "k_quant"}):
        with pytest.raises(EdgekdValueError, match="'intermediate_size': 96"):
            resolve_quantization(["int4"], k_dims=dims, **kw)


def test_old_default_int4_is_still_reachable(tiny_lm_dir, tmp_path):
    # the builder's MLAS quantizer, every MatMul and the tied embedding at 4 bits (the pre-tuning default)
    b = compile_causal_lm(tiny_lm_dir, tmp_path / "b", eval_texts=LM_CORPUS[:2], precisions=("int4",),
                          quant_method="default", int8_matmuls=(), parity_tokens=4, make_zip=False)
    (v,) = json.loads((b / "manifest.json").read_text())["variants"]
    w = v["weights"]
    assert (w["method"], w["int8_matmuls"], w["builder_options"]) == ("default", [], ["block_size=32"])
    assert w["graph"]["matmul_nbits"] == {"4": 11} and w["graph"]["embedding"] == "GatherBlockQuantized int4"
    assert np.isfinite(v["quality"]["perplexity"])


def _node_bits(model_path) -> dict[str, tuple[int, int]]:
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    out = {}
    for n in m.graph.node:
        if n.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            out[n.name] = (int(a.get("bits", 4)), int(a.get("accuracy_level", -1)))
    return out


def test_int4_knobs_reach_the_graph_and_the_manifest(lm128_dir, tmp_path):
    b = compile_causal_lm(lm128_dir, tmp_path / "b", eval_texts=LM_CORPUS[:3], precisions=("int4",),
                          quant_method="k_quant", int8_matmuls=("last_matmul",), accuracy_level=1, parity_tokens=6,
                          make_zip=False)
    m = json.loads((b / "manifest.json").read_text())
    (v,) = m["variants"]
    w = v["weights"]
    assert (w["method"], w["int8_matmuls"], w["accuracy_level"]) == ("k_quant", ["last_matmul"], 1)
    assert w["builder_options"] == ["block_size=32", "accuracy_level=1", "is_symmetric=false", "algo_config=k_quant",
                                    "matmul_mixed_precision=last_matmul:int8"]
    # the graph itself: the LM head (and the embedding it is tied to) at 8 bits, the rest at 4, all at level 1
    bits = _node_bits(b / v["file"])
    assert bits["/lm_head/MatMul_Q8"] == (8, 1)
    assert sorted(k for k, (nb, _) in bits.items() if nb == 8) == ["/lm_head/MatMul_Q8",
                                                                   "/model/embed_tokens/GatherBlockQuantized"]
    assert sum(1 for k, (nb, lvl) in bits.items() if nb == 4 and lvl == 1 and "MatMul" in k) == 10
    g = quantized_graph_summary(b / v["file"])
    assert g == w["graph"]
    assert g["matmul_nbits"] == {"4": 10, "8": 1} and g["embedding"] == "GatherBlockQuantized int8"
    assert g["zero_points"] is True and g["accuracy_levels"] == [1]
    # it runs: finite perplexity recorded, and greedy generation works on plain onnxruntime
    assert np.isfinite(v["quality"]["perplexity"]) and v["quality"]["eval_tokens"] > 10
    lm = GenerativeBundle.load(b, precision="int4")
    assert len(lm.generate("The quick brown fox", max_new_tokens=5, ignore_eos=True).token_ids) == 5


def test_int4_default_is_asymmetric_rtn_with_an_int8_head(lm128_dir, tmp_path):
    b = compile_causal_lm(lm128_dir, tmp_path / "b", eval_texts=LM_CORPUS[:2], precisions=("int4",), parity_tokens=4,
                          make_zip=False)
    (v,) = json.loads((b / "manifest.json").read_text())["variants"]
    w = v["weights"]
    assert (w["method"], w["symmetric"], w["int8_matmuls"]) == ("rtn", False, ["last_matmul"]) and "note" not in w
    assert w["scheme"] == "MatMulNBits weight-only, asymmetric"
    assert w["builder_options"] == ["block_size=32", "is_symmetric=false", "algo_config=rtn",
                                    "matmul_mixed_precision=last_matmul:int8"]
    assert w["graph"]["zero_points"] is True and w["graph"]["matmul_nbits"] == {"4": 10, "8": 1}
    assert w["graph"]["accuracy_levels"] == [4] and w["accuracy_level"] == 4  # not given: the builder's CPU default
    assert np.isfinite(v["quality"]["perplexity"])


@pytest.mark.parametrize("kw, msg", [
    ({"quant_method": "gptq"}, "quant_method"),
    ({"symmetric": "no"}, "symmetric"),
    ({"quant_method": "k_quant"}, "'intermediate_size': 96"),  # K = 96: int4 zero points cannot be packed
    ({"int8_matmuls": ("lm_head",)}, "int8_matmuls"),
    ({"int8_matmuls": ("last_matmul",), "precisions": ("fp32", "int8")}, "no int4"),
    ({"symmetric": False, "quant_method": "default"}, "'rtn' or 'k_quant'"),
    ({"int8_matmuls": ("last_matmul",), "quant_method": "default"}, "'rtn' or 'k_quant'"),
    ({"accuracy_level": 0}, "accuracy_level"),
    ({"accuracy_level": 5}, "accuracy_level"),
    ({"accuracy_level": True}, "accuracy_level"),
])
def test_bad_quant_knobs_are_refused(tiny_lm_dir, tmp_path, kw, msg):
    with pytest.raises(EdgekdValueError, match=msg):
        compile_causal_lm(tiny_lm_dir, tmp_path / "b", eval_texts=LM_CORPUS, **kw)
    assert not (tmp_path / "b").exists()


def test_last_logits_bundle_matches_the_full_logits_bundle(lm_bundle, tiny_lm_dir, tmp_path):
    """compile-lm --last-logits: the LM head only where asked (prefill: the last prompt token of each
    row); the same greedy tokens for a right-padded batch, the same logits at every position, the
    same perplexity; the graph carries the logits_index input; engine genai is refused."""
    import onnx

    from edgekd.compile.generative import add_logits_index
    from edgekd.errors import BundleError
    from edgekd.runtime.generative import perplexity

    b = compile_causal_lm(tiny_lm_dir, tmp_path / "last", eval_texts=LM_CORPUS[:3], precisions=("fp32", "int4"),
                          block_size=32, parity_tokens=12, last_logits=True)
    m = json.loads((b / "manifest.json").read_text())
    assert m["generation"]["io"] == "gqa+logits_index"
    g = onnx.load(str(b / "variants" / "int4" / "model.onnx"), load_external_data=False).graph
    assert "logits_index" in [i.name for i in g.input]
    assert [n.op_type for n in g.node if n.name.startswith("/lm_head/LogitsIndex")] == ["Unsqueeze", "GatherND"]
    for prec in ("fp32", "int4"):
        full = GenerativeBundle.load(lm_bundle, precision=prec)
        last = GenerativeBundle.load(b, precision=prec)
        assert last._decoder.logits_index and not full._decoder.logits_index
        got = last.generate(PROMPTS, max_new_tokens=12)  # prompts of different lengths: right padding
        want = full.generate(PROMPTS, max_new_tokens=12)
        assert [g.token_ids for g in got] == [w.token_ids for w in want]
        ids = last.encode(LM_CORPUS[1])
        np.testing.assert_array_equal(last.logits(ids), full.logits(ids))
        assert perplexity(last, LM_CORPUS[:2])["perplexity"] == pytest.approx(
            perplexity(full, LM_CORPUS[:2])["perplexity"], rel=1e-6)
    with pytest.raises(BundleError, match="only engine='ort'"):
        GenerativeBundle.load(b, precision="fp32", engine="genai")
    with pytest.raises(EdgekdValueError, match="already has a logits_index"):
        add_logits_index(b / "variants" / "fp32" / "model.onnx")
