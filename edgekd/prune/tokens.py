"""Token pruning inside a BERT-family encoder (PrunePert: a learned scorer + perturbed top-k).

:func:`apply_token_pruning` wraps a Hugging Face ``BertModel`` or ``BertForSequenceClassification``
(BERT, MiniLM and every checkpoint of that architecture) in a :class:`TokenPrunedModel` that runs

    embeddings -> encoder layers 0 .. L-1 on all N tokens
               -> scorer (linear D -> 1, or a small MLP) on the layer-L hidden states
               -> keep k tokens: perturbed top-k (training) / hard top-k (eval)
               -> encoder layers L .. end on the k kept tokens only -> pooler -> classifier

The layers after the pruning point really run on a ``(B, k, D)`` tensor: the saving is compute,
not a mask. The attention mask follows the kept tokens. Selected tokens keep their original order
(their position embeddings were added at the input, so order only matters for readability).

Selection:

- **Training** (module in ``train()`` mode, gradients enabled, current sigma > 0): the fused
  perturbed top-k gather :func:`edgekd.ops.perturbed_topk_gather` with ``num_samples`` Gaussian
  perturbations of scale ``sigma``; each kept slot is the average, over the samples, of the hidden
  states selected there. The scorer is trained end to end by the task loss through the perturbed
  optimiser gradient estimator (``estimator="exact"``, or ``"diagonal"`` as the public PrunePert
  code). Sigma follows ``sigma_schedule``: ``"linear"`` decays it from ``sigma`` to 0 over training
  (call :meth:`TokenPrunedModel.set_progress` with ``step / total_steps``), ``"constant"`` keeps it.
  When it reaches 0 the hard top-k is used (no gradient reaches the scorer then).
- **Eval** (or no gradients): the deterministic hard top-k of the scores (``torch.topk`` + sort +
  gather), which exports to ONNX as TopK + Gather.

Number of kept tokens: ``k = ceil(keep_ratio * N)`` (or the fixed ``k``, clipped to ``N``) where
``N`` is the *padded* sequence length of the batch, so every row of a batch keeps the same number
of tokens and the shapes stay static. ``[CLS]`` (position 0) is always kept when ``keep_cls``: it
is set aside and ``k - 1`` tokens are chosen among positions ``1 .. N-1``.

Padding: padded positions are never chosen while a row still has valid tokens to choose. When a
row has fewer valid tokens than ``k`` (a short review in a batch padded to a long one), the row
keeps *all* its valid tokens and fills the remaining slots with padding positions whose attention
mask stays 0, so they are ignored by the following layers: in effect k is clipped to the row's
valid count. (In training the padding positions get a score far below every valid score, so no
perturbation reaches them before the valid tokens run out.)

Save / reload: :meth:`TokenPrunedModel.save_pretrained` writes a directory that is a standard
Hugging Face model directory (``config.json`` + ``model.safetensors``, loadable by transformers as
the unpruned model) plus ``token_pruner.safetensors`` (the scorer) and ``token_pruning.json``;
:func:`load_pruned_model` rebuilds the same pruned model from it. Only safetensors and JSON are read.
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgekd.errors import EdgekdValueError
from edgekd.prune.config import _SCORERS, TokenPruningConfig, _is_number

__all__ = [
    "TokenPruningConfig",
    "TokenScorer",
    "TokenPrunedModel",
    "TokenPrunedOutput",
    "apply_token_pruning",
    "load_pruned_model",
    "PRUNING_CONFIG_NAME",
    "SCORER_WEIGHTS_NAME",
]

PRUNING_CONFIG_NAME = "token_pruning.json"
SCORER_WEIGHTS_NAME = "token_pruner.safetensors"
_FORMAT = "edgekd.token_pruning"
_FORMAT_VERSION = 1
_ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
# How far below the lowest valid score padding is put in the perturbed path (times max(1, sigma)).
_PAD_MARGIN = 1.0e4


class TokenScorer(nn.Module):
    """Scores each token from its hidden state: (B, N, D) -> (B, N) float."""

    def __init__(self, hidden_size: int, kind: str = "linear", hidden: int = 128) -> None:
        super().__init__()
        if kind not in _SCORERS:
            raise EdgekdValueError(f"scorer must be one of {_SCORERS}, got {kind!r}")
        if kind == "linear":
            self.net = nn.Sequential(nn.Linear(hidden_size, 1))
        else:
            self.net = nn.Sequential(nn.Linear(hidden_size, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.net(hidden_states).squeeze(-1)


@dataclass
class TokenPrunedOutput:
    """Outputs of :class:`TokenPrunedModel`.

    Attributes:
        loss: task loss when ``labels`` were given (sequence classification only).
        logits: (B, num_labels) for sequence classification, else None.
        last_hidden_state: (B, k, D) hidden states of the kept tokens after the last layer.
        pooler_output: (B, D) pooled [CLS] state, or None when the model has no pooler.
        kept_mask: (B, k) long, 1 where a kept slot holds a valid (non-padding) token.
        kept_positions: (B, k) long original positions of the kept tokens (hard selection only;
            None in the perturbed training path, where each slot averages several positions).
        token_scores: (B, N) scorer outputs at the pruning layer.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor | None
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None
    kept_mask: torch.Tensor
    kept_positions: torch.Tensor | None
    token_scores: torch.Tensor


