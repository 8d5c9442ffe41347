"""Teacher fine-tuning on a tiny random BERT: trains, saves safetensors, reuses its record."""
import json

import pytest
import torch

from edgekd.errors import EdgekdValueError
from edgekd.teacher import FinetuneConfig, Teacher, finetune_teacher


def test_finetune_saves_and_reuses(tiny_teacher_dir, tfns_small, tmp_path):
    tr, va = tfns_small
    train, valid = tr.head(48), va.head(24)
    cfg = FinetuneConfig(epochs=1, lr=1e-3, batch_size=8, max_length=24)
    before = Teacher.from_pretrained(tiny_teacher_dir, max_length=24).logits(valid.texts)
    teacher, rec = finetune_teacher(tiny_teacher_dir, train, tmp_path / "t", valid=valid, config=cfg, progress=False)
    assert rec["reused"] is False and rec["steps"] == 6 and rec["train_examples"] == 48
    assert 0 <= rec["valid"]["accuracy"] <= 1 and (tmp_path / "t" / "model.safetensors").exists()
    assert not list((tmp_path / "t").glob("*.bin"))
    assert teacher.label_names == ["bearish", "bullish", "neutral"]
    after = teacher.logits(valid.texts)
    assert not torch.allclose(torch.from_numpy(before), torch.from_numpy(after))
    # the same settings and data: the saved teacher is loaded, not trained again
    t2, rec2 = finetune_teacher(tiny_teacher_dir, train, tmp_path / "t", valid=valid, config=cfg, progress=False)
    assert rec2["reused"] is True and t2.fingerprint() == teacher.fingerprint()
    torch.testing.assert_close(torch.from_numpy(t2.logits(valid.texts)), torch.from_numpy(after))
    # other settings: trained again
    _, rec3 = finetune_teacher(tiny_teacher_dir, train, tmp_path / "t", config=FinetuneConfig(epochs=0.5, batch_size=8,
                               max_length=24), progress=False)
    assert rec3["reused"] is False and rec3["steps"] == 3
    assert json.loads((tmp_path / "t" / "edgekd_teacher.json").read_text())["steps"] == 3


def test_teacher_errors(tmp_path, tiny_teacher_dir, tfns_small):
    with pytest.raises(EdgekdValueError, match="no config.json"):
        Teacher.from_pretrained(tmp_path)
    with pytest.raises(EdgekdValueError, match="epochs must be > 0"):
        finetune_teacher(tiny_teacher_dir, tfns_small[0], tmp_path / "x", config=FinetuneConfig(epochs=0))
