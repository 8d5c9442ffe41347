"""The self-explaining DiXtill student: embedding -> masked BiLSTM -> masked additive attention ->
linear classifier.

``e_t = v^T tanh(W h_t)`` over the concatenated forward/backward states ``h_t``, ``alpha`` = softmax
of ``e`` over the valid tokens, ``context = sum_t alpha_t h_t``, ``logits = classifier(dropout(context))``.
``alpha`` is the model's explanation; ``e`` (``attention_logits``, 0 at padding) is what the DiXtill
XAI loss aligns with the teacher's attributions.

Unlike the original Keras code, the BiLSTM runs over each sequence's valid tokens only (the
backward direction starts at the last real token, not on padding).

Backends (same parameters, same results to ~1e-6):

* ``"native"``: the edgekd ops ``masked_bilstm`` and ``masked_attention_pool`` (C++ on CPU,
  Triton on CUDA), and in inference of small CPU batches the fused op ``bilstm_attention_forward``;
* ``"reference"``: ``torch.nn.LSTM`` with ``pack_padded_sequence`` plus plain-PyTorch attention;
* ``"auto"``: native when the ops are available, else reference.

Fixed state-dict names: ``embedding.weight``, ``lstm.{weight_ih,weight_hh,bias_ih,bias_hh}_l0[_reverse]``
(``self.lstm`` is a real ``nn.LSTM(E, H, batch_first=True, bidirectional=True)``), ``attention.W``
(A, 2H), ``attention.v`` (A,), ``classifier.weight`` (C, 2H), ``classifier.bias`` (C,).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from edgekd.errors import EdgekdValueError
from edgekd.ops.bilstm_attention import (
    FUSED_MAX_BATCH,
    PackedWeightsCache,
    bilstm_attention_forward,
    check_bilstm_attention_inputs,
    fused_forward_applies,
)
from edgekd.ops.masked_attention_pool import masked_attention_pool, masked_attention_pool_reference
from edgekd.ops.masked_bilstm import lstm_weights, masked_bilstm

__all__ = ["BiLSTMAttentionStudent", "StudentOutput", "Explanation", "MODEL_TYPE", "native_available"]

MODEL_TYPE = "bilstm_attention"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_BACKENDS = ("auto", "native", "reference")
@dataclass
class StudentOutput:
    """Output of :meth:`BiLSTMAttentionStudent.forward`.

    Attributes:
        logits: (B, C) class scores.
        attention_logits: (B, T) ``e_t = v^T tanh(W h_t)``, 0 at padding.
        attention: (B, T) attention weights (sum to 1 over the valid tokens), 0 at padding.
    """

    logits: Tensor
    attention_logits: Tensor
    attention: Tensor


@dataclass
class Explanation:
    """One input's prediction and its attention over its valid tokens."""

    label: int
    label_name: Optional[str]
    probabilities: List[float]
    attention: List[float]
    tokens: Optional[List[str]] = None
    pairs: List[tuple] = field(default_factory=list)  # (token, weight) when tokens are given


def native_available() -> bool:
    """True when the native ops ``masked_bilstm`` and ``masked_attention_pool`` are available: always
    once this module imports (their C++ kernels, or the PyTorch fallback when ``edgekd._C`` is missing)."""
    return callable(masked_bilstm) and callable(masked_attention_pool)


