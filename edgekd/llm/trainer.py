"""The trainer for generative students: token-level KD (or CE only) on the shared loop.

:func:`train_causal_lm` trains a causal-LM student on token sequences through
:func:`edgekd.training.train_loop` (AdamW, schedule, clipping, seeded order, checkpoints + resume,
progress bar). Per optimizer step the loss is

    sum over the step's valid target tokens of  loss(token)  /  number of valid target tokens in the step

whatever ``batch_size`` x ``grad_accum`` split the step: each micro-batch contributes its token sum
divided by the step's token count (known before the step's first forward), so gradient
accumulation takes exactly the step of the unsplit batch (the fix of TRL #4719). Valid target
tokens are those whose label is not -100: padding and prompt tokens (:func:`encode_pairs`) are masked.

``config.loss``: ``"ce"`` (the CE-only baseline, no teacher) or a loss of :mod:`edgekd.llm.losses`
(``forward_kl``, ``reverse_kl``, ``jsd``, ``tv``, ``akl``, ...; computed by ``kd_loss`` there with its
semantics: temperature on both sides, tau^2 once, ``(1 - ce_weight) KD + ce_weight CE``).
The teacher is a model (run under ``no_grad`` on each micro-batch) or a
callable ``teacher(indices) -> dense logits (B, T-1, V) or a SparseTeacher`` (positions aligned with
the student's shifted logits). With ``cache_dir`` the teacher model runs once over the training set
into the sparse teacher cache (:func:`cached_teacher`, :mod:`edgekd.llm.cache`) and every step reads it.

``config.on_policy_lambda`` (GKD's lambda, :mod:`edgekd.llm.onpolicy`): with that probability per step
(a coin seeded by ``loop.seed`` and the step) the step's completions are sampled from the student
(``max_new_tokens``, ``sampling_temperature``; from each row's prompt, no gradient) and scored by the
live teacher model; the loss covers the sampled tokens only. A cache or callable teacher is refused.
``config.fused``: the KD (+CE) loss from the student's final hidden states and its lm_head weight
through :func:`edgekd.ops.fused_linear_kd.fused_linear_kd`, so the (N, V) student logits are never
materialised (same loss and gradients as the unfused path up to float rounding).

Under ``torchrun`` the loop runs data-parallel (:mod:`edgekd.distributed`): ``config.parallel`` is
``"ddp"`` or ``"fsdp"`` (FSDP2, for students that do not fit one device); each rank takes its part of
every step's sequences and the token normalisation above uses the whole step's token count, so the
steps are those of one process. The sparse cache is built by all ranks together (chunks shared out).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from edgekd import distributed as dist
from edgekd.errors import EdgekdValueError
from edgekd.training import LoopConfig, LoopResult, epoch_order, seed_everything, train_loop

__all__ = ["LLMTrainConfig", "LLMTrainResult", "train_causal_lm", "evaluate_perplexity", "pack_texts",
           "encode_pairs", "token_data", "cached_teacher", "teacher_fingerprint"]

IGNORE = -100

from edgekd.llm.losses import SparseTeacher, kd_loss
from edgekd.llm.onpolicy import (check_on_policy, on_policy_step, require_live_teacher, sample_completions,
                                 sampling_seed)
from edgekd.ops import kd_math


@dataclass
class LLMTrainConfig:
    """Settings of :func:`train_causal_lm`; ``loop`` holds the shared loop's (lr, steps, batch, ...)."""

    loss: str = "forward_kl"  # "ce" (no teacher) or a kd_loss name
    temperature: float = 1.0
    ce_weight: float = 0.0  # (1 - ce_weight) KD + ce_weight CE
    beta: float = 0.5  # generalized JSD
    alpha: float = 0.1  # skew KLs
    eval_batch_size: int = 8  # also the teacher's batch when it fills the cache
    cache_topk: int = 64  # teacher tokens kept per position in the sparse cache (train_causal_lm(cache_dir=...))
    on_policy_lambda: float = 0.0  # GKD lambda: probability per step of training on student-sampled completions
    max_new_tokens: int = 32  # length limit of an on-policy completion
    sampling_temperature: float = 1.0  # temperature of the student's on-policy sampling (not the loss's)
    fused: bool = False  # KD (+CE) through edgekd.ops.fused_linear_kd: the (N, V) student logits never exist
    fused_chunk_size: int = 0  # rows per chunk of the fused op (0: its default)
    parallel: str = "ddp"  # under torchrun: "ddp" (whole model per rank) or "fsdp" (sharded, no checkpoints yet)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(lr=1e-4, batch_size=4, warmup_ratio=0.05,
                                                                 weight_decay=0.0, metric="neg_eval_loss",
                                                                 select_best=False))

    def validate(self) -> None:
        if self.loss != "ce":
            kd_math.check_loss_settings(self.loss, self.temperature, self.beta, self.alpha, self.ce_weight,
                                        "LLMTrainConfig")
        check_on_policy(self.on_policy_lambda, self.max_new_tokens, self.sampling_temperature)
        if self.on_policy_lambda > 0 and self.loss == "ce":
            raise EdgekdValueError("LLMTrainConfig: on_policy_lambda > 0 needs a KD loss and a teacher, not loss='ce'")
        if self.fused and self.loss == "ce":
            raise EdgekdValueError("LLMTrainConfig: fused=True computes a KD loss; for CE-only training use fused=False")
        if not isinstance(self.fused_chunk_size, int) or self.fused_chunk_size < 0:
            raise EdgekdValueError(f"LLMTrainConfig.fused_chunk_size must be an int >= 0, got {self.fused_chunk_size!r}")
        if self.parallel not in dist.STRATEGIES:
            raise EdgekdValueError(f"LLMTrainConfig.parallel must be one of {dist.STRATEGIES}, got {self.parallel!r}")
        if not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1:
            raise EdgekdValueError(f"LLMTrainConfig.eval_batch_size must be an int >= 1, got {self.eval_batch_size!r}")
        self.loop.validate()


