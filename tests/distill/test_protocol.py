"""The honest protocol: a dev split carved out of the training data selects; the validation split scores once."""
from __future__ import annotations

from edgekd.distill import DistillConfig
from edgekd.distill.api import Distiller
from edgekd.distill.report import protocol_line


def _prepared(tmp_path, **data):
    cfg = DistillConfig(data={"limit": 300, "valid_sample": 40, **data}, student={"embeddings": "random"},
                        run={"out": str(tmp_path), "progress": False})
    d = Distiller(cfg, log=None)
    d.prepare_data()
    return d


def test_dev_split_is_held_out_of_everything_the_models_learn_from(tmp_path, tfns_dir):
    d = _prepared(tmp_path, sample=200)
    assert len(d.dev) == 30 and len(d.full_train) == 270 and len(d.train) == 200
    dev = set(zip(d.dev.texts, d.dev.labels))
    # the students' sample and the teacher's pool come from the other 270 rows
    assert not dev & set(zip(d.full_train.texts, d.full_train.labels))
    assert d.selection_split().labels.tolist() == d.dev.labels
    p = d.protocol()
    assert p == {"selection": "dev", "dev": 30, "dev_fraction": 0.1, "valid": 40, "seed": 0}
    line = protocol_line({"protocol": p})
    assert line.startswith("Accuracy, macro-F1 and agreement on the validation split (40 texts), touched once")
    assert "dev split of 30 training texts (10%, class-stratified, seed 1)" in line


def test_dev_fraction_zero_selects_on_validation_and_says_so(tmp_path, tfns_dir):
    d = _prepared(tmp_path, dev_fraction=0.0)
    assert d.dev is None and len(d.full_train) == 300
    assert d.protocol()["selection"] == "validation"
    assert "ALSO selected" in protocol_line({"protocol": d.protocol()})
    assert protocol_line({}) == ""  # reports written before the protocol field
