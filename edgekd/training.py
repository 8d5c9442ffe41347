"""The one fine-tuning loop: teacher fine-tuning, token-pruning training and the prune benchmark.

:func:`train_loop` owns what every fine-tune repeats: steps and epochs, AdamW (per-group learning
rates, e.g. a head learning-rate multiplier, see :func:`param_groups`), a warm-up + decay schedule,
gradient clipping, gradient accumulation (each micro-batch's mean loss is weighted by its share of
the step's examples, so ``batch_size=4, grad_accum=2`` takes the same step as ``batch_size=8``), a
per-step hook (PrunePert's sigma schedule), evaluation on a dev set every N steps or every epoch
with best-checkpoint selection (early stopping optional), a tqdm bar, a seeded shuffle, and
checkpoint/resume as safetensors + JSON (never pickle).

The caller builds the model (after :func:`seed_everything`: a new head's initialisation is seeded)
and says how to make a batch from example indices: ``train_loop(model, n, make_batch, LoopConfig())``.
Optimizer step ``s`` of ``total`` uses ``lr * lr_multiplier(s)``: transformers' linear warm-up and
decay (or cosine, constant). The checkpoint helpers (:func:`save_optimizer`, :func:`rng_state`, ...)
live here too; the student trainer uses them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from edgekd import distributed as dist
from edgekd.errors import EdgekdValueError

__all__ = ["LoopConfig", "LoopResult", "train_loop", "param_groups", "lr_multiplier", "epoch_order",
           "seed_everything", "save_optimizer", "load_optimizer", "rng_state", "set_rng_state",
           "HEAD_KEYS", "NO_DECAY"]

HEAD_KEYS = ("classifier", "pooler", "pre_classifier", "score")  # a classification head's parameter names
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight")  # parameters that get no weight decay
_SCHEDULES = ("linear", "cosine", "constant")
_SHUFFLES = ("torch", "python", "none")
_STATE = "loop_state.json"
_FORMAT = "edgekd.training"


# --------------------------------------------------------------------------------------------
# optimizer and RNG state as safetensors + JSON


def save_optimizer(opt: torch.optim.Optimizer, directory: str | os.PathLike) -> None:
    """Write ``optimizer.safetensors`` and ``optimizer.json`` into ``directory``.

    ``Optimizer.state_dict()`` is a nested dict of tensors and plain values; tensors go to a
    safetensors file under flat names ``state.<param>.<key>``, everything else to JSON."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                plain.setdefault(str(pid), {})[k] = v
    meta = {"param_groups": sd["param_groups"], "plain_state": plain, "type": type(opt).__name__}
    save_file(tensors, str(d / "optimizer.safetensors"))
    (d / "optimizer.json").write_text(json.dumps(meta))


def load_optimizer(opt: torch.optim.Optimizer, directory: str | os.PathLike) -> None:
    """Restore ``opt`` from :func:`save_optimizer` files."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / "optimizer.json").is_file() or not (d / "optimizer.safetensors").is_file():
        raise EdgekdValueError(f"load_optimizer: {d} holds no optimizer.json/optimizer.safetensors")
    meta = json.loads((d / "optimizer.json").read_text())
    if meta.get("type") != type(opt).__name__:
        raise EdgekdValueError(
            f"load_optimizer: checkpoint optimizer is {meta.get('type')}, this run uses {type(opt).__name__}"
        )
    tensors = load_file(str(d / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, pid, k = name.split(".", 2)
        state.setdefault(int(pid), {})[k] = t
    for pid, kv in meta["plain_state"].items():
        state.setdefault(int(pid), {}).update(kv)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Random-number-generator states (torch, numpy, python) as tensors + JSON."""
    import numpy as np

    py = random.getstate()
    np_state = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype("int64"))}
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    import numpy as np

    torch.set_rng_state(tensors["torch_cpu"])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype("uint32"), pos, has_gauss, gauss))
    v, st, g = meta["python"]
    random.setstate((v, tuple(st), g))


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy and torch (call it before building a model with a new head)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# settings