@dataclass
class LLMTrainResult:
    """The loop's result plus held-out loss / perplexity before and after training (when eval data given)."""

    loop: LoopResult
    eval_before: dict | None = None
    eval_after: dict | None = None
    tokens_trained: int = 0  # valid target tokens trained on in this call


# --------------------------------------------------------------------------------------------
# data


def token_data(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A training / eval set as tensors: ``labels`` default to ``input_ids`` with padding set to -100."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[0] == 0:
        raise EdgekdValueError("data: input_ids must be a non-empty (N, T) tensor")
    if input_ids.shape[1] < 2:
        raise EdgekdValueError(f"data: sequences need at least 2 tokens (one target), got length {input_ids.shape[1]}")
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.dtype)
    if labels is None:
        labels = input_ids.masked_fill(mask == 0, IGNORE)
    for name, t in (("attention_mask", mask), ("labels", labels)):
        if t.shape != input_ids.shape:
            raise EdgekdValueError(f"data: {name} has shape {tuple(t.shape)}, input_ids {tuple(input_ids.shape)}")
    if not (labels[:, 1:] != IGNORE).any():
        raise EdgekdValueError("data: no valid target tokens (all labels are -100)")
    return {"input_ids": input_ids.long(), "attention_mask": mask.long(), "labels": labels.long()}