class _Attention(nn.Module):
    """Holds the additive-attention parameters ``W`` (A, D) and ``v`` (A,)."""

    def __init__(self, input_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(attention_dim, input_dim))
        self.v = nn.Parameter(torch.empty(attention_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.W)
        bound = 1.0 / math.sqrt(self.v.shape[0])
        nn.init.uniform_(self.v, -bound, bound)

    def extra_repr(self) -> str:
        return f"attention_dim={self.W.shape[0]}, input_dim={self.W.shape[1]}"


def _to_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise EdgekdValueError(f"BiLSTMAttentionStudent: '{name}' must be an int, got {value!r}")
    if value < minimum:
        raise EdgekdValueError(f"BiLSTMAttentionStudent: '{name}' must be >= {minimum}, got {value}")
    return int(value)


class BiLSTMAttentionStudent(nn.Module):
    """Masked-attention BiLSTM student (DiXtill), self-explaining through its attention.

    Args:
        vocab_size: number of token ids (ids must lie in ``[0, vocab_size)``).
        embed_dim: embedding size E.
        hidden_size: LSTM hidden size H per direction (states are 2H wide).
        num_classes: number of output classes C.
        pad_id: id of the padding token (its embedding row gets no gradient).
        attention_dim: attention size A (default ``2 * hidden_size``).
        dropout: dropout on the context vector before the classifier.
        embeddings: optional (V, E) numpy array or tensor to initialize the embedding with.
        freeze_embeddings: keep the embedding fixed during training.
        label_names: optional names of the C classes.
        backend: ``"auto"``, ``"native"`` or ``"reference"`` (see the module docstring).

    Parameter count: ``V*E + 2*(4H*(E+H) + 8H) + A*2H + A + C*2H + C``; with E = H = 50, A = 100,
    C = 3 that is ``50*V + 51,203``, i.e. under one million parameters for a vocabulary of up to
    18,975 tokens (and under 600k for a 10k vocabulary). TFNS has 27,879 distinct lowercase
    whitespace tokens, 8,317 of them occurring at least twice (about 467k parameters).
    """

    # largest CPU batch that runs on the fused inference op (edgekd.ops.bilstm_attention.FUSED_MAX_BATCH)
    FUSED_MAX_BATCH = FUSED_MAX_BATCH

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 50,
        hidden_size: int = 50,
        num_classes: int = 3,
        pad_id: int = 0,
        attention_dim: Optional[int] = None,
        dropout: float = 0.0,
        embeddings: Optional[Union[np.ndarray, Tensor]] = None,
        freeze_embeddings: bool = False,
        label_names: Optional[Sequence[str]] = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        vocab_size = _to_int("vocab_size", vocab_size, 1)
        embed_dim = _to_int("embed_dim", embed_dim, 1)
        hidden_size = _to_int("hidden_size", hidden_size, 1)
        num_classes = _to_int("num_classes", num_classes, 1)
        pad_id = _to_int("pad_id", pad_id, 0)
        if pad_id >= vocab_size:
            raise EdgekdValueError(f"BiLSTMAttentionStudent: 'pad_id' ({pad_id}) must be < vocab_size ({vocab_size})")
        attention_dim = 2 * hidden_size if attention_dim is None else _to_int("attention_dim", attention_dim, 1)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
            raise EdgekdValueError(f"BiLSTMAttentionStudent: 'dropout' must be a float in [0, 1), got {dropout!r}")
        if label_names is not None:
            if isinstance(label_names, str) or not all(isinstance(n, str) for n in label_names):
                raise EdgekdValueError(f"BiLSTMAttentionStudent: 'label_names' must be a list of str, got {label_names!r}")
            label_names = list(label_names)
            if len(label_names) != num_classes:
                raise EdgekdValueError(
                    f"BiLSTMAttentionStudent: 'label_names' has {len(label_names)} names but num_classes is {num_classes}"
                )
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.pad_id = pad_id
        self.attention_dim = attention_dim
        self.dropout_p = float(dropout)
        self.label_names = label_names

        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(embed_dim, hidden_size, batch_first=True, bidirectional=True)
        self.attention = _Attention(2 * hidden_size, attention_dim)
        self.dropout = nn.Dropout(self.dropout_p)
        self.classifier = nn.Linear(2 * hidden_size, num_classes)

        self._fused_pack = PackedWeightsCache()  # the fused op's packed weights (see _fused_forward)
        if embeddings is not None:
            self._init_embeddings(embeddings)
        if freeze_embeddings:
            self.embedding.weight.requires_grad_(False)
        self.backend = backend  # validated by the property setter

    # ----------------------------------------------------------------------------------------
    # configuration
    # ----------------------------------------------------------------------------------------
    def _init_embeddings(self, embeddings: Union[np.ndarray, Tensor]) -> None:
        if isinstance(embeddings, np.ndarray):
            if not np.issubdtype(embeddings.dtype, np.floating):
                raise EdgekdValueError(f"BiLSTMAttentionStudent: 'embeddings' must be floating point, got {embeddings.dtype}")
            emb = torch.from_numpy(np.ascontiguousarray(embeddings))
        elif isinstance(embeddings, Tensor):
            if not embeddings.dtype.is_floating_point:
                raise EdgekdValueError(f"BiLSTMAttentionStudent: 'embeddings' must be floating point, got {embeddings.dtype}")
            emb = embeddings.detach()
        else:
            raise EdgekdValueError(
                f"BiLSTMAttentionStudent: 'embeddings' must be a numpy array or a tensor, got {type(embeddings).__name__}"
            )
        expected = (self.vocab_size, self.embed_dim)
        if tuple(emb.shape) != expected:
            raise EdgekdValueError(
                f"BiLSTMAttentionStudent: 'embeddings' must have shape (vocab_size, embed_dim) = {expected}, got {tuple(emb.shape)}"
            )
        if not bool(torch.isfinite(emb).all()):
            raise EdgekdValueError("BiLSTMAttentionStudent: 'embeddings' contains NaN or inf")
        with torch.no_grad():
            self.embedding.weight.copy_(emb.to(self.embedding.weight.dtype))

    @property
    def backend(self) -> str:
        """The requested backend (``"auto"``, ``"native"`` or ``"reference"``)."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in _BACKENDS:
            raise EdgekdValueError(f"BiLSTMAttentionStudent: 'backend' must be one of {_BACKENDS}, got {value!r}")
        if value == "native" and not native_available():
            raise EdgekdValueError(
                "BiLSTMAttentionStudent: backend='native' needs the edgekd ops masked_bilstm and "
                "masked_attention_pool, which are not available in this build; use backend='reference' or 'auto'"
            )
        self._backend = value
        self._use_native = value == "native" or (value == "auto" and native_available())

    @property
    def resolved_backend(self) -> str:
        """The backend actually used: ``"native"`` or ``"reference"``."""
        return "native" if self._use_native else "reference"

    def config(self) -> Dict[str, Any]:
        """The constructor arguments that define the architecture (what ``config.json`` holds)."""
        import edgekd

        return {
            "model_type": MODEL_TYPE,
            "vocab_size": self.vocab_size,
            "embed_dim": self.embed_dim,
            "hidden_size": self.hidden_size,
            "num_classes": self.num_classes,
            "pad_id": self.pad_id,
            "attention_dim": self.attention_dim,
            "dropout": self.dropout_p,
            "label_names": self.label_names,
            "edgekd_version": edgekd.__version__,
        }

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (only those with ``requires_grad`` when ``trainable_only``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        return f"backend={self.resolved_backend}"

    # ----------------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------------
    def check_inputs(self, input_ids: Tensor, attention_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """Validate a batch; return its lengths (B,) int64 and its mask as bool (B, T).

        ``input_ids`` (B, T) int64 in ``[0, vocab_size)``; ``attention_mask`` (B, T) bool or integer
        with values 0/1, post-padded (ones then zeros) with at least one valid token per row.
        Raises :class:`EdgekdValueError` naming the problem.
        """
        lengths, mask, _ = self._validate(input_ids, attention_mask)
        return lengths, mask

    def _validate(self, input_ids: Tensor, attention_mask: Tensor) -> Tuple[Tensor, Tensor, Optional[int]]:
        """:meth:`check_inputs` plus the number of valid tokens (None under torch.compile): the one
        batch check of the ops (:func:`~edgekd.ops.bilstm_attention.check_bilstm_attention_inputs`)."""
        return check_bilstm_attention_inputs(
            input_ids, attention_mask, self.vocab_size, device=self.embedding.weight.device, who="BiLSTMAttentionStudent"
        )

    def lstm_weights(self) -> List[Tensor]:
        """The 8 LSTM tensors in ``nn.LSTM`` order (forward direction, then ``_reverse``)."""
        return lstm_weights(self.lstm)

    def encode(self, input_ids: Tensor, lengths: Tensor, num_valid: Optional[int] = None) -> Tensor:
        """BiLSTM states (B, T, 2H), zeros at padding, for an already validated batch.

        ``num_valid`` (``sum(lengths)``, when known) tells the native op that the batch is already
        checked, which skips its re-validation.
        """
        x = self.embedding(input_ids)
        T = input_ids.shape[1]
        if self._use_native:
            states = masked_bilstm(x, lengths, self.lstm_weights(), validate=num_valid is None, num_valid=num_valid)[0]
        else:
            from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            states, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        return states

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> StudentOutput:
        """Classify a batch and explain it.

        Args:
            input_ids: (B, T) int64 token ids in ``[0, vocab_size)``.
            attention_mask: (B, T) 0/1 (bool or integer), post-padded, >= 1 valid token per row.

        Returns:
            :class:`StudentOutput` with ``logits`` (B, C), ``attention_logits`` (B, T) and
            ``attention`` (B, T), both 0 at padding.
        """
        if self._can_fuse(input_ids, attention_mask):
            return self._fused_forward(input_ids, attention_mask)
        return self._unfused_forward(input_ids, attention_mask)

    def _unfused_forward(self, input_ids: Tensor, attention_mask: Tensor) -> StudentOutput:
        """The differentiable forward: validation, then the BiLSTM and attention ops (or nn.LSTM)."""
        lengths, mask, num_valid = self._validate(input_ids, attention_mask)
        states = self.encode(input_ids, lengths, num_valid)
        if self._use_native:
            context, att_logits, attention = masked_attention_pool(
                states, mask, self.attention.W, self.attention.v, validate=False
            )
        else:
            context, att_logits, attention = masked_attention_pool_reference(states, mask, self.attention.W, self.attention.v)
        logits = self.classifier(self.dropout(context))
        return StudentOutput(logits=logits, attention_logits=att_logits, attention=attention)

    def _can_fuse(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> bool:
        """Whether this forward can run as the single fused inference op.

        ``edgekd::bilstm_attention_forward`` has no backward and no dropout, so it serves the native
        backend when dropout is inactive and :func:`~edgekd.ops.bilstm_attention.fused_forward_applies`
        (gradients disabled, C++ kernel built, a CPU batch of at most ``FUSED_MAX_BATCH`` rows, not
        while torch.compile traces).
        """
        return (
            self._use_native
            and (not self.training or self.dropout_p == 0.0)
            and fused_forward_applies(input_ids, attention_mask, self.embedding.weight, self.FUSED_MAX_BATCH)
        )

    def _fused_forward(self, input_ids: Tensor, attention_mask: Tensor) -> StudentOutput:
        lstm_w = self.lstm_weights()
        att_W = self.attention.W
        try:
            logits, att_logits, attention = bilstm_attention_forward(
                input_ids,
                attention_mask,
                self.embedding.weight,
                lstm_w,
                att_W,
                self.attention.v,
                self.classifier.weight,
                self.classifier.bias,
                packed=self._fused_pack.get(lstm_w, att_W),
            )
        except EdgekdValueError:
            self._validate(input_ids, attention_mask)  # name a bad batch as the student's other paths do
            raise
        return StudentOutput(logits=logits, attention_logits=att_logits, attention=attention)

    @torch.inference_mode()
    def explain(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        tokens: Optional[Sequence[Sequence[str]]] = None,
    ) -> List[Explanation]:
        """Predict and return, per input, the attention weight of each valid token.

        ``tokens`` (optional) are the token strings of each row (at least its valid length); they
        are paired with their weights in :attr:`Explanation.pairs`.
        """
        was_training = self.training
        self.eval()
        try:
            out = self.forward(input_ids, attention_mask)
        finally:
            self.train(was_training)
        probs = torch.softmax(out.logits.float(), dim=-1).cpu()
        attn = out.attention.float().cpu()
        lengths = attention_mask.sum(dim=1).cpu().tolist()
        if tokens is not None and len(tokens) != len(lengths):
            raise EdgekdValueError(f"explain: 'tokens' has {len(tokens)} rows but the batch has {len(lengths)}")
        result = []
        for i, n in enumerate(lengths):
            n = int(n)
            label = int(probs[i].argmax())
            weights = attn[i, :n].tolist()
            toks = None
            pairs: List[tuple] = []
            if tokens is not None:
                if len(tokens[i]) < n:
                    raise EdgekdValueError(f"explain: row {i} of 'tokens' has {len(tokens[i])} tokens, fewer than its length {n}")
                toks = list(tokens[i][:n])
                pairs = list(zip(toks, weights))
            result.append(
                Explanation(
                    label=label,
                    label_name=self.label_names[label] if self.label_names else None,
                    probabilities=probs[i].tolist(),
                    attention=weights,
                    tokens=toks,
                    pairs=pairs,
                )
            )
        return result

    # ----------------------------------------------------------------------------------------
    # save / load (config.json + model.safetensors, no pickle)
    # ----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: Union[str, os.PathLike]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
        from safetensors.torch import save_file

        path = Path(directory)
        if path.exists() and not path.is_dir():
            raise EdgekdValueError(f"save_pretrained: '{path}' exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt", "model_type": MODEL_TYPE})
        with open(path / CONFIG_NAME, "w", encoding="utf-8") as f:
            json.dump(self.config(), f, indent=2)
            f.write("\n")
        return path

    @classmethod
    def from_pretrained(
        cls, directory: Union[str, os.PathLike], backend: str = "auto", map_location: Union[str, torch.device] = "cpu"
    ) -> "BiLSTMAttentionStudent":
        """Load a student written by :meth:`save_pretrained` (safetensors + JSON only).

        Raises :class:`EdgekdValueError` for a missing or corrupt file, an unknown model type, or
        weights that do not match the config.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(directory)
        cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not path.is_dir():
            raise EdgekdValueError(f"from_pretrained: '{path}' is not a directory")
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise EdgekdValueError(f"from_pretrained: missing file '{p}'")
        try:
            with open(cfg_path, "r", encoding="utf-8") as f:
                cfg = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EdgekdValueError(f"from_pretrained: '{cfg_path}' is not valid JSON: {exc}") from exc
        if not isinstance(cfg, dict):
            raise EdgekdValueError(f"from_pretrained: '{cfg_path}' must hold a JSON object")
        if cfg.get("model_type") != MODEL_TYPE:
            raise EdgekdValueError(
                f"from_pretrained: '{cfg_path}' has model_type {cfg.get('model_type')!r}, expected {MODEL_TYPE!r}"
            )
        required = ("vocab_size", "embed_dim", "hidden_size", "num_classes", "pad_id", "attention_dim", "dropout")
        missing = [k for k in required if k not in cfg]
        if missing:
            raise EdgekdValueError(f"from_pretrained: '{cfg_path}' lacks the keys {missing}")
        try:
            state = load_file(str(w_path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise EdgekdValueError(f"from_pretrained: '{w_path}' is not a valid safetensors file: {exc}") from exc
        model = cls(
            vocab_size=cfg["vocab_size"],
            embed_dim=cfg["embed_dim"],
            hidden_size=cfg["hidden_size"],
            num_classes=cfg["num_classes"],
            pad_id=cfg["pad_id"],
            attention_dim=cfg["attention_dim"],
            dropout=cfg["dropout"],
            label_names=cfg.get("label_names"),
            backend=backend,
        )
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if set(expected) != set(got):
            raise EdgekdValueError(
                f"from_pretrained: '{w_path}' does not match the config: missing tensors "
                f"{sorted(set(expected) - set(got))}, unexpected tensors {sorted(set(got) - set(expected))}"
            )
        wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
        if wrong:
            detail = ", ".join(f"{k}: file {g} vs config {e}" for k, (g, e) in sorted(wrong.items()))
            raise EdgekdValueError(f"from_pretrained: tensor shapes in '{w_path}' do not match '{cfg_path}': {detail}")
        bad_dtype = [k for k, v in state.items() if not v.dtype.is_floating_point]
        if bad_dtype:
            raise EdgekdValueError(f"from_pretrained: tensors {bad_dtype} in '{w_path}' are not floating point")
        model.load_state_dict(state)
        return model.to(map_location)
