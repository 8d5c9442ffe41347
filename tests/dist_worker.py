"""What the distributed tests run under torchrun: ``torchrun ... tests/dist_worker.py SCENARIO JSON``.

Each scenario runs on every rank and writes ``<out>/rank<r>.json``. The tests import the same
builders (:func:`loop_problem`, :func:`student_problem`, :func:`llm_problem`) to compute the
single-process reference in the test process. ``kill_rank`` / ``kill_at`` make one rank exit
abruptly (``os._exit``) in the middle of the work, as a crashed or preempted worker would.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # factories


def _die(args: dict, rank: int, where) -> None:
    if args.get("kill_rank") == rank and where == args.get("kill_at"):
        os._exit(3)


# ------------------------------------------------------------------------------------ problems
def loop_problem(seed: int = 0):
    """A float64 MLP on 22 random examples; (model, make_batch, loss_fn, evaluate, LoopConfig)."""
    import torch

    from edgekd.training import LoopConfig

    g = torch.Generator().manual_seed(1)
    X = torch.randn(22, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (22,), generator=g)
    Xd, yd = X[:6] + 0.1, y[:6]
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()

    def make_batch(idx):
        return {"x": X[idx], "y": y[idx]}

    def loss_fn(m, b):
        return torch.nn.functional.cross_entropy(m(b["x"]), b["y"])

    def evaluate(m):
        with torch.no_grad():
            return {"macro_f1": -float(torch.nn.functional.cross_entropy(m(Xd), yd))}

    # 4 steps per epoch, the last with 4 of 6 examples; 3 epochs; evaluation and a checkpoint every 2 steps
    cfg = LoopConfig(epochs=3, batch_size=2, grad_accum=3, lr=0.05, warmup_ratio=0.2, seed=3, save_every=2,
                     eval_every=2, weight_decay=0.01, grad_clip=0.5)
    return model, make_batch, loss_fn, evaluate, cfg


def student_problem(method: str = "dixtill", variant: str = "code"):
    """A float64 BiLSTM student on 23 random texts with teacher logits and attributions
    (some texts unattributed); (student, train, valid, TrainConfig)."""
    import numpy as np
    import torch

    from edgekd.distill.config import TrainConfig
    from edgekd.distill.trainer import EncodedSplit
    from edgekd.students import BiLSTMAttentionStudent

    rng = np.random.default_rng(0)

    def split(n):
        ids = [list(rng.integers(2, 30, size=int(rng.integers(3, 9)))) for _ in range(n)]
        labels = rng.integers(0, 3, size=n)
        logits = rng.normal(size=(n, 3)).astype(np.float32)
        att = [rng.normal(size=len(x)).astype(np.float32) for x in ids]
        has = rng.random(n) < 0.7
        return EncodedSplit(ids, labels, logits, att, has)

    train, valid = split(23), split(9)
    torch.manual_seed(0)
    student = BiLSTMAttentionStudent(30, embed_dim=8, hidden_size=6, num_classes=3, pad_id=0, attention_dim=5).double()
    cfg = TrainConfig(method=method, variant=variant, epochs=3, batch_size=5, lr=0.01, patience=10, seed=2,
                      schedule="linear", warmup_ratio=0.1, grad_clip=1.0, optimizer="adamw", weight_decay=0.01)
    return student, train, valid, cfg


def llm_problem():
    """A float64 tiny llama student and teacher, 10 sequences of 8 tokens; (student, teacher, data, LLMTrainConfig)."""
    import torch

    from factories import tiny_llama

    from edgekd.llm.trainer import LLMTrainConfig, token_data
    from edgekd.training import LoopConfig

    student = tiny_llama(layers=2, seed=1).double()
    teacher = tiny_llama(layers=2, seed=2).double()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 48, (10, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[3, 5:] = 0  # one padded row: the step's token count differs from its example count
    data = token_data(ids, mask)
    cfg = LLMTrainConfig(loss="forward_kl", loop=LoopConfig(max_steps=4, batch_size=2, grad_accum=2, lr=1e-2,
                                                            warmup_ratio=0.25, weight_decay=0.0, seed=5))
    return student, teacher, data, cfg


# ------------------------------------------------------------------------------------ scenarios
def collectives(ctx, args):
    import numpy as np
    import torch

    from edgekd import distributed as dist

    out = {"rank": ctx.rank, "world": ctx.world_size, "backend": ctx.backend, "main": dist.is_main(),
           "shard": dist.shard(range(10)), "split": dist.split_even(list(range(5))),
           "sum": dist.all_reduce_sum([ctx.rank + 1, 0.5]), "max": dist.all_reduce_max([ctx.rank, -ctx.rank]),
           "json": dist.broadcast_json({"from": ctx.rank, "x": [1.5, "é"], "np": np.float32(0.5), "t": torch.arange(2)}
                                     if ctx.rank == 0 else None)}
    dist.barrier()
    return out


def cli(ctx, args):
    """``edgekd.cli.main(argv)``; records which annotation chunks this rank computed, and with
    ``kill_rank`` exits that rank right after it has written its first chunk."""
    import importlib

    from edgekd.cli import main

    ann = importlib.import_module("edgekd.teacher.annotate")  # the module (edgekd.teacher.annotate is also a function)

    computed = []
    save, annotate_chunk = ann._save_chunk, ann._annotate_chunk

    def counting_chunk(teacher, dataset, word_tokenizer, rows, *a):
        computed.append(rows[0])
        return annotate_chunk(teacher, dataset, word_tokenizer, rows, *a)

    def dying_save(path, *a):
        save(path, *a)
        _die(args, ctx.rank, "first_chunk")

    ann._annotate_chunk, ann._save_chunk = counting_chunk, dying_save
    rc = main(args["argv"])
    return {"rc": rc, "first_rows": computed}


def loop(ctx, args):
    import torch

    from edgekd.training import train_loop

    model, make_batch, loss_fn, evaluate, cfg = loop_problem(seed=ctx.rank)  # rank-dependent init: DDP syncs it
    res = train_loop(model, 22, make_batch, cfg, loss_fn=loss_fn, evaluate=evaluate,
                     checkpoint_dir=args["ckpt"], resume=args.get("resume", False), progress=False,
                     on_step=lambda step, total: _die(args, ctx.rank, step))
    return {"losses": res.losses, "history": res.history, "best": res.best,
            "weights": {k: v.tolist() for k, v in model.state_dict().items()}, "threads": torch.get_num_threads()}


def student(ctx, args):
    from edgekd.distill.trainer import train_student

    out = {}
    for method, variant in (("dixtill", "code"), ("kl", "paper")):
        st, train, valid, cfg = student_problem(method, variant)
        res = train_student(st, train, valid, cfg, pathlib.Path(args["out"]) / f"{method}-{variant}", progress=False,
                            log=None)
        out[method] = {"history": res.history, "best_epoch": res.best_epoch,
                       "weights": {k: v.tolist() for k, v in st.state_dict().items()}}
    return out


def llm(ctx, args):
    from edgekd import distributed as dist
    from edgekd.llm.trainer import train_causal_lm

    out = {}
    for parallel in ("ddp", "fsdp"):
        st, teacher, data, cfg = llm_problem()
        cfg.parallel = parallel
        res = train_causal_lm(st, data, teacher=teacher, config=cfg, progress=False)
        sd = dist.full_state_dict(st)
        out[parallel] = {"losses": res.loop.losses, "tokens": res.tokens_trained,
                         "weights": {k: v.tolist() for k, v in sd.items() if "layers.1.mlp" in k}}
    return out


def sparse_cache(ctx, args):
    """Builds a 5-chunk cache with a tiny llama teacher (``ctx`` unused: also called in the test process)."""
    import torch

    from factories import tiny_llama

    from edgekd.llm.cache import CacheSettings, build_sparse_cache

    teacher = tiny_llama(layers=2, seed=2)
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(3, 48, (2, 6), generator=g), "attention_mask": torch.ones(2, 6)}
               for _ in range(5)]
    computed = []

    def fn(ids, am):
        computed.append(int(ids[0, 0]))
        with torch.no_grad():
            return teacher(input_ids=ids, attention_mask=am).logits

    cache = build_sparse_cache(fn, batches, args["cache"], teacher_id="tiny", settings=CacheSettings(
        topk=4, batches_per_chunk=1))
    return {"key": cache.key, "calls": len(computed), "n": len(cache)}


SCENARIOS = {"collectives": collectives, "cli": cli, "loop": loop, "student": student, "llm": llm,
             "sparse_cache": sparse_cache}


def main() -> None:
    import torch

    torch.set_num_threads(1)
    scenario, args = sys.argv[1], json.loads(sys.argv[2])
    from edgekd.distributed import dist_context

    ctx = dist_context()
    result = SCENARIOS[scenario](ctx, args)
    out = pathlib.Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{ctx.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
