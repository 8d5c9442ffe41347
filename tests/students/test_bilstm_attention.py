"""Tests of the self-explaining BiLSTM student (edgekd.students)."""
from __future__ import annotations

import collections
import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.errors import EdgekdValueError
from edgekd.students import BiLSTMAttentionStudent, StudentOutput, native_available
from numerics import assert_close_f64, double_copy

NAMES = ("logits", "attention_logits", "attention")
needs_native = pytest.mark.skipif(not native_available(), reason="native ops (masked_bilstm) not available")


def make_batch(B, T, V, seed=0, min_len=1, full_first=True):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, T + 1, (B,), generator=g)
    if full_first:
        lengths[0] = T
    mask = (torch.arange(T) < lengths[:, None]).long()
    ids = torch.randint(1, V, (B, T), generator=g) * mask  # pad id 0 at padding
    return ids, mask


def n_acc(m, B, T):
    """Accumulation length of the student (numerics.py): the BiLSTM's T steps of (E + H)-long
    dots, the attention's 2H- and A-long dots, sums over T, and the gradients' sums over B * T."""
    return T * (m.embed_dim + m.hidden_size) + 2 * m.hidden_size + m.attention_dim + T + B * T


def output_scales(m):
    """The magnitude of each output's terms: logits sum 2H terms |W_c| |h| (|h| < 1), attention
    logits A terms |v| |tanh| (both can cancel to ~0), attention <= 1."""
    logits = float((m.classifier.weight.abs().sum(1) + m.classifier.bias.abs()).max())
    return dict(logits=logits, attention_logits=float(m.attention.v.abs().sum()), attention=1.0)


def assert_outputs_f64(out, ref, m, B, T, rows=slice(None), cols=slice(None)):
    """A student's outputs against the float64 reference model's (``rows``/``cols`` of ``ref``)."""
    scales = output_scales(m)
    for name in NAMES:
        expected = getattr(ref, name)[rows]
        if name != "logits":
            expected = expected[:, cols]
        assert_close_f64(getattr(out, name), expected, n=n_acc(m, B, T), scale=scales[name], name=name)


def make_model(backend="reference", seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("vocab_size", 40)
    kw.setdefault("embed_dim", 12)
    kw.setdefault("hidden_size", 10)
    return BiLSTMAttentionStudent(backend=backend, **kw)


def test_state_dict_names_and_shapes():
    m = make_model(vocab_size=40, embed_dim=12, hidden_size=10, attention_dim=7, num_classes=3)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "embedding.weight": (40, 12),
        "lstm.weight_ih_l0": (40, 12),
        "lstm.weight_hh_l0": (40, 10),
        "lstm.bias_ih_l0": (40,),
        "lstm.bias_hh_l0": (40,),
        "lstm.weight_ih_l0_reverse": (40, 12),
        "lstm.weight_hh_l0_reverse": (40, 10),
        "lstm.bias_ih_l0_reverse": (40,),
        "lstm.bias_hh_l0_reverse": (40,),
        "attention.W": (7, 20),
        "attention.v": (7,),
        "classifier.weight": (3, 20),
        "classifier.bias": (3,),
    }
    assert isinstance(m.lstm, nn.LSTM) and m.lstm.batch_first and m.lstm.bidirectional
    assert make_model(hidden_size=10).attention_dim == 20  # default A = 2H


def test_forward_outputs_reference():
    m = make_model()
    ids, mask = make_batch(5, 9, 40)
    out = m(ids, mask)
    assert isinstance(out, StudentOutput)
    assert out.logits.shape == (5, 3) and out.attention.shape == (5, 9) and out.attention_logits.shape == (5, 9)
    pad = mask == 0
    assert (out.attention[pad] == 0).all() and (out.attention_logits[pad] == 0).all()
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(5))
    # bool masks are accepted and give the same result
    out_b = m(ids, mask.bool())
    assert torch.equal(out.logits, out_b.logits)


