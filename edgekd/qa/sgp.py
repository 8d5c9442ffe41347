"""The Selective Generative Paradigm (SGP) of Ace-Attorney (Italiani et al. 2025), reconstructed:
the torch scorer of the SDK.

The SGP itself (prompt formats, :class:`SGPConfig`, the :class:`LMScorer` interface,
:func:`sgp_select`, :func:`answer_questions`, :class:`QAResult`) is torch-free and lives in
:mod:`edgekd.runtime.sgp` (its docstring describes the reconstruction), next to the ONNX scorer of
generative bundles (:class:`~edgekd.runtime.sgp.OnnxLMScorer`); it is re-exported here, so
``from edgekd.qa.sgp import answer_questions`` keeps working. This module adds
:class:`TorchLMScorer`, the scorer over a Hugging Face causal LM.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgekd.errors import EdgekdValueError
from edgekd.runtime import sgp as _rt
from edgekd.runtime.sgp import (MODES, TERMS, LMScorer, PromptFormat, QAResult, RenderedPromptFormat,  # noqa: F401
                                SGPConfig, sgp_select)

__all__ = ["PromptFormat", "RenderedPromptFormat", "SGPConfig", "LMScorer", "TorchLMScorer", "QAResult", "MODES", "TERMS",
           "sgp_select", "answer_questions"]


class TorchLMScorer:
    """:class:`LMScorer` over a Hugging Face causal LM and its fast tokenizer (one that returns
    character offsets). Batches of ``batch_size`` texts; texts longer than ``max_length`` tokens
    lose tokens from the left (the start of the paragraph), so the question and answer stay."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8, max_length: int | None = None,
                 device: str | None = None):
        import torch

        if not getattr(tokenizer, "is_fast", False):
            raise EdgekdValueError("TorchLMScorer: needs a fast tokenizer (tokenizer.json) for character offsets")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EdgekdValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = torch.device(device) if device else next(model.parameters()).device
        limit = getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_length = int(min(max_length or limit, limit))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id

    def _encode(self, texts: Sequence[str], side: str, room: int = 0, offsets: bool = False):
        tok = self.tokenizer
        old = tok.padding_side, tok.truncation_side
        tok.padding_side, tok.truncation_side = side, "left"
        try:
            return tok(list(texts), return_tensors="pt", padding=True, truncation=True,
                       max_length=self.max_length - room, return_offsets_mapping=offsets,
                       return_special_tokens_mask=offsets)
        finally:
            tok.padding_side, tok.truncation_side = old

    def span_logprobs(self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]) -> list[list[tuple[float, int]]]:
        import torch

        texts = list(texts)
        if len(texts) != len(spans):
            raise EdgekdValueError(f"span_logprobs: {len(texts)} texts for {len(spans)} span lists")
        out: list[list[tuple[float, int]]] = []
        for s in range(0, len(texts), self.batch_size):
            enc = self._encode(texts[s:s + self.batch_size], "right", offsets=True)
            ids = enc["input_ids"].to(self.device)
            mask = enc["attention_mask"].to(self.device)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            tok_lp = logp.gather(-1, ids[:, 1:, None])[..., 0].cpu().double().numpy()  # log p(token t | < t), t >= 1
            starts = enc["offset_mapping"][:, :, 0].numpy()
            ends = enc["offset_mapping"][:, :, 1].numpy()
            real = (enc["attention_mask"].numpy() == 1) & (enc["special_tokens_mask"].numpy() == 0) & (ends > starts)
            for r, row_spans in enumerate(spans[s:s + self.batch_size]):
                row = []
                for a, b in row_spans:
                    sel = real[r] & (starts[r] >= a) & (starts[r] < b)
                    sel[0] = False  # the first token has no prefix to be predicted from
                    idx = np.nonzero(sel)[0]
                    row.append((float(tok_lp[r, idx - 1].sum()), int(idx.size)))
                out.append(row)
        return out

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 32) -> list[str]:
        import torch

        prompts = list(prompts)
        out: list[str] = []
        for s in range(0, len(prompts), self.batch_size):
            enc = self._encode(prompts[s:s + self.batch_size], "left", room=max_new_tokens)
            ids = enc["input_ids"].to(self.device)
            mask = enc["attention_mask"].to(self.device)
            with torch.no_grad():
                gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          do_sample=False, pad_token_id=self.pad_id)
            for row in gen[:, ids.shape[1]:]:
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                out.append(text.split("\n", 1)[0].strip())
        return out


def _tqdm(it, total, desc):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, total=total, desc=desc, leave=False)


def answer_questions(mode: str, questions: Sequence[str], scorer: LMScorer, *, progress: Any = False,
                     **kw: Any) -> list[QAResult]:
    """:func:`edgekd.runtime.sgp.answer_questions` (same arguments), with ``progress=True`` shown
    as a tqdm bar."""
    return _rt.answer_questions(mode, questions, scorer, progress=_tqdm if progress is True else progress, **kw)