def pack_texts(tokenizer: Any, texts: Sequence[str], seq_len: int, *, max_sequences: int | None = None
               ) -> dict[str, torch.Tensor]:
    """Concatenate the texts' tokens (EOS between texts) and cut them into full ``seq_len`` sequences."""
    if not isinstance(seq_len, int) or seq_len < 2:
        raise EdgekdValueError(f"pack_texts: seq_len must be an int >= 2, got {seq_len!r}")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if max_sequences is not None and len(ids) >= seq_len * max_sequences:
            break
    n = len(ids) // seq_len
    if max_sequences is not None:
        n = min(n, max_sequences)
    if n == 0:
        raise EdgekdValueError(f"pack_texts: the texts hold {len(ids)} tokens, fewer than one sequence of {seq_len}")
    return token_data(torch.tensor(ids[:n * seq_len], dtype=torch.long).view(n, seq_len))


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int) -> dict[str, torch.Tensor]:
    """(prompt, completion) pairs -> right-padded ids; labels are -100 on the prompt and the padding,
    so only completion tokens (and the EOS after them) are trained on."""
    rows = []
    for prompt, completion in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            c = c + [tokenizer.eos_token_id]
        ids = (p + c)[:max_length]
        lab = ([IGNORE] * len(p) + c)[:max_length]
        rows.append((ids, lab))
    if not rows:
        raise EdgekdValueError("encode_pairs: no pairs")
    t = max(len(r[0]) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    labels = torch.full((len(rows), t), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        ids[i, :len(a)], labels[i, :len(b)], mask[i, :len(a)] = torch.tensor(a), torch.tensor(b), 1
    return token_data(ids, mask, labels)


def _valid_targets(labels: torch.Tensor) -> torch.Tensor:
    return labels[:, 1:] != IGNORE


# --------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate_perplexity(model: torch.nn.Module, data: Mapping[str, torch.Tensor], batch_size: int = 8) -> dict:
    """Mean next-token NLL over the valid target tokens of ``data`` and its exp (perplexity)."""
    d = token_data(data["input_ids"], data.get("attention_mask"), data.get("labels"))
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    total, n = 0.0, 0
    try:
        for i in range(0, d["input_ids"].shape[0], batch_size):
            ids = d["input_ids"][i:i + batch_size].to(dev)
            logits = model(input_ids=ids, attention_mask=d["attention_mask"][i:i + batch_size].to(dev),
                           use_cache=False).logits[:, :-1].float()
            lab = d["labels"][i:i + batch_size, 1:].to(dev)
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), lab, ignore_index=IGNORE, reduction="sum")
            total += float(nll)
            n += int((lab != IGNORE).sum())
    finally:
        model.train(was)
    loss = total / n
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": n, "neg_eval_loss": -loss}


# --------------------------------------------------------------------------------------------
# training


def _teacher_fn(teacher: Any) -> Callable[[list[int], Mapping[str, torch.Tensor]], Any] | None:
    if teacher is None:
        return None
    if isinstance(teacher, torch.nn.Module):
        teacher.eval()

        @torch.no_grad()
        def run(idx: list[int], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
            dev = next(teacher.parameters()).device
            out = teacher(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev),
                          use_cache=False).logits[:, :-1]
            return out.to(batch["input_ids"].device)
        return run
    if callable(teacher):
        return lambda idx, batch: teacher(idx)
    raise EdgekdValueError(f"teacher must be a causal LM, a callable indices -> targets, or None; got {type(teacher)}")


