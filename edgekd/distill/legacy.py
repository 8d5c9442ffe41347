"""The flat settings of edgekd 0.1's ``DistillConfig``, mapped to the nested tables (deprecated).

``DistillConfig(train_limit=4000)``, a top-level TOML key ``epochs = 8``, a table that prefixed
its keys (``[annotate] ig_steps = 8``) and ``--set ig_steps=8`` keep working for one release and
warn once per key with :class:`edgekd.errors.EdgekdDeprecationWarning`.
"""
from __future__ import annotations

import warnings
from typing import Any

from edgekd.errors import EdgekdValueError
from edgekd.errors import EdgekdDeprecationWarning

# old flat name -> dotted new name
FLAT_KEYS: dict[str, str] = {
    "train_path": "data.train", "valid_path": "data.valid", "text_column": "data.text_column",
    "label_column": "data.label_column", "label_names": "data.label_names",
    "train_limit": "data.sample", "valid_limit": "data.valid_sample",
    "teacher": "teacher.model", "encoder": "teacher.encoder", "teacher_dir": "teacher.dir",
    "teacher_train_limit": "teacher.sample", "teacher_epochs": "teacher.epochs", "teacher_lr": "teacher.lr",
    "teacher_batch_size": "teacher.batch_size", "teacher_max_length": "teacher.max_length",
    "teacher_head_lr_multiplier": "teacher.head_lr_multiplier",
    "ig_steps": "ig.steps", "ig_baseline": "ig.baseline", "ig_method": "ig.method", "ig_batch_size": "ig.batch_size",
    "ig_internal_batch_size": "ig.internal_batch_size", "attribute_limit": "ig.sample",
    "eval_attribute_limit": "ig.valid_sample", "chunk_size": "ig.chunk_size",
    **{k: f"student.{k}" for k in ("embeddings", "embed_dim", "hidden_size", "attention_dim", "dropout",
                                   "freeze_embeddings", "min_frequency", "max_vocab", "max_length", "backend")},
    **{k: f"train.{k}" for k in ("methods", "variant", "alpha", "tau", "epochs", "batch_size", "optimizer", "lr",
                                 "weight_decay", "schedule", "warmup_ratio", "grad_clip", "patience")},
    "student_seed": "train.seed", "top_k": "eval.top_k", "student_ig_steps": "eval.ig_steps",
    "seed": "run.seed", "out_dir": "run.out", "cache_dir": "run.cache_dir", "threads": "run.threads",
    "device": "run.device", "progress": "run.progress", "resume": "run.resume", "profile": "run.profile",
    "notes": "run.notes",
}
_SECTIONS = ("data", "teacher", "ig", "student", "train", "eval", "run")


def warn_flat(old: str, where: str, stacklevel: int = 4) -> None:
    warnings.warn(f"{where}: the flat setting {old!r} is deprecated, use {FLAT_KEYS[old]!r}",
                  EdgekdDeprecationWarning, stacklevel=stacklevel)


def flat_to_dotted(flat: dict[str, Any], where: str) -> dict[str, Any]:
    """{old flat name: value} -> {dotted name: value}, warning once per key; unknown names raise."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        if k not in FLAT_KEYS:
            raise EdgekdValueError(f"{where}: unknown setting {k!r}")
        warn_flat(k, where)
        out[FLAT_KEYS[k]] = v
    return out


def split_legacy(d: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a TOML mapping into (nested tables for the new dataclasses, {dotted: value} from old
    flat keys). A key of a known table that is not one of its fields is tried as an old flat name
    (``[teacher] teacher_epochs``, or ``table_key``); an unknown table's keys are old flat names
    (edgekd 0.1 tables only grouped keys: ``[annotate] ig_steps``)."""
    from edgekd.distill.config import DistillConfig
    from edgekd.settings import field_names, section_types

    types = section_types(DistillConfig)
    nested: dict[str, Any] = {}
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            known = set(field_names(types[k])) if k in types else set()
            for k2, v2 in v.items():
                if k2 in known:
                    nested.setdefault(k, {})[k2] = v2
                elif f"{k}_{k2}" in FLAT_KEYS:
                    flat[f"{k}_{k2}"] = v2
                elif k2 in FLAT_KEYS:
                    flat[k2] = v2
                else:
                    raise EdgekdValueError(f"{where}: unknown setting [{k}] {k2}")
        elif k in FLAT_KEYS:
            flat[k] = v
        else:
            raise EdgekdValueError(f"{where}: unknown setting {k!r}")
    return nested, flat_to_dotted(flat, where)
