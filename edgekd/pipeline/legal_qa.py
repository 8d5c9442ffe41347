"""``edgekd demo --task legal-qa``: the legal-QA main job on PolicyQA, stage by stage, each timed.

>>> from edgekd.pipeline.legal_qa import legal_qa_config, run_legal_qa     # doctest: +SKIP
>>> cfg = legal_qa_config("quick", {"student.epochs": 1.0})                 # doctest: +SKIP
>>> result = run_legal_qa(cfg)                                              # doctest: +SKIP

Stages (each one's result is ``<run.out>/stages/<stage>.json``, with its wall seconds):

=================== =========================================================================
``data``            PolicyQA DEV human pairs (the training pool, contexts of at most
                    ``data.max_context_words`` words; a seeded sample of ``data.train_n`` spread
                    over the policies) and TEST questions (same word limit, ``data.test_n``)
``synth``           synthetic triplets from ``synth.paragraphs`` DEV paragraphs, generated in
                    process by the teacher (:class:`~edgekd.qa.generators.LocalCausalLM`) or by an
                    OpenAI-compatible endpoint (``synth.endpoint``), through every filter of
                    :mod:`edgekd.qa.synth` (counts per filter recorded)
``index``           BM25 over every PolicyQA TEST paragraph (:mod:`edgekd.runtime.retrieval`)
``teacher``         the teacher zero-shot on the test questions (gold context)
``prune``           the student's blocks: ``student.keep_layers`` of the teacher's by block
                    influence on the training prompts
``student-sft``     the student by SFT on the human training pairs (dev split carved inside)
``student-kd``      the student by token-level KD from the teacher (+ CE) on the same pairs
``student-synthetic`` the student by ``synth.student_loss`` on the kept synthetic triplets, only
                    when at least ``synth.min_kept`` survived the filters (else recorded as skipped)
``reader``          the extractive MiniLM reader on the human training pairs
``sgp-top1``, ``sgp-oracle``, ``sgp``
                    paragraph-specific TEST questions (:func:`edgekd.qa.specific.specific_questions`)
                    answered by the teacher from the retriever's first paragraph, from the gold
                    paragraph, and by SGP over the top ``sgp.k`` (the teacher is the LM scorer)
=================== =========================================================================

Then ``results.md`` and ``results.json`` (the QA table, the SGP table, the filter counts, the
stage times and the total) are written to ``run.out`` from the stage files.

Resume: a stage whose file exists and was made with the same settings (the tables it depends on
and ``run.seed``) is skipped, so a cut run continues where it stopped; a stage whose settings
changed runs again. ``run_legal_qa(cfg, restart=True)`` (``--restart``) deletes the stage files,
the synthetic triplets, the index and the results first; ``run.resume = false`` runs every stage
again without deleting anything first. Nothing is tuned on the test split: trained models pick their
checkpoint on a dev split carved from their training pairs, SGP's weight is the configured one.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgekd.errors import EdgekdValueError
from edgekd.settings import apply_overrides, from_mapping, load_toml, to_toml

__all__ = ["LegalQAConfig", "STAGES", "legal_qa_config", "run_legal_qa", "stage_path"]

STAGES = ("data", "synth", "index", "teacher", "prune", "student-sft", "student-kd", "student-synthetic", "reader",
          "sgp-top1", "sgp-oracle", "sgp")
# the tables each stage's result depends on (with run.seed): a change there reruns the stage
DEPENDS = {
    "data": ("data",),
    "synth": ("data", "teacher", "synth"),
    "index": ("data",),
    "teacher": ("data", "teacher"),
    "prune": ("data", "teacher", "student"),
    "student-sft": ("data", "teacher", "student"),
    "student-kd": ("data", "teacher", "student"),
    "student-synthetic": ("data", "teacher", "student", "synth"),
    "reader": ("data", "reader"),
    "sgp-top1": ("data", "teacher", "sgp"),
    "sgp-oracle": ("data", "teacher", "sgp"),
    "sgp": ("data", "teacher", "sgp"),
}
SGP_MODES = {"sgp-top1": "top1", "sgp-oracle": "oracle", "sgp": "sgp"}


def _h(text: str, **more) -> dict:
    return {"help": text, **more}


def _int(where: str, v: Any, lo: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise EdgekdValueError(f"{where} must be an int >= {lo}, got {v!r}")


def _pos(where: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise EdgekdValueError(f"{where} must be a number > 0, got {v!r}")


def _unit(where: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise EdgekdValueError(f"{where} must be a number in [0, 1], got {v!r}")


# --------------------------------------------------------------------------------------------
# settings


@dataclass
class QADataSettings:
    """The ``[data]`` table: the human training pairs and the test questions."""

    policyqa: str = field(default="", metadata=_h(
        "folder with PolicyQA dev.json and test.json (empty: $EDGEKD_POLICYQA or shared/data/policyqa)"))
    train_n: int = field(default=64, metadata=_h("human training pairs (PolicyQA dev; a dev split is carved inside)"))
    test_n: int = field(default=50, metadata=_h("PolicyQA test questions of the QA table"))
    max_context_words: int = field(default=100, metadata=_h("longest context (words) of training and test pairs"))

    def validate(self) -> None:
        _int("[data] train_n", self.train_n, 2)
        _int("[data] test_n", self.test_n)
        _int("[data] max_context_words", self.max_context_words)
        if self.policyqa and not Path(self.policyqa).is_dir():
            raise EdgekdValueError(f"[data] policyqa: {self.policyqa} is not a folder (want one with dev.json, test.json)")


@dataclass
class QATeacherSettings:
    """The ``[teacher]`` table: the generative teacher (also the generator of the synthetic triplets and
    the SGP scorer)."""

    model: str = field(default="smollm2", metadata=_h("smollm2 (GGUF asset, dequantised to fp32 once), a .gguf "
                                                      "file or a model directory"))
    max_new_tokens: int = field(default=32, metadata=_h("longest generated answer (tokens)"))
    batch_size: int = field(default=8, metadata=_h("questions per generation batch"))

    def validate(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise EdgekdValueError(f"[teacher] model must be an asset name, a .gguf file or a directory, got {self.model!r}")
        _int("[teacher] max_new_tokens", self.max_new_tokens)
        _int("[teacher] batch_size", self.batch_size)


TEMPLATE_CHOICES = ("auto", "chat", "chat-example", "fewshot")


@dataclass
class QASynthSettings:
    """The ``[synth]`` table: synthetic triplets (:mod:`edgekd.qa.synth`) and the student trained on them."""

    paragraphs: int = field(default=8, metadata=_h("PolicyQA dev paragraphs (contexts within data.max_context_words; "
                                                   "seeded, spread over the policies) the generator reads"))
    per_context: int = field(default=2, metadata=_h("question/answer pairs asked per paragraph"))
    template: str = field(default="auto", metadata=_h(
        "prompt template: auto (chat for a chat model or api=chat, else fewshot), chat, chat-example, fewshot",
        choices=TEMPLATE_CHOICES))
    max_new_tokens: int = field(default=128, metadata=_h("tokens per completion"))
    temperature: float = field(default=0.0, metadata=_h("0: greedy (fewshot with per_context > 1 then uses 0.7)"))
    batch_size: int = field(default=8, metadata=_h("prompts per generator call"))
    min_overlap: float = field(default=0.8, metadata=_h("grounded filter: token overlap of a non-span answer"))
    specificity_k: int = field(default=5, metadata=_h("specificity filter: BM25 over every dev paragraph ranks the "
                                                      "question's own in the top k (0: off)"))
    round_trip: bool = field(default=True, metadata=_h("round-trip filter: the generator answers each question from "
                                                       "its paragraph and must agree (token F1)"))
    round_trip_f1: float = field(default=0.5, metadata=_h("round-trip filter threshold"))
    min_kept: int = field(default=8, metadata=_h("train the synthetic-data student only when at least this many "
                                                 "triplets survive the filters"))
    student_loss: str = field(default="ce", metadata=_h("loss of the synthetic-data student: ce (SFT) or a KD loss"))
    endpoint: str = field(default="", metadata=_h("OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1); "
                                                  "empty: the teacher generates in this process"))
    endpoint_model: str = field(default="", metadata=_h("with endpoint: the model name the server serves"))
    api: str = field(default="chat", metadata=_h("with endpoint: chat or completions", choices=("chat", "completions")))

    def validate(self) -> None:
        _int("[synth] paragraphs", self.paragraphs)
        _int("[synth] per_context", self.per_context)
        _int("[synth] max_new_tokens", self.max_new_tokens)
        _int("[synth] batch_size", self.batch_size)
        _int("[synth] specificity_k", self.specificity_k, 0)
        _int("[synth] min_kept", self.min_kept, 2)
        _unit("[synth] min_overlap", self.min_overlap)
        _unit("[synth] round_trip_f1", self.round_trip_f1)
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or not self.temperature >= 0:
            raise EdgekdValueError(f"[synth] temperature must be a number >= 0, got {self.temperature!r}")
        if self.template not in TEMPLATE_CHOICES:
            raise EdgekdValueError(f"[synth] template must be one of {list(TEMPLATE_CHOICES)}, got {self.template!r}")
        if self.api not in ("chat", "completions"):
            raise EdgekdValueError(f"[synth] api must be 'chat' or 'completions', got {self.api!r}")
        if self.endpoint and not self.endpoint_model.strip():
            raise EdgekdValueError("[synth] endpoint needs endpoint_model (the model name the server serves)")
        if self.endpoint and self.api == "completions" and self.template in ("chat", "chat-example"):
            raise EdgekdValueError(f"[synth] template {self.template!r} writes chat messages, which api = "
                                   "'completions' cannot take; use template = 'fewshot' (or 'auto') or api = 'chat'")
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise EdgekdValueError(f"[synth] endpoint must be an http(s) URL, got {self.endpoint!r}")
        _check_loss("[synth] student_loss", self.student_loss)


def _check_loss(where: str, loss: Any) -> None:
    from edgekd.qa.students import resolve_loss

    try:
        name = resolve_loss(loss)
    except EdgekdValueError as exc:
        raise EdgekdValueError(f"{where}: {exc}") from None
    if name != "ce":
        from edgekd.llm.losses import LOSSES

        if name not in LOSSES:
            raise EdgekdValueError(f"{where} must be ce or a KD loss of {sorted(LOSSES)}, got {loss!r}")


@dataclass
class QAStudentSettings:
    """The ``[student]`` table: the generative student pruned from the teacher (SFT and KD rows)."""

    keep_layers: int = field(default=15, metadata=_h("decoder blocks kept (SmolLM2-135M has 30)"))
    prune_method: str = field(default="block-influence", metadata=_h("block-influence or even",
                                                                     choices=("block-influence", "even")))
    epochs: float = field(default=2.0, metadata=_h("training epochs"))
    lr: float = field(default=1e-4, metadata=_h("AdamW learning rate"))
    batch_size: int = field(default=4, metadata=_h("sequences per step"))
    max_length: int = field(default=320, metadata=_h("tokens of prompt + answer"))
    kd_loss: str = field(default="forward_kl", metadata=_h("loss of the KD row (forward_kl, reverse_kl, jsd, ...)"))
    ce_weight: float = field(default=0.5, metadata=_h("KD: (1 - w) KD + w CE"))
    temperature: float = field(default=1.0, metadata=_h("KD temperature"))
    dev_fraction: float = field(default=0.1, metadata=_h("share of the training pairs (whole paragraphs) held out "
                                                         "to pick the checkpoint"))

    def validate(self) -> None:
        _int("[student] keep_layers", self.keep_layers)
        if self.prune_method not in ("block-influence", "even"):
            raise EdgekdValueError(f"[student] prune_method must be block-influence or even, got {self.prune_method!r}")
        _pos("[student] epochs", self.epochs)
        _pos("[student] lr", self.lr)
        _pos("[student] temperature", self.temperature)
        _int("[student] batch_size", self.batch_size)
        _int("[student] max_length", self.max_length, 8)
        _unit("[student] ce_weight", self.ce_weight)
        if not (isinstance(self.dev_fraction, (int, float)) and 0 < self.dev_fraction < 1):
            raise EdgekdValueError(f"[student] dev_fraction must be in (0, 1), got {self.dev_fraction!r}")
        _check_loss("[student] kd_loss", self.kd_loss)
        from edgekd.qa.students import resolve_loss

        if resolve_loss(self.kd_loss) == "ce":
            raise EdgekdValueError("[student] kd_loss must be a KD loss (forward_kl, reverse_kl, jsd, ...), not ce: "
                                   "the SFT row is already there")


@dataclass
class QAReaderSettings:
    """The ``[reader]`` table: the extractive baseline (encoder + span head)."""

    model: str = field(default="minilm", metadata=_h("minilm (asset) or an encoder directory"))
    epochs: float = field(default=5.0, metadata=_h("training epochs"))
    lr: float = field(default=1e-4, metadata=_h("AdamW learning rate"))
    batch_size: int = field(default=8, metadata=_h("windows per step (and per answering batch)"))
    max_length: int = field(default=384, metadata=_h("tokens per window"))
    doc_stride: int = field(default=128, metadata=_h("tokens shared by consecutive windows"))

    def validate(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise EdgekdValueError(f"[reader] model must be minilm or an encoder directory, got {self.model!r}")
        _pos("[reader] epochs", self.epochs)
        _pos("[reader] lr", self.lr)
        _int("[reader] batch_size", self.batch_size)
        _int("[reader] max_length", self.max_length, 16)
        _int("[reader] doc_stride", self.doc_stride)
        if self.doc_stride >= self.max_length:
            raise EdgekdValueError(f"[reader] doc_stride ({self.doc_stride}) must be smaller than max_length "
                                   f"({self.max_length})")


@dataclass
class QASGPSettings:
    """The ``[sgp]`` table: paragraph selection on paragraph-specific test questions."""

    questions: int = field(default=20, metadata=_h("paragraph-specific PolicyQA test questions (seeded sample)"))
    filter_k: int = field(default=10, metadata=_h("specificity test: BM25, given the question alone, ranks its own "
                                                  "paragraph in this top k of all the test paragraphs"))
    max_paragraphs_per_question: int = field(default=3, metadata=_h(
        "a question text asked of more paragraphs is a template and left out"))
    # the defaults below are the setting benchmarks/results/legal_qa_sgp.md selected on PolicyQA DEV
    k: int = field(default=5, metadata=_h("candidate paragraphs SGP chooses among"))
    weight: float = field(default=0.3, metadata=_h("share of the normalised BM25 score (chosen on dev, not on test)"))
    terms: list[str] = field(default_factory=lambda: ["answer"], metadata=_h(
        "LM terms of SGP: question, answer"))
    batch_size: int = field(default=8, metadata=_h("LM sequences per batch"))

    def validate(self) -> None:
        from edgekd.qa.sgp import SGPConfig

        _int("[sgp] questions", self.questions)
        _int("[sgp] filter_k", self.filter_k)
        _int("[sgp] max_paragraphs_per_question", self.max_paragraphs_per_question)
        _int("[sgp] batch_size", self.batch_size)
        try:
            SGPConfig(k=self.k, weight=self.weight, terms=tuple(self.terms or ()))
        except EdgekdValueError as exc:
            raise EdgekdValueError(f"[sgp] {str(exc).replace('SGPConfig.', '')}") from None


@dataclass
class QARunSettings:
    """The ``[run]`` table: where outputs go and how the run executes."""

    out: str = field(default="runs/legal-qa", metadata=_h("output folder (stages/, synth/, index/, results.md)"))
    cache_dir: str = field(default="runs/cache/legal-qa", metadata=_h(
        "where a GGUF teacher is saved dequantised to fp32 (shared by runs)"))
    seed: int = field(default=0, metadata=_h("seed of the samples, the students and the reader"))
    threads: int | None = field(default=None, metadata=_h("torch CPU threads"))
    stages: list[str] = field(default_factory=lambda: list(STAGES), metadata=_h("stages to run"))
    budget_minutes: float | None = field(default=None, metadata=_h("the time the profile is meant to fit in "
                                                                   "(reported next to the total)"))
    progress: bool = field(default=True, metadata=_h("progress bars", cli=False))
    resume: bool = field(default=True, metadata=_h("skip the stages whose results are on disk", cli=False))
    profile: str = field(default="custom", metadata=_h("profile name (set by edgekd demo)", cli=False))

    def validate(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise EdgekdValueError(f"[run] seed must be an int, got {self.seed!r}")
        if self.threads is not None:
            _int("[run] threads", self.threads)
        if not isinstance(self.out, str) or not self.out.strip():
            raise EdgekdValueError("[run] out must be a folder")
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise EdgekdValueError(f"[run] stages: unknown stage(s) {bad}; choose from {list(STAGES)}" if bad
                                   else "[run] stages is empty")
        if self.budget_minutes is not None:
            _pos("[run] budget_minutes", self.budget_minutes)


_TABLES = ("data", "teacher", "synth", "student", "reader", "sgp", "run")


@dataclass
class LegalQAConfig:
    """Every setting of the legal-QA job, one TOML table each: ``[data]``, ``[teacher]``, ``[synth]``,
    ``[student]``, ``[reader]``, ``[sgp]``, ``[run]``."""

    data: QADataSettings = field(default_factory=QADataSettings)
    teacher: QATeacherSettings = field(default_factory=QATeacherSettings)
    synth: QASynthSettings = field(default_factory=QASynthSettings)
    student: QAStudentSettings = field(default_factory=QAStudentSettings)
    reader: QAReaderSettings = field(default_factory=QAReaderSettings)
    sgp: QASGPSettings = field(default_factory=QASGPSettings)
    run: QARunSettings = field(default_factory=QARunSettings)

    def validate(self) -> "LegalQAConfig":
        for name in _TABLES:
            getattr(self, name).validate()
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "LegalQAConfig":
        return from_mapping(cls, d, where)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "LegalQAConfig":
        return cls.from_dict(load_toml(path), str(path))

    def override(self, overrides: dict[str, Any], where: str = "override") -> "LegalQAConfig":
        """A copy with dotted keys set (``{"student.epochs": 1.0}``); an unknown key raises naming it."""
        try:
            return apply_overrides(self, overrides, where)
        except EdgekdValueError as exc:
            raise EdgekdValueError(f"{exc} (legal-qa settings: tables {', '.join(f'[{t}]' for t in _TABLES)}; "
                                   "see edgekd demo --task legal-qa --print-config)") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_toml(self) -> str:
        return to_toml(self)


def legal_qa_config(profile: str | os.PathLike = "quick", overrides: dict[str, Any] | None = None, *,
                    where: str = "override") -> LegalQAConfig:
    """The settings of ``edgekd demo --task legal-qa --profile <profile>`` (a shipped profile,
    ``edgekd/configs/legal-qa/<name>.toml``, or a .toml file) with ``overrides`` applied and
    validated."""
    from edgekd.pipeline.profiles import profile_path

    path = profile_path(profile, task="legal-qa")
    cfg = LegalQAConfig.from_toml(path)
    cfg = cfg.override({"run.profile": path.stem})
    if overrides:
        cfg = cfg.override(dict(overrides), where)
    return cfg.validate()


def stage_path(cfg: LegalQAConfig, stage: str) -> Path:
    """``<run.out>/stages/<stage>.json``."""
    return Path(cfg.run.out) / "stages" / f"{stage}.json"


def _stage_settings(cfg: LegalQAConfig, stage: str) -> dict[str, Any]:
    d = {t: asdict(getattr(cfg, t)) for t in DEPENDS[stage]}
    d["seed"] = cfg.run.seed
    return d


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover (not on every platform)
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def _clean(obj: Any) -> Any:
    """JSON-safe: non-finite floats -> None (an empty answer's log-probability)."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# the run


class _Job:
    """The state shared by the stages: settings, log, the loaded teacher, the data, the index."""

    def __init__(self, cfg: LegalQAConfig, log: Callable[[str], None]):
        self.cfg = cfg
        self.out = Path(cfg.run.out)
        self.log = log
        self._teacher = None
        self.teacher_load_seconds = 0.0
        self.results: dict[str, dict] = {}

    # ---------------------------------------------------------------- shared inputs
    def policyqa(self, split: str):
        from edgekd.qa.data import load_policyqa

        return load_policyqa(split, self.cfg.data.policyqa or None)

    def teacher(self):
        """``(model, tokenizer)``, loaded once (a GGUF teacher is dequantised to fp32 once, in run.cache_dir)."""
        if self._teacher is None:
            from edgekd.qa.bench import load_teacher

            t0 = time.perf_counter()
            name = Path(self.cfg.teacher.model).name.replace(".gguf", "")
            self._teacher = load_teacher(self.cfg.teacher.model, Path(self.cfg.run.cache_dir) / f"{name}-fp32")
            self.teacher_load_seconds = time.perf_counter() - t0
            self.log(f"  teacher {self.cfg.teacher.model} loaded in {self.teacher_load_seconds:.0f} s")
        return self._teacher

    def data(self):
        from edgekd.qa.types import Triplet

        r = self.results["data"]
        return [Triplet.from_json(d) for d in r["train"]], [Triplet.from_json(d) for d in r["test"]]

    def index(self):
        from edgekd.runtime.retrieval import load_index

        return load_index(self.out / "index")


def _stage_data(job: _Job) -> dict:
    from edgekd.qa.bench import train_test_pairs

    c = job.cfg.data
    _, dev = job.policyqa("dev")
    _, test = job.policyqa("test")
    train, test_q, pool_n = train_test_pairs(dev, test, train_n=c.train_n, test_n=c.test_n,
                                             max_context_words=c.max_context_words, seed=job.cfg.run.seed)
    if len(train) < 2:
        raise EdgekdValueError(f"[data] only {len(train)} training pair(s) within {c.max_context_words} words; "
                               "the students need at least 2 (one for the dev split)")
    job.log(f"  {len(train)} human training pairs (of a pool of {pool_n}), {len(test_q)} test questions")
    return {"pool": pool_n, "n_train": len(train), "n_test": len(test_q), "train": [t.to_json() for t in train],
            "test": [t.to_json() for t in test_q]}


def _generator(job: _Job):
    from edgekd.qa.generators import LocalCausalLM, OpenAICompatible

    s = job.cfg.synth
    if s.endpoint:
        gen = OpenAICompatible(s.endpoint, s.endpoint_model, api=s.api)
        gen.models()  # fail fast, naming the URL, when the server is down
        chat = s.api == "chat"
    else:
        model, tok = job.teacher()
        gen = LocalCausalLM(model=model, tokenizer=tok, batch_size=s.batch_size,
                            name=Path(job.cfg.teacher.model).name)
        chat = bool(getattr(tok, "chat_template", None))
    return gen, chat


def _stage_synth(job: _Job) -> dict:
    from edgekd.qa.cli import select
    from edgekd.qa.synth import SynthConfig, bm25_retriever, generate_triplets, generator_reader
    from edgekd.qa.types import write_jsonl

    c, s = job.cfg, job.cfg.synth
    every, _ = job.policyqa("dev")
    short = [p for p in every if len(p.text.split()) <= c.data.max_context_words]
    if not short:
        raise EdgekdValueError(f"[synth] no dev paragraph has at most {c.data.max_context_words} words")
    paras = select(short, None, s.paragraphs, c.run.seed)
    gen, chat = _generator(job)
    template = s.template if s.template != "auto" else ("chat" if chat else "fewshot")
    temperature = s.temperature
    if template == "fewshot" and s.per_context > 1 and temperature == 0:
        temperature = 0.7  # one pair per completion: several pairs need sampling
    scfg = SynthConfig(template=template, per_context=s.per_context, max_new_tokens=s.max_new_tokens,
                       temperature=temperature, seed=c.run.seed, batch_size=s.batch_size,
                       max_context_words=c.data.max_context_words, min_overlap=s.min_overlap,
                       specificity_k=max(1, s.specificity_k), round_trip_f1=s.round_trip_f1).check()
    retrieve = bm25_retriever(every) if s.specificity_k else None
    read = generator_reader(gen, chat=template != "fewshot" and chat, max_new_tokens=c.teacher.max_new_tokens) \
        if s.round_trip else None
    cache = job.out / "synth" / "cache" if c.run.resume else None
    job.log(f"  generating from {len(paras)} dev paragraphs with {gen.name} ({template} template, "
            f"{s.per_context} pairs per paragraph)")
    triplets, report = generate_triplets(paras, gen, scfg, cache, progress=c.run.progress, retrieve=retrieve,
                                         read=read)
    gen.close()
    path = job.out / "synth" / "triplets.jsonl"
    write_jsonl(path, triplets)
    kept = len(triplets)
    row = "trained" if kept >= s.min_kept else f"{kept} kept (fewer than synth.min_kept = {s.min_kept}), row skipped"
    job.log(f"  {kept} triplets kept from {report['paragraphs']} paragraphs: " + ", ".join(
        f"{k} -{v['dropped']}" + (" (not run)" if v.get("skipped") else "") for k, v in report["filters"].items()))
    return {"kept": kept, "row": row, "triplets_file": str(path), "report": report,
            "examples": [t.to_json() for t in triplets[:3]]}


def _stage_index(job: _Job) -> dict:
    from edgekd.runtime.retrieval import BM25Index

    paras, _ = job.policyqa("test")
    index = BM25Index.build([p.id for p in paras], [p.text for p in paras])
    index.save(job.out / "index")
    job.log(f"  BM25 over {len(paras)} PolicyQA test paragraphs -> {job.out / 'index'}")
    return {"kind": "bm25", "paragraphs": len(paras), "folder": str(job.out / "index")}


def _params(model) -> dict:
    from edgekd.llm.models import count_parameters
    from edgekd.qa.bench import model_size_mb

    return {"params": count_parameters(model), "size_mb": model_size_mb(model)}


def _stage_teacher(job: _Job) -> dict:
    from edgekd.qa.bench import generative_eval

    model, tok = job.teacher()
    _, test = job.data()
    t = job.cfg.teacher
    ev = generative_eval(model, tok, test, max_new_tokens=t.max_new_tokens, batch_size=t.batch_size)
    return {**ev, **_params(model), "n_train": 0, "training": "none (zero-shot)"}


def _stage_prune(job: _Job) -> dict:
    from edgekd.qa.students import make_student

    model, tok = job.teacher()
    train, _ = job.data()
    s = job.cfg.student
    n = model.config.num_hidden_layers
    if s.keep_layers > n:
        raise EdgekdValueError(f"[student] keep_layers = {s.keep_layers}, but the teacher has {n} layers")
    student, keep = make_student(model, s.keep_layers, train, tokenizer=tok, method=s.prune_method,
                                 max_length=s.max_length, batch_size=s.batch_size)
    job.log(f"  kept layers {keep} of {n}")
    return {"kept_layers": keep, "teacher_layers": n, **_params(student)}


def _train_student(job: _Job, triplets, loss: str, keep: list[int]) -> dict:
    from edgekd.llm.prune import prune_depth
    from edgekd.qa.bench import generative_eval
    from edgekd.qa.students import QAStudentConfig, resolve_loss, train_qa_student

    teacher, tok = job.teacher()
    s, t = job.cfg.student, job.cfg.teacher
    loss = resolve_loss(loss)
    kd = loss != "ce"
    student = prune_depth(teacher, keep)
    qcfg = QAStudentConfig(loss=loss, ce_weight=s.ce_weight, temperature=s.temperature, max_length=s.max_length,
                           epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, dev_fraction=s.dev_fraction,
                           seed=job.cfg.run.seed)
    res = train_qa_student(student, tok, triplets, teacher=teacher if kd else None, config=qcfg,
                           progress=job.cfg.run.progress)
    job.log(f"  {res.n_train} train / {res.n_dev} dev pairs, dev loss {res.dev_before:.3f} -> {res.dev_after:.3f}, "
            f"{res.seconds:.0f} s training")
    _, test = job.data()
    ev = generative_eval(student, tok, test, max_new_tokens=t.max_new_tokens, batch_size=t.batch_size)
    out = {**ev, **_params(student), "kept_layers": keep, "loss": loss, "n_train": len(triplets),
           "train": res.to_json()}
    del student
    return out


def _stage_student(job: _Job, stage: str) -> dict:
    train, _ = job.data()
    keep = job.results["prune"]["kept_layers"]
    loss = "ce" if stage == "student-sft" else job.cfg.student.kd_loss
    return {**_train_student(job, train, loss, keep), "training": "human"}


def _stage_student_synthetic(job: _Job) -> dict:
    from edgekd.qa.cli_train import select_triplets
    from edgekd.qa.students import make_student
    from edgekd.qa.types import read_jsonl

    syn = job.results["synth"]
    s = job.cfg.synth
    if syn["kept"] < s.min_kept:
        job.log(f"  {syn['row']}")
        return {"skipped": syn["row"], "kept": syn["kept"]}
    trips = select_triplets(list(read_jsonl(syn["triplets_file"])), sample=job.cfg.data.train_n,
                            seed=job.cfg.run.seed)
    teacher, tok = job.teacher()
    st = job.cfg.student
    # its own block choice, on its own training prompts: this row sees no human pair at all
    _, keep = make_student(teacher, st.keep_layers, trips, tokenizer=tok, method=st.prune_method,
                           max_length=st.max_length, batch_size=st.batch_size)
    return {**_train_student(job, trips, s.student_loss, keep), "training": "synthetic"}


def _stage_reader(job: _Job) -> dict:
    from edgekd.qa.bench import reader_eval
    from edgekd.qa.reader import ReaderConfig, load_reader, train_reader

    r = job.cfg.reader
    train, test = job.data()
    model, tok, _ = load_reader(r.model, seed=job.cfg.run.seed)
    rcfg = ReaderConfig(max_length=r.max_length, doc_stride=r.doc_stride, epochs=r.epochs, lr=r.lr,
                        batch_size=r.batch_size, seed=job.cfg.run.seed)
    res = train_reader(model, tok, train, rcfg, progress=job.cfg.run.progress)
    job.log(f"  {res.n_train} train / {res.n_dev} dev pairs ({res.dropped} without a span dropped), dev loss "
            f"{res.dev_before:.3f} -> {res.dev_after:.3f}, {res.seconds:.0f} s training")
    ev = reader_eval(model, tok, test, rcfg, batch_size=r.batch_size)
    return {**ev, **_params(model), "n_train": len(train), "train": res.to_json(), "training": "human"}


def _specific(job: _Job, index):
    """The paragraph-specific test questions: :func:`edgekd.qa.specific.specific_questions` (questions
    asked of at most ``sgp.max_paragraphs_per_question`` paragraphs, whose paragraph BM25 ranks in its
    top ``sgp.filter_k``), a seeded sample of at most ``sgp.questions``."""
    try:
        from edgekd.qa.specific import specific_questions
    except ModuleNotFoundError as exc:
        if exc.name != "edgekd.qa.specific":
            raise
        raise EdgekdValueError("the sgp stages need edgekd.qa.specific (specific_questions); leave them out with "
                               "run.stages=... until it is installed") from None

    _, test_all = job.policyqa("test")
    g = job.cfg.sgp
    return specific_questions(test_all, index, k=g.filter_k, max_paragraphs_per_question=g.max_paragraphs_per_question,
                              limit=g.questions, seed=job.cfg.run.seed)


def _stage_sgp(job: _Job, stage: str) -> dict:
    from edgekd.qa.bench import golds
    from edgekd.qa.metrics import qa_metrics, retrieval_metrics
    from edgekd.qa.sgp import RenderedPromptFormat, SGPConfig, TorchLMScorer, answer_questions
    from edgekd.qa.students import qa_prompt

    mode = SGP_MODES[stage]
    index = job.index()
    questions, report = _specific(job, index)
    if not questions:
        job.log("  no paragraph-specific test question; stage skipped")
        return {"skipped": "no paragraph-specific test question", "selection": report}
    model, tok = job.teacher()
    g = job.cfg.sgp
    chat = bool(getattr(tok, "chat_template", None))
    # the prompt the teacher answers in everywhere else (its chat template, a system line)
    fmt = RenderedPromptFormat(lambda c, q: qa_prompt(tok, c, q), answer_sep="" if chat else " ")
    scorer = TorchLMScorer(model, tok, batch_size=g.batch_size)
    scfg = SGPConfig(k=g.k, weight=g.weight, terms=tuple(g.terms), max_new_tokens=job.cfg.teacher.max_new_tokens)
    job.log(f"  {len(questions)} paragraph-specific test questions ({report.get('kept')} passed the test), mode {mode}")
    t0 = time.perf_counter()
    res = answer_questions(mode, [t.question for t in questions], scorer, index=index,
                           contexts=[t.context for t in questions], context_ids=[t.context_id for t in questions],
                           config=scfg, prompt=fmt, progress=job.cfg.run.progress)
    sec = time.perf_counter() - t0
    gold_ids = [t.context_id for t in questions]
    hits = index.search_batch([t.question for t in questions], k=max(g.k, g.filter_k))
    retrieval = retrieval_metrics([[pid for pid, _ in h] for h in hits], gold_ids, ks=sorted({1, g.k, g.filter_k}))
    out: dict[str, Any] = {"mode": mode, "n": len(questions), "selection": report, "retrieval": retrieval,
                           "metrics": qa_metrics([r.answer for r in res], [golds(t) for t in questions]),
                           "speed": {"seconds": sec, "s_per_question": sec / len(questions)},
                           "preds": [r.answer for r in res], "paragraphs": [r.paragraph_id for r in res],
                           "questions": [t.question for t in questions], "gold_paragraphs": gold_ids}
    if mode == "sgp":
        ranked = [[c["id"] for c in sorted(r.candidates, key=lambda c: -c["combined"])] for r in res]
        out["paragraph_choice"] = retrieval_metrics(ranked, gold_ids, ks=(1,))
        out["sgp"] = {"k": g.k, "weight": g.weight, "terms": list(g.terms)}
        out["candidates"] = [r.to_json()["candidates"] for r in res]
    elif mode == "top1":
        out["paragraph_choice"] = retrieval_metrics([[r.paragraph_id] for r in res], gold_ids, ks=(1,))
    return _clean(out)


def _runner(stage: str) -> Callable[[_Job], dict]:
    if stage in ("student-sft", "student-kd"):
        return lambda job: _stage_student(job, stage)
    if stage in SGP_MODES:
        return lambda job: _stage_sgp(job, stage)
    return {"data": _stage_data, "synth": _stage_synth, "index": _stage_index, "teacher": _stage_teacher,
            "prune": _stage_prune, "student-synthetic": _stage_student_synthetic, "reader": _stage_reader}[stage]


# the stages a stage reads results of (run first, or loaded from disk, when it runs)
NEEDS = {"synth": ("data",), "teacher": ("data",), "prune": ("data",), "student-sft": ("data", "prune"),
         "student-kd": ("data", "prune"), "student-synthetic": ("data", "synth"), "reader": ("data",),
         "sgp-top1": ("index",), "sgp-oracle": ("index",), "sgp": ("index",)}


def _clear(out: Path) -> list[str]:
    """Delete what the job writes under ``out`` (not ``out`` itself, nor anything else there)."""
    gone = []
    for name in ("stages", "synth", "index"):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
            gone.append(name + "/")
    for name in ("results.md", "results.json", "config.toml"):
        p = out / name
        if p.is_file():
            p.unlink()
            gone.append(name)
    return gone


def run_legal_qa(config: LegalQAConfig, *, restart: bool = False, log: Callable[[str], None] | None = print
                 ) -> dict[str, Any]:
    """Run the stages of ``config.run.stages`` (and those they need) in order, skipping the ones
    already done with the same settings; write ``results.md`` / ``results.json`` to ``run.out``.
    Returns ``{"results": {stage: result}, "stages": [{stage, status, seconds}], "markdown",
    "wall_seconds"}``. ``restart``: delete the earlier stage files, synthetic triplets, index and
    results under ``run.out`` first."""
    cfg = config.validate()
    emit = log or (lambda msg: None)
    out = Path(cfg.run.out)
    if restart:
        gone = _clear(out)
        if gone:
            emit(f"[legal-qa] --restart: deleted {', '.join(gone)} under {out}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
    if cfg.run.threads:
        import torch

        torch.set_num_threads(cfg.run.threads)
    job = _Job(cfg, emit)
    wanted = set(cfg.run.stages)
    todo = set(wanted)
    for s in reversed(STAGES):  # the stages a wanted stage needs come along (from disk when done)
        if s in todo:
            todo.update(NEEDS.get(s, ()))
    order = [s for s in STAGES if s in todo]
    timings: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for i, stage in enumerate(order, 1):
        path = stage_path(cfg, stage)
        settings = _stage_settings(cfg, stage)
        head = f"[legal-qa {i}/{len(order)}] {stage}"
        if path.is_file() and cfg.run.resume:
            try:
                rec = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                rec = None
            if isinstance(rec, dict) and rec.get("settings") == settings and "result" in rec:
                job.results[stage] = rec["result"]
                timings.append({"stage": stage, "status": "done earlier", "seconds": rec["seconds"],
                                "cpu_seconds": rec.get("cpu_seconds"), "finished": rec.get("finished"),
                                "load": rec.get("load")})
                emit(f"{head}: done earlier ({rec['seconds']:.0f} s, {rec.get('finished')}); skipped")
                continue
            emit(f"{head}: the stored result was made with other settings (or is unreadable); running it again")
        emit(f"{head}: running ...")
        loaded_before = job._teacher is not None
        t0, c0 = time.perf_counter(), time.process_time()
        started = _now()
        result = _runner(stage)(job)
        sec, cpu = time.perf_counter() - t0, time.process_time() - c0
        # CPU seconds of this process (all its threads): on a shared machine, wall / CPU shows the contention
        rec = {"stage": stage, "seconds": round(sec, 3), "cpu_seconds": round(cpu, 3), "started": started,
               "finished": _now(), "load": _loadavg(),
               "teacher_load_seconds": round(job.teacher_load_seconds, 3)
               if job._teacher is not None and not loaded_before else 0.0,
               "settings": settings, "result": result}
        _write_json(path, rec)
        job.results[stage] = result
        timings.append({"stage": stage, "status": "ran", "seconds": round(sec, 3), "cpu_seconds": round(cpu, 3),
                        "finished": rec["finished"], "load": rec["load"],
                        "teacher_load_seconds": rec["teacher_load_seconds"]})
        emit(f"{head}: {_summary(stage, result)} ({sec:.0f} s)")
    wall = time.perf_counter() - t_start
    report = _report(cfg, job.results, timings, wall)
    _write_json(out / "results.json", report["json"])
    (out / "results.md").write_text(report["markdown"], encoding="utf-8")
    return {"results": job.results, "stages": timings, "markdown": report["markdown"], "wall_seconds": wall,
            "json": report["json"]}


def _summary(stage: str, r: dict) -> str:
    if "skipped" in r:
        return f"skipped: {r['skipped']}"
    if "metrics" in r:
        m = r["metrics"]
        return f"EM {m['exact_match']:.1f} F1 {m['f1']:.1f} ROUGE-L {m['rouge_l']:.1f}"
    if stage == "synth":
        return f"{r['kept']} triplets kept; synthetic row: {r['row']}"
    if stage == "data":
        return f"{r['n_train']} training pairs, {r['n_test']} test questions"
    if stage == "index":
        return f"{r['paragraphs']} paragraphs indexed"
    if stage == "prune":
        return f"{len(r['kept_layers'])} of {r['teacher_layers']} blocks kept"
    return "done"


# --------------------------------------------------------------------------------------------
# the report

_ROW_NAMES = {"teacher": "teacher", "student-sft": "student (pruned), SFT",
              "student-kd": "student (pruned), KD", "student-synthetic": "student (pruned), synthetic triplets",
              "reader": "extractive reader (encoder + span head)"}


def _report(cfg: LegalQAConfig, res: dict[str, dict], timings: list[dict], wall: float) -> dict[str, Any]:
    teacher_name = Path(cfg.teacher.model).name
    rows, table = [], []
    for stage in ("teacher", "student-sft", "student-kd", "student-synthetic", "reader"):
        r = res.get(stage)
        if r is None:
            continue
        if "skipped" in r:
            rows.append({"stage": stage, "skipped": r["skipped"]})
            table.append(f"| {_ROW_NAMES[stage]} | synthetic: {r['skipped']} | {r.get('kept', 0)} | - | - | - | - | - |")
            continue
        m, sp = r["metrics"], r["speed"]
        if stage == "teacher":
            data = "none"
        elif stage == "student-kd":
            data = f"human (dev split inside), {r['loss']} to the teacher + {cfg.student.ce_weight:g} CE"
        elif stage == "student-synthetic":
            data = f"synthetic, kept by every filter (dev split inside), loss {r['loss']}"
        else:
            data = "human (dev split inside)"
        model = f"teacher {teacher_name}, zero-shot" if stage == "teacher" else _ROW_NAMES[stage]
        if "kept_layers" in r:
            model += f" ({len(r['kept_layers'])} blocks)"
        rows.append({"stage": stage, "model": model, "training_data": data, "n_train": r["n_train"],
                     "exact_match": m["exact_match"], "f1": m["f1"], "rouge_l": m["rouge_l"], "params": r["params"],
                     "s_per_question": sp["s_per_question"]})
        table.append(f"| {model} | {data} | {r['n_train']} | {m['exact_match']:.1f} | {m['f1']:.1f} | "
                     f"{m['rouge_l']:.1f} | {r['params'] / 1e6:.1f}M | {sp['s_per_question']:.2f} |")
    n_test = res.get("data", {}).get("n_test")
    md = [f"# Legal QA on PolicyQA: `edgekd demo --task legal-qa` ({cfg.run.profile} profile)", "",
          f"Written {_now()}. Settings: `{cfg.run.out}/config.toml`; stage results: `{cfg.run.out}/stages/`.", ""]
    if "data" in res:
        d = res["data"]
        md += [f"Training: {d['n_train']} PolicyQA DEV human pairs (contexts of at most {cfg.data.max_context_words} "
               f"words, pool {d['pool']}, seeded sample over the policies); every trained row carves a dev split "
               f"({cfg.student.dev_fraction:.0%} of its pairs, whole paragraphs) and keeps its lowest-dev-loss "
               f"checkpoint. Test: {n_test} PolicyQA TEST questions (same word limit), answered from the gold "
               "context, scored against every gold answer (SQuAD EM / F1, ROUGE-L; percent).", ""]
    if table:
        md += ["| model | training data | n train | EM | F1 | ROUGE-L | params | s / question |",
               "|---|---|---|---|---|---|---|---|", *table, ""]
    sgp_rows = []
    sgp_md = []
    for stage, label in (("sgp-top1", "BM25 top-1 paragraph"), ("sgp", None), ("sgp-oracle", "gold paragraph (oracle)")):
        r = res.get(stage)
        if r is None:
            continue
        if "skipped" in r:
            sgp_md.append(f"| {stage} | skipped: {r['skipped']} | | | | | |")
            sgp_rows.append({"stage": stage, "skipped": r["skipped"]})
            continue
        if label is None:
            label = f"SGP over the BM25 top {cfg.sgp.k} (weight {cfg.sgp.weight:g}, terms {'+'.join(cfg.sgp.terms)})"
        m = r["metrics"]
        pc = r.get("paragraph_choice", {}).get("top1")
        pc_s = "100.0 (given)" if stage == "sgp-oracle" else (f"{pc:.1f}" if pc is not None else "")
        sgp_rows.append({"stage": stage, "mode": r["mode"], "n": r["n"], "paragraph_top1": pc,
                         "exact_match": m["exact_match"], "f1": m["f1"], "rouge_l": m["rouge_l"],
                         "s_per_question": r["speed"]["s_per_question"]})
        sgp_md.append(f"| teacher + {label} | {r['n']} | {pc_s} | {m['exact_match']:.1f} | {m['f1']:.1f} | "
                      f"{m['rouge_l']:.1f} | {r['speed']['s_per_question']:.2f} |")
    if sgp_md:
        sel = next((res[s]["selection"] for s in ("sgp", "sgp-top1", "sgp-oracle") if s in res), {})
        ret = next((res[s]["retrieval"] for s in ("sgp", "sgp-top1", "sgp-oracle") if "retrieval" in res.get(s, {})), {})
        g = cfg.sgp
        rec = ", ".join(f"top-{k[3:]} {v:.1f} %" for k, v in ret.items() if k.startswith("top"))
        md += ["## Paragraph selection (paragraph-specific test questions)", "",
               f"Questions: {sel.get('sampled', sel.get('kept'))} of the {sel.get('kept')} PolicyQA TEST questions "
               f"that name their paragraph (`edgekd.qa.specific.specific_questions`: asked of at most "
               f"{g.max_paragraphs_per_question} paragraph(s), and BM25 given the question alone ranks its own in its "
               f"top {g.filter_k} of all {res.get('index', {}).get('paragraphs', '?')} test paragraphs, so top-"
               f"{g.filter_k} recall is 100 % by construction). BM25 on them: {rec or 'n/a'}. The teacher answers "
               f"(at most {cfg.teacher.max_new_tokens} new tokens) and, for SGP, scores; SGP's weight and terms are "
               "set in the profile, not tuned on test.", "",
               "| answered from | questions | right paragraph % | EM | F1 | ROUGE-L | s / question |",
               "|---|---|---|---|---|---|---|", *sgp_md, ""]
    syn = res.get("synth")
    if syn is not None:
        f = syn["report"]["filters"]
        md += ["## Synthetic triplets", "",
               f"{syn['report']['paragraphs']} DEV paragraphs, {syn['report']['completions']} completions by "
               f"{syn['report']['generator']['name']} (template `{syn['report']['template']['name']}`); "
               f"{syn['kept']} kept. Synthetic-data row: {syn['row']}.", "",
               "| filter | in | dropped | out | |", "|---|---|---|---|---|"]
        md += [f"| {k} | {v['in']} | {v['dropped']} | {v['out']} | {'not run (off, or nothing left)' if v.get('skipped') else ''} |"
               for k, v in f.items()]
        md.append("")
    total = sum(t["seconds"] for t in timings)
    md += ["## Stage times", "",
           f"Wall seconds of each stage ({cfg.run.threads or 'default'} torch threads); CPU seconds of the process "
           "(all threads) and the load average (1 / 5 / 15 min) at its end: on a shared machine, wall time well above "
           "CPU time / threads means other jobs took the cores.", "",
           "| stage | status | wall s | wall min | CPU s | load at the end |", "|---|---|---|---|---|---|"]
    for t in timings:
        note = t["status"]
        if t.get("teacher_load_seconds"):
            note += f" (incl. {t['teacher_load_seconds']:.0f} s loading the teacher)"
        cpu = "" if t.get("cpu_seconds") is None else f"{t['cpu_seconds']:.1f}"
        load = " / ".join(f"{x:.2f}" for x in t["load"]) if t.get("load") else ""
        md.append(f"| {t['stage']} | {note} | {t['seconds']:.1f} | {t['seconds'] / 60:.1f} | {cpu} | {load} |")
    budget = cfg.run.budget_minutes
    md += ["", f"Total of the stage times: {total:.0f} s ({total / 60:.1f} min)"
           + (f"; this profile's budget: {budget:g} min ({'within' if total <= 60 * budget else 'OVER'})"
              if budget else "") + f". This invocation: {wall:.0f} s wall"
           + (" (some stages were done by an earlier invocation)" if any(t["status"] != "ran" for t in timings) else "")
           + "."]
    md.append("")
    js = {"profile": cfg.run.profile, "config": cfg.to_dict(), "rows": rows, "sgp_rows": sgp_rows,
          "synth": None if syn is None else {"kept": syn["kept"], "row": syn["row"], "filters": syn["report"]["filters"]},
          "stages": timings, "total_stage_seconds": total, "wall_seconds": wall, "written": _now()}
    return {"markdown": "\n".join(md), "json": _clean(js)}