@pytest.mark.parametrize("backend", ["reference", pytest.param("native", marks=needs_native)])
def test_extra_padding_does_not_change_results(backend):
    # the BiLSTM runs over the valid tokens only: more padding columns change nothing
    m = make_model(backend=backend).eval()
    ids, mask = make_batch(4, 7, 40)
    ids2 = torch.cat([ids, torch.zeros(4, 5, dtype=torch.long)], 1)
    mask2 = torch.cat([mask, torch.zeros(4, 5, dtype=torch.long)], 1)
    a, b = m(ids, mask), m(ids2, mask2)
    with torch.no_grad():
        ref = double_copy(m, backend="reference")(ids, mask)
    assert_outputs_f64(a, ref, m, 4, 12)
    assert_outputs_f64(StudentOutput(b.logits, b.attention_logits[:, :7], b.attention[:, :7]), ref, m, 4, 12)
    assert (b.attention[:, 7:] == 0).all() and (b.attention_logits[:, 7:] == 0).all()
    # a row alone gives the same result as in the batch (no leakage across rows or from padding)
    n = int(mask[1].sum())
    single = m(ids[1:2, :n], mask[1:2, :n])
    assert_outputs_f64(single, ref, m, 4, 12, rows=slice(1, 2), cols=slice(None, n))


