"""Profiles of the main job: TOML configs shipped in the package (``edgekd/configs/<name>.toml``).

>>> from edgekd.pipeline import profile_config, profiles
>>> profiles()
['default', 'full', 'paper', 'quick']
>>> cfg = profile_config("quick", {"train.epochs": 3})
>>> cfg.train.epochs, cfg.ig.steps, cfg.run.profile
(3, 8, 'quick')

A profile is a config file like any other (``edgekd distill --config FILE`` reads the same
format); ``--profile`` also takes a path to one. The notes printed with the table describe the
settings actually used, after the overrides.

Other tasks of ``edgekd demo --task`` keep their profiles in a folder of their own
(``edgekd/configs/<task>/<name>.toml``; ``profiles("legal-qa")``), read by their own config class
(:func:`edgekd.pipeline.legal_qa.legal_qa_config`).
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from edgekd.distill.config import DistillConfig
from edgekd.errors import EdgekdValueError
from edgekd.settings import load_toml


TASKS = ("tfns", "legal-qa")


def _profile_dir(task: str = "tfns"):
    if task not in TASKS:
        raise EdgekdValueError(f"unknown task {task!r}; choose from {list(TASKS)}")
    root = resources.files("edgekd") / "configs"
    return root if task == "tfns" else root / task


def profiles(task: str = "tfns") -> list[str]:
    """The names of the shipped profiles of ``task`` (``tfns``: ``edgekd/configs/*.toml``; another
    task: ``edgekd/configs/<task>/*.toml``)."""
    return sorted(p.name[: -len(".toml")] for p in _profile_dir(task).iterdir()
                  if p.name.endswith(".toml") and p.is_file())


def profile_path(profile: str | os.PathLike, task: str = "tfns") -> Path:
    """A shipped profile's TOML file, or ``profile`` itself when it is a path to a file."""
    p = Path(profile)
    if p.suffix == ".toml" or os.sep in str(profile):
        if not p.is_file():
            raise EdgekdValueError(f"profile file {p} does not exist")
        return p
    f = _profile_dir(task) / f"{profile}.toml"
    if not f.is_file():
        what = "profile" if task == "tfns" else f"{task} profile"
        raise EdgekdValueError(f"unknown {what} {str(profile)!r}; choose from {profiles(task)} or give a .toml file")
    return Path(str(f))


def profile_config(profile: str | os.PathLike, overrides: dict[str, Any] | None = None, *, where: str = "override",
                   **flat: Any) -> DistillConfig:
    """The settings of ``edgekd demo --profile <profile>``, with ``overrides`` applied
    (``{"train.epochs": 3}``; the old flat keywords ``epochs=3`` still work with a deprecation warning).
    ``where`` names the overrides' source in error messages."""
    path = profile_path(profile)
    cfg = DistillConfig.from_dict(load_toml(path), str(path))
    name = path.stem
    cfg = cfg.override({"run.profile": name})
    items = {**(overrides or {}), **flat}
    if items:
        cfg = cfg.override(items, where)
    # the notes describe the settings actually used (after command-line overrides), not the defaults
    if cfg.run.notes:
        return cfg
    return cfg.override({"run.notes": profile_notes(cfg)})


def profile_notes(cfg: DistillConfig) -> list[str]:
    """One line per shortcut of ``cfg`` against the paper's setting (all data, IG with 50 steps)."""

    def amount(n: int | None) -> str:
        return "all" if n is None else f"{n:,} (stratified)"

    p = f"{cfg.run.profile} profile"
    ig = f"teacher IG with {cfg.ig.steps} steps" + ("" if cfg.ig.steps >= 50 else " (paper: 50)")
    if cfg.ig.sample is None:
        ig += " on every student training text"
    else:
        ig += f" on {cfg.ig.sample:,} of the student training texts; the XAI loss uses only those"
    first = "" if cfg.data.limit is None else f" (from the first {cfg.data.limit:,} rows of the file)"
    return [
        f"{p}: teacher fine-tuned {cfg.teacher.epochs:g} epoch(s) on {amount(cfg.teacher.sample)} training texts{first}",
        f"{p}: students trained on {amount(cfg.data.sample)} training texts, at most {cfg.train.epochs} epochs "
        f"(patience {cfg.train.patience})",
        f"{p}: {ig}",
        f"{p}: explanation agreement on {amount(cfg.ig.valid_sample)} validation texts; "
        f"accuracy/macro-F1 on {amount(cfg.data.valid_sample)} validation texts",
    ] + ([f"{p}: 'all' training texts = all but the dev split ({cfg.data.dev_fraction:.0%}, stratified), which "
          "no model trains on; it selects the students and the baselines"] if cfg.data.dev_fraction > 0 else [])
