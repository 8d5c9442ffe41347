"""Teacher settings, defined once (torch-free): fine-tuning (:class:`FinetuneConfig`), Integrated
Gradients (:class:`IGConfig`), and the ``[teacher]`` / ``[ig]`` tables of a distillation config
(:class:`TeacherConfig`, :class:`AnnotateConfig`), which extend them with what a pipeline run
also needs (which model, which texts). ``edgekd teacher finetune``, ``edgekd teacher annotate``,
``edgekd distill`` and ``edgekd demo`` build their flags from these fields.

The new classification head (and pooler) learn at ``lr * head_lr_multiplier``; the default 10 is
what every published run used (``benchmarks/results/distill_tfns.md``: at 1x the head of a
1-epoch MiniLM teacher stayed too weak to ever predict *bearish*).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from edgekd.errors import EdgekdValueError

IG_BASELINES = ("pad", "mask", "zeros")
IG_TARGETS = ("pred", "label")


def _h(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass
class FinetuneConfig:
    """Settings of :func:`edgekd.teacher.finetune_teacher`."""

    epochs: float = field(default=1.0, metadata=_h("passes over the training texts (fractions allowed)"))
    lr: float = field(default=5e-5, metadata=_h("encoder learning rate (AdamW, linear warm-up and decay)"))
    batch_size: int = field(default=16, metadata=_h("texts per step"))
    max_length: int = field(default=64, metadata=_h("teacher sub-word tokens per text"))
    weight_decay: float = field(default=0.01, metadata=_h("AdamW weight decay (not on biases and norms)"))
    warmup_ratio: float = field(default=0.1, metadata=_h("share of the steps spent warming up"))
    seed: int = field(default=0, metadata=_h("seed of the head's initialisation and the shuffling"))
    freeze_embeddings: bool = field(default=True, metadata=_h(
        "keep the word-embedding matrix fixed (MiniLM-L6: 11.7M of its 22.7M parameters; same dev accuracy in "
        "benchmarks/results/ig_steps.md, less optimizer work)"))
    eval_batch_size: int = field(default=64, metadata=_h("texts per batch when scoring"))
    head_lr_multiplier: float = field(
        default=10.0, metadata=_h("the new classification head (and pooler) learn at lr * this"))

    def validate(self) -> None:
        if self.epochs <= 0:
            raise EdgekdValueError(f"FinetuneConfig.epochs must be > 0, got {self.epochs}")
        if self.lr <= 0:
            raise EdgekdValueError(f"FinetuneConfig.lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise EdgekdValueError(f"FinetuneConfig.batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.warmup_ratio < 1:
            raise EdgekdValueError(f"FinetuneConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.head_lr_multiplier <= 0:
            raise EdgekdValueError(f"FinetuneConfig.head_lr_multiplier must be > 0, got {self.head_lr_multiplier}")


@dataclass
class TeacherConfig(FinetuneConfig):
    """The ``[teacher]`` table: which teacher, and (when it is fine-tuned here) on which texts and how."""

    model: str | None = field(default=None, metadata=_h("a fine-tuned sequence-classification dir (skips fine-tuning)"))
    encoder: str | None = field(default=None, metadata=_h("a pretrained encoder dir to fine-tune (None: MiniLM-L6)"))
    dir: str | None = field(default=None, metadata=_h("where the fine-tuned teacher is saved (None: <out>/teacher)"))
    sample: int | None = field(default=None, metadata=_h("fine-tune on a class-stratified sample of N training texts"))
    seed: int | None = field(default=None, metadata=_h("fine-tuning seed (None: the run's seed)", cli=False))

    def finetune_config(self, seed: int = 0) -> FinetuneConfig:
        """The :class:`FinetuneConfig` part (``seed`` used when this table leaves it None)."""
        kw = {f.name: getattr(self, f.name) for f in fields(FinetuneConfig)}
        kw["seed"] = seed if self.seed is None else self.seed
        return FinetuneConfig(**kw)

    def validate(self) -> None:
        self.finetune_config().validate()
        if self.sample is not None and self.sample < 1:
            raise EdgekdValueError(f"[teacher] sample must be >= 1 or None, got {self.sample}")


@dataclass
class IGConfig:
    """Integrated-Gradients settings of :func:`edgekd.teacher.annotate`.

    Attributes:
        steps: interpolation steps (captum ``n_steps``); DiXtill uses 50. On TFNS, 16 Gauss-Legendre
            steps rank the words as 50 do (Spearman median 1.000, top-5 agreement 0.988), 8 nearly
            (0.981, 0.92), 4 not (0.88, 0.78): ``benchmarks/results/ig_steps.md``.
        baseline: ``pad`` (sub-words replaced by the pad token, [CLS]/[SEP] kept), ``mask``
            (the [MASK] token) or ``zeros`` (all-zero word embeddings).
        method: captum's integral approximation (``gausslegendre``, ``riemann_trapezoid``, ...).
        internal_batch_size: rows per forward/backward inside captum (None: all steps at once).
        batch_size: the most texts per captum call.
        max_tokens: the most interpolated sub-word positions per captum call (texts x steps x
            padded length); texts are sorted by sub-word length, so a call holds texts of similar
            length, many short ones or a few long ones (None: ``batch_size`` texts per call).
        target: explain the teacher's predicted class (``pred``) or the gold label (``label``).
        freeze_parameters: no gradients for the teacher's weights during IG (captum needs only the
            embedding output's); saves the weight-gradient GEMMs of every backward.
    """

    steps: int = field(default=16, metadata=_h(
        "Integrated-Gradients steps (DiXtill: 50; on TFNS 16 give the 50-step word ranking: benchmarks/results/ig_steps.md)"))
    baseline: str = field(default="pad", metadata=_h("IG baseline", choices=IG_BASELINES))
    method: str = field(default="gausslegendre", metadata=_h("captum integral approximation"))
    internal_batch_size: int | None = field(default=None, metadata=_h("rows per captum forward (None: all steps)"))
    batch_size: int = field(default=64, metadata=_h("the most texts per captum call"))
    max_tokens: int | None = field(default=2048, metadata=_h(
        "the most interpolated sub-word positions per captum call: texts x steps x padded length (None: batch_size texts)"))
    target: str = field(default="pred", metadata=_h("explain the predicted class or the gold label",
                                                    choices=IG_TARGETS))
    freeze_parameters: bool = field(default=True, metadata=_h("no gradients for the teacher's weights during IG"))

    def validate(self) -> None:
        if self.steps < 1:
            raise EdgekdValueError(f"IGConfig.steps must be >= 1, got {self.steps}")
        if self.baseline not in IG_BASELINES:
            raise EdgekdValueError(f"IGConfig.baseline must be one of {IG_BASELINES}, got {self.baseline!r}")
        if self.target not in IG_TARGETS:
            raise EdgekdValueError(f"IGConfig.target must be one of {IG_TARGETS}, got {self.target!r}")
        if self.batch_size < 1:
            raise EdgekdValueError(f"IGConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise EdgekdValueError(f"IGConfig.max_tokens must be >= 1 or None, got {self.max_tokens}")
        if self.internal_batch_size is not None and self.internal_batch_size < 1:
            raise EdgekdValueError(f"IGConfig.internal_batch_size must be >= 1, got {self.internal_batch_size}")


@dataclass
class AnnotateConfig(IGConfig):
    """The ``[ig]`` table: IG settings plus which texts get attributions (logits are computed for all)."""

    sample: int | None = field(default=None, metadata=_h(
        "IG on a class-stratified sample of N training texts (None: all; the XAI loss uses only those)"))
    valid_sample: int | None = field(default=300, metadata=_h(
        "IG on a class-stratified sample of N validation texts (explanation agreement)"))
    chunk_size: int = field(default=256, metadata=_h("texts per cached chunk"))

    def ig_config(self) -> IGConfig:
        """The :class:`IGConfig` part (the annotation cache key depends on it alone)."""
        return IGConfig(**{f.name: getattr(self, f.name) for f in fields(IGConfig)})

    def validate(self) -> None:
        self.ig_config().validate()
        for name in ("sample", "valid_sample"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise EdgekdValueError(f"[ig] {name} must be >= 1 or None, got {v}")
        if self.chunk_size < 1:
            raise EdgekdValueError(f"[ig] chunk_size must be >= 1, got {self.chunk_size}")


def resolve_device(device: str | None) -> str:
    """``"auto"`` (or None) -> ``"cuda"`` when a GPU is visible (``cuda:LOCAL_RANK`` under torchrun),
    else ``"cpu"``; other values are
    checked and returned."""
    if device in (None, "auto"):
        import torch

        if not torch.cuda.is_available():
            return "cpu"
        from edgekd.distributed import env_ranks

        _, world, local = env_ranks()  # under torchrun: this rank's GPU
        return f"cuda:{local}" if world > 1 else "cuda"
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise EdgekdValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device
