"""Token-pruned and head-pruned BERT classifiers go through the same compile -> bundle -> runtime path."""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from factories import LABELS, TEXTS, make_tiny_teacher  # noqa: E402
from edgekd.compile import compile_model, detect_model_kind, get_export_spec  # noqa: E402
from edgekd.errors import EdgekdValueError  # noqa: E402
from edgekd.runtime import Bundle  # noqa: E402

KEEP = 0.3  # ceil(0.3 * N) >= 2 from N = 4: min_length 4


def _scale_weights(model, std: float = 0.3, seed: int = 0) -> None:
    """Random weights far from the tiny init (std 0.02), so logits depend clearly on the kept tokens."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module")
def tiny_teacher_dir(tmp_path_factory) -> pathlib.Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("tiny") / "teacher")


@pytest.fixture(scope="module")
def token_pruned_dir(tmp_path_factory, tiny_teacher_dir) -> pathlib.Path:
    from transformers import BertForSequenceClassification

    from edgekd.prune import TokenPruningConfig, apply_token_pruning

    model = BertForSequenceClassification.from_pretrained(str(tiny_teacher_dir))
    pruned = apply_token_pruning(model, TokenPruningConfig(layer=1, keep_ratio=KEEP))
    _scale_weights(pruned)
    out = tmp_path_factory.mktemp("pruned") / "pruned"
    pruned.save_pretrained(out)
    shutil.copyfile(tiny_teacher_dir / "tokenizer.json", out / "tokenizer.json")
    return out


@pytest.fixture(scope="module")
def pruned_bundle(tmp_path_factory, token_pruned_dir) -> pathlib.Path:
    # kind detected from token_pruning.json
    return compile_model("auto", token_pruned_dir, tmp_path_factory.mktemp("bundles") / "pruned", eval_texts=TEXTS,
                         eval_labels=LABELS, max_length=24, arm64_check=False, progress=False)


def _torch_logits(model_dir: pathlib.Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    from edgekd.prune import load_pruned_model

    model = load_pruned_model(model_dir)
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()


def test_detect_model_kind(tiny_teacher_dir, token_pruned_dir, tmp_path):
    assert detect_model_kind(token_pruned_dir) == "token_pruned_bert"
    assert detect_model_kind(tiny_teacher_dir) == "hf_sequence_classification"
    student = tmp_path / "student"
    student.mkdir()
    (student / "config.json").write_text(json.dumps({"model_type": "bilstm_attention", "num_classes": 3}))
    assert detect_model_kind(student) == "bilstm_attention"
    with pytest.raises(EdgekdValueError, match="no config.json"):
        detect_model_kind(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(EdgekdValueError, match="cannot detect the model kind"):
        detect_model_kind(tmp_path)
    with pytest.raises(EdgekdValueError, match="not a directory"):
        detect_model_kind(tmp_path / "missing")


def test_pruned_bundle_manifest_and_parity(pruned_bundle):
    m = json.loads((pruned_bundle / "manifest.json").read_text())
    assert m["model_kind"] == "token_pruned_bert"
    assert m["opset"] == 18  # raised from the default 17 to what edgekd.prune.export supports
    assert m["source"]["token_pruning"]["keep_ratio"] == KEEP and m["source"]["min_length"] == 4
    assert m["preprocessing"]["min_length"] == 4 and m["preprocessing"]["max_length"] == 24
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert m["export_check"]["random_inputs_max_abs_logit_diff"] <= 1e-4
    assert m["export_check"]["graph"]["domains"] == ["ai.onnx"] and "TopK" in m["export_check"]["graph"]["ops"]
    assert {v["id"] for v in m["variants"]} == {"x86_64-fp32", "x86_64-int8", "x86_64-int8-vnni", "arm64-fp32",
                                                "arm64-int8"}
    for v in m["variants"]:
        p = v["parity"]
        if v["precision"] == "fp32":
            assert p["max_abs_logit_diff"] <= 1e-4 and p["label_agreement"] == 1.0
        else:
            assert np.isfinite(p["max_abs_logit_diff"])
            assert v["quantization"]["scheme"] == "static"  # calibrated QDQ, fused into QLinearMatMul / QGemm
            assert any(op in ("QLinearMatMul", "com.microsoft::QGemm") for op in v["operators"])


def test_pruned_bundle_runtime_matches_torch(pruned_bundle, token_pruned_dir):
    texts = TEXTS + ["", "oil", "word " * 100]
    for path in (pruned_bundle, pruned_bundle.with_suffix(".zip")):
        b = Bundle.load(path, precision="fp32")
        batch = b.preprocessor(texts)
        ref = _torch_logits(token_pruned_dir, batch.feeds)
        pred = b.predict(texts)
        assert np.abs(pred.logits - ref).max() <= 1e-4
        assert pred.explanations is None and pred.empty.tolist() == [False] * len(TEXTS) + [True, False, False]
    # one short text alone is post-padded to min_length (mask 0), never fed shorter than the graph allows
    feeds = b.preprocessor(["oil"]).feeds
    assert feeds["input_ids"].shape == (1, 4) and feeds["attention_mask"].tolist() == [[1, 1, 1, 0]]
    np.testing.assert_allclose(b.predict("oil").logits, _torch_logits(token_pruned_dir, feeds), atol=1e-4)
    # feeds that bypass the preprocessor and are too short: a clear error, not an onnxruntime failure
    short = {k: v[:, :3] for k, v in feeds.items()}
    with pytest.raises(EdgekdValueError, match="min_length 4"):
        b.run(short)
    q = Bundle.load(pruned_bundle, precision="int8").predict(texts)
    assert np.isfinite(q.probabilities).all()


def test_pruned_bundle_runs_without_torch_and_benches(pruned_bundle, tmp_path):
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ("torch", "transformers", "onnx", "safetensors"):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
from edgekd.cli import main
from edgekd.runtime import Bundle
p = Bundle.load({str(pruned_bundle.with_suffix('.zip'))!r}).predict(["oil prices slump", ""])
assert p.probabilities.shape == (2, 3)
assert main(["bench", {str(pruned_bundle)!r}, "--batches", "1,8", "--min-time", "0.01",
             "--json", {str(tmp_path / "r.json")!r}]) == 0
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["model_kind"] == "token_pruned_bert" and res["latency"]["8"]["p50_ms"] > 0


def test_pruned_compile_errors(token_pruned_dir, tiny_teacher_dir, tmp_path):
    with pytest.raises(EdgekdValueError, match="minimum sequence length 4"):
        compile_model("token_pruned_bert", token_pruned_dir, tmp_path / "b", eval_texts=TEXTS, max_length=3,
                      arm64_check=False, progress=False)
    assert not (tmp_path / "b").exists()
    with pytest.raises(EdgekdValueError, match="not a token-pruned model directory"):
        compile_model("token_pruned_bert", tiny_teacher_dir, tmp_path / "c", eval_texts=TEXTS, progress=False)
    # the pruned dir is also a plain HF dir: compiling it as a teacher drops the pruning, with a warning
    with pytest.warns(UserWarning, match="token_pruned_bert"):
        get_export_spec("hf_sequence_classification")(token_pruned_dir)


def test_head_pruned_model_compiles_as_hf_sequence_classification(tiny_teacher_dir, tmp_path):
    """A head-pruned dir (sliced q/k/v/output weights, edgekd_pruned_heads in config.json) is rebuilt
    with load_head_pruned_model; transformers alone cannot load it."""
    from transformers import BertForSequenceClassification

    from edgekd.prune import load_head_pruned_model, prune_heads

    model = BertForSequenceClassification.from_pretrained(str(tiny_teacher_dir))
    _scale_weights(model, 0.2, seed=1)
    prune_heads(model, {0: [1]})
    src = tmp_path / "ahp"
    model.save_pretrained(src)
    shutil.copyfile(tiny_teacher_dir / "tokenizer.json", src / "tokenizer.json")
    assert detect_model_kind(src) == "hf_sequence_classification"
    bundle = compile_model("auto", src, tmp_path / "bundle", eval_texts=TEXTS, eval_labels=LABELS, max_length=24,
                           precisions=("fp32",), targets=("x86_64",), arm64_check=False, make_zip=False,
                           progress=False)
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["model_kind"] == "hf_sequence_classification"
    assert m["variants"][0]["parity"]["max_abs_logit_diff"] <= 1e-4
    b = Bundle.load(bundle, precision="fp32")
    feeds = b.preprocessor(TEXTS).feeds
    smaller = load_head_pruned_model(src)
    assert smaller.bert.encoder.layer[0].attention.self.query.weight.shape[0] == 16  # 1 of 2 heads left
    with torch.no_grad():
        ref = smaller(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    assert np.abs(b.predict(TEXTS).logits - ref).max() <= 1e-4
