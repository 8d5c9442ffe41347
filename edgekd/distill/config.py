"""One config shape for a distillation run (torch-free).

:class:`DistillConfig` composes the settings dataclasses of the modules it configures, each
defined once where it is used, one TOML table each:

=========== ======================================= =========================================
table       dataclass                               used by
=========== ======================================= =========================================
``[data]``    :class:`edgekd.data.config.DataConfig`        data loading and subsets
``[teacher]`` :class:`edgekd.teacher.config.TeacherConfig`  teacher fine-tuning (FinetuneConfig + model)
``[ig]``      :class:`edgekd.teacher.config.AnnotateConfig` teacher annotation (IGConfig + which texts)
``[student]`` :class:`edgekd.students.config.StudentConfig` student architecture and vocabulary
``[train]``   :class:`TrainSettings` (extends TrainConfig)  the student trainer
``[eval]``    :class:`EvalConfig`                           explanation agreement
``[run]``     :class:`RunConfig`                            output dirs, seed, device, threads
=========== ======================================= =========================================

>>> cfg = DistillConfig.from_toml("distill.toml", **{"train.epochs": 3})   # doctest: +SKIP
>>> cfg.teacher.lr, cfg.ig.steps, cfg.train.epochs                          # doctest: +SKIP

The flat keys of edgekd 0.1 (``train_limit``, ``teacher_epochs``, ``ig_steps``, ``out_dir``, ...)
still work as keywords, TOML keys and ``--set`` overrides, with a deprecation warning
(:data:`edgekd.distill.legacy.FLAT_KEYS` maps each to its new place).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from edgekd.data.config import DataConfig
from edgekd.errors import EdgekdValueError
from edgekd.settings import apply_overrides, from_mapping, load_toml, section_types, to_toml
from edgekd.students.config import StudentConfig
from edgekd.teacher.config import AnnotateConfig, TeacherConfig, resolve_device

METHODS = ("none", "kl", "mse", "dixtill")
VARIANTS = ("paper", "code")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "linear", "cosine")
ALL_METHODS = list(METHODS)


def _h(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass
class TrainConfig:
    """Settings of :func:`edgekd.distill.train_student` (one student, one method)."""

    method: str = field(default="dixtill", metadata=_h("distillation method", choices=METHODS))
    variant: str = field(default="paper", metadata=_h(
        "DiXtill loss: paper = (1-alpha) CE + alpha (KL_tau + L_XAI); code = 0.1 CE + 0.9 (1-exp(-KL)) + 0.9 L_XAI",
        choices=VARIANTS))
    alpha: float = field(default=0.5, metadata=_h("weight of the teacher terms"))
    xai_absolute: bool = field(default=False, metadata=_h(
        "L_XAI compares |teacher attributions| (importance whatever the sign) with the attention logits; paper: signed"))
    xai_centered: bool = field(default=False, metadata=_h(
        "L_XAI centres both vectors per text first (Pearson correlation: shift-invariant like the attention softmax); paper: off"))
    tau: float = field(default=1.0, metadata=_h("softmax temperature of the KL term"))
    epochs: int = field(default=10, metadata=_h("student epochs (maximum; early stopping on the selection split's macro-F1: the dev split)"))
    batch_size: int = field(default=32, metadata=_h("texts per student step"))
    optimizer: str = field(default="adam", metadata=_h("student optimizer", choices=OPTIMIZERS))
    lr: float = field(default=1e-3, metadata=_h("student learning rate"))
    weight_decay: float = field(default=0.0, metadata=_h("student weight decay"))
    momentum: float = field(default=0.9, metadata=_h("SGD momentum"))
    schedule: str = field(default="constant", metadata=_h("learning-rate schedule", choices=SCHEDULES))
    warmup_ratio: float = field(default=0.0, metadata=_h("share of the steps spent warming up"))
    grad_clip: float | None = field(default=5.0, metadata=_h("gradient-norm clip (None: off)"))
    patience: int = field(default=3, metadata=_h("epochs without a better selection (dev) macro-F1 before stopping"))
    seed: int = field(default=0, metadata=_h("student seed: initialisation, shuffling, random embedding rows"))
    eval_batch_size: int = field(default=256, metadata=_h("texts per batch when scoring students"))

    def validate(self) -> None:
        if self.method not in METHODS:
            raise EdgekdValueError(f"TrainConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.variant not in VARIANTS:
            raise EdgekdValueError(f"TrainConfig.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.optimizer not in OPTIMIZERS:
            raise EdgekdValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise EdgekdValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("epochs", "batch_size", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise EdgekdValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise EdgekdValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0 <= self.alpha <= 1:
            raise EdgekdValueError(f"TrainConfig.alpha must be in [0, 1], got {self.alpha}")
        if self.tau <= 0:
            raise EdgekdValueError(f"TrainConfig.tau must be > 0, got {self.tau}")
        if not 0 <= self.warmup_ratio < 1:
            raise EdgekdValueError(f"TrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class TrainSettings(TrainConfig):
    """The ``[train]`` table: :class:`TrainConfig` for every method of the comparison."""

    method: str = field(default="dixtill", metadata=_h("(set per student from methods)", cli=False, config=False))
    seed: int | None = field(default=None, metadata=_h(
        "the students' own seed (None: the run's seed); vary it alone to measure the students' spread"))
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS), metadata=_h(
        "methods to compare: none, kl, mse, dixtill"))
    seeds: int = field(default=1, metadata=_h(
        "student seeds per method (>= 2: also seeds s+1.. of the student seed s; the report adds mean +- sd and "
        "the paired counts of seeds where dixtill > kl > none in macro-F1)"))

    def for_method(self, method: str, seed: int = 0) -> TrainConfig:
        """The :class:`TrainConfig` of one student (``seed`` used when this table leaves it None)."""
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        kw.update(method=method, seed=seed if self.seed is None else self.seed)
        return TrainConfig(**kw)

    def validate(self) -> None:
        if not self.methods:
            raise EdgekdValueError("[train] methods is empty")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise EdgekdValueError(f"[train] methods: unknown {bad}; choose from {list(METHODS)}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise EdgekdValueError(f"[train] seeds must be an int >= 1, got {self.seeds!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise EdgekdValueError(f"[train] seed must be an int or None, got {self.seed!r}")
        self.for_method("none").validate()


@dataclass
class EvalConfig:
    """The ``[eval]`` table: how students are scored against the teacher's explanations."""

    top_k: int = field(default=5, metadata=_h("feature/sign agreement at the top k words"))
    ig_steps: int = field(default=20, metadata=_h("Integrated-Gradients steps on the students"))
    baselines: bool = field(default=True, metadata=_h(
        "TF-IDF baselines in the table (logistic regression; a linear SVM too when stronger on the dev split)"))

    def validate(self) -> None:
        if self.top_k < 1:
            raise EdgekdValueError(f"[eval] top_k must be >= 1, got {self.top_k}")
        if self.ig_steps < 1:
            raise EdgekdValueError(f"[eval] ig_steps must be >= 1, got {self.ig_steps}")