def _supported_classes() -> dict[str, type]:
    try:
        from transformers import BertForSequenceClassification, BertModel
    except ImportError as exc:  # pragma: no cover - transformers is a dependency of the extras
        raise EdgekdValueError(
            "token pruning needs transformers (pip install 'edgekd[distill]')"
        ) from exc
    return {"BertModel": BertModel, "BertForSequenceClassification": BertForSequenceClassification}


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 1/0 mask -> (B, 1, 1, S) additive attention bias (0 or the dtype's minimum).

    Accepted by the eager and the SDPA attention of transformers' BERT layers."""
    bias = (1.0 - mask.to(dtype)) * torch.finfo(dtype).min
    return bias[:, None, None, :]


class TokenPrunedModel(nn.Module):
    """A BERT encoder (or BERT sequence classifier) that keeps only k tokens after layer L.

    Build it with :func:`apply_token_pruning`. ``model`` is the wrapped Hugging Face model (its
    weights are shared, not copied); ``scorer`` is the new :class:`TokenScorer`.
    """

    def __init__(self, model: nn.Module, config: TokenPruningConfig) -> None:
        super().__init__()
        classes = _supported_classes()
        arch = type(model).__name__
        if arch not in classes or not isinstance(model, classes[arch]):
            raise EdgekdValueError(
                f"model must be a transformers BertModel or BertForSequenceClassification, got {type(model).__name__}"
            )
        if not isinstance(config, TokenPruningConfig):
            raise EdgekdValueError(f"config must be a TokenPruningConfig, got {type(config).__name__}")
        hf = model.config
        if getattr(hf, "is_decoder", False) or getattr(hf, "add_cross_attention", False):
            raise EdgekdValueError("token pruning supports encoder-only BERT models (is_decoder=False)")
        n_layers = hf.num_hidden_layers
        if config.layer >= n_layers:
            raise EdgekdValueError(
                f"layer must be < num_hidden_layers ({n_layers}) so that some layers run on the kept tokens, got {config.layer}"
            )
        attn = getattr(hf, "_attn_implementation", None) or "eager"
        if attn not in _ATTN_IMPLEMENTATIONS:
            raise EdgekdValueError(
                f"token pruning supports attn_implementation in {_ATTN_IMPLEMENTATIONS}, the model uses {attn!r}"
            )
        self.model = model
        self.pruning_config = config
        self.scorer = TokenScorer(hf.hidden_size, config.scorer, config.scorer_hidden)
        self.scorer.to(device=next(model.parameters()).device, dtype=next(model.parameters()).dtype)
        self.progress = 0.0
        self.generator: torch.Generator | None = None

    # -- properties --------------------------------------------------------------------------------

    @property
    def architecture(self) -> str:
        return type(self.model).__name__

    @property
    def bert(self) -> nn.Module:
        """The underlying ``BertModel``."""
        return self.model if self.architecture == "BertModel" else self.model.bert

    @property
    def config(self) -> Any:
        """The Hugging Face config of the wrapped model."""
        return self.model.config

    @property
    def sigma(self) -> float:
        """The perturbation scale at the current training progress."""
        return self.pruning_config.sigma_at(self.progress)

    def set_progress(self, progress: float) -> None:
        """Tell the sigma schedule how far training is: ``progress = step / total_steps`` in [0, 1]."""
        if not _is_number(progress) or not (0.0 <= float(progress) <= 1.0):
            raise EdgekdValueError(f"progress must be a number in [0, 1], got {progress!r}")
        self.progress = float(progress)

    # -- forward -----------------------------------------------------------------------------------

    def _select(
        self, scores: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keep k of the N tokens: (hidden (B,k,D), kept_mask (B,k), positions (B,k) or None)."""
        sigma = self.sigma
        if self.training and torch.is_grad_enabled() and sigma > 0:
            from edgekd.ops import perturbed_topk_gather

            valid = mask.bool()
            # padding: finite scores far below the row's lowest valid score, so that padding is only
            # taken once the valid tokens run out (the op itself refuses k > valid tokens)
            low = scores.detach().masked_fill(~valid, float("inf")).amin(dim=1, keepdim=True)
            low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))
            filled = torch.where(valid, scores, low - _PAD_MARGIN * max(1.0, sigma))
            # the validity of each kept slot travels as an extra channel through the same selection
            x = torch.cat([hidden, valid.to(hidden.dtype).unsqueeze(-1)], dim=-1)
            out = perturbed_topk_gather(
                filled,
                x,
                int(k),
                num_samples=self.pruning_config.num_samples,
                sigma=sigma,
                generator=self.generator,
                hard=False,
                estimator=self.pruning_config.estimator,
            )
            kept_mask = (out[..., -1].detach() > 0.5).to(mask.dtype)
            return out[..., :-1], kept_mask, None
        masked = scores.masked_fill(mask == 0, float("-inf"))
        idx = torch.topk(masked, k, dim=1, sorted=False).indices
        idx = torch.sort(idx, dim=1).values
        kept = hidden.gather(1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return kept, mask.gather(1, idx), idx

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> TokenPrunedOutput:
        """Run the pruned model. Arguments as for the wrapped Hugging Face model."""
        if (input_ids is None) == (inputs_embeds is None):
            raise EdgekdValueError("give exactly one of input_ids and inputs_embeds")
        ref = input_ids if input_ids is not None else inputs_embeds
        if ref.dim() != (2 if input_ids is not None else 3):
            raise EdgekdValueError(
                f"input_ids must be (B, N) / inputs_embeds (B, N, D), got shape {tuple(ref.shape)}"
            )
        B, N = ref.shape[0], ref.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones((B, N), dtype=torch.long, device=ref.device)
        elif tuple(attention_mask.shape) != (B, N):
            raise EdgekdValueError(
                f"attention_mask must have shape {(B, N)} like the inputs, got {tuple(attention_mask.shape)}"
            )
        mask = attention_mask.long()
        bert = self.bert
        layers = bert.encoder.layer
        L = self.pruning_config.layer

        hidden = bert.embeddings(
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
        )
        bias = _additive_mask(mask, hidden.dtype)
        for layer in layers[:L]:
            hidden = layer(hidden, bias)

        scores = self.scorer(hidden)
        if scores.dtype != hidden.dtype:
            scores = scores.to(hidden.dtype)
        k = self.pruning_config.num_kept(N)
        if self.pruning_config.keep_cls:
            k_rest = k - 1
            # only [CLS] kept (k = 1); a symbolic k under export takes the general path, where
            # torch.topk / ONNX TopK with k = 0 select nothing and give the same result
            if isinstance(k_rest, int) and k_rest == 0:
                kept, kept_mask = hidden[:, :1], mask[:, :1]
                positions = torch.zeros((B, 1), dtype=torch.long, device=hidden.device)
            else:
                rest, rest_mask, pos = self._select(scores[:, 1:], hidden[:, 1:], mask[:, 1:], k_rest)
                kept = torch.cat([hidden[:, :1], rest], dim=1)
                kept_mask = torch.cat([mask[:, :1], rest_mask], dim=1)
                positions = (
                    None
                    if pos is None
                    else torch.cat([torch.zeros_like(pos[:, :1]), pos + 1], dim=1)
                )
        else:
            kept, kept_mask, positions = self._select(scores, hidden, mask, k)

        bias = _additive_mask(kept_mask, kept.dtype)
        for layer in layers[L:]:
            kept = layer(kept, bias)

        pooled = bert.pooler(kept) if bert.pooler is not None else None
        logits = loss = None
        if self.architecture == "BertForSequenceClassification":
            logits = self.model.classifier(self.model.dropout(pooled))
            if labels is not None:
                loss = self._loss(logits, labels)
        elif labels is not None:
            raise EdgekdValueError("labels need a sequence classification model (BertForSequenceClassification)")
        return TokenPrunedOutput(
            loss=loss,
            logits=logits,
            last_hidden_state=kept,
            pooler_output=pooled,
            kept_mask=kept_mask,
            kept_positions=positions,
            token_scores=scores,
        )

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss transformers' BertForSequenceClassification uses for the same config."""
        cfg = self.model.config
        num_labels = self.model.num_labels
        problem = cfg.problem_type
        if problem is None:
            if num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            if num_labels == 1:
                return nn.functional.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
            return nn.functional.mse_loss(logits, labels.to(logits.dtype))
        if problem == "single_label_classification":
            return nn.functional.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))

    # -- save / load -------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | pathlib.Path) -> pathlib.Path:
        """Write the pruned model to ``directory`` (created if needed); returns the path.

        Files: ``config.json`` + ``model.safetensors`` (the Hugging Face model, loadable alone by
        transformers as the unpruned model), ``token_pruner.safetensors`` (the scorer) and
        ``token_pruning.json`` (format, architecture, attention implementation, pruning config).
        """
        from safetensors.torch import save_file

        path = pathlib.Path(directory)
        if path.exists() and not path.is_dir():
            raise EdgekdValueError(f"directory {str(path)!r} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        state = {k: v.detach().contiguous().cpu() for k, v in self.scorer.state_dict().items()}
        save_file(state, str(path / SCORER_WEIGHTS_NAME), metadata={"format": "pt"})
        meta = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "architecture": self.architecture,
            "attn_implementation": getattr(self.config, "_attn_implementation", None) or "eager",
            "pruning": self.pruning_config.to_dict(),
        }
        (path / PRUNING_CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | pathlib.Path) -> "TokenPrunedModel":
        """Same as :func:`load_pruned_model`."""
        return load_pruned_model(directory)


