"""Student training loop for the four methods (none, kl, mse, dixtill).

* optimizer (``adam``, ``adamw``, ``sgd``) and learning-rate schedule (``constant``, ``linear``,
  ``cosine``, with warm-up) are configurable;
* each epoch is evaluated on the validation split; the best epoch by validation macro-F1 is saved
  (``best/``, the student's ``save_pretrained``: config.json + model.safetensors) and training
  stops early after ``patience`` epochs without improvement;
* every epoch also writes ``last/`` (student, optimizer state as safetensors + JSON, trainer
  state and RNG state), so an interrupted run resumes from its last finished epoch;
* one JSON line per epoch is printed and appended to ``log.jsonl``;
* under ``torchrun`` (:mod:`edgekd.distributed`) the student is wrapped in DDP and every rank takes
  its part of each batch (the batch of ``batch_size`` texts stays the global batch, so the steps,
  schedule, seeds and checkpoints are those of one process); the loss is computed from per-part
  sums (:func:`edgekd.distill.losses.loss_sums`) normalised by the whole batch, so the summed
  gradient is the single-process one. Rank 0 validates, writes ``best/``, ``last/`` and the log.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from edgekd.distill.config import TrainConfig  # defined once there, with the other settings (re-exported)
from edgekd import distributed as dist
from edgekd.distill.losses import combine_sums, distillation_loss, loss_sums
from edgekd.errors import EdgekdValueError
from edgekd.metrics import classification_metrics
from edgekd.training import load_optimizer, rng_state, save_optimizer, seed_everything, set_rng_state


@dataclass
class EncodedSplit:
    """A split encoded for the student: word ids per text, labels and (optionally) the teacher's
    logits and word attributions (one per word id; ``has_attr`` marks attributed texts)."""

    ids: list[list[int]]
    labels: np.ndarray
    teacher_logits: np.ndarray | None = None
    attributions: list[np.ndarray] | None = None
    has_attr: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (n,):
            raise EdgekdValueError(f"EncodedSplit: {n} texts but labels of shape {self.labels.shape}")
        if self.teacher_logits is not None and self.teacher_logits.shape[0] != n:
            raise EdgekdValueError(f"EncodedSplit: {n} texts but {self.teacher_logits.shape[0]} teacher logits")
        if self.attributions is not None:
            if len(self.attributions) != n:
                raise EdgekdValueError(f"EncodedSplit: {n} texts but {len(self.attributions)} attributions")
            if self.has_attr is None:
                self.has_attr = np.ones(n, dtype=bool)
            for i, (x, a) in enumerate(zip(self.ids, self.attributions)):
                if self.has_attr[i] and len(a) != len(x):
                    raise EdgekdValueError(
                        f"EncodedSplit: text {i} has {len(x)} words but {len(a)} teacher attributions"
                    )

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for x in self.ids:
            h.update(np.asarray(x, dtype=np.int64).tobytes() + b"|")
        h.update(self.labels.tobytes())
        if self.teacher_logits is not None:
            h.update(np.ascontiguousarray(self.teacher_logits, dtype=np.float32).tobytes())
        if self.attributions is not None:
            for a in self.attributions:
                h.update(np.asarray(a, dtype=np.float32).tobytes() + b"|")
        return h.hexdigest()

    def batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = list(idx)
        n = max(len(self.ids[i]) for i in idx)
        ids = torch.zeros((len(idx), n), dtype=torch.long)
        mask = torch.zeros((len(idx), n), dtype=torch.long)
        for r, i in enumerate(idx):
            x = self.ids[i]
            ids[r, : len(x)] = torch.as_tensor(x, dtype=torch.long)
            mask[r, : len(x)] = 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": torch.as_tensor(self.labels[idx])}
        if self.teacher_logits is not None:
            out["teacher_logits"] = torch.as_tensor(np.asarray(self.teacher_logits[idx], dtype=np.float32))
        if self.attributions is not None:
            att = torch.zeros((len(idx), n), dtype=torch.float32)
            has = torch.zeros(len(idx), dtype=torch.bool)
            for r, i in enumerate(idx):
                if self.has_attr[i]:
                    a = np.asarray(self.attributions[i], dtype=np.float32)
                    att[r, : a.size] = torch.from_numpy(a)
                    has[r] = True
            out["teacher_attributions"] = att
            out["attribution_mask"] = has
        return out


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict
    history: list[dict] = field(default_factory=list)
    best_dir: str = ""
    seconds: float = 0.0
    resumed_from: int = 0


def _make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based) of ``total``."""
    warm = int(cfg.warmup_ratio * total)
    if warm and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    frac = (step - warm) / max(1, total - warm)
    frac = min(max(frac, 0.0), 1.0)
    if cfg.schedule == "linear":
        return 1.0 - frac
    return 0.5 * (1.0 + math.cos(math.pi * frac))


