"""The main job's profiles: TOML files shipped in the package, overrides, notes, the deprecated entry point."""
from __future__ import annotations

import pathlib
import warnings

import pytest

from edgekd.errors import EdgekdValueError
from edgekd.pipeline import profile_config, profile_path, profiles
from edgekd.settings import EdgekdDeprecationWarning

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_profiles_are_package_data():
    assert {"quick", "full"} <= set(profiles())
    for name in profiles():
        p = profile_path(name)
        assert p.parent.name == "configs" and p.parent.parent.name == "edgekd" and p.suffix == ".toml"
    # shipped in wheels and sdists: setup.py declares the TOML files as package data
    assert '"configs/*.toml"' in (ROOT / "setup.py").read_text()


def test_every_profile_loads_and_validates_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in profiles():
            cfg = profile_config(name)
            cfg.validate()
            assert cfg.run.profile == name and cfg.run.notes


def test_quick_and_full_settings():
    """The settings the published results were made with (README table, benchmarks/results/distill_tfns.md)."""
    q = profile_config("quick")
    assert (q.teacher.sample, q.teacher.epochs, q.teacher.lr, q.teacher.head_lr_multiplier) == (2000, 1.0, 1e-4, 10.0)
    assert (q.data.sample, q.ig.steps, q.ig.sample, q.ig.valid_sample) == (4000, 8, 500, 150)
    assert (q.train.epochs, q.train.patience, q.eval.ig_steps, q.run.out) == (8, 2, 16, "runs/demo-quick")
    f = profile_config("full")
    assert (f.teacher.sample, f.teacher.epochs, f.teacher.lr, f.data.sample) == (None, 3.0, 5e-5, None)
    assert (f.ig.steps, f.ig.batch_size, f.ig.sample, f.ig.valid_sample) == (50, 4, None, 500)
    assert (f.train.epochs, f.train.patience, f.eval.ig_steps, f.run.out) == (30, 5, 50, "runs/demo-full")


def test_profiles_hand_the_teacher_annotator_and_trainer_the_settings_of_the_published_runs():
    """The settings objects whose hashes key the teacher and annotation caches are those of edgekd 0.1's
    quick and full profiles (so `make demo` reuses the runs on disk and reproduces the tables)."""
    from edgekd.distill.config import TrainConfig
    from edgekd.teacher.config import FinetuneConfig, IGConfig

    q, f = profile_config("quick"), profile_config("full")
    assert q.finetune_config() == FinetuneConfig(epochs=1.0, lr=1e-4, batch_size=16, max_length=64, seed=0,
                                                 head_lr_multiplier=10.0)
    assert q.ig_config() == IGConfig(steps=8, batch_size=8)
    assert q.train_config("kl") == TrainConfig(method="kl", epochs=8, patience=2, seed=0)
    assert f.finetune_config() == FinetuneConfig(epochs=3.0, lr=5e-5, batch_size=16, max_length=64, seed=0,
                                                 head_lr_multiplier=10.0)
    assert f.ig_config() == IGConfig(steps=50, batch_size=4)
    assert f.train_config("dixtill") == TrainConfig(method="dixtill", epochs=30, patience=5, seed=0)


def test_overrides_and_notes_describe_the_settings_used():
    q = profile_config("quick")
    assert any("2,000" in n and "teacher" in n for n in q.run.notes)
    small = profile_config("quick", {"teacher.sample": 100, "data.sample": 300, "ig.steps": 2, "train.epochs": 1})
    text = "\n".join(small.run.notes)
    assert "100 (stratified) training texts" in text and "300 (stratified)" in text
    assert "IG with 2 steps" in text and "at most 1 epochs" in text
    assert "2,000" not in text and "4,000" not in text
    assert profile_config("quick", {"run.notes": ["mine"]}).run.notes == ["mine"]
    with pytest.raises(EdgekdValueError, match="unknown setting 'train.epoch'"):
        profile_config("quick", {"train.epoch": 3})


def test_profile_from_a_file_and_unknown_profile(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text("[train]\nepochs = 2\n")
    cfg = profile_config(p)
    assert cfg.train.epochs == 2 and cfg.run.profile == "mine"
    with pytest.raises(EdgekdValueError, match="unknown profile 'nope'"):
        profile_config("nope")
    with pytest.raises(EdgekdValueError, match="does not exist"):
        profile_config(tmp_path / "missing.toml")


def test_flat_keywords_still_work():
    with pytest.warns(EdgekdDeprecationWarning):
        q = profile_config("quick", epochs=2)
    assert q.train.epochs == 2 and q.ig.steps == 8 and q.run.notes
