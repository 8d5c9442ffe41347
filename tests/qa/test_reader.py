import pytest
import torch
from factories import save_tiny_bert

from edgekd.errors import EdgekdValueError
from edgekd.qa.reader import (ReaderConfig, _best_span, encode_reader, load_reader, locate_answer, reader_answer,
                              save_reader, train_reader)
from edgekd.qa.types import Triplet

SUBJECTS = ["we", "the company", "our site", "the app", "this service", "the operator"]
VERBS = ["shares", "sells", "sends", "gives", "discloses", "transfers"]
THINGS = ["your data", "cookies", "location data", "email addresses", "usage logs", "contact details"]
TEXTS = [f"{s} {v} {t} to partners ." for s in SUBJECTS for v in VERBS for t in THINGS[:2]] + \
    ["who gets the data ?", "what is shared ?", "with whom ?", "advertising"] + THINGS


@pytest.fixture(scope="module")
def reader_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("reader")
    return save_tiny_bert(d, TEXTS, classifier=False, hf_tokenizer=True, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _policy_triplets(n):
    """Contexts naming a recipient at varying positions; the answer is always the recipient."""
    out = []
    for i in range(n):
        s, v, t = SUBJECTS[i % 6], VERBS[(i // 6) % 6], THINGS[(i * 5) % 6]
        pre = " ".join(THINGS[:(i % 4)])
        ctx = f"{pre} {s} {v} {t} to partners .".strip()
        out.append(Triplet(ctx, "who gets the data ?", "partners", context_id=f"p{i}", id=f"q{i}"))
    return out


def test_locate_answer():
    c = "We share your data with advertising partners."
    assert locate_answer(Triplet(c, "q", "advertising partners", answer_start=24)) == 24
    assert locate_answer(Triplet(c, "q", "advertising partners", answer_start=3)) == 24  # wrong offset: searched
    assert locate_answer(Triplet(c, "q", "Advertising Partners")) == 24  # case-insensitive
    assert locate_answer(Triplet(c, "q", "the government")) is None


def test_offsets_exact_on_hand_example(reader_dir):
    _, tok, _ = load_reader(reader_dir)
    c = "We share your data with advertising partners."
    f = encode_reader(tok, [c], ["who gets the data?"], ReaderConfig(max_length=64, doc_stride=16), [24],
                      ["advertising partners"])
    assert len(f["input_ids"]) == 1
    sp, ep = f["start_positions"][0], f["end_positions"][0]
    offs = f["offsets"][0]
    assert offs[sp][0] == 24 and offs[ep][1] == 44 and c[offs[sp][0]:offs[ep][1]] == "advertising partners"
    assert tok.convert_ids_to_tokens(f["input_ids"][0][sp:ep + 1]) == ["advertising", "partners"]
    assert offs[0] is None  # [CLS]; question tokens have no context offsets either
    n_ctx = len(tok(c, add_special_tokens=False)["input_ids"])
    assert sum(o is not None for o in offs) == n_ctx and all(o is not None for o in offs[-1 - n_ctx:-1])


def test_doc_stride_windows_label_the_window_with_the_answer(reader_dir):
    _, tok, _ = load_reader(reader_dir)
    filler = " ".join(["cookies"] * 30)
    c = f"{filler} we share your data with advertising partners . {filler}"
    start = c.index("advertising")
    cfg = ReaderConfig(max_length=24, doc_stride=8)
    f = encode_reader(tok, [c], ["who gets the data ?"], cfg, [start], ["advertising partners"])
    assert len(f["input_ids"]) > 3 and set(f["example"]) == {0}
    labelled = 0
    for ids, offs, sp, ep in zip(f["input_ids"], f["offsets"], f["start_positions"], f["end_positions"]):
        assert len(ids) <= 24
        if sp == 0:
            assert ep == 0
            continue
        labelled += 1
        assert c[offs[sp][0]:offs[ep][1]] == "advertising partners"
    assert labelled >= 1


def test_best_span_respects_order_and_length():
    offs = [None, None, (0, 2), (3, 5), (6, 8), (9, 11), None]
    start = torch.tensor([9., 0, 1, 0, 4.5, 0, 9])
    end = torch.tensor([9., 0, 4, 0, 0, 0, 9])
    cfg = ReaderConfig(max_answer_tokens=3, n_best=4)
    # the best start (token 4) has no end after it that beats the pair (2, 2); [CLS] / question never count
    assert _best_span(start, end, offs, cfg) == (5.0, 0, 2)
    end[5] = 3.0
    assert _best_span(start, end, offs, cfg) == (7.5, 6, 11)
    assert _best_span(start, end, offs, ReaderConfig(max_answer_tokens=1, n_best=4)) == (5.0, 0, 2)
    assert _best_span(start, end, [None] * 7, cfg) is None


def test_train_reader_learns_and_roundtrips(reader_dir, tmp_path):
    model, tok, cfg0 = load_reader(reader_dir)
    assert cfg0 is None
    trips = _policy_triplets(24)
    trips.append(Triplet("we keep nothing .", "who gets the data ?", "nobody at all", context_id="x"))  # not a span
    cfg = ReaderConfig(max_length=48, doc_stride=16, epochs=15, lr=3e-3, batch_size=8, dev_fraction=0.2)
    res = train_reader(model, tok, trips, cfg, progress=False)
    assert res.dropped == 1 and res.n_train + res.n_dev == 24
    assert res.dev_after < 0.5 * res.dev_before
    held = "cookies the operator transfers usage logs to partners ."
    assert reader_answer(model, tok, held, "who gets the data ?", cfg) == "partners"
    out = save_reader(model, tok, tmp_path / "r", cfg, extra={"dropped": res.dropped})
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    m2, tok2, cfg2 = load_reader(out)
    assert cfg2 == cfg
    f = encode_reader(tok, [held], ["who gets the data ?"], cfg)
    ids = torch.tensor(f["input_ids"])
    with torch.no_grad():
        a, b = model(input_ids=ids).start_logits, m2(input_ids=ids).start_logits
    assert torch.equal(a, b)
    assert reader_answer(m2, tok2, [held, held], ["who gets the data ?"] * 2, cfg2) == ["partners", "partners"]


def test_reader_bad_inputs(reader_dir, tmp_path):
    model, tok, _ = load_reader(reader_dir)
    with pytest.raises(EdgekdValueError, match="no triplets"):
        train_reader(model, tok, [], ReaderConfig())
    with pytest.raises(EdgekdValueError, match="span"):
        train_reader(model, tok, [Triplet("we keep nothing .", "who ?", "partners")] * 3, ReaderConfig())
    with pytest.raises(EdgekdValueError, match="doc_stride"):
        ReaderConfig(max_length=32, doc_stride=32).validate()
    with pytest.raises(EdgekdValueError, match="max_length"):
        ReaderConfig(max_length=0).validate()
    with pytest.raises(EdgekdValueError, match="empty context"):
        reader_answer(model, tok, "  ", "who ?")
    with pytest.raises(EdgekdValueError, match="as many contexts"):
        reader_answer(model, tok, ["a", "b"], ["who ?"])
    with pytest.raises(EdgekdValueError, match="not a model directory"):
        load_reader(tmp_path)
    with pytest.raises(EdgekdValueError, match="window"):
        reader_answer(model, tok, "we share data .", " ".join(["cookies"] * 40), ReaderConfig(max_length=16, doc_stride=4))