@torch.no_grad()
def predict_logits(student, split: EncodedSplit, batch_size: int = 256) -> np.ndarray:
    """Student logits for every text of ``split`` (batches sorted by length)."""
    student.eval()
    order = sorted(range(len(split)), key=lambda i: len(split.ids[i]))
    out = None
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        bt = split.batch(idx)
        lg = student(bt["input_ids"], bt["attention_mask"]).logits.float().numpy()
        if out is None:
            out = np.zeros((len(split), lg.shape[1]), dtype=np.float32)
        out[idx] = lg
    return out


def _rank_step(net, train: EncodedSplit, idx: list[int], cfg: TrainConfig, world: int) -> tuple[float, dict]:
    """Forward and backward of this rank's part of the batch ``idx`` under DDP: the loss of its
    texts normalised by the whole batch (:func:`loss_sums` / :func:`combine_sums`), times ``world``
    (DDP averages the gradients). A rank without texts (a batch smaller than the world) runs the
    batch's first text with weight 0 to join the all-reduce. Returns the batch's loss and parts
    (all-reduced, as :func:`distillation_loss` gives them for the whole batch)."""
    mine = dist.split_even(idx)
    weight = 1.0 if mine else 0.0
    mine = mine or idx[:1]
    n = len(idx)
    n_attr = int(np.sum(train.has_attr[idx])) if train.attributions is not None else n
    bt = train.batch(mine)
    so = net(bt["input_ids"], bt["attention_mask"])
    kw = dict(tau=cfg.tau, student_scores=so.attention_logits, teacher_attributions=bt.get("teacher_attributions"),
              attention_mask=bt["attention_mask"], attribution_mask=bt.get("attribution_mask"),
              xai_absolute=cfg.xai_absolute, xai_centered=cfg.xai_centered)
    if cfg.method in ("kl", "mse", "dixtill"):
        part = loss_sums(cfg.method, so.logits, bt["labels"], bt["teacher_logits"], **kw)
    else:
        part = loss_sums("none", so.logits, bt["labels"])
    names = sorted(part)
    totals = dict(zip(names, dist.all_reduce_sum([float(part[k].detach()) * weight for k in names])))
    C = int(so.logits.shape[-1])
    kl_mean = totals["kl"] / n if cfg.method == "dixtill" and cfg.variant == "code" else None
    loss = combine_sums(cfg.method, part, n, n_attr, num_classes=C, alpha=cfg.alpha, variant=cfg.variant,
                        kl_mean=kl_mean) * weight
    (loss * world).backward()
    value = combine_sums(cfg.method, totals, n, n_attr, num_classes=C, alpha=cfg.alpha, variant=cfg.variant)
    parts = {"ce": totals["ce"] / n}
    if "mse" in totals:
        parts["mse"] = totals["mse"] / (n * C)
    if "kl" in totals:
        parts["kl"] = totals["kl"] / n
    if "xai" in totals:
        parts["xai"] = totals["xai"] / n_attr if n_attr > 0 else 0.0
    return float(value), parts


