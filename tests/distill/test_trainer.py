"""The student trainer on a small real TFNS slice: loss falls, best checkpoint, early stopping,
resume from the last checkpoint gives the same weights as an uninterrupted run."""
import json

import numpy as np
import pytest
import torch

from edgekd.data import WordTokenizer
from edgekd.distill.checkpoint import load_optimizer, save_optimizer
from edgekd.distill.trainer import EncodedSplit, TrainConfig, lr_factor, train_student
from edgekd.errors import EdgekdValueError
from edgekd.students import BiLSTMAttentionStudent
from edgekd.teacher import IGConfig, Teacher, annotate


@pytest.fixture(scope="module")
def splits(tfns_small, tiny_teacher_dir):
    torch.set_num_threads(1)
    tr, va = tfns_small
    tok = WordTokenizer.train(tr.texts, max_length=32)
    teacher = Teacher.from_pretrained(tiny_teacher_dir, max_length=32)
    tr_ann = annotate(teacher, tr, tok, ig=IGConfig(steps=2, batch_size=16), attribute_indices=range(0, 600, 15),
                      progress=False)
    va_ann = annotate(teacher, va, tok, progress=False)
    train = EncodedSplit(tok.encode_batch(tr.texts), tr.labels, tr_ann.logits, tr_ann.attributions, tr_ann.has_attr)
    valid = EncodedSplit(tok.encode_batch(va.texts), va.labels, va_ann.logits)
    return tok, train, valid


def _student(tok, seed=0):
    torch.manual_seed(seed)
    return BiLSTMAttentionStudent(tok.vocab_size, embed_dim=16, hidden_size=16, num_classes=3,
                                  label_names=["bearish", "bullish", "neutral"], backend="reference")


def test_loss_falls_best_checkpoint_and_log(splits, tmp_path):
    tok, train, valid = splits
    cfg = TrainConfig(method="none", epochs=3, batch_size=32, lr=3e-3, patience=5)
    lines = []
    res = train_student(_student(tok), train, valid, cfg, tmp_path / "none", progress=False, log=lines.append)
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    log = [json.loads(x) for x in (tmp_path / "none" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3] and all("valid_macro_f1" in r for r in log)
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    best = BiLSTMAttentionStudent.from_pretrained(res.best_dir)
    assert max(r["valid_macro_f1"] for r in log) == pytest.approx(res.best_valid["macro_f1"])
    assert log[res.best_epoch - 1].get("best") is True
    assert best.num_parameters() == _student(tok).num_parameters()


def test_resume_gives_the_uninterrupted_result(splits, tmp_path):
    tok, train, valid = splits
    cfg = TrainConfig(method="dixtill", epochs=2, batch_size=64, lr=3e-3, optimizer="adamw", schedule="linear",
                      warmup_ratio=0.1, patience=5)
    a = _student(tok)
    ra = train_student(a, train, valid, cfg, tmp_path / "a", progress=False, log=None)
    b = _student(tok)
    r1 = train_student(b, train, valid, cfg, tmp_path / "b", progress=False, log=None, max_epochs_this_run=1)
    assert [h["epoch"] for h in r1.history] == [1]
    b2 = _student(tok, seed=123)  # a fresh process would start from other weights; resume loads them
    r2 = train_student(b2, train, valid, cfg, tmp_path / "b", progress=False, log=None)
    assert r2.resumed_from == 1 and [h["epoch"] for h in r2.history] == [1, 2]
    for (k, va_), (_, vb) in zip(a.state_dict().items(), b2.state_dict().items()):
        torch.testing.assert_close(va_, vb, rtol=1e-5, atol=1e-6, msg=k)
    assert "train_xai" in ra.history[0] and ra.history[-1]["valid_macro_f1"] == pytest.approx(
        r2.history[-1]["valid_macro_f1"], abs=1e-6)
    # a finished run is not trained again
    r3 = train_student(_student(tok), train, valid, cfg, tmp_path / "b", progress=False, log=None)
    assert r3.resumed_from == 2 and len(r3.history) == 2


def test_early_stopping(splits, tmp_path):
    tok, train, valid = splits
    cfg = TrainConfig(method="kl", epochs=6, lr=1e-9, patience=1, tau=2.0)
    res = train_student(_student(tok), train, valid, cfg, tmp_path / "kl", progress=False, log=None)
    assert len(res.history) == 2 and res.history[-1].get("early_stop") is True and res.best_epoch == 1


def test_optimizer_state_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    save_optimizer(opt, tmp_path)
    assert not list(tmp_path.glob("*.pt")) and (tmp_path / "optimizer.safetensors").exists()
    opt2 = torch.optim.Adam(m.parameters(), lr=0.5)
    load_optimizer(opt2, tmp_path)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 0.1
    for pid in s1["state"]:
        for k in s1["state"][pid]:
            torch.testing.assert_close(torch.as_tensor(s1["state"][pid][k]), torch.as_tensor(s2["state"][pid][k]))
    with pytest.raises(EdgekdValueError, match="checkpoint optimizer is Adam"):
        load_optimizer(torch.optim.SGD(m.parameters(), lr=0.1), tmp_path)


def test_schedules_and_bad_config(splits, tmp_path):
    lin = TrainConfig(schedule="linear", warmup_ratio=0.1)
    assert lr_factor(lin, 0, 100) == pytest.approx(0.1) and lr_factor(lin, 9, 100) == pytest.approx(1.0)
    assert lr_factor(lin, 55, 100) == pytest.approx(0.5)
    cos = TrainConfig(schedule="cosine")
    assert lr_factor(cos, 50, 100) == pytest.approx(0.5) and lr_factor(cos, 0, 100) == pytest.approx(1.0)
    tok, train, valid = splits
    no_attr = EncodedSplit(train.ids, train.labels, train.teacher_logits)
    with pytest.raises(EdgekdValueError, match="needs teacher attributions"):
        train_student(_student(tok), no_attr, valid, TrainConfig(method="dixtill"), tmp_path, progress=False)
    with pytest.raises(EdgekdValueError, match="optimizer must be one of"):
        train_student(_student(tok), train, valid, TrainConfig(optimizer="lbfgs"), tmp_path, progress=False)
    with pytest.raises(EdgekdValueError, match="words but"):
        EncodedSplit([[2, 3]], np.array([0]), np.zeros((1, 3)), [np.zeros(3, np.float32)])
