"""The shared fine-tuning loop (edgekd.training) on a toy classification task."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgekd.errors import EdgekdValueError
from edgekd.training import (
    LoopConfig,
    epoch_order,
    lr_multiplier,
    param_groups,
    seed_everything,
    train_loop,
)

N, D, C = 40, 6, 3


def toy_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    w = torch.randn(D, C, generator=g)
    return x, (x @ w).argmax(-1)


class Toy(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Linear(D, 16)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(16, C)

    def forward(self, x, labels=None):
        logits = self.classifier(self.drop(torch.tanh(self.body(x))))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def toy_model(seed: int = 0, dropout: float = 0.0) -> Toy:
    seed_everything(seed)
    return Toy(dropout)


def batcher(x, y):
    return lambda idx: {"x": x[idx], "labels": y[idx]}


def accuracy(x, y):
    def evaluate(model):
        with torch.no_grad():
            return {"accuracy": float((model(x)["logits"].argmax(-1) == y).float().mean())}
    return evaluate


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_params(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=k)


def test_loss_decreases_on_a_toy_task():
    x, y = toy_data()
    model = toy_model()
    before = accuracy(x, y)(model)["accuracy"]
    res = train_loop(model, N, batcher(x, y), LoopConfig(epochs=30, lr=3e-2, batch_size=8), progress=False)
    assert res.finished and res.steps == res.total_steps == 5 * 30 and len(res.losses) == res.steps
    assert sum(res.losses[-10:]) / 10 < 0.5 * sum(res.losses[:10]) / 10
    assert accuracy(x, y)(model)["accuracy"] >= max(0.9, before)
    assert not model.training  # the loop leaves the model in eval mode


@pytest.mark.parametrize("n", [N, N - 7])  # the last step of an epoch may be short (and split 4 + rest)
def test_accumulation_equals_the_big_batch(n):
    x, y = toy_data()
    x, y = x[:n], y[:n]
    runs = []
    for batch, accum in ((8, 1), (4, 2), (1, 8)):
        model = toy_model()
        cfg = LoopConfig(epochs=3, lr=1e-2, batch_size=batch, grad_accum=accum, warmup_ratio=0.2, grad_clip=0.5)
        runs.append((train_loop(model, n, batcher(x, y), cfg, progress=False), params(model)))
    (ref, ref_params), others = runs[0], runs[1:]
    for res, p in others:
        assert res.total_steps == ref.total_steps == 3 * -(-n // 8)
        torch.testing.assert_close(torch.tensor(res.losses), torch.tensor(ref.losses), rtol=1e-5, atol=1e-6)
        assert_same_params(p, ref_params, rtol=1e-5, atol=1e-6)


def test_the_micro_batches_of_a_step_see_the_step_examples():
    """batch_size=4, grad_accum=2: one step runs two forward passes over 8 distinct examples."""
    x, y = toy_data()
    seen: list[list[int]] = []

    def make(idx):
        seen.append(list(idx))
        return {"x": x[idx], "labels": y[idx]}

    train_loop(toy_model(), N, make, LoopConfig(max_steps=2, batch_size=4, grad_accum=2), progress=False)
    assert [len(s) for s in seen] == [4, 4, 4, 4]
    order = epoch_order("torch", N, 0, 0)
    assert [i for s in seen for i in s] == order[:16]


def test_resume_gives_the_uninterrupted_result(tmp_path):
    """Interrupted after 4 and after 9 steps (mid-epoch), resumed twice: same weights, losses,
    evaluations and best step as one run (dropout on, so the RNG state must be restored too)."""
    x, y = toy_data()
    cfg = LoopConfig(epochs=3, lr=2e-2, batch_size=6, grad_accum=2, eval_every=2, warmup_ratio=0.1, metric="accuracy")

    def run(ckpt, stop_after=None, resume=False, seed=0):
        model = toy_model(seed=seed, dropout=0.3)
        res = train_loop(model, N, batcher(x, y), cfg, evaluate=accuracy(x, y), checkpoint_dir=ckpt,
                         resume=resume, stop_after=stop_after, progress=False)
        return model, res

    full_model, full = run(tmp_path / "full")
    assert full.finished and full.steps == 12 and len(full.history) == 6
    _, part = run(tmp_path / "split", stop_after=4)
    assert not part.finished and part.steps == 4 and len(part.losses) == 4
    # the weights come from the checkpoint: a differently initialised model resumes identically
    _, part = run(tmp_path / "split", stop_after=5, resume=True, seed=123)
    assert part.resumed_from == 4 and part.steps == 9
    torch.manual_seed(999)  # the global RNG (dropout) is restored from the checkpoint as well
    model, res = run(tmp_path / "split", resume=True, seed=7)
    assert res.finished and res.resumed_from == 9 and res.steps == 12
    assert res.losses == full.losses and res.history == full.history and res.best == full.best
    assert_same_params(params(model), params(full_model), rtol=0, atol=0)
    state = json.loads((tmp_path / "split" / "last" / "loop_state.json").read_text())
    assert state["step"] == 12 and state["config"]["lr"] == 2e-2
    assert {p.name for p in (tmp_path / "split" / "last").iterdir()} == {
        "model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "loop_state.json"}
    # a finished run resumes to its end result without training
    again_model, again = run(tmp_path / "split", resume=True, seed=5)
    assert again.steps == 12 and again.resumed_from == 12
    assert_same_params(params(again_model), params(full_model), rtol=0, atol=0)


def test_resume_refuses_other_settings(tmp_path):
    x, y = toy_data()
    train_loop(toy_model(), N, batcher(x, y), LoopConfig(max_steps=4), checkpoint_dir=tmp_path, stop_after=2,
               progress=False)
    with pytest.raises(EdgekdValueError, match=r"other settings \['lr'\]"):
        train_loop(toy_model(), N, batcher(x, y), LoopConfig(max_steps=4, lr=1e-3), checkpoint_dir=tmp_path,
                   resume=True, progress=False)
    with pytest.raises(EdgekdValueError, match=r"40 training examples \(now 30\)"):
        train_loop(toy_model(), 30, batcher(x, y), LoopConfig(max_steps=4), checkpoint_dir=tmp_path, resume=True,
                   progress=False)


class Scripted:
    """An evaluate function that returns a scripted metric and remembers the weights it saw."""

    def __init__(self, values):
        self.values, self.seen = list(values), []

    def __call__(self, model):
        assert not model.training
        self.seen.append(params(model))
        return {"macro_f1": self.values[len(self.seen) - 1], "accuracy": 0.0}


@pytest.mark.parametrize("on_disk", [False, True])
def test_the_best_dev_evaluation_is_restored(tmp_path, on_disk):
    x, y = toy_data()
    ev = Scripted([0.2, 0.7, 0.5, 0.6])
    model = toy_model()
    res = train_loop(model, N, batcher(x, y), LoopConfig(max_steps=8, lr=1e-2, batch_size=8, eval_every=2),
                     evaluate=ev, checkpoint_dir=tmp_path if on_disk else None, progress=False)
    assert [h["step"] for h in res.history] == [2, 4, 6, 8] and res.best["step"] == 4 and res.best["macro_f1"] == 0.7
    assert res.history[1]["epoch"] == 0 and res.history[3]["epoch"] == 1  # 5 steps an epoch
    assert_same_params(params(model), ev.seen[1], rtol=0, atol=0)
    if on_disk:
        assert (tmp_path / "best" / "model.safetensors").is_file()
    # select_best=False keeps the last weights
    ev2 = Scripted([0.2, 0.7, 0.5, 0.6])
    model2 = toy_model()
    train_loop(model2, N, batcher(x, y), LoopConfig(max_steps=8, lr=1e-2, batch_size=8, eval_every=2,
               select_best=False), evaluate=ev2, progress=False)
    assert_same_params(params(model2), ev2.seen[3], rtol=0, atol=0)


def test_early_stopping_and_epoch_evaluation():
    x, y = toy_data()
    ev = Scripted([0.5, 0.4, 0.45, 0.3, 0.9])
    res = train_loop(toy_model(), N, batcher(x, y), LoopConfig(epochs=5, batch_size=8, eval_every="epoch",
                     patience=2, metric="macro_f1"), evaluate=ev, progress=False)
    assert res.stopped_early and res.finished and res.steps == 15  # evaluations after epochs 1, 2, 3
    assert [h["step"] for h in res.history] == [5, 10, 15] and res.best["step"] == 5


def test_schedule_hook_and_groups():
    """lr of step s is lr * transformers' linear warm-up/decay factor; on_step sees (s, total);
    a head group learns at lr * head_lr_multiplier; the first groups keep their own lr."""
    from transformers import get_linear_schedule_with_warmup

    for total, warm in ((10, 1), (7, 0), (25, 2), (1, 0)):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = get_linear_schedule_with_warmup(opt, warm, total)
        hf = []
        for _ in range(total):
            hf.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert [lr_multiplier("linear", s, total, warm) for s in range(total)] == hf
    assert lr_multiplier("cosine", 5, 10, 0) == pytest.approx(0.5) and lr_multiplier("constant", 3, 10, 2) == 1.0

    x, y = toy_data()
    model = toy_model()
    extra = nn.Linear(2, 2)
    model.extra = extra
    groups = param_groups(model, lr=0.1, weight_decay=0.01, head_lr_multiplier=10.0, no_decay=("bias",),
                          first=[{"params": list(extra.parameters()), "lr": 0.5}])
    lrs = sorted((g["lr"], g.get("weight_decay"), len(g["params"])) for g in groups)
    assert lrs == [(0.1, 0.0, 1), (0.1, 0.01, 1), (0.5, None, 2), (1.0, 0.0, 1), (1.0, 0.01, 1)]
    calls = []
    seen_lrs = []

    def hook(step, total):
        calls.append((step, total))
        return {"sigma": f"{1 - step / total:.2f}"}

    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen_lrs.append([g["lr"] for g in self.param_groups])
        return orig(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        train_loop(model, N, batcher(x, y), LoopConfig(max_steps=4, warmup_ratio=0.5, lr=0.1), groups=groups,
                   on_step=hook, progress=False)
    finally:
        torch.optim.AdamW.step = orig
    assert calls == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert [round(s[0] / 0.5, 6) for s in seen_lrs] == [0.0, 0.5, 1.0, 0.5]  # the first group: 0.5 x factor
    assert all(abs(s[-1] / s[0] - 2.0) < 1e-9 for s in seen_lrs[1:])  # a head group at 1.0 vs the first's 0.5


def test_python_and_torch_orders_are_replayable():
    assert epoch_order("none", 5, 0, 3) == [0, 1, 2, 3, 4]
    g = torch.Generator().manual_seed(3)
    perms = [torch.randperm(9, generator=g).tolist() for _ in range(3)]
    assert [epoch_order("torch", 9, 3, e) for e in range(3)] == perms
    import random

    rng = random.Random(3)
    expected = []
    for _ in range(3):
        p = list(range(9))
        rng.shuffle(p)
        expected.append(p)
    assert [epoch_order("python", 9, 3, e) for e in range(3)] == expected


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "epochs must be a finite number > 0"),
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(grad_accum=1.5), "grad_accum must be an int >= 1"),
    (dict(warmup_ratio=1.0), "warmup_ratio must be in"),
    (dict(schedule="step"), "schedule must be one of"),
    (dict(shuffle="numpy"), "shuffle must be one of"),
    (dict(eval_every="steps"), "eval_every must be None, 'epoch' or an int"),
    (dict(patience=0), "patience must be None or an int >= 1"),
])
def test_config_errors(kwargs, message):
    x, y = toy_data()
    with pytest.raises(EdgekdValueError, match=message):
        train_loop(toy_model(), N, batcher(x, y), LoopConfig(**kwargs), progress=False)


def test_loop_errors(tmp_path):
    x, y = toy_data()
    with pytest.raises(EdgekdValueError, match="eval_every needs an evaluate function"):
        train_loop(toy_model(), N, batcher(x, y), LoopConfig(eval_every=2), progress=False)
    for kw in (dict(stop_after=1), dict(resume=True)):
        with pytest.raises(EdgekdValueError, match="stop_after and resume need a checkpoint_dir"):
            train_loop(toy_model(), N, batcher(x, y), progress=False, **kw)
    with pytest.raises(EdgekdValueError, match="returned no loss"):
        train_loop(toy_model(), N, lambda idx: {"x": x[idx]}, progress=False)
    with pytest.raises(EdgekdValueError, match="without 'macro_f1'"):
        train_loop(toy_model(), N, batcher(x, y), LoopConfig(eval_every=1), evaluate=accuracy(x, y), progress=False)
    with pytest.raises(EdgekdValueError, match="unknown training settings"):
        LoopConfig.from_dict({"lr": 1e-3, "epoch": 2})
