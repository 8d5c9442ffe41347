"""DistillConfig: nested tables, TOML round trip, dotted overrides, the old flat keys, errors."""
from __future__ import annotations

import dataclasses
import tomllib
import warnings

import pytest

from edgekd.distill.config import DistillConfig, EvalConfig, RunConfig, TrainSettings
from edgekd.distill.legacy import FLAT_KEYS
from edgekd.errors import EdgekdValueError
from edgekd.settings import EdgekdDeprecationWarning


def test_tables_are_the_owning_modules_dataclasses():
    from edgekd.data.config import DataConfig
    from edgekd.students.config import StudentConfig
    from edgekd.teacher.config import AnnotateConfig, FinetuneConfig, IGConfig, TeacherConfig

    cfg = DistillConfig()
    assert [f.name for f in dataclasses.fields(cfg)] == ["data", "teacher", "ig", "student", "train", "eval", "run"]
    assert isinstance(cfg.data, DataConfig) and isinstance(cfg.student, StudentConfig)
    assert isinstance(cfg.teacher, TeacherConfig) and isinstance(cfg.teacher, FinetuneConfig)
    assert isinstance(cfg.ig, AnnotateConfig) and isinstance(cfg.ig, IGConfig)
    assert isinstance(cfg.train, TrainSettings) and isinstance(cfg.eval, EvalConfig) and isinstance(cfg.run, RunConfig)
    # the parts handed to the teacher and the annotator are the base dataclasses (cache keys unchanged)
    assert type(cfg.finetune_config()) is FinetuneConfig and type(cfg.ig_config()) is IGConfig
    assert cfg.finetune_config() == FinetuneConfig()  # run.seed 0 = FinetuneConfig's seed
    assert cfg.ig_config() == IGConfig()


def test_toml_round_trip(tmp_path):
    cfg = DistillConfig().override({"train.epochs": 3, "train.methods": ["kl"], "teacher.lr": 1e-4,
                                    "ig.sample": 500, "data.label_names": ["a", "b"], "run.notes": ["x"],
                                    "train.grad_clip": None, "student.max_vocab": "none"})
    assert cfg.train.grad_clip is None and cfg.student.max_vocab is None
    p = tmp_path / "c.toml"
    p.write_text(cfg.to_toml())
    assert DistillConfig.from_toml(p) == cfg
    assert DistillConfig.from_dict(tomllib.loads(DistillConfig().to_toml())) == DistillConfig()


