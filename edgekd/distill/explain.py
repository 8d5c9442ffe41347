"""Per-word explanations of a student's prediction: terminal text and an HTML heatmap.

The student explains itself through its attention: each word's attention weight (how much the
pooled representation draws on it) and attention logit (the pre-softmax score the DiXtill loss
aligns with the teacher's Integrated-Gradients attributions).
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edgekd.errors import EdgekdValueError


@dataclass
class Explanation:
    """One text's prediction and per-word scores."""

    text: str
    words: list[str]  # the words as written in ``text`` (their character spans are ``offsets``)
    offsets: list[tuple[int, int]]
    attention: np.ndarray
    attention_logits: np.ndarray
    probs: np.ndarray
    label_names: list[str]
    tokens: list[str] = field(default_factory=list)  # the student's vocabulary tokens ([UNK] for OOV)

    @property
    def label(self) -> str:
        return self.label_names[int(np.argmax(self.probs))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))

    def top_words(self, k: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(-self.attention, kind="stable")[:k]
        return [(self.words[i], float(self.attention[i])) for i in order]

    def to_text(self, width: int = 24) -> str:
        """A terminal rendering: the prediction, then one line per word with a bar."""
        probs = ", ".join(f"{n}={p:.3f}" for n, p in zip(self.label_names, self.probs))
        lines = [f"prediction: {self.label} ({self.confidence:.3f})   [{probs}]", f"text: {self.text}", ""]
        top = float(self.attention.max()) if self.attention.size else 1.0
        wlen = max((len(w) for w in self.words), default=4)
        lines.append(f"{'word':<{wlen}}  {'attention':>9}  {'logit':>8}")
        for i, (w, a, lg) in enumerate(zip(self.words, self.attention, self.attention_logits)):
            bar = "#" * int(round(width * float(a) / top)) if top > 0 else ""
            oov = "  (out of vocabulary)" if i < len(self.tokens) and self.tokens[i] == "[UNK]" else ""
            lines.append(f"{w:<{wlen}}  {float(a):9.4f}  {float(lg):8.3f}  {bar}{oov}")
        return "\n".join(lines)

    def to_html_fragment(self) -> str:
        """The text with each word's background shaded by its attention (original characters)."""
        top = float(self.attention.max()) if self.attention.size else 1.0
        parts: list[str] = []
        pos = 0
        for w, (s, e), a, lg in zip(self.tokens or self.words, self.offsets, self.attention, self.attention_logits):
            if s > pos:
                parts.append(html.escape(self.text[pos:s]))
            alpha = float(a) / top if top > 0 else 0.0
            parts.append(
                f'<span class="w" style="background: rgba(220, 38, 38, {alpha:.3f})" '
                f'title="{html.escape(w)}: attention {float(a):.4f}, logit {float(lg):.3f}">'
                f"{html.escape(self.text[s:e])}</span>"
            )
            pos = max(pos, e)
        parts.append(html.escape(self.text[pos:]))
        probs = " ".join(f"{html.escape(n)}: {p:.3f}" for n, p in zip(self.label_names, self.probs))
        return (
            f'<div class="ex"><div class="pred"><b>{html.escape(self.label)}</b> '
            f'({self.confidence:.3f}) <span class="probs">{probs}</span></div>'
            f'<div class="txt">{"".join(parts)}</div></div>'
        )


def to_html_page(explanations: Sequence[Explanation], title: str = "edgekd explanations") -> str:
    """A self-contained HTML page with one heatmap per explanation."""
    body = "\n".join(e.to_html_fragment() for e in explanations)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60em; margin: 2em auto; }}
.ex {{ border-bottom: 1px solid #ddd; padding: 0.8em 0; }}
.pred {{ margin-bottom: 0.3em; }} .probs {{ color: #666; font-size: 0.9em; }}
.txt {{ font-size: 1.15em; line-height: 1.8; white-space: pre-wrap; }}
.w {{ border-radius: 3px; padding: 0 1px; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Shading: the student's attention weight on each word (darker = more weight); hover for numbers.</p>
{body}
</body></html>
"""


def save_html(explanations: Sequence[Explanation], path: str | os.PathLike, title: str = "edgekd explanations") -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(to_html_page(explanations, title), encoding="utf-8")
    return p


def explain(student, tokenizer, texts: Sequence[str] | str, label_names: Sequence[str] | None = None) -> list[Explanation]:
    """Explain the student's predictions for ``texts`` (one :class:`Explanation` each)."""
    import torch

    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise EdgekdValueError("explain: no texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise EdgekdValueError(f"explain: text {i} is empty")
    names = list(label_names) if label_names is not None else _label_names(student)
    encs = [tokenizer.encode_with_offsets(t) for t in texts]
    ids, mask = tokenizer.pad_batch([e[0] for e in encs])
    student.eval()
    with torch.no_grad():
        out = student(ids, mask)
    probs = torch.softmax(out.logits.float(), -1).numpy()
    att = out.attention.float().numpy()
    alog = out.attention_logits.float().numpy()
    res = []
    for i, (t, (wid, words, offs)) in enumerate(zip(texts, encs)):
        n = len(wid)
        spans = [tuple(o) for o in offs]
        res.append(Explanation(t, [t[a:b] for a, b in spans], spans, att[i, :n], alog[i, :n], probs[i], names,
                               tokens=list(words)))
    return res


def _label_names(student) -> list[str]:
    names = getattr(student, "label_names", None)
    if not names:
        cfg = getattr(student, "config", None)
        names = getattr(cfg, "label_names", None) if cfg is not None and not isinstance(cfg, dict) else (
            cfg.get("label_names") if isinstance(cfg, dict) else None
        )
    if not names:
        n = int(getattr(student, "num_classes", 0) or 0)
        names = [str(i) for i in range(n)] if n else None
    if not names:
        raise EdgekdValueError("explain: the student carries no label names; pass label_names=")
    return list(names)