def teacher_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's config and weights (the teacher id of a sparse cache)."""
    import hashlib

    h = hashlib.sha256(model.config.to_json_string().encode() if hasattr(model, "config") else b"")
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cached_teacher(teacher: torch.nn.Module, data: Mapping[str, torch.Tensor], cache_dir: str, *, topk: int = 64,
                   temperature: float = 1.0, batch_size: int = 8, teacher_id: str | None = None
                   ) -> Callable[[list[int]], Any]:
    """Run ``teacher`` once over ``data`` into the sparse teacher cache (:mod:`edgekd.llm.cache`: top-k
    log-probs + tail mass, resumable) and return ``indices -> SparseTeacher`` aligned with the
    student's shifted logits (positions 0 .. T-2), for :func:`train_causal_lm`'s ``teacher``."""
    from edgekd.llm.cache import CacheSettings, build_sparse_cache
    from edgekd.llm.losses import SparseTeacher

    d = token_data(data["input_ids"], data.get("attention_mask"), data.get("labels"))
    n = d["input_ids"].shape[0]
    batches = [{"input_ids": d["input_ids"][i:i + batch_size], "attention_mask": d["attention_mask"][i:i + batch_size]}
               for i in range(0, n, batch_size)]
    dev = next(teacher.parameters()).device
    teacher.eval()

    def logits_fn(ids: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
        return teacher(input_ids=ids.to(dev), attention_mask=am.to(dev), use_cache=False).logits.float().cpu()

    cache = build_sparse_cache(logits_fn, batches, cache_dir, teacher_id=teacher_id or teacher_fingerprint(teacher),
                               settings=CacheSettings(topk=topk, temperature=temperature))

    def get(idx: list[int]) -> SparseTeacher:
        rows = []
        for i in idx:
            st = cache[i // batch_size]
            r = i % batch_size
            rows.append([st.topk_ids[r, :-1], st.topk_logprobs[r, :-1], st.tail_logmass[r, :-1]])
        return SparseTeacher(*(torch.stack(col) for col in zip(*rows)), temperature=float(temperature))

    get.cache = cache  # type: ignore[attr-defined]
    return get


def _check_fusable(model: torch.nn.Module) -> None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or getattr(model, "base_model", model) is model:
        raise EdgekdValueError("train_causal_lm: fused=True needs a Hugging Face causal LM with a linear output "
                               "projection (lm_head) over a base model")
    cfg = getattr(model, "config", None)
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(cfg, name, None) not in (None, 1.0):
            raise EdgekdValueError(f"train_causal_lm: fused=True cannot reproduce the model's {name} "
                                   f"({getattr(cfg, name)}); use fused=False")


def _fused_kd(model: torch.nn.Module, batch: Mapping[str, Any], target: Any, labels: torch.Tensor,
              cfg: LLMTrainConfig, n_tokens: int) -> torch.Tensor:
    """The KD (+CE) loss from the base model's final hidden states and the lm_head weight through
    ``edgekd::fused_linear_kd`` (no (N, V) student logits; a tied lm_head is the embedding Parameter,
    so its gradient reaches the embedding)."""
    from edgekd.ops.fused_linear_kd import fused_linear_kd

    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              use_cache=False).last_hidden_state[:, :-1]
    head = model.get_output_embeddings()
    n = hidden.shape[0] * hidden.shape[1]
    if isinstance(target, SparseTeacher):
        target = SparseTeacher(target.topk_ids.reshape(n, -1), target.topk_logprobs.reshape(n, -1),
                               target.tail_logmass.reshape(n), target.temperature)
    else:
        target = target.reshape(n, -1)
    return fused_linear_kd(hidden.reshape(n, -1), head.weight, target, bias=head.bias, loss=cfg.loss,
                           temperature=cfg.temperature, beta=cfg.beta, alpha=cfg.alpha, labels=labels.reshape(n),
                           ce_weight=cfg.ce_weight, num_valid_tokens=n_tokens, chunk_size=cfg.fused_chunk_size)


def train_causal_lm(student: torch.nn.Module, data: Mapping[str, torch.Tensor], *, teacher: Any = None,
                    config: LLMTrainConfig | None = None, eval_data: Mapping[str, torch.Tensor] | None = None,
                    checkpoint_dir: str | None = None, resume: bool = False, stop_after: int | None = None,
                    cache_dir: str | None = None, progress: bool = True, desc: str = "llm") -> LLMTrainResult:
    """Train ``student`` in place on ``data`` (``input_ids`` / ``attention_mask`` / ``labels``, see
    :func:`token_data`) with ``config.loss``; see the module doc. ``eval_data``: held-out set whose
    loss / perplexity is measured before and after (and every ``config.loop.eval_every`` steps).
    ``cache_dir`` (with a teacher model): run the teacher once into the sparse cache there
    (``config.cache_topk`` tokens per position, :func:`cached_teacher`) instead of every step."""
    cfg = config or LLMTrainConfig()
    cfg.validate()
    d = token_data(data["input_ids"], data.get("attention_mask"), data.get("labels"))
    ce_only = cfg.loss == "ce"
    if ce_only and teacher is not None:
        raise EdgekdValueError("train_causal_lm: loss='ce' trains without a teacher; pass teacher=None")
    if not ce_only and teacher is None:
        raise EdgekdValueError(f"train_causal_lm: loss={cfg.loss!r} needs a teacher")
    t_vocab = getattr(getattr(teacher, "config", None), "vocab_size", None)
    s_vocab = getattr(getattr(student, "config", None), "vocab_size", None)
    if t_vocab is not None and s_vocab is not None and t_vocab != s_vocab:
        raise EdgekdValueError(f"train_causal_lm: teacher vocabulary {t_vocab} != student vocabulary {s_vocab} "
                               "(no token mapping)")
    if cfg.on_policy_lambda > 0:
        require_live_teacher(teacher, cache_dir)
    if cfg.fused:
        _check_fusable(student)
    if dist.get_world_size() > 1:
        if cfg.fused:
            raise EdgekdValueError("train_causal_lm: fused=True runs the student's base model outside the DDP/FSDP "
                                   "wrapper; under torchrun use fused=False")
        if cfg.parallel == "fsdp" and cfg.on_policy_lambda > 0:
            raise EdgekdValueError("train_causal_lm: on-policy sampling with parallel='fsdp' is not supported; "
                                   "use parallel='ddp'")
    if cache_dir is not None and isinstance(teacher, torch.nn.Module):
        teacher = cached_teacher(teacher, d, cache_dir, topk=cfg.cache_topk, temperature=cfg.temperature,
                                 batch_size=cfg.eval_batch_size)
    get_teacher = _teacher_fn(teacher)
    loop = cfg.loop
    n = d["input_ids"].shape[0]
    valid = _valid_targets(d["labels"]).sum(1)  # valid target tokens per sequence
    spe = loop.steps_per_epoch(n)
    step_examples = loop.batch_size * loop.grad_accum
    order = (lambda epoch: epoch_order(loop.shuffle, n, loop.seed, epoch))
    cur: dict[str, Any] = {}

    def on_step(step: int, total: int) -> None:
        epoch, pos = divmod(step, spe)
        idx = order(epoch)[pos * step_examples:(pos + 1) * step_examples]
        cur["gen"] = None
        if on_policy_step(cfg.on_policy_lambda, loop.seed, step):  # the step's completions from the student
            gen = sample_completions(student, make_batch(idx), max_new_tokens=cfg.max_new_tokens,
                                     temperature=cfg.sampling_temperature, seed=sampling_seed(loop.seed, step))
            cur["gen"] = (gen, {int(i): r for r, i in enumerate(idx)})
            cur["n_tokens"] = max(int(_valid_targets(gen["labels"]).sum()), 1)
        else:
            cur["n_tokens"] = max(int(valid[idx].sum()), 1)
        cur["n_examples"] = len(idx)
        cur["trained"] = cur.get("trained", 0) + cur["n_tokens"]

    def make_batch(idx: list[int]) -> dict[str, Any]:
        return {"input_ids": d["input_ids"][idx], "attention_mask": d["attention_mask"][idx],
                "labels": d["labels"][idx], "idx": list(idx)}

    def loss_fn(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        if cur["gen"] is not None:  # on-policy step: this micro-batch's rows of the sampled sequences
            gen, row = cur["gen"]
            rows = [row[int(i)] for i in batch["idx"]]
            dev = batch["input_ids"].device
            batch = {**{k: v[rows].to(dev) for k, v in gen.items()}, "idx": batch["idx"]}
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE
        if cfg.fused:
            loss = _fused_kd(model, batch, get_teacher(batch["idx"], batch), labels, cfg, cur["n_tokens"])
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False).logits[:, :-1]
            if ce_only:
                loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels,
                                                         ignore_index=IGNORE, reduction="sum") / cur["n_tokens"]
            else:
                target = get_teacher(batch["idx"], batch)
                loss = kd_loss(logits, target, loss=cfg.loss, temperature=cfg.temperature, beta=cfg.beta,
                               alpha=cfg.alpha, mask=mask, num_valid_tokens=cur["n_tokens"],
                               ce_weight=cfg.ce_weight, labels=labels)
        # the shared loop weights a micro-batch's loss by its share of the step's examples; this loss is
        # already the micro-batch's share of the step's token mean, so undo that weighting
        share = len(batch["idx"]) / cur["n_examples"]
        return loss / share if share != 1 else loss

    evaluate = None
    if eval_data is not None:
        evaluate = lambda m: evaluate_perplexity(m, eval_data, cfg.eval_batch_size)  # noqa: E731
    seed_everything(loop.seed)
    before = evaluate_perplexity(student, eval_data, cfg.eval_batch_size) if eval_data is not None and not resume \
        else None
    res = train_loop(student, n, make_batch, loop, loss_fn=loss_fn, on_step=on_step,
                     evaluate=evaluate if loop.eval_every is not None else None, order=order,
                     checkpoint_dir=checkpoint_dir, resume=resume, stop_after=stop_after, progress=progress,
                     desc=desc, parallel=cfg.parallel)
    after = evaluate_perplexity(student, eval_data, cfg.eval_batch_size) if eval_data is not None and res.finished \
        else None
    return LLMTrainResult(loop=res, eval_before=before, eval_after=after, tokens_trained=cur.get("trained", 0))
