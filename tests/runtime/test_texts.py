"""Texts given to Bundle.predict: the documented rules, and a hypothesis fuzz (surrogates,
control characters, astral planes, empty and very long texts) that never crashes, never gives
NaN, and gives the same fp32 label alone and in a batch."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factories import TEXTS
from edgekd.errors import EdgekdValueError
from edgekd.runtime import Bundle
from edgekd.runtime.preprocess import clean_text, validate_texts


@pytest.fixture(scope="module")
def fp32(student_bundle):
    return Bundle.load(student_bundle, precision="fp32")


def test_rules():
    assert validate_texts("one text") == ["one text"]
    assert validate_texts(t for t in ["a", "b"]) == ["a", "b"]
    assert validate_texts(np.array(["a", "b"])) == ["a", "b"]
    with pytest.raises(EdgekdValueError, match=r"texts\[2\]: expected a string, got int"):
        validate_texts(["a", "b", 3])
    with pytest.raises(EdgekdValueError, match="dict"):
        validate_texts({"a": 1})
    with pytest.raises(EdgekdValueError, match="set"):
        validate_texts({"a", "b"})
    with pytest.raises(EdgekdValueError, match="bytes"):
        validate_texts(b"abc")
    with pytest.raises(EdgekdValueError, match="at least one"):
        validate_texts(iter([]))


def test_surrogates():
    assert clean_text("a\ud800b") == "a\ufffdb"  # lone high surrogate
    assert clean_text("x\udcff") == "x\ufffd"  # surrogateescape byte from argv
    assert clean_text("\ud83d\ude00!") == "\U0001F600!"  # a pair is joined
    assert clean_text("plain") == "plain"


def test_lone_surrogate_in_a_batch(fp32):
    p = fp32.predict(["fine", "bad \ud800 text", "also fine"])
    assert len(p) == 3 and not np.isnan(p.probabilities).any()
    assert p.explanations[1][1][0] == "\ufffd"


def test_generator_gives_explanations(fp32):
    p = fp32.predict(t for t in TEXTS[:3])
    assert len(p) == 3 and len(p.explanations) == 3 and all(p.explanations)


def test_urls_come_back_whole(fp32):
    text = "Read this https://t.co/G9Zdi1boy5 now, $AAPL +3.5%"
    words = [w for w, _ in fp32.predict(text).explanations[0]]
    assert words == ["Read", "this", "https://t.co/G9Zdi1boy5", "now,", "$AAPL", "+3.5%"]


def test_dict_refused(fp32):
    with pytest.raises(EdgekdValueError, match="dict"):
        fp32.predict({"Oil slumps": 1})


_chars = st.characters(exclude_categories=())  # every code point, surrogates included
_text = st.one_of(st.text(_chars, max_size=40), st.sampled_from(TEXTS + ["", " ", "\n\t", "\x00", "\u200b"]),
                  st.text(_chars, min_size=300, max_size=400))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.lists(_text, min_size=1, max_size=6))
def test_fuzz(fp32, texts):
    p = fp32.predict(texts)
    assert len(p) == len(texts) and np.isfinite(p.probabilities).all()
    np.testing.assert_allclose(p.probabilities.sum(1), 1.0, atol=1e-5)
    for k, t in enumerate(texts):
        clean = clean_text(t)
        for word, weight in p.explanations[k]:
            assert word in clean and np.isfinite(weight)
        alone = fp32.predict(t)
        assert alone.labels[0] == p.labels[k]
        np.testing.assert_allclose(alone.probabilities[0], p.probabilities[k], atol=1e-5)