def test_nested_tables(tmp_path):
    p = tmp_path / "distill.toml"
    p.write_text('[train]\nmethods = ["none", "dixtill"]\nepochs = 3\n[teacher]\nepochs = 2\nmax_length = 48\n'
                 '[ig]\nsteps = 7\n[student]\nhidden_size = 8\n[run]\nout = "runs/x"\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new shape warns about nothing
        cfg = DistillConfig.from_toml(p, **{"train.alpha": 0.7})
    assert cfg.train.methods == ["none", "dixtill"] and cfg.train.epochs == 3 and cfg.train.alpha == 0.7
    assert cfg.teacher.epochs == 2.0 and isinstance(cfg.teacher.epochs, float) and cfg.teacher.max_length == 48
    assert cfg.ig.steps == 7 and cfg.student.hidden_size == 8 and cfg.run.out == "runs/x"
    assert DistillConfig(train={"epochs": 3}) == DistillConfig(train=TrainSettings(epochs=3))


def test_old_flat_keys_warn_and_map(tmp_path):
    p = tmp_path / "old.toml"
    p.write_text('methods = ["none", "dixtill"]\nepochs = 3\ntrain_limit = 400\n[teacher]\nepochs = 2.0\n'
                 'teacher_lr = 1e-4\n[annotate]\nig_steps = 7\nattribute_limit = 50\n')
    with pytest.warns(EdgekdDeprecationWarning) as rec:
        cfg = DistillConfig.from_toml(p)
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 6 and any("'epochs' is deprecated, use 'train.epochs'" in m for m in msgs)
    assert any("'ig_steps' is deprecated, use 'ig.steps'" in m for m in msgs)
    assert cfg.train.methods == ["none", "dixtill"] and cfg.train.epochs == 3 and cfg.data.sample == 400
    assert cfg.teacher.epochs == 2.0 and cfg.teacher.lr == 1e-4 and cfg.ig.steps == 7 and cfg.ig.sample == 50
    # the README's flat-keyword construction of edgekd 0.1
    with pytest.warns(EdgekdDeprecationWarning) as rec:
        old = DistillConfig(train_limit=4000, attribute_limit=500, ig_steps=8, epochs=8, out_dir="runs/api",
                            teacher="some/dir")
    assert any("'out_dir' is deprecated, use 'run.out'" in str(w.message) for w in rec) and len(rec) == 6
    assert (old.data.sample, old.ig.sample, old.ig.steps, old.train.epochs, old.run.out, old.teacher.model) == (
        4000, 500, 8, 8, "runs/api", "some/dir")
    with pytest.warns(EdgekdDeprecationWarning):
        assert old.out_dir == "runs/api" and old.teacher_max_length == 64
    with pytest.warns(EdgekdDeprecationWarning):
        assert DistillConfig().replace(student_seed=9).train.seed == 9


def test_every_old_flat_key_has_a_new_place():
    cfg = DistillConfig()
    for old, new in FLAT_KEYS.items():
        obj = cfg
        for part in new.split("."):
            obj = getattr(obj, part)  # raises if the mapping points nowhere
    assert len(set(FLAT_KEYS.values())) == len(FLAT_KEYS)


@pytest.mark.parametrize("text, match", [
    ("epoch = 3\n", "unknown setting 'epoch'"),
    ("[train]\nepoch = 3\n", r"unknown setting \[train\] epoch"),
    ("[nope]\nx = 1\n", r"unknown setting \[nope\] x"),
    ("[train]\nepochs = 'many'\n", "epochs must be int"),
    ("[train]\nepochs = [\n", "invalid TOML"),
])
def test_bad_toml_names_the_key(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(EdgekdValueError, match=match):
        DistillConfig.from_toml(p)


def test_dotted_overrides():
    cfg = DistillConfig().override({"train.epochs": 3, "ig.steps": 16, "run.out": "runs/x", "teacher.lr": 1})
    assert (cfg.train.epochs, cfg.ig.steps, cfg.run.out, cfg.teacher.lr) == (3, 16, "runs/x", 1.0)
    assert DistillConfig().train.epochs == 10  # a copy; the defaults are untouched
    for bad, match in [("train.epoch", "unknown setting 'train.epoch'"), ("nope.x", "unknown setting 'nope.x'"),
                       ("train", "is a table"), ("train.epochs.x", "has no sub-keys")]:
        with pytest.raises(EdgekdValueError, match=match):
            DistillConfig().override({bad: 1})
    with pytest.raises(EdgekdValueError, match="unknown setting 'epoch'"):
        DistillConfig().override({"epoch": 1})
    with pytest.raises(EdgekdValueError, match="seed must be int"):
        DistillConfig().override({"run.seed": 1.5})
    with pytest.raises(EdgekdValueError, match="must be a list"):
        DistillConfig().override({"train.methods": 3})


def test_student_seed_varies_the_students_only():
    cfg = DistillConfig(run={"seed": 4})
    assert cfg.resolved_student_seed == 4 and cfg.train_config("kl").seed == 4 and cfg.finetune_config().seed == 4
    cfg = DistillConfig(run={"seed": 4}, train={"seed": 9})
    assert cfg.resolved_student_seed == 9 and cfg.train_config("kl").seed == 9 and cfg.run.seed == 4
    assert cfg.finetune_config().seed == 4 and cfg.train_config("kl").method == "kl"
    cfg.validate()
    with pytest.raises(EdgekdValueError, match="seed must be an int"):
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed="x")).validate()


def test_validate_and_device():
    import torch

    assert DistillConfig(run={"device": "cpu"}).resolved_device == "cpu"
    assert DistillConfig().resolved_device == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(EdgekdValueError, match="device must be"):
        DistillConfig(run={"device": "tpu"}).validate()
    with pytest.raises(EdgekdValueError, match="unknown"):
        DistillConfig(train={"methods": ["nope"]}).validate()
    with pytest.raises(EdgekdValueError, match="embed_dim=50"):
        DistillConfig(student={"embed_dim": 8}).validate()
    with pytest.raises(EdgekdValueError, match="give both train and valid"):
        DistillConfig(data={"train": "a.csv"}).validate()
    with pytest.raises(EdgekdValueError, match=r"\[ig\] sample must be >= 1"):
        DistillConfig(ig={"sample": 0}).validate()