def apply_token_pruning(model: nn.Module, config: TokenPruningConfig | dict) -> TokenPrunedModel:
    """Equip a Hugging Face ``BertModel`` / ``BertForSequenceClassification`` with a token scorer and
    selector after encoder layer ``config.layer``; returns the :class:`TokenPrunedModel` wrapper
    (sharing the model's weights). ``config`` may be a dict (as in ``token_pruning.json``)."""
    if isinstance(config, dict):
        config = TokenPruningConfig.from_dict(config)
    return TokenPrunedModel(model, config)


def load_pruned_model(directory: str | pathlib.Path) -> TokenPrunedModel:
    """Reload a :class:`TokenPrunedModel` saved by :meth:`TokenPrunedModel.save_pretrained`.

    The model is returned in eval mode; outputs are identical to the saved model's.
    """
    from safetensors.torch import load_file

    path = pathlib.Path(directory)
    meta_path = path / PRUNING_CONFIG_NAME
    if not meta_path.is_file():
        raise EdgekdValueError(f"{str(path)!r} is not a token-pruned model directory (no {PRUNING_CONFIG_NAME})")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgekdValueError(f"{meta_path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise EdgekdValueError(f"{meta_path} is not an edgekd token pruning file (format {_FORMAT!r})")
    if meta.get("format_version") != _FORMAT_VERSION:
        raise EdgekdValueError(
            f"{meta_path} has format_version {meta.get('format_version')!r}; this edgekd reads {_FORMAT_VERSION}"
        )
    classes = _supported_classes()
    arch = meta.get("architecture")
    if arch not in classes:
        raise EdgekdValueError(f"{meta_path}: architecture must be one of {sorted(classes)}, got {arch!r}")
    attn = meta.get("attn_implementation", "eager")
    if attn not in _ATTN_IMPLEMENTATIONS:
        raise EdgekdValueError(f"{meta_path}: attn_implementation must be one of {_ATTN_IMPLEMENTATIONS}, got {attn!r}")
    config = TokenPruningConfig.from_dict(meta.get("pruning"))
    scorer_path = path / SCORER_WEIGHTS_NAME
    if not scorer_path.is_file():
        raise EdgekdValueError(f"{str(path)!r} has no scorer weights {SCORER_WEIGHTS_NAME}")
    model = classes[arch].from_pretrained(str(path), attn_implementation=attn, use_safetensors=True)
    pruned = TokenPrunedModel(model, config)
    try:
        pruned.scorer.load_state_dict(load_file(str(scorer_path)), strict=True)
    except RuntimeError as exc:
        raise EdgekdValueError(f"{scorer_path} does not match the scorer of the config: {exc}") from exc
    return pruned.eval()
