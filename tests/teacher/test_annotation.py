"""Teacher annotation with a tiny random BERT: word merging, alignment, IG, cache and resume."""
import numpy as np
import pytest
import torch

from edgekd.data import WordTokenizer
from edgekd.errors import EdgekdValueError
from edgekd.teacher import IGConfig, Teacher, annotate, merge_subwords_to_words


def test_merge_subwords_by_mean_and_offsets():
    # text: "$AAPL soars https://t.co/x"   student words: "$aapl" [0,5) "soars" [6,11) url [12,26)
    words = [(0, 5), (6, 11), (12, 26)]
    # teacher sub-words: [CLS] "$" "aa" "##pl" "soar" "##s" "https" ":" "//t.co/x" [SEP]
    subs = [(0, 0), (0, 1), (1, 3), (3, 5), (6, 10), (10, 11), (12, 17), (17, 18), (18, 26), (0, 0)]
    special = [True] + [False] * 8 + [True]
    scores = [100.0, 1.0, 2.0, 3.0, 4.0, -2.0, 0.5, 0.5, 2.0, 100.0]
    out = merge_subwords_to_words(scores, subs, words, special)
    np.testing.assert_allclose(out, [2.0, 1.0, 1.0])
    # a word with no sub-word (teacher truncated earlier) gets 0; a sub-word spanning a gap goes to
    # the first word it overlaps
    out2 = merge_subwords_to_words([5.0, 7.0], [(0, 3), (4, 8)], [(0, 3), (6, 8), (10, 12)])
    np.testing.assert_allclose(out2, [5.0, 7.0, 0.0])


@pytest.fixture(scope="module")
def setup(tiny_teacher_dir, tfns_small):
    tr, _ = tfns_small
    teacher = Teacher.from_pretrained(tiny_teacher_dir, max_length=24)
    tok = WordTokenizer.train(tr.texts, max_length=20)
    return teacher, tok, tr.head(24)


def test_annotation_aligned_with_student_words_and_complete(setup):
    teacher, tok, data = setup
    ann = annotate(teacher, data, tok, ig=IGConfig(steps=16, batch_size=8), progress=False)
    assert ann.logits.shape == (24, 3) and ann.has_attr.all()
    np.testing.assert_allclose(ann.logits, teacher.logits(data.texts), rtol=1e-5, atol=1e-6)
    for text, a in zip(data.texts, ann.attributions):
        assert a.shape == (len(tok.encode(text)),)  # one score per student word, same truncation
        assert np.isfinite(a).all() and np.abs(a).sum() > 0


def test_ig_completeness_on_subwords(setup):
    """Sub-word attributions sum to f(x) - f(baseline) for the target class (IG's completeness)."""
    from edgekd.teacher.annotate import _Attributor

    teacher, _, data = setup
    enc = teacher.encode(data.texts[:4], offsets=True)
    special = enc["special_tokens_mask"].bool() | (enc["attention_mask"] == 0)
    target = torch.tensor([0, 1, 2, 0])
    scores, delta = _Attributor(teacher, IGConfig(steps=64))(enc["input_ids"], enc["attention_mask"], special, target)
    base = torch.where(special, enc["input_ids"], torch.zeros_like(enc["input_ids"]))
    with torch.no_grad():
        fx = teacher.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        fb = teacher.model(input_ids=base, attention_mask=enc["attention_mask"]).logits
    want = (fx - fb)[torch.arange(4), target].numpy()
    np.testing.assert_allclose(scores.sum(-1), want, rtol=1e-2, atol=1e-4)
    assert np.abs(delta).max() < 1e-3


@pytest.mark.parametrize("baseline", ["mask", "zeros"])
def test_other_baselines(setup, baseline):
    teacher, tok, data = setup
    ann = annotate(teacher, data.head(4), tok, ig=IGConfig(steps=4, baseline=baseline), progress=False)
    assert all(np.isfinite(a).all() for a in ann.attributions) and ann.has_attr.all()


def test_cache_interrupt_and_resume_give_same_result(setup, tmp_path):
    teacher, tok, data = setup
    ig = IGConfig(steps=4, batch_size=4)
    subset = [1, 5, 9, 17, 20]
    full = annotate(teacher, data, tok, ig=ig, attribute_indices=subset, chunk_size=8, progress=False)
    assert full.has_attr.sum() == 5 and full.has_attr[subset].all()
    cache = tmp_path / "cache"
    with pytest.raises(EdgekdValueError, match="stopped after 1 new chunk"):
        annotate(teacher, data, tok, ig=ig, attribute_indices=subset, cache_dir=cache, chunk_size=8,
                 max_chunks=1, progress=False)
    d = cache / full.key
    assert sorted(p.name for p in d.glob("chunk_*")) == ["chunk_00000.safetensors"]
    first = (d / "chunk_00000.safetensors").stat().st_mtime_ns
    resumed = annotate(teacher, data, tok, ig=ig, attribute_indices=subset, cache_dir=cache, chunk_size=8,
                       progress=False)
    assert (d / "chunk_00000.safetensors").stat().st_mtime_ns == first  # not recomputed
    assert len(list(d.glob("chunk_*.safetensors"))) == 3
    np.testing.assert_allclose(resumed.logits, full.logits, rtol=1e-5, atol=1e-6)
    assert np.array_equal(resumed.has_attr, full.has_attr)
    for a, b in zip(resumed.attributions, full.attributions):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    # a fully cached run does no work at all: even a zero-chunk budget succeeds
    again = annotate(teacher, data, tok, ig=ig, attribute_indices=subset, cache_dir=cache, chunk_size=8,
                     max_chunks=0, progress=False)
    assert again.key == full.key
    # other settings -> another key
    other = annotate(teacher, data.head(4), tok, ig=IGConfig(steps=5), cache_dir=cache, progress=False)
    assert other.key != full.key


def test_bad_settings(setup):
    teacher, tok, data = setup
    with pytest.raises(EdgekdValueError, match="steps must be >= 1"):
        annotate(teacher, data, tok, ig=IGConfig(steps=0), progress=False)
    with pytest.raises(EdgekdValueError, match="baseline must be one of"):
        annotate(teacher, data, tok, ig=IGConfig(baseline="noise"), progress=False)
    with pytest.raises(EdgekdValueError, match="out of range"):
        annotate(teacher, data, tok, ig=IGConfig(), attribute_indices=[99], progress=False)
