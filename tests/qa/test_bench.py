"""edgekd.qa.bench: the legal-QA table protocol shared by `edgekd demo --task legal-qa` and benchmarks/qa_students.py."""
import pytest
from factories import llama_word_tokenizer, tiny_llama

from edgekd.errors import EdgekdValueError
from edgekd.qa.bench import generative_eval, golds, load_teacher, model_size_mb, short_pairs, train_test_pairs
from edgekd.qa.types import Triplet


def _t(i, words, doc):
    return Triplet(" ".join(f"w{4 + (i + k) % 40}" for k in range(words)), f"w{4 + i % 40}", f"w{4 + (i + 1) % 40}",
                   context_id=f"{doc}#{i}", id=f"q{i}", meta={"answers": [f"w{4 + (i + 1) % 40}", "w5"]} if i % 2 else {})


def test_selection_keeps_short_contexts_spread_over_documents():
    pool = [_t(i, 3 if i % 3 else 9, f"d{i % 4}") for i in range(40)]
    test = [_t(i, 4, f"t{i % 5}") for i in range(20)]
    train, sel, n = train_test_pairs(pool, test, train_n=8, test_n=5, max_context_words=5, seed=1)
    assert n == len(short_pairs(pool, 5)) == 26 and len(train) == 8 and len(sel) == 5
    assert all(len(t.context.split()) <= 5 for t in train + sel)
    assert len({t.context_id.split("#")[0] for t in train}) == 4 and len({t.context_id.split("#")[0] for t in sel}) == 5
    assert train_test_pairs(pool, test, train_n=8, test_n=5, max_context_words=5, seed=1)[0] == train  # seeded
    assert golds(pool[1]) == ["w6", "w5"] and golds(pool[0]) == ["w5"]
    with pytest.raises(EdgekdValueError, match="no training pair has a context of at most 2 words"):
        train_test_pairs(pool, test, train_n=8, test_n=5, max_context_words=2)
    with pytest.raises(EdgekdValueError, match="max_context_words must be an int >= 1"):
        short_pairs(pool, 0)


def test_generative_eval_scores_and_times_and_size_counts_tied_weights_once(tmp_path):
    model, tok = tiny_llama(seed=1), llama_word_tokenizer()
    test = [_t(i, 5, "d") for i in range(5)]
    ev = generative_eval(model, tok, test, max_new_tokens=3, batch_size=2)
    assert len(ev["preds"]) == 5 and set(ev["metrics"]) >= {"exact_match", "f1", "rouge_l"}
    assert ev["speed"]["s_per_question"] == pytest.approx(ev["speed"]["seconds"] / 5) and ev["speed"]["gen_tokens"] >= 5
    n = sum(p.numel() for p in model.parameters())  # parameters() yields the tied embedding once
    assert model_size_mb(model) == pytest.approx(4 * (n + sum(b.numel() for b in model.buffers()
                                                              if b.is_floating_point())) / 1e6)
    with pytest.raises(EdgekdValueError, match="no test questions"):
        generative_eval(model, tok, [])
    with pytest.raises(EdgekdValueError, match="does not exist"):
        load_teacher(str(tmp_path / "missing"))
