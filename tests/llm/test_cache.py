"""edgekd.llm.cache: sparse teacher cache (top-k + tail), keys, resume after an interruption."""
from __future__ import annotations

import pytest
import torch

from edgekd.errors import EdgekdValueError
from edgekd.llm import SparseTeacher, kd_loss
from edgekd.llm.cache import CacheSettings, build_sparse_cache, sparsify

V = 50


class TinyTeacher:
    """A deterministic 'language model': embedding + linear head; counts its calls."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(V, 8, generator=g)
        self.head = torch.randn(V, 8, generator=g) * 2
        self.calls = 0

    def __call__(self, input_ids, attention_mask):
        self.calls += 1
        return (self.emb[input_ids] @ self.head.t()) * attention_mask.unsqueeze(-1)


def make_batches(n=5, B=3, T=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, V, (B, T), generator=g)
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        am = (torch.arange(T) < lengths[:, None]).long()
        out.append({"input_ids": ids, "attention_mask": am})
    return out


def test_sparsify_top_k_and_tail_mass():
    logits = torch.randn(4, V, dtype=torch.float64) * 3
    st = sparsify(logits, 7, temperature=2.0)
    lp = torch.log_softmax(logits / 2.0, -1)
    torch.testing.assert_close(st.topk_logprobs.double(), lp.topk(7).values, rtol=1e-6, atol=1e-6)
    mass = st.topk_logprobs.double().exp().sum(-1) + st.tail_logmass.double().exp()
    torch.testing.assert_close(mass, torch.ones(4, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    assert st.temperature == 2.0
    with pytest.raises(EdgekdValueError, match="larger than the vocabulary"):
        sparsify(logits, V + 1)


def test_cache_round_trip_and_loss(tmp_path):
    teacher, batches = TinyTeacher(), make_batches()
    cache = build_sparse_cache(teacher, batches, tmp_path, teacher_id="tiny-0",
                               settings=CacheSettings(topk=8, batches_per_chunk=2))
    assert len(cache) == 5 and teacher.calls == 5
    assert cache.bytes_per_token == 8 * 2 + 8 * 4 + 4
    for i, b in enumerate(batches):
        st = cache[i]
        assert isinstance(st, SparseTeacher) and st.topk_ids.shape == (3, 6, 8)
        dense = teacher(b["input_ids"], b["attention_mask"])
        want = sparsify(dense, 8)
        m = b["attention_mask"].bool()
        assert torch.equal(st.topk_ids[m], want.topk_ids[m])
        torch.testing.assert_close(st.topk_logprobs[m], want.topk_logprobs[m])
        torch.testing.assert_close(st.tail_logmass[m], want.tail_logmass[m])
        # usable by the loss directly (padding masked)
        student = torch.randn(3, 6, V, requires_grad=True)
        loss = kd_loss(student, st, mask=b["attention_mask"], loss="reverse_kl")
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_resume_after_interruption(tmp_path):
    batches = make_batches(n=7)
    settings = CacheSettings(topk=4, batches_per_chunk=2)
    first = TinyTeacher()
    with pytest.raises(EdgekdValueError, match="run again to resume"):
        build_sparse_cache(first, batches, tmp_path, teacher_id="t", settings=settings, max_chunks=2)
    assert first.calls == 4
    # a half-written chunk (the temporary file of an interrupted write) is ignored and redone
    key_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    (key_dir / "chunk_00002.tmp").write_bytes(b"partial")
    second = TinyTeacher()
    cache = build_sparse_cache(second, batches, tmp_path, teacher_id="t", settings=settings)
    assert second.calls == 3  # chunks 2 and 3 only (2 + 1 batches)
    third = TinyTeacher()
    again = build_sparse_cache(third, batches, tmp_path, teacher_id="t", settings=settings)
    assert third.calls == 0 and again.key == cache.key
    full = build_sparse_cache(TinyTeacher(), batches, tmp_path / "fresh", teacher_id="t", settings=settings)
    for i in range(7):
        assert torch.equal(cache[i].topk_ids, full[i].topk_ids)
        assert torch.equal(cache[i].topk_logprobs, full[i].topk_logprobs)


def test_key_depends_on_data_teacher_and_settings(tmp_path):
    batches = make_batches(n=2)
    s16 = CacheSettings(topk=16)
    keys = {
        build_sparse_cache(TinyTeacher(), batches, tmp_path, teacher_id="a", settings=s16).key,
        build_sparse_cache(TinyTeacher(), batches, tmp_path, teacher_id="b", settings=s16).key,
        build_sparse_cache(TinyTeacher(), batches, tmp_path, teacher_id="a", settings=CacheSettings(topk=32)).key,
        build_sparse_cache(TinyTeacher(), batches, tmp_path, teacher_id="a",
                           settings=CacheSettings(topk=16, temperature=2.0)).key,
        build_sparse_cache(TinyTeacher(), make_batches(n=2, seed=9), tmp_path, teacher_id="a", settings=s16).key,
    }
    assert len(keys) == 5


def test_bad_inputs(tmp_path):
    with pytest.raises(EdgekdValueError, match="topk"):
        build_sparse_cache(TinyTeacher(), make_batches(1), tmp_path, teacher_id="t", settings=CacheSettings(topk=0))
    with pytest.raises(EdgekdValueError, match="larger than the vocabulary"):
        build_sparse_cache(TinyTeacher(), make_batches(1), tmp_path, teacher_id="t",
                           settings=CacheSettings(topk=V + 1))
    with pytest.raises(EdgekdValueError, match="no batches"):  # noqa: PT012
        build_sparse_cache(TinyTeacher(), [], tmp_path, teacher_id="t")
    with pytest.raises(EdgekdValueError, match="non-empty"):
        build_sparse_cache(TinyTeacher(), [{"input_ids": torch.zeros(2, 0, dtype=torch.long),
                                            "attention_mask": torch.zeros(2, 0)}], tmp_path, teacher_id="t",
                           settings=CacheSettings(topk=4))
    with pytest.raises(EdgekdValueError, match="NaN"):
        build_sparse_cache(lambda i, a: torch.full((*i.shape, V), float("nan")), make_batches(1), tmp_path,
                           teacher_id="nan", settings=CacheSettings(topk=4))