@dataclass
class RunConfig:
    """The ``[run]`` table: where outputs go and how the run executes."""

    out: str = field(default="runs/distill", metadata=_h("output directory"))
    cache_dir: str = field(default=".cache/edgekd", metadata=_h("annotation cache root"))
    seed: int = field(default=0, metadata=_h("seed of the data samples, the teacher and (by default) the students"))
    threads: int | None = field(default=None, metadata=_h("torch CPU threads"))
    device: str = field(default="auto", metadata=_h(
        "where the teacher fine-tunes and runs IG: auto (CUDA when visible), cpu, cuda, cuda:N; students train on the CPU"))
    progress: bool = field(default=True, metadata=_h("progress bars", cli=False))
    resume: bool = field(default=True, metadata=_h("reuse cached teacher, annotations and checkpoints", cli=False))
    profile: str = field(default="custom", metadata=_h("profile name (set by edgekd demo)", cli=False))
    notes: list[str] = field(default_factory=list, metadata=_h("shortcuts of this run, printed with the table",
                                                                cli=False))

    def validate(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise EdgekdValueError(f"[run] seed must be an int, got {self.seed!r}")
        if self.device != "auto":
            resolve_device(self.device)  # checks it
        if self.threads is not None and self.threads < 1:
            raise EdgekdValueError(f"[run] threads must be >= 1, got {self.threads}")


_SECTIONS = ("data", "teacher", "ig", "student", "train", "eval", "run")


@dataclass(init=False)
class DistillConfig:
    """Every setting of a distillation run, one table per module (see the module docstring).

    ``DistillConfig(train=TrainSettings(epochs=3))``, ``DistillConfig(train={"epochs": 3})`` and
    ``DistillConfig().override({"train.epochs": 3})`` are the same; the old flat keywords
    (``DistillConfig(epochs=3)``) still work with a deprecation warning."""

    data: DataConfig
    teacher: TeacherConfig
    ig: AnnotateConfig
    student: StudentConfig
    train: TrainSettings
    eval: EvalConfig
    run: RunConfig

    def __init__(self, data=None, teacher=None, ig=None, student=None, train=None, eval=None, run=None,
                 **flat: Any):
        given = dict(data=data, teacher=teacher, ig=ig, student=student, train=train, eval=eval, run=run)
        if isinstance(teacher, str):  # edgekd 0.1: DistillConfig(teacher="path/to/classifier")
            flat = {"teacher": teacher, **flat}
            given["teacher"] = None
        types = section_types(type(self))
        for name in _SECTIONS:
            v = given[name]
            if v is None:
                v = types[name]()
            elif isinstance(v, dict):
                v = from_mapping(types[name], v, f"DistillConfig [{name}]")
            elif not isinstance(v, types[name]):
                raise EdgekdValueError(f"DistillConfig: {name} must be a {types[name].__name__} or a dict, got {v!r}")
            setattr(self, name, v)
        if flat:
            from edgekd.distill.legacy import flat_to_dotted

            for key, value in flat_to_dotted(flat, "DistillConfig").items():
                new = apply_overrides(self, {key: value}, "DistillConfig")
                for name in _SECTIONS:
                    setattr(self, name, getattr(new, name))

    # ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        for name in _SECTIONS:
            getattr(self, name).validate()

    @property
    def resolved_device(self) -> str:
        """The teacher's device: ``run.device``, with ``"auto"`` resolved to ``"cuda"`` or ``"cpu"``."""
        return resolve_device(self.run.device)

    @property
    def resolved_student_seed(self) -> int:
        return self.run.seed if self.train.seed is None else self.train.seed

    def train_config(self, method: str):
        """The student trainer's :class:`TrainConfig` for ``method``."""
        return self.train.for_method(method, seed=self.run.seed)

    def finetune_config(self):
        """The teacher's :class:`edgekd.teacher.FinetuneConfig` (the same for ``edgekd teacher finetune``)."""
        return self.teacher.finetune_config(seed=self.run.seed)

    def ig_config(self):
        return self.ig.ig_config()

    # ----------------------------------------------------------------------------------------
    def override(self, overrides: dict[str, Any], where: str = "override") -> "DistillConfig":
        """A copy with dotted keys set (``{"train.epochs": 3, "run.out": "runs/x"}``); old flat keys
        (``epochs``) are mapped with a deprecation warning; an unknown key is an EdgekdValueError."""
        from edgekd.distill.legacy import flat_to_dotted

        dotted = {k: v for k, v in overrides.items() if "." in k or k in _SECTIONS}
        flat = {k: v for k, v in overrides.items() if k not in dotted}
        items = {**flat_to_dotted(flat, where), **dotted} if flat else dotted
        return apply_overrides(self, items, where)

    def replace(self, **changes: Any) -> "DistillConfig":
        """Like :meth:`override`, with keywords (sections, or old flat names)."""
        return self.override(changes, "DistillConfig.replace")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_toml(self) -> str:
        return to_toml(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "DistillConfig":
        """Tables ``[data]``, ``[teacher]``, ``[ig]``, ``[student]``, ``[train]``, ``[eval]``, ``[run]``;
        the flat keys of edgekd 0.1 (top level, or in a table whose name prefixes them) are mapped
        with a deprecation warning."""
        from edgekd.distill.legacy import split_legacy

        nested, dotted = split_legacy(d, where)
        return apply_overrides(from_mapping(cls, nested, where), dotted, where)

    @classmethod
    def from_toml(cls, path: str | os.PathLike, **overrides: Any) -> "DistillConfig":
        """Read a TOML file (see :meth:`from_dict`), then apply ``overrides`` (dotted keys, or old flat names)."""
        cfg = cls.from_dict(load_toml(path), str(path))
        return cfg.override(overrides) if overrides else cfg

    def __getattr__(self, name: str) -> Any:
        # edgekd 0.1 read settings as flat attributes (cfg.out_dir, cfg.epochs): still works, warns
        from edgekd.distill.legacy import FLAT_KEYS, warn_flat

        if name.startswith("_") or name not in FLAT_KEYS or name in _SECTIONS:
            raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")
        warn_flat(name, f"DistillConfig.{name}", stacklevel=3)
        obj: Any = self
        for part in FLAT_KEYS[name].split("."):
            obj = getattr(obj, part)
        return obj
