import pytest
import torch
from factories import llama_word_tokenizer, tiny_llama

from edgekd.errors import EdgekdValueError
from edgekd.qa.students import (QA_SYSTEM, QAStudentConfig, answer, encode_qa, make_student, qa_pairs, qa_prompt,
                                resolve_loss, split_dev, train_qa_student)
from edgekd.qa.types import Triplet


def _triplets(n=12, per_para=2):
    """Word contexts ``w4 .. w43``; the answer of question ``w<q>`` is the two words after ``w<q>``."""
    out = []
    for i in range(n):
        p = i // per_para
        ctx = " ".join(f"w{4 + (p * 5 + k) % 40}" for k in range(8))
        words = ctx.split()
        j = 1 + (i % per_para) * 3
        q = f"w{4 + (i * 7) % 40} {words[j]}"
        ans = " ".join(words[j + 1:j + 3])
        out.append(Triplet(ctx, q, ans, context_id=f"p{p}", id=f"q{i}"))
    return out


def test_prompt_plain_and_chat():
    tok = llama_word_tokenizer()
    p = qa_prompt(tok, "w4 w5", "w6")
    assert p == f"{QA_SYSTEM}\n\nContext: w4 w5\nQuestion: w6\nAnswer:"
    shot = qa_prompt(tok, "w4 w5", "w6", shots=[("w7", "w8", "w9")])
    assert shot == f"{QA_SYSTEM}\n\nContext: w7\nQuestion: w8\nAnswer: w9\n\nContext: w4 w5\nQuestion: w6\nAnswer:"
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    chat = qa_prompt(tok, "w4 w5", "w6")
    assert chat == f"<system>{QA_SYSTEM}\n<user>Context: w4 w5\nQuestion: w6\n<assistant>"
    assert qa_pairs(tok, [Triplet("w4 w5", "w6", " w5 ")]) == [(chat, "w5")]
    with pytest.raises(EdgekdValueError, match="question"):
        qa_prompt(tok, "w4", "   ")