def _state_key(cfg: TrainConfig, train: EncodedSplit, valid: EncodedSplit, student) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update(train.fingerprint().encode())
    h.update(valid.fingerprint().encode())
    h.update(type(student).__name__.encode())
    h.update(str(sum(p.numel() for p in student.parameters())).encode())
    return h.hexdigest()


def _load_weights(student, directory: Path) -> None:
    from safetensors.torch import load_file

    sd = load_file(str(directory / "model.safetensors"))
    student.load_state_dict(sd)


def train_student(
    student,
    train: EncodedSplit,
    valid: EncodedSplit,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    label_names: Sequence[str] | None = None,
    max_epochs_this_run: int | None = None,
) -> TrainResult:
    """Train ``student`` with ``config.method`` and keep the best epoch (validation macro-F1).

    Args:
        student: a module with ``forward(input_ids, attention_mask) -> StudentOutput`` and
            ``save_pretrained(dir)``.
        train, valid: encoded splits; ``train`` must carry teacher logits for kl/mse/dixtill
            and attributions for dixtill.
        out_dir: where ``best/``, ``last/`` and ``log.jsonl`` go.
        resume: continue from ``out_dir/last`` when it was written by the same settings and data.
        max_epochs_this_run: stop after this many epochs in this call (the run can be resumed);
            used to bound a call's time and by tests.
    """
    config.validate()
    cfg = config
    if cfg.method in ("kl", "mse", "dixtill") and train.teacher_logits is None:
        raise EdgekdValueError(f"train_student: method {cfg.method!r} needs teacher logits in the training split")
    if cfg.method == "dixtill" and (train.attributions is None or not np.any(train.has_attr)):
        raise EdgekdValueError("train_student: method 'dixtill' needs teacher attributions in the training split")
    out = Path(out_dir)
    best_dir, last_dir = out / "best", out / "last"
    out.mkdir(parents=True, exist_ok=True)
    key = _state_key(cfg, train, valid, student)
    history: list[dict] = []
    start_epoch = 0
    step = 0
    best_f1 = -1.0
    best_epoch = 0
    best_valid: dict = {}
    bad = 0
    done = False

    ctx = dist.dist_context()
    world, rank = ctx.world_size, ctx.rank
    log = dist.rank0_only(log)
    seed_everything(cfg.seed)
    opt = _make_optimizer(cfg, student.parameters())
    state_file = last_dir / "trainer_state.json"
    dist.barrier()  # a previous call's rank 0 has finished writing last/
    if resume and state_file.is_file():
        st = json.loads(state_file.read_text())
        if st.get("key") == key:
            from safetensors.torch import load_file

            _load_weights(student, last_dir)
            load_optimizer(opt, last_dir)
            set_rng_state(load_file(str(last_dir / "rng.safetensors")), st["rng"])
            start_epoch, step = st["epoch"], st["step"]
            best_f1, best_epoch, best_valid = st["best_f1"], st["best_epoch"], st["best_valid"]
            bad, history, done = st["bad_epochs"], st["history"], st["done"]
            if log:
                log(json.dumps({"event": "resume", "method": cfg.method, "from_epoch": start_epoch}))
    elif (out / "log.jsonl").exists() and rank == 0:
        (out / "log.jsonl").unlink()
    resumed_from = start_epoch

    n = len(train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    from tqdm.auto import tqdm

    net = dist.wrap_model(student, "ddp") if world > 1 else student
    t0 = time.perf_counter()
    epochs_run = 0
    epoch = start_epoch
    while not done and epoch < cfg.epochs:
        if max_epochs_this_run is not None and epochs_run >= max_epochs_this_run:
            break
        te = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        if world > 1 and rank > 0:  # dropout: each rank its own stream (rank 0 keeps the checkpointed one)
            torch.manual_seed((cfg.seed * 1_000_003 + rank * 7_919 + epoch) % (2 ** 63))
        student.train()
        sums: dict[str, float] = {}
        loss_sum = 0.0
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not dist.main_progress(progress), unit="batch", leave=False)
        for b in bar:
            if world > 1:
                f = lr_factor(cfg, step, total_steps)
                for grp in opt.param_groups:
                    grp["lr"] = cfg.lr * f
                loss_v, parts = _rank_step(net, train, perm[b : b + cfg.batch_size], cfg, world)
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                loss_sum += loss_v
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{loss_sum / (b // cfg.batch_size + 1):.4f}")
                continue
            bt = train.batch(perm[b : b + cfg.batch_size])
            f = lr_factor(cfg, step, total_steps)
            for grp in opt.param_groups:
                grp["lr"] = cfg.lr * f
            so = student(bt["input_ids"], bt["attention_mask"])
            loss, parts = distillation_loss(
                cfg.method,
                so.logits,
                bt["labels"],
                bt.get("teacher_logits"),
                alpha=cfg.alpha,
                tau=cfg.tau,
                student_scores=so.attention_logits,
                teacher_attributions=bt.get("teacher_attributions"),
                attention_mask=bt["attention_mask"],
                attribution_mask=bt.get("attribution_mask"),
                variant=cfg.variant,
                xai_absolute=cfg.xai_absolute,
                xai_centered=cfg.xai_centered,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            loss_sum += float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{loss_sum / (b // cfg.batch_size + 1):.4f}")
        bar.close()
        nb = steps_per_epoch
        vm = vloss = None
        if rank == 0:  # validation on rank 0; the others get its numbers (same weights, same decisions)
            vlog = predict_logits(student, valid, cfg.eval_batch_size)
            vm = classification_metrics(valid.labels, vlog.argmax(-1), label_names)
            vloss = float(torch.nn.functional.cross_entropy(torch.from_numpy(vlog), torch.from_numpy(valid.labels)))
        if world > 1:
            vm, vloss = dist.broadcast_json([vm, vloss] if rank == 0 else None)
        epoch += 1
        epochs_run += 1
        rec = {
            "method": cfg.method,
            "epoch": epoch,
            "train_loss": round(loss_sum / nb, 6),
            **{f"train_{k}": round(v / nb, 6) for k, v in sums.items()},
            "valid_loss": round(vloss, 6),
            "valid_accuracy": round(vm["accuracy"], 6),
            "valid_macro_f1": round(vm["macro_f1"], 6),
            "lr": opt.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - te, 2),
        }
        if vm["macro_f1"] > best_f1:
            best_f1, best_epoch, best_valid, bad = vm["macro_f1"], epoch, vm, 0
            if rank == 0:
                student.save_pretrained(str(best_dir))
            rec["best"] = True
        else:
            bad += 1
        if bad >= cfg.patience:
            done = True
            rec["early_stop"] = True
        if epoch >= cfg.epochs:
            done = True
        history.append(rec)
        line = json.dumps(rec)
        if log:
            log(line)
        if rank != 0:
            dist.barrier()  # rank 0 writes the log and the checkpoint
            continue
        with open(out / "log.jsonl", "a") as fh:
            fh.write(line + "\n")
        # last checkpoint: weights, optimizer, RNG and trainer state
        from safetensors.torch import save_file

        student.save_pretrained(str(last_dir))
        save_optimizer(opt, last_dir)
        rt, rmeta = rng_state()
        save_file(rt, str(last_dir / "rng.safetensors"))
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "key": key,
                    "epoch": epoch,
                    "step": step,
                    "best_f1": best_f1,
                    "best_epoch": best_epoch,
                    "best_valid": best_valid,
                    "bad_epochs": bad,
                    "history": history,
                    "done": done,
                    "rng": rmeta,
                    "config": asdict(cfg),
                }
            )
        )
        os.replace(tmp, state_file)
        dist.barrier()
    return TrainResult(
        best_epoch=best_epoch,
        best_valid=best_valid,
        history=history,
        best_dir=str(best_dir),
        seconds=time.perf_counter() - t0,
        resumed_from=resumed_from,
    )