@dataclass
class LoopConfig:
    """Settings of :func:`train_loop` (the defaults are those of the teacher fine-tune and of
    ``edgekd prune tokens``)."""

    epochs: float = 1.0  # passes over the training set (fractions allowed); total = round(steps/epoch * epochs)
    max_steps: int | None = None  # optimizer steps in total; overrides epochs when given
    batch_size: int = 16  # examples per micro-batch (one forward/backward)
    grad_accum: int = 1  # micro-batches per optimizer step (effective batch = batch_size * grad_accum)
    lr: float = 5e-5
    weight_decay: float = 0.01  # AdamW; param groups may set their own
    head_lr_multiplier: float = 1.0  # default groups: a classification head (HEAD_KEYS) learns at lr * this
    warmup_ratio: float = 0.1  # share of the steps with a linear warm-up from 0
    schedule: str = "linear"  # after warm-up: linear decay to 0, cosine decay, or constant
    grad_clip: float | None = 1.0  # max global gradient norm (None: no clipping)
    seed: int = 0  # shuffle order
    shuffle: str = "torch"  # torch: torch.Generator(seed) across epochs; python: random.Random(seed); none
    eval_every: int | str | None = None  # dev evaluation every N steps or "epoch" (None: no evaluation)
    metric: str = "macro_f1"  # the dev metric that picks the best checkpoint (higher is better)
    select_best: bool = True  # after training, restore the weights of the best dev evaluation
    patience: int | None = None  # stop after this many evaluations without improvement
    save_every: int | None = None  # with a checkpoint dir: also checkpoint every N steps (always: each epoch, end)

    def validate(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        def num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ev = self.eval_every
        checks = [
            ("epochs", num(self.epochs) and self.epochs > 0, "a finite number > 0"),
            *((n, getattr(self, n) is None or is_int(getattr(self, n)), "None or an int >= 1")
              for n in ("max_steps", "patience", "save_every")),
            *((n, is_int(getattr(self, n)), "an int >= 1") for n in ("batch_size", "grad_accum")),
            *((n, num(getattr(self, n)) and getattr(self, n) > 0, "> 0") for n in ("lr", "head_lr_multiplier")),
            ("weight_decay", num(self.weight_decay) and self.weight_decay >= 0, ">= 0"),
            ("warmup_ratio", num(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, "in [0, 1)"),
            ("schedule", self.schedule in _SCHEDULES, f"one of {_SCHEDULES}"),
            ("grad_clip", self.grad_clip is None or (num(self.grad_clip) and self.grad_clip > 0), "None or > 0"),
            ("shuffle", self.shuffle in _SHUFFLES, f"one of {_SHUFFLES}"),
            ("eval_every", ev is None or ev == "epoch" or is_int(ev), "None, 'epoch' or an int >= 1"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise EdgekdValueError(f"LoopConfig.{name} must be {want}, got {getattr(self, name)!r}")

    def steps_per_epoch(self, num_examples: int) -> int:
        return math.ceil(num_examples / (self.batch_size * self.grad_accum))

    def total_steps(self, num_examples: int) -> int:
        return self.max_steps or max(1, int(round(self.steps_per_epoch(num_examples) * self.epochs)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LoopConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EdgekdValueError(f"unknown training settings {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)


def lr_multiplier(schedule: str, step: int, total: int, warmup: int) -> float:
    """lr factor of step ``step`` (0-based) of ``total``, as transformers' schedules with warm-up."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def param_groups(model: torch.nn.Module, *, lr: float, weight_decay: float, head_lr_multiplier: float = 1.0,
                 head_keys: Sequence[str] = HEAD_KEYS, no_decay: Sequence[str] = (),
                 first: Sequence[dict] = ()) -> list[dict]:
    """AdamW parameter groups: the ``first`` groups (e.g. a token scorer with its own lr), then the
    remaining trainable parameters split into body / head (a name containing one of ``head_keys``,
    lr * ``head_lr_multiplier``) and decay / no decay (a name ending in one of ``no_decay``).
    Empty groups are left out."""
    taken = {id(p) for g in first for p in g["params"]}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in taken]
    groups = [dict(g) for g in first]
    for head in (False, True):
        for decay in (True, False):
            ps = [p for n, p in named
                  if n.endswith(tuple(no_decay)) != decay and any(k in n for k in head_keys) == head]
            if ps:
                groups.append({"params": ps, "weight_decay": weight_decay if decay else 0.0,
                               "lr": lr * (head_lr_multiplier if head else 1.0)})
    return [g for g in groups if g["params"]]


def epoch_order(kind: str, num_examples: int, seed: int, epoch: int) -> list[int]:
    """The example order of ``epoch`` (0-based): a pure function of its arguments, so a resumed run
    replays it. ``torch``: the (epoch+1)-th ``randperm`` of one ``torch.Generator(seed)``;
    ``python``: the (epoch+1)-th shuffle of one ``random.Random(seed)``; ``none``: file order."""
    if kind == "torch":
        g = torch.Generator().manual_seed(seed)
        for _ in range(epoch):
            torch.randperm(num_examples, generator=g)
        return torch.randperm(num_examples, generator=g).tolist()
    if kind == "python":
        rng = random.Random(seed)
        for _ in range(epoch + 1):
            perm = list(range(num_examples))
            rng.shuffle(perm)
        return perm
    if kind == "none":
        return list(range(num_examples))
    raise EdgekdValueError(f"shuffle must be one of {_SHUFFLES}, got {kind!r}")


@dataclass
class LoopResult:
    """What :func:`train_loop` did: ``losses`` per optimizer step (mean over the step's examples),
    ``history`` per dev evaluation (``step``, ``epoch``, metrics), ``best`` the best of them or None."""

    steps: int
    total_steps: int
    losses: list[float] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    seconds: float = 0.0
    resumed_from: int = 0
    stopped_early: bool = False
    finished: bool = True

    @property
    def first_loss(self) -> float | None:
        return self.losses[0] if self.losses else None

    @property
    def final_loss(self) -> float | None:
        """The mean of the last 20 step losses."""
        tail = self.losses[-20:]
        return sum(tail) / len(tail) if tail else None


# --------------------------------------------------------------------------------------------
# checkpoints


def _default_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    out = model(**batch)
    loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
    if loss is None:
        raise EdgekdValueError("train_loop: the model returned no loss; put labels in the batch or give a loss_fn")
    return loss


def _save_weights(model: torch.nn.Module, directory: Path) -> None:
    from safetensors.torch import save_model

    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / "model.safetensors"))


def _load_weights(model: torch.nn.Module, directory: Path) -> None:
    from safetensors.torch import load_model

    load_model(model, str(directory / "model.safetensors"), strict=True, device=str(_device(model)))


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _save_checkpoint(d: Path, model, opt, generators: Mapping[str, torch.Generator], state: dict) -> None:
    from safetensors.torch import save_file

    last = d / "last"
    _save_weights(model, last)
    save_optimizer(opt, last)
    tensors, meta = rng_state()
    tensors.update({f"generator.{k}": g.get_state() for k, g in generators.items()})
    save_file(tensors, str(last / "rng.safetensors"))
    tmp = last / (_STATE + ".tmp")
    tmp.write_text(json.dumps({**state, "format": _FORMAT, "rng": meta}))
    os.replace(tmp, last / _STATE)  # written last: a checkpoint without it is ignored


def _load_checkpoint(d: Path, model, opt, generators: Mapping[str, torch.Generator], config: dict,
                     num_examples: int) -> dict | None:
    from safetensors.torch import load_file

    last = d / "last"
    if not (last / _STATE).is_file():
        return None
    try:
        state = json.loads((last / _STATE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgekdValueError(f"train_loop: {last / _STATE} is not valid JSON: {exc}") from exc
    if state.get("format") != _FORMAT:
        raise EdgekdValueError(f"train_loop: {last / _STATE} is not an edgekd training checkpoint")
    diff = sorted(k for k in set(config) | set(state["config"]) if config.get(k) != state["config"].get(k))
    if diff or state["num_examples"] != num_examples:
        what = f"other settings {diff}" if diff else f"{state['num_examples']} training examples (now {num_examples})"
        raise EdgekdValueError(f"train_loop: the checkpoint in {d} was written for {what}; "
                               "resume with the same settings and data, or use another checkpoint dir")
    _load_weights(model, last)
    load_optimizer(opt, last)
    tensors = load_file(str(last / "rng.safetensors"))
    set_rng_state(tensors, state["rng"])
    for k, g in generators.items():
        g.set_state(tensors[f"generator.{k}"])
    return state


# --------------------------------------------------------------------------------------------
# the loop


def _rank_backward(net, idx: list, batch_size: int, world: int, device, make_batch, loss_fn) -> float:
    """This rank's part of one step under DDP/FSDP: its share of the step's examples ``idx``
    (:func:`edgekd.distributed.split_even`) in micro-batches of ``batch_size``, each loss weighted by
    its share of the *whole* step and scaled by ``world`` (the gradient all-reduce averages), the
    gradients synced on the last micro-batch only. A rank without examples (a step smaller than the
    world) runs the step's first example with weight 0, so that it still joins the all-reduce.
    Returns its part of the step's mean loss."""
    mine = dist.split_even(idx)
    micros = [(mine[m:m + batch_size], len(mine[m:m + batch_size]) / len(idx)) for m in range(0, len(mine), batch_size)]
    if not micros:
        micros = [(idx[:1], 0.0)]
    part = 0.0
    for i, (micro, share) in enumerate(micros):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in make_batch(micro).items()}
        with dist.grad_sync(net, i == len(micros) - 1):
            loss = loss_fn(net, batch) * share
            (loss * world).backward()
        part += float(loss.detach())
    return part


def train_loop(
    model: torch.nn.Module,
    num_examples: int,
    make_batch: Callable[[list[int]], Mapping[str, Any]],
    config: LoopConfig | None = None,
    *,
    groups: Sequence[dict] | None = None,
    loss_fn: Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor] | None = None,
    on_step: Callable[[int, int], Mapping[str, Any] | None] | None = None,
    evaluate: Callable[[torch.nn.Module], Mapping[str, float]] | None = None,
    order: Callable[[int], Sequence[int]] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    generators: Mapping[str, torch.Generator] | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    desc: str = "train",
    parallel: str = "ddp",
) -> LoopResult:
    """Fine-tune ``model`` in place; returns a :class:`LoopResult` (the model ends in eval mode).

    Args:
        num_examples: size of the training set; batches are lists of its indices.
        make_batch: indices -> batch dict (tensors are moved to the model's device); the default
            loss is ``model(**batch).loss``.
        groups: AdamW parameter groups (default: :func:`param_groups` with ``config.lr``).
        loss_fn: ``loss_fn(model, batch) -> mean loss of the batch``.
        on_step: ``on_step(step, total)`` before each optimizer step's forward passes (e.g.
            ``pruned.set_progress(step / total)``); a returned dict goes into the progress bar.
        evaluate: ``evaluate(model) -> metrics`` on a dev set (called in eval mode when
            ``config.eval_every`` says so, and after the last step); ``config.metric`` picks the best.
        order: ``order(epoch) -> example indices`` instead of ``config.shuffle``.
        checkpoint_dir: write ``last/`` (weights, optimizer, RNG, loop state) at every epoch end,
            every ``config.save_every`` steps and at the end; ``best/`` holds the best weights.
        resume: continue from ``checkpoint_dir/last`` when it exists (same settings and data).
        generators: extra torch generators to checkpoint (e.g. a PrunePert noise generator).
        stop_after: stop after this many optimizer steps in this call (checkpointed; resume later).
        parallel: under ``torchrun`` (world size > 1), ``"ddp"`` (DistributedDataParallel) or
            ``"fsdp"`` (FSDP2 ``fully_shard``, for models that do not fit one device; no
            ``checkpoint_dir`` yet, read the weights with :func:`edgekd.distributed.full_state_dict`).
            Every rank takes its part of each step's examples (:func:`edgekd.distributed.split_even`),
            so the steps, schedule and seeds are those of one process and a checkpoint resumes with
            any world size; rank 0 alone writes checkpoints and shows the bar. ``make_batch``,
            ``loss_fn`` and ``on_step`` run on every rank (``loss_fn`` with the wrapped model);
            ``evaluate`` runs on rank 0 (every rank under FSDP) and its metrics go to all ranks.
    """
    cfg = config or LoopConfig()
    cfg.validate()
    if not isinstance(num_examples, int) or num_examples < 1:
        raise EdgekdValueError(f"train_loop: num_examples must be an int >= 1, got {num_examples!r}")
    if cfg.eval_every is not None and evaluate is None:
        raise EdgekdValueError("train_loop: LoopConfig.eval_every needs an evaluate function (a dev set)")
    if (stop_after is not None or resume) and checkpoint_dir is None:
        raise EdgekdValueError("train_loop: stop_after and resume need a checkpoint_dir (to resume from)")
    if parallel not in dist.STRATEGIES:
        raise EdgekdValueError(f"train_loop: parallel must be one of {dist.STRATEGIES}, got {parallel!r}")
    ctx = dist.dist_context()
    world, rank = ctx.world_size, ctx.rank
    fsdp = world > 1 and parallel == "fsdp"
    if fsdp and checkpoint_dir is not None:
        raise EdgekdValueError("train_loop: parallel='fsdp' does not write checkpoints yet; use parallel='ddp' "
                               "with a checkpoint_dir, or no checkpoint_dir")
    generators = dict(generators or {})
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    loss_fn = loss_fn or _default_loss
    spe = cfg.steps_per_epoch(num_examples)
    total = cfg.total_steps(num_examples)
    warmup = int(cfg.warmup_ratio * total)
    step_examples = cfg.batch_size * cfg.grad_accum
    if groups is None:
        groups = param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                              head_lr_multiplier=cfg.head_lr_multiplier)
    if fsdp:  # fully_shard replaces the parameters: rebuild the groups from the parameter names
        names = {id(p): n for n, p in model.named_parameters()}
        groups = [{**g, "params": [names[id(p)] for p in g["params"]]} for g in groups]
        net = dist.wrap_model(model, "fsdp")
        by_name = dict(model.named_parameters())
        groups = [{**g, "params": [by_name[n] for n in g["params"]]} for g in groups]
    opt = torch.optim.AdamW([dict(g) for g in groups], lr=cfg.lr, weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    device = _device(model)
    config_dict = dataclasses.asdict(cfg)

    res = LoopResult(steps=0, total_steps=total)
    bad_evals = 0
    best_value = -math.inf
    best_mem: dict[str, torch.Tensor] | None = None
    if resume and ckpt is not None:
        dist.barrier()  # rank 0 may still be writing a checkpoint another call started
        st = _load_checkpoint(ckpt, model, opt, generators, config_dict, num_examples)
        if st is not None:
            res.steps = res.resumed_from = st["step"]
            res.losses, res.history, res.best = st["losses"], st["history"], st["best"]
            res.stopped_early, bad_evals = st["stopped_early"], st["bad_evals"]
            best_value = res.best[cfg.metric] if res.best else -math.inf

    def state() -> dict:
        return {"config": config_dict, "num_examples": num_examples, "step": res.steps, "losses": res.losses,
                "history": res.history, "best": res.best, "bad_evals": bad_evals, "stopped_early": res.stopped_early}

    if world > 1 and not fsdp:
        net = dist.wrap_model(model, "ddp")  # after a resume: DDP starts from rank 0's (identical) weights
    elif world == 1:
        net = model
    if world > 1 and rank > 0:  # dropout etc.: each rank its own stream (rank 0 keeps the checkpointed one)
        torch.manual_seed((cfg.seed * 1_000_003 + rank * 7_919 + res.steps) % (2 ** 63))

    def run_eval(epoch: int) -> None:
        nonlocal best_value, best_mem, bad_evals
        metrics = None
        if fsdp or rank == 0:
            model.eval()
            try:
                metrics = dict(evaluate(model))
            finally:
                model.train()
        if world > 1:  # rank 0's numbers on every rank: the same best step and early stop everywhere
            metrics = dist.broadcast_json(metrics if rank == 0 else None)
        if cfg.metric not in metrics:
            raise EdgekdValueError(f"train_loop: evaluate returned {sorted(metrics)}, without {cfg.metric!r}")
        rec = {"step": res.steps, "epoch": epoch, **metrics}
        res.history.append(rec)
        if float(metrics[cfg.metric]) > best_value:
            best_value, res.best, bad_evals = float(metrics[cfg.metric]), rec, 0
            if ckpt is not None:
                if rank == 0:
                    _save_weights(model, ckpt / "best")
            else:
                best_mem = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_evals += 1
            if cfg.patience is not None and bad_evals >= cfg.patience:
                res.stopped_early = True

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=res.steps, desc=desc, disable=not dist.main_progress(progress), unit="step")
    model.train()
    this_call, perm_epoch, perm = 0, -1, []
    while res.steps < total and not res.stopped_early:
        if stop_after is not None and this_call >= stop_after:
            break
        epoch, pos = divmod(res.steps, spe)
        if epoch != perm_epoch:  # a function of the epoch alone, so a resumed run replays it
            perm_epoch, perm = epoch, list(order(epoch) if order else epoch_order(cfg.shuffle, num_examples,
                                                                                  cfg.seed, epoch))
        idx = perm[pos * step_examples:(pos + 1) * step_examples]
        extra = on_step(res.steps, total) if on_step is not None else None
        loss_sum = 0.0
        if world == 1:
            for m in range(0, len(idx), cfg.batch_size):
                micro = idx[m:m + cfg.batch_size]
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in make_batch(micro).items()}
                loss = loss_fn(model, batch)
                if len(micro) != len(idx):  # the share of this micro-batch in the step's mean loss
                    loss = loss * (len(micro) / len(idx))
                loss.backward()
                loss_sum += float(loss.detach())
        else:
            loss_sum = dist.all_reduce_sum([_rank_backward(net, idx, cfg.batch_size, world, device, make_batch,
                                                           loss_fn)])[0]
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        f = lr_multiplier(cfg.schedule, res.steps, total, warmup)
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * f
        opt.step()
        opt.zero_grad(set_to_none=True)
        res.losses.append(loss_sum)
        res.steps += 1
        this_call += 1
        bar.update(1)
        bar.set_postfix(loss=f"{res.final_loss:.3f}", **dict(extra or {}))
        epoch_end = res.steps % spe == 0
        if evaluate is not None and cfg.eval_every is not None and (
                res.steps == total or (epoch_end if cfg.eval_every == "epoch" else res.steps % cfg.eval_every == 0)):
            run_eval(epoch)
        if ckpt is not None and (epoch_end or res.steps == total or res.stopped_early
                                 or (cfg.save_every and res.steps % cfg.save_every == 0)
                                 or (stop_after is not None and this_call >= stop_after)):
            if rank == 0:
                _save_checkpoint(ckpt, model, opt, generators, state())
            dist.barrier()
    bar.close()
    res.seconds = time.perf_counter() - t0
    res.finished = res.steps >= total or res.stopped_early
    if res.finished and cfg.select_best and res.best is not None:
        if ckpt is not None:
            dist.barrier()
            _load_weights(model, ckpt / "best")
        elif best_mem is not None:
            model.load_state_dict(best_mem)
    model.eval()
    return res