def test_prompt_masking_exact():
    tok = llama_word_tokenizer()
    trips = _triplets(3)
    d = encode_qa(tok, trips, max_length=128)
    for r, t in enumerate(trips):
        prompt_ids = tok(qa_prompt(tok, t.context, t.question), add_special_tokens=False)["input_ids"]
        ans_ids = tok(" " + t.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(prompt_ids) + len(ans_ids)
        assert d["input_ids"][r, :n].tolist() == prompt_ids + ans_ids
        assert d["labels"][r, :len(prompt_ids)].eq(-100).all()
        assert d["labels"][r, len(prompt_ids):n].tolist() == ans_ids
        assert d["labels"][r, n:].eq(-100).all() and d["attention_mask"][r, n:].eq(0).all()
    with pytest.raises(EdgekdValueError, match="max_length"):
        encode_qa(tok, trips, max_length=10)
    with pytest.raises(EdgekdValueError, match="no triplets"):
        encode_qa(tok, [], max_length=64)


def test_split_dev_keeps_paragraphs_apart():
    trips = _triplets(12, per_para=3)
    tr, dv = split_dev(trips, 0.25, seed=1)
    assert len(tr) + len(dv) == 12 and dv and tr
    assert not {t.context_id for t in tr} & {t.context_id for t in dv}
    one = [Triplet("w4 w5", f"w{6 + i}", "w5", context_id="p") for i in range(4)]
    tr, dv = split_dev(one, 0.25)
    assert len(dv) == 1 and len(tr) == 3
    with pytest.raises(EdgekdValueError, match="at least 2"):
        split_dev(one[:1], 0.5)
    with pytest.raises(EdgekdValueError, match="no triplets"):
        split_dev([], 0.5)


def test_make_student_block_influence_and_bad_k():
    teacher, tok = tiny_llama(layers=4), llama_word_tokenizer()
    student, keep = make_student(teacher, 2, _triplets(4), tokenizer=tok)
    assert len(keep) == 2 and student.config.num_hidden_layers == 2
    from edgekd.llm.prune import block_influence, calibration_batches, select_layers

    d = encode_qa(tok, _triplets(4), 384)
    assert keep == select_layers(block_influence(teacher, calibration_batches(d["input_ids"], d["attention_mask"], 4)), 2)
    assert make_student(teacher, 2, _triplets(4), tokenizer=tok, method="even")[1] == [0, 3]
    for k in (0, 5, 2.0):
        with pytest.raises(EdgekdValueError, match="keep_layers"):
            make_student(teacher, k, _triplets(4), tokenizer=tok)
    with pytest.raises(EdgekdValueError, match="tokenizer"):
        make_student(teacher, 2, _triplets(4))


def test_sft_reduces_dev_loss_and_answer_learns():
    tok = llama_word_tokenizer()
    model = tiny_llama(layers=2)
    # every context ends in "w40 w41", the answer of every question: learnable, so dev loss falls too
    trips = [Triplet(t.context + " w40 w41", t.question, "w40 w41", t.context_id, id=t.id) for t in _triplets(16, 2)]
    cfg = QAStudentConfig(loss="ce", epochs=12, lr=1e-2, batch_size=4, dev_fraction=0.25, max_length=64)
    res = train_qa_student(model, tok, trips, config=cfg, progress=False)
    assert res.n_dev == 4 and res.n_train == 12
    assert res.dev_after < res.dev_before
    first, last = sum(res.losses[:3]) / 3, sum(res.losses[-3:]) / 3
    assert last < 0.5 * first
    got = answer(model, tok, [t.context for t in trips[:4]], [t.question for t in trips[:4]], max_new_tokens=4)
    assert got == ["w40 w41"] * 4


def test_kd_trains_with_teacher_and_guards():
    tok = llama_word_tokenizer()
    teacher = tiny_llama(layers=4)
    trips = _triplets(8)
    student, _ = make_student(teacher, 2, trips, tokenizer=tok)
    cfg = QAStudentConfig(loss="fkl", ce_weight=0.5, epochs=6, lr=1e-2, batch_size=4, dev_fraction=0.25, max_length=64)
    res = train_qa_student(student, tok, trips, teacher=teacher, config=cfg, progress=False)
    assert res.config["loss"] == "forward_kl"
    assert sum(res.losses[-2:]) < sum(res.losses[:2])
    with pytest.raises(EdgekdValueError, match="teacher"):
        train_qa_student(student, tok, trips, config=QAStudentConfig(loss="fkl"), progress=False)
    with pytest.raises(EdgekdValueError, match="SFT"):
        train_qa_student(student, tok, trips, teacher=teacher, config=QAStudentConfig(loss="ce"), progress=False)
    with pytest.raises(EdgekdValueError, match="no triplets"):
        train_qa_student(student, tok, [], config=QAStudentConfig(loss="ce"), progress=False)
    with pytest.raises(EdgekdValueError, match="dev_fraction"):
        train_qa_student(student, tok, trips, config=QAStudentConfig(loss="ce", dev_fraction=1.0), progress=False)
    assert resolve_loss("rkl") == "reverse_kl" and resolve_loss("jsd") == "jsd"


@torch.no_grad()
def _greedy_one(model, tok, ctx, q, n):
    ids = tok(qa_prompt(tok, ctx, q), add_special_tokens=False)["input_ids"]
    out = []
    for _ in range(n):
        nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
    return tok.decode(out, skip_special_tokens=True).strip().split("\n")[0].strip()


def test_answer_batched_matches_unbatched_greedy():
    tok, model = llama_word_tokenizer(), tiny_llama(layers=2, seed=3)
    trips = _triplets(5)
    trips[0] = Triplet("w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14", "w5", "w6")  # a longer prompt: left padding
    ref = [_greedy_one(model, tok, t.context, t.question, 5) for t in trips]
    got = answer(model, tok, [t.context for t in trips], [t.question for t in trips], max_new_tokens=5, batch_size=3)
    assert got == ref
    assert answer(model, tok, trips[1].context, trips[1].question, max_new_tokens=5) == ref[1]
    with pytest.raises(EdgekdValueError, match="2 contexts but 1"):
        answer(model, tok, ["w4", "w5"], ["w6"])
    with pytest.raises(EdgekdValueError, match="max_new_tokens"):
        answer(model, tok, "w4", "w5", max_new_tokens=0)