@needs_native
@pytest.mark.parametrize("hidden", [16, 50])
def test_native_matches_reference_forward_and_gradients(hidden):
    nat = make_model("native", vocab_size=60, embed_dim=20, hidden_size=hidden)
    ref = double_copy(nat, backend="reference")  # the float64 reference (nn.LSTM, plain attention)
    ids, mask = make_batch(6, 11, 60, seed=3)
    mask[-1, 1:] = 0  # a length-1 row
    ids = ids * mask
    g = torch.Generator().manual_seed(7)
    up = [torch.randn(6, 3, generator=g), torch.randn(6, 11, generator=g), torch.randn(6, 11, generator=g)]
    outs = []
    for model in (ref, nat):
        model.zero_grad()
        out = model(ids, mask)
        u = [t.to(out.logits.dtype) for t in up]
        loss = (out.logits * u[0]).sum() + (out.attention_logits * u[1]).sum() + (out.attention * u[2]).sum()
        loss.backward()
        outs.append((out, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (o_r, g_r), (o_n, g_n) = outs
    assert_outputs_f64(o_n, o_r, nat, 6, 11)
    assert set(g_r) == set(g_n) and len(g_r) == 13
    for k in g_r:
        assert_close_f64(g_n[k], g_r[k], n=n_acc(nat, 6, 11), name=f"grad {k}")


@needs_native
def test_native_batch1_matches_reference():
    nat = make_model("native", vocab_size=60, embed_dim=50, hidden_size=50)
    ref = double_copy(nat, backend="reference")
    ids, mask = make_batch(1, 32, 60)
    with torch.inference_mode():
        a, b = ref(ids, mask), nat(ids, mask)
    assert_outputs_f64(b, a, nat, 1, 32)


def test_backend_selection():
    m = make_model("auto")
    assert m.resolved_backend == ("native" if native_available() else "reference")
    m.backend = "reference"
    assert m.resolved_backend == "reference"
    with pytest.raises(EdgekdValueError, match="backend"):
        m.backend = "cuda"
    if not native_available():
        with pytest.raises(EdgekdValueError, match="native"):
            make_model("native")


def test_lstm_state_dict_loads_into_nn_lstm_and_reproduces_states():
    m = make_model(embed_dim=12, hidden_size=10).eval()
    lstm_sd = {k[len("lstm."):]: v for k, v in m.state_dict().items() if k.startswith("lstm.")}
    fresh = nn.LSTM(12, 10, batch_first=True, bidirectional=True)
    fresh.load_state_dict(lstm_sd)  # strict: exactly the nn.LSTM names and shapes
    fresh.double()  # and run it in float64: the reference of the states
    ids, mask = make_batch(3, 8, 40)
    lengths = mask.sum(1)
    with torch.no_grad():
        states = m.encode(ids, lengths)
        for b in range(3):
            n = int(lengths[b])
            x = m.embedding(ids[b : b + 1, :n])  # the valid tokens alone, no padding
            out, _ = fresh(x.double())
            assert_close_f64(states[b : b + 1, :n], out, n=n_acc(m, 3, 8), scale=1.0, name="states")
            assert (states[b, n:] == 0).all()


@pytest.mark.parametrize("backend", ["reference", pytest.param("native", marks=needs_native)])
def test_save_load_round_trip(tmp_path, backend):
    m = make_model(label_names=["bearish", "bullish", "neutral"], dropout=0.1).eval()
    path = m.save_pretrained(tmp_path / "student")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "bilstm_attention"
    assert set(cfg) == {
        "model_type", "vocab_size", "embed_dim", "hidden_size", "num_classes", "pad_id",
        "attention_dim", "dropout", "label_names", "edgekd_version",
    }
    assert cfg["hidden_size"] == 10 and cfg["attention_dim"] == 20 and cfg["label_names"][0] == "bearish"
    loaded = BiLSTMAttentionStudent.from_pretrained(path, backend=backend).eval()
    assert loaded.config() == m.config()
    ids, mask = make_batch(4, 9, 40)
    with torch.no_grad():
        a = m(ids, mask)
        b = loaded(ids, mask)
    if backend == "reference":
        assert torch.equal(a.logits, b.logits) and torch.equal(a.attention, b.attention)
    else:
        with torch.no_grad():
            ref = double_copy(m, backend="reference")(ids, mask)
        assert_outputs_f64(b, ref, m, 4, 9)
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_from_pretrained_errors(tmp_path):
    m = make_model()
    good = m.save_pretrained(tmp_path / "good")
    with pytest.raises(EdgekdValueError, match="not a directory"):
        BiLSTMAttentionStudent.from_pretrained(tmp_path / "nope")
    # missing weights
    d = tmp_path / "missing"
    d.mkdir()
    (d / "config.json").write_text((good / "config.json").read_text())
    with pytest.raises(EdgekdValueError, match="missing file .*model.safetensors"):
        BiLSTMAttentionStudent.from_pretrained(d)
    # corrupt weights
    (d / "model.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(EdgekdValueError, match="not a valid safetensors file"):
        BiLSTMAttentionStudent.from_pretrained(d)
    # corrupt config
    d2 = tmp_path / "badjson"
    d2.mkdir()
    (d2 / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    (d2 / "config.json").write_text("{not json")
    with pytest.raises(EdgekdValueError, match="not valid JSON"):
        BiLSTMAttentionStudent.from_pretrained(d2)
    # config that does not match the weights
    cfg = json.loads((good / "config.json").read_text())
    cfg["hidden_size"] = 11
    cfg["attention_dim"] = 22
    (d2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgekdValueError, match="do not match.*lstm.weight_hh_l0"):
        BiLSTMAttentionStudent.from_pretrained(d2)
    cfg = json.loads((good / "config.json").read_text())
    cfg["model_type"] = "bert"
    (d2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgekdValueError, match="model_type"):
        BiLSTMAttentionStudent.from_pretrained(d2)
    cfg = json.loads((good / "config.json").read_text())
    del cfg["vocab_size"]
    (d2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgekdValueError, match="vocab_size"):
        BiLSTMAttentionStudent.from_pretrained(d2)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda ids, m: (ids.int(), m), "'input_ids' must be int64"),
        (lambda ids, m: (ids[0], m[0]), "'input_ids' must have rank 2"),
        (lambda ids, m: (ids, m[0]), "'attention_mask' must have rank 2"),
        (lambda ids, m: (ids, m.float()), "'attention_mask' must be bool or integer"),
        (lambda ids, m: (ids, m[:, :4]), "does not match"),
        (lambda ids, m: (ids.clamp(max=3) + 40, m), r"must lie in \[0, 40\)"),
        (lambda ids, m: (ids - 5, m), r"must lie in \[0, 40\)"),
        (lambda ids, m: (ids, m.flip(1)), "post-padded"),  # pre-padding
        (lambda ids, m: (ids, m * 2), "0/1 values"),
        (lambda ids, m: (ids, torch.cat([m[:2], torch.zeros_like(m[:1])])), r"rows \[2\] have no valid token"),
        (lambda ids, m: (ids.tolist(), m), "must be torch.Tensors"),
        (lambda ids, m: (ids[:, :0], m[:, :0]), "empty batch"),
        (lambda ids, m: (ids, m.to("meta")), "same device"),
    ],
)
def test_bad_inputs_raise(make, match):
    m = make_model()
    ids, mask = make_batch(3, 6, 40, min_len=2)
    with pytest.raises(EdgekdValueError, match=match):
        m(*make(ids, mask))


def test_bad_constructor_arguments():
    with pytest.raises(EdgekdValueError, match="vocab_size"):
        BiLSTMAttentionStudent(0)
    with pytest.raises(EdgekdValueError, match="pad_id"):
        BiLSTMAttentionStudent(10, pad_id=10)
    with pytest.raises(EdgekdValueError, match="dropout"):
        BiLSTMAttentionStudent(10, dropout=1.5)
    with pytest.raises(EdgekdValueError, match="label_names"):
        BiLSTMAttentionStudent(10, num_classes=3, label_names=["a", "b"])
    with pytest.raises(EdgekdValueError, match=r"'embeddings' must have shape \(vocab_size, embed_dim\)"):
        BiLSTMAttentionStudent(10, embed_dim=4, embeddings=np.zeros((10, 5), dtype=np.float32))
    with pytest.raises(EdgekdValueError, match="floating point"):
        BiLSTMAttentionStudent(10, embed_dim=4, embeddings=np.zeros((10, 4), dtype=np.int64))


def test_pretrained_embeddings_and_freezing():
    vecs = np.random.default_rng(0).standard_normal((40, 12)).astype(np.float32)
    m = make_model(embeddings=vecs)
    assert torch.equal(m.embedding.weight.detach(), torch.from_numpy(vecs))
    assert m.embedding.weight.requires_grad  # trainable by default
    frozen = make_model(embeddings=torch.from_numpy(vecs), freeze_embeddings=True)
    assert not frozen.embedding.weight.requires_grad
    assert frozen.num_parameters(trainable_only=True) == frozen.num_parameters() - 40 * 12


def test_parameter_count_dixtill_size():
    # E = H = 50, A = 2H = 100, C = 3: 50 V + 51,203 parameters
    m = BiLSTMAttentionStudent(10_000, backend="reference")
    assert m.num_parameters() == 50 * 10_000 + 51_203
    # the largest vocabulary that keeps the DiXtill student under one million parameters
    assert BiLSTMAttentionStudent(18_975, backend="reference").num_parameters() < 1_000_000
    assert BiLSTMAttentionStudent(18_976, backend="reference").num_parameters() >= 1_000_000


def test_explain():
    m = make_model(label_names=["bearish", "bullish", "neutral"])
    ids, mask = make_batch(2, 5, 40)
    mask[1, 3:] = 0
    tokens = [["a", "b", "c", "d", "e"], ["x", "y", "z"]]
    ex = m.explain(ids * mask, mask, tokens=tokens)
    assert len(ex) == 2 and len(ex[0].attention) == 5 and len(ex[1].attention) == 3
    assert abs(sum(ex[1].attention) - 1) < 1e-5 and ex[1].pairs[0][0] == "x"
    assert ex[0].label_name == ["bearish", "bullish", "neutral"][ex[0].label]
    assert m.training  # explain restores the mode


# ---------------------------------------------------------------------------------------------
# The student trains on real data (a small slice of TFNS)
# ---------------------------------------------------------------------------------------------
def _load_tfns(path, n):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [(r["text"], int(r["label"])) for r in rows[:n]]


def _encode(texts, vocab, max_len):
    ids = torch.zeros(len(texts), max_len, dtype=torch.long)
    mask = torch.zeros(len(texts), max_len, dtype=torch.long)
    for i, t in enumerate(texts):
        toks = [vocab.get(w, 1) for w in t.lower().split()][:max_len] or [1]
        ids[i, : len(toks)] = torch.tensor(toks)
        mask[i, : len(toks)] = 1
    return ids, mask


@pytest.mark.parametrize("backend", ["reference", pytest.param("native", marks=needs_native)])
def test_student_trains_on_tfns_slice(shared_data, backend):
    full = _load_tfns(shared_data / "tfns" / "sent_train.csv", 10_000)
    assert len(full) == 9543  # quoted line breaks parsed correctly
    # the file is sorted by class: take a random slice of 300 tweets
    rng = np.random.default_rng(0)
    picked = [full[i] for i in rng.choice(len(full), 300, replace=False)]
    texts = [t for t, _ in picked]
    labels = torch.tensor([lab for _, lab in picked])
    counts = collections.Counter(w for t in texts for w in t.lower().split())
    vocab = {w: i + 2 for i, w in enumerate(sorted(counts))}  # 0 = pad, 1 = unk
    ids, mask = _encode(texts, vocab, 40)
    torch.manual_seed(0)
    m = BiLSTMAttentionStudent(len(vocab) + 2, embed_dim=32, hidden_size=32, backend=backend)
    # one intra-op thread: these batches are tiny, and on a shared 2-core CI machine OpenMP
    # spin-waiting of 2 threads makes each step ~30x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train(m, ids, mask, labels)
    finally:
        torch.set_num_threads(threads)


def _train(m, ids, mask, labels):
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()

    def full_loss():
        with torch.no_grad():
            return loss_fn(m(ids, mask).logits, labels).item()

    start = full_loss()
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        perm = torch.randperm(300, generator=g)
        for i in range(0, 300, 50):
            idx = perm[i : i + 50]
            opt.zero_grad()
            loss_fn(m(ids[idx], mask[idx]).logits, labels[idx]).backward()
            opt.step()
    end = full_loss()
    assert end < 0.5 * start, (start, end)
    with torch.no_grad():
        acc = (m(ids, mask).logits.argmax(-1) == labels).float().mean().item()
    assert acc > 0.8  # fits its training slice


@needs_native
def test_native_student_compiles_fullgraph():
    torch._dynamo.reset()
    m = make_model("native").eval()
    ids, mask = make_batch(3, 7, 40)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    # dynamo refuses to trace through any nn.LSTM module unless allow_rnn is set, even though
    # the native path only reads its parameters
    with torch._dynamo.config.patch(allow_rnn=True), torch.no_grad():
        a, b = m(ids, mask), compiled(ids, mask)
        ref = double_copy(m, backend="reference")(ids, mask)
    assert_outputs_f64(a, ref, m, 3, 7)
    assert_outputs_f64(b, ref, m, 3, 7)


def test_dixtill_size_with_realistic_tfns_vocabulary(shared_data):
    # lowercase whitespace tokens of the TFNS training tweets: ~27.9k distinct, ~8.3k seen twice
    texts = [t for t, _ in _load_tfns(shared_data / "tfns" / "sent_train.csv", 10_000)]
    counts = collections.Counter(w for t in texts for w in t.lower().split())
    v_all = len(counts) + 2  # + pad, unk
    v_min2 = sum(1 for n in counts.values() if n >= 2) + 2
    assert 20_000 < v_all and 5_000 < v_min2 < 18_975
    small = BiLSTMAttentionStudent(v_min2, embed_dim=50, hidden_size=50, backend="reference")
    assert small.num_parameters() < 1_000_000  # DiXtill size with a min-frequency-2 vocabulary
    assert 50 * v_all + 51_203 > 1_000_000  # every token kept: over the one-million budget
