"""Declarative export specs, one small class per model kind, registered by a decorator
(optimum's ``OnnxConfig`` design, scaled down).

A spec knows: its inputs (names, dtypes, named dynamic axes), its outputs, how to make dummy
inputs, how to export the model to an ONNX file, how to compute the PyTorch reference logits on
the same feeds, and the fp32 tolerance the export must meet. :func:`edgekd.compile.compile_model`
does the rest (optimisation, quantisation, parity, bundle) generically, so a new model kind (a
token-pruned transformer, say) is one more registered class.
"""
from __future__ import annotations

import inspect
import json
import pathlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from edgekd.errors import EdgekdValueError
from edgekd.settings import read_json_object


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, element type and the names of its (dynamic) axes."""

    name: str
    dtype: str = "int64"
    axes: tuple[str, ...] = ("batch", "sequence")

    def as_manifest(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.axes)}


_REGISTRY: dict[str, type["ExportSpec"]] = {}


def register_export_spec(kind: str) -> Callable[[type["ExportSpec"]], type["ExportSpec"]]:
    """Class decorator: ``@register_export_spec("bilstm_attention")``."""

    def deco(cls: type[ExportSpec]) -> type[ExportSpec]:
        if kind in _REGISTRY:
            raise EdgekdValueError(f"export spec {kind!r} is already registered by {_REGISTRY[kind].__name__}")
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return deco


def get_export_spec(kind: str) -> type["ExportSpec"]:
    if kind not in _REGISTRY:
        raise EdgekdValueError(f"model_kind: unknown model kind {kind!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[kind]


def registered_kinds() -> list[str]:
    return sorted(_REGISTRY)


def detect_model_kind(source: str | pathlib.Path) -> str:
    """The export spec for a model directory, from its files (JSON only, nothing is executed):

    - ``token_pruning.json`` (written by ``TokenPrunedModel.save_pretrained``): ``token_pruned_bert``;
    - ``config.json`` with ``model_type: "bilstm_attention"``: the student, ``bilstm_attention``;
    - ``config.json`` naming a ``*ForSequenceClassification`` architecture (head-pruned models
      included): ``hf_sequence_classification``.
    """
    path = pathlib.Path(source)
    if not path.is_dir():
        raise EdgekdValueError(f"source: expected a model directory, got {str(source)!r} (not a directory)")
    if (path / "token_pruning.json").is_file():
        return "token_pruned_bert"
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise EdgekdValueError(f"source: cannot detect the model kind of {path}: it holds no config.json; "
                               f"pass the kind explicitly, one of {registered_kinds()}")
    cfg = read_json_object(cfg_path, "source")
    if cfg.get("model_type") == "bilstm_attention":
        return "bilstm_attention"
    archs = cfg.get("architectures") or []
    if isinstance(archs, list) and any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in archs):
        return "hf_sequence_classification"
    raise EdgekdValueError(
        f"source: cannot detect the model kind of {path} (config.json: model_type {cfg.get('model_type')!r}, "
        f"architectures {archs!r}; no token_pruning.json); pass the kind explicitly, one of {registered_kinds()}")


def post_padded_dummy(batch: int, seq: int, vocab: int, low: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids in ``[low, vocab)`` with post-padding: row lengths vary from 1 to ``seq``."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(low, vocab, size=(batch, seq), dtype=np.int64)
    lengths = np.linspace(seq, 1, batch).round().astype(int) if batch > 1 else np.array([seq])
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


class ExportSpec:
    """Base class: subclasses set the class attributes and implement the methods."""

    kind: ClassVar[str] = ""
    inputs: ClassVar[tuple[InputSpec, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ("logits",)
    #: fp32 ONNX vs PyTorch: max abs logit difference allowed
    fp32_atol: ClassVar[float] = 1e-4
    #: name of the output that explains predictions (per-token weights), if any
    explanation_output: ClassVar[str | None] = None
    #: op types ORT's dynamic quantisation should quantise for this kind
    quantize_op_types: ClassVar[tuple[str, ...]] = ("MatMul",)
    #: lowest ONNX opset the exporter of this kind supports (``compile_model`` raises a lower one to it)
    min_opset: ClassVar[int] = 1

    def __init__(self, source: str | pathlib.Path, tokenizer: str | pathlib.Path | None = None):
        self.source = pathlib.Path(source)
        if not self.source.is_dir():
            raise EdgekdValueError(f"source: expected a model directory, got {source!r} (not a directory)")
        tok = pathlib.Path(tokenizer) if tokenizer is not None else self.source / "tokenizer.json"
        if not tok.is_file():
            raise EdgekdValueError(f"tokenizer: expected a tokenizers 'tokenizer.json', {tok} does not exist")
        self.tokenizer_path = tok

    # to implement ------------------------------------------------------------------------------
    def label_names(self) -> list[str]:
        raise NotImplementedError

    def dummy_inputs(self, batch: int = 3, seq: int = 9, seed: int = 0) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def export(self, path: pathlib.Path, opset: int) -> None:
        raise NotImplementedError

    def reference_logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def preprocessing(self, max_length: int) -> dict[str, Any]:
        raise NotImplementedError

    # shared ------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": str(self.source)}


def _tokenizer_info(path: pathlib.Path) -> dict[str, Any]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    spec = json.loads(path.read_text(encoding="utf-8"))
    norm = json.dumps(spec.get("normalizer") or {})
    return {"tokenizer": tok, "lowercase": "Lowercase" in norm or '"lowercase": true' in norm,
            "model_type": (spec.get("model") or {}).get("type")}


@register_export_spec("bilstm_attention")
class StudentExportSpec(ExportSpec):
    """The BiLSTM + masked-attention student: graph built from the weights (see
    :mod:`edgekd.compile.student_onnx`), reference from :class:`edgekd.students.BiLSTMAttentionStudent`."""

    inputs = (InputSpec("input_ids"), InputSpec("attention_mask"))
    outputs = ("logits", "attention")
    fp32_atol = 1e-4
    explanation_output = "attention"
    quantize_op_types = ("LSTM", "MatMul", "Gather")

    def __init__(self, source, tokenizer=None):
        super().__init__(source, tokenizer)
        from edgekd.compile.student_onnx import load_student_weights

        self.weights = load_student_weights(self.source)
        self.config = self.weights.config
        self._torch_model = None

    def label_names(self) -> list[str]:
        names = self.config.get("label_names")
        C = int(self.config["num_classes"])
        if not names:
            return [f"LABEL_{i}" for i in range(C)]
        if len(names) != C:
            raise EdgekdValueError(f"config.json: label_names has {len(names)} names for num_classes={C}")
        return list(names)

    def dummy_inputs(self, batch=3, seq=9, seed=0):
        return post_padded_dummy(batch, seq, int(self.config["vocab_size"]), 2, seed)

    def export(self, path, opset):
        import onnx

        from edgekd.compile.student_onnx import build_student_onnx

        onnx.save(build_student_onnx(self.weights, opset=opset), str(path))

    def torch_model(self):
        if self._torch_model is None:
            self._torch_model = load_torch_student(self.source)
        return self._torch_model

    def reference_logits(self, feeds):
        import torch

        model = self.torch_model()
        with torch.no_grad():
            out = model(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
        logits = out["logits"] if isinstance(out, dict) else getattr(out, "logits", out)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return logits.detach().float().numpy()

    def preprocessing(self, max_length):
        info = _tokenizer_info(self.tokenizer_path)
        tok = info["tokenizer"]
        unk = tok.token_to_id("[UNK]")
        pad = int(self.config["pad_id"])
        if tok.token_to_id("[PAD]") not in (None, pad):
            raise EdgekdValueError(
                f"tokenizer: [PAD] has id {tok.token_to_id('[PAD]')} but the student's pad_id is {pad}"
            )
        if tok.get_vocab_size() > int(self.config["vocab_size"]):
            raise EdgekdValueError(
                f"tokenizer: {tok.get_vocab_size()} tokens but the student's vocab_size is {self.config['vocab_size']}"
            )
        return {"tokenizer": "tokenizer.json", "tokenizer_model": info["model_type"], "max_length": int(max_length),
                "lowercase": info["lowercase"], "pad_id": pad, "unk_id": unk, "padding": "post",
                "truncation": "keep the first max_length tokens",
                "empty_input": "fed as one [UNK] token; flagged in Predictions.empty"}


def load_torch_student(model_dir: pathlib.Path):
    """The PyTorch student from ``edgekd.students`` (the reference of the export)."""
    try:
        from edgekd.students import BiLSTMAttentionStudent
    except ImportError as exc:  # pragma: no cover - depends on the student module being present
        raise EdgekdValueError(f"reference: edgekd.students.BiLSTMAttentionStudent is not available: {exc}") from exc
    model = BiLSTMAttentionStudent.from_pretrained(str(model_dir))
    return model.eval()


@register_export_spec("hf_sequence_classification")
class HFSequenceClassificationSpec(ExportSpec):
    """A Hugging Face ``*ForSequenceClassification`` model directory (config, weights,
    ``tokenizer.json``), exported with ``torch.onnx.export(dynamo=True)``.

    optimum's exporter is not used: for these models the export is one ``torch.onnx.export`` call
    with named dynamic axes, and going through optimum would tie the export to optimum's own
    transformers version constraints (this project runs transformers 5.x); the spec keeps
    optimum's design (declared inputs, dynamic axes, dummy inputs, tolerance) instead."""

    inputs = (InputSpec("input_ids"), InputSpec("attention_mask"), InputSpec("token_type_ids"))
    outputs = ("logits",)
    fp32_atol = 1e-4
    explanation_output = None
    quantize_op_types = ("MatMul", "Attention", "Gather", "Gemm")

    def __init__(self, source, tokenizer=None):
        super().__init__(source, tokenizer)
        self._model = None
        if (self.source / "token_pruning.json").is_file():
            import warnings

            warnings.warn(f"{self.source} holds a token-pruned model: 'hf_sequence_classification' compiles the "
                          "unpruned transformer; use model kind 'token_pruned_bert' (or 'auto') to keep the pruning",
                          stacklevel=2)

    def _pruned_heads(self) -> dict:
        try:
            cfg = json.loads((self.source / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        heads = cfg.get("edgekd_pruned_heads") if isinstance(cfg, dict) else None
        return heads if isinstance(heads, dict) else {}

    def model(self):
        if self._model is None:
            if any(self._pruned_heads().values()):
                # attention-head pruned (edgekd.prune.heads): the sliced weights only fit the smaller
                # architecture, which transformers cannot build from the config alone
                from edgekd.prune.heads import load_head_pruned_model

                model = load_head_pruned_model(self.source)
                if type(model).__name__ != "BertForSequenceClassification":
                    raise EdgekdValueError(f"source: {self.source} is a head-pruned {type(model).__name__}, "
                                           "not a sequence classifier")
                self._model = model.eval()
            else:
                from safetensors import SafetensorError
                from transformers import AutoModelForSequenceClassification

                try:
                    self._model = AutoModelForSequenceClassification.from_pretrained(str(self.source)).eval()
                except (OSError, ValueError, SafetensorError) as exc:  # missing, truncated or corrupt weights
                    raise EdgekdValueError(f"source: cannot load the model in {self.source}: "
                                           f"{' '.join(str(exc).split())[:300]}") from exc
        return self._model

    @property
    def input_names(self) -> list[str]:
        params = inspect.signature(self.model().forward).parameters
        names = ["input_ids", "attention_mask"]
        if "token_type_ids" in params and getattr(self.model().config, "type_vocab_size", 0):
            names.append("token_type_ids")
        return names

    def label_names(self):
        cfg = self.model().config
        return [cfg.id2label[i] for i in range(cfg.num_labels)]

    # shortest sequence the exported graph takes (token-pruned subclass: see TokenPrunedBertSpec)
    min_length = 1

    def dummy_inputs(self, batch=3, seq=9, seed=0):
        vocab = int(self.model().config.vocab_size)
        feeds = post_padded_dummy(batch, max(seq, self.min_length), vocab, 1000 if vocab > 2000 else 1, seed)
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return feeds

    def export(self, path, opset):
        """``torch.onnx.export(dynamo=True)`` with named dynamic batch/sequence dims. The legacy
        TorchScript exporter is not used: with transformers 5 it bakes the traced shapes into the
        attention-mask construction and was off by ~1e-2 in logits even at the traced shape."""
        import torch

        names = self.input_names
        model = self.model()

        class LogitsOnly(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                kw = {"input_ids": input_ids, "attention_mask": attention_mask}
                if token_type_ids is not None:
                    kw["token_type_ids"] = token_type_ids
                return self.m(**kw).logits

        wrapper = LogitsOnly(model)
        if type(model).__name__ == "BertForSequenceClassification":
            # layer by layer with a (B, 1, 1, S) mask: same logits, no (B, 1, N, N) mask in the graph
            # (1.6x faster at 32 x 512 tokens; see edgekd.prune.export.DirectBertClassifier)
            from edgekd.prune.export import DirectBertClassifier

            wrapper = DirectBertClassifier(model)
        dummy = self.dummy_inputs(batch=2, seq=8)
        args = tuple(torch.from_numpy(dummy[n]) for n in names)
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        shapes = {n: {0: batch, 1: seq} for n in names}
        with torch.no_grad():
            torch.onnx.export(wrapper.eval(), args, str(path), input_names=names, output_names=["logits"],
                              dynamic_shapes=shapes, opset_version=opset, dynamo=True, external_data=False,
                              verbose=False)

    def reference_logits(self, feeds):
        import torch

        with torch.no_grad():
            out = self.model()(**{k: torch.from_numpy(v) for k, v in feeds.items() if k in self.input_names})
        return out.logits.float().numpy()

    def preprocessing(self, max_length):
        info = _tokenizer_info(self.tokenizer_path)
        tok = info["tokenizer"]
        limit = int(getattr(self.model().config, "max_position_embeddings", max_length))
        if max_length > limit:
            raise EdgekdValueError(f"max_length: {max_length} exceeds the model's max_position_embeddings {limit}")
        pad = tok.token_to_id("[PAD]")
        return {"tokenizer": "tokenizer.json", "tokenizer_model": info["model_type"], "max_length": int(max_length),
                "lowercase": info["lowercase"], "pad_id": 0 if pad is None else int(pad),
                "unk_id": tok.token_to_id("[UNK]"), "padding": "post",
                "truncation": "keep the first max_length tokens (special tokens included)",
                "empty_input": "fed as the tokenizer's special tokens only; flagged in Predictions.empty"}


@register_export_spec("token_pruned_bert")
class TokenPrunedBertSpec(HFSequenceClassificationSpec):
    """A token-pruned BERT / MiniLM sequence classifier saved by
    :meth:`edgekd.prune.TokenPrunedModel.save_pretrained` (``config.json``, ``model.safetensors``,
    ``token_pruner.safetensors``, ``token_pruning.json``, plus the ``tokenizer.json``).

    Exported by :func:`edgekd.prune.export.export_onnx` in its eval form: the graph computes
    ``k = ceil(keep_ratio * N)`` from the input length and keeps the tokens with ``TopK`` +
    ``Gather`` (hard top-k, as the PyTorch model in eval). The reference is the PyTorch pruned
    model in eval. ``k`` depends on the padded length ``N``, so the bundle pads every batch to at
    least ``min_length`` tokens (the shortest input the exporter declares, at which at least one
    token besides ``[CLS]`` is kept; recorded in the manifest's preprocessing) and the runtime
    refuses shorter feeds. Inputs, labels, dummy inputs and the tokenizer settings are those of
    :class:`HFSequenceClassificationSpec`."""

    min_opset = 18  # edgekd.prune.export.export_onnx

    def __init__(self, source, tokenizer=None):
        ExportSpec.__init__(self, source, tokenizer)  # not the parent's: it warns about token_pruning.json
        if not (self.source / "token_pruning.json").is_file():
            raise EdgekdValueError(f"source: {self.source} is not a token-pruned model directory (no token_pruning.json; "
                                   "write one with TokenPrunedModel.save_pretrained or `edgekd prune tokens`)")
        self._model = None

    def model(self):
        """The :class:`~edgekd.prune.TokenPrunedModel`, in eval mode (read from JSON and safetensors only)."""
        if self._model is None:
            from edgekd.prune.tokens import load_pruned_model

            model = load_pruned_model(self.source)
            if model.architecture != "BertForSequenceClassification":
                raise EdgekdValueError(f"source: {self.source} holds a token-pruned {model.architecture}; bundles need "
                                       "a sequence classifier (BertForSequenceClassification)")
            self._model = model.eval()
        return self._model

    @property
    def min_length(self) -> int:
        from edgekd.prune.export import min_seq_len

        return min_seq_len(self.model())

    @property
    def max_positions(self) -> int:
        return int(self.model().config.max_position_embeddings)

    def export(self, path, opset):
        from edgekd.prune.export import export_onnx

        seq = min(max(16, self.min_length), self.max_positions)
        export_onnx(self.model(), path, seq_len=seq, batch_size=2, opset=max(int(opset), self.min_opset),
                    with_token_type_ids="token_type_ids" in self.input_names)

    def reference_logits(self, feeds):
        if feeds["input_ids"].shape[1] < self.min_length:
            raise EdgekdValueError(f"feeds: sequence length {feeds['input_ids'].shape[1]} is below the pruned model's "
                                   f"min_length {self.min_length}")
        return super().reference_logits(feeds)

    def preprocessing(self, max_length):
        pre = super().preprocessing(max_length)
        if max_length < self.min_length:
            raise EdgekdValueError(
                f"max_length: {max_length} is below the token-pruned model's minimum sequence length "
                f"{self.min_length} (shorter inputs keep no token besides [CLS]); use max_length >= {self.min_length}")
        pre["min_length"] = self.min_length
        pre["padding"] = "post, to the longest text and to at least min_length"
        return pre

    def describe(self):
        model = self.model()
        return {"kind": self.kind, "source": str(self.source), "architecture": model.architecture,
                "token_pruning": model.pruning_config.to_dict(), "min_length": self.min_length,
                "export": "edgekd.prune.export.export_onnx (TorchScript exporter): TopK + Gather, hard top-k, "
                          "k = ceil(keep_ratio * N) computed in the graph"}
