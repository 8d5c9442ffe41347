"""Scale-out on PyTorch's own engine: ``torch.distributed`` under ``torchrun``.

``torchrun --nproc-per-node N -m edgekd <verb> ...`` starts N copies of the command with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
:func:`dist_context` reads them and, when ``WORLD_SIZE`` > 1, starts the default process group
(gloo on CPU, NCCL when CUDA is available; ``EDGEKD_DIST_BACKEND`` overrides). Without torchrun
every function here is a no-op for a world of one, so single-process runs are unchanged.

What the rest of edgekd does with it:

* chunked caches (IG annotations, the sparse LLM teacher cache): the missing chunks are dealt out
  with :func:`shard`; each rank writes its chunks atomically to the shared cache folder, then every
  rank waits (:func:`barrier`) and reads the whole cache. A chunk is computed by exactly one rank with
  the same code as a single-process run, so the files are identical; a rank that dies leaves its
  finished chunks, which a rerun reuses.
* training (:func:`edgekd.training.train_loop`, the BiLSTM student trainer): every rank walks the
  same seeded example order; the examples of each optimizer step (the *global batch*, unchanged by
  the world size) are split with :func:`split_even`, each rank weights its loss by its share of the
  step and the gradients are summed (DDP averages, so the loss is scaled by the world size). The
  optimizer steps, learning-rate schedule and seeds are those of a single-process run, so the loss
  curve matches it up to float rounding, and a checkpoint written with one world size resumes with
  another. Grad accumulation adapts by itself: a rank runs ``ceil(its share / batch_size)``
  micro-batches. Only rank 0 writes checkpoints, logs and shows progress bars.

  ``torch.utils.data.DistributedSampler`` is not used: it deals out a whole epoch (``perm[r::W]``)
  and pads it to a multiple of W by repeating examples, so the last step of an epoch would differ
  from the single-process step; splitting each step keeps every step exact.

Multi-node: the cache and checkpoint folders must be on a filesystem every node sees.
Only the ground floor is imported (torch lazily), so this module loads anywhere.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence, TypeVar

from edgekd.errors import EdgekdValueError

__all__ = ["DistContext", "env_ranks", "dist_context", "get_rank", "get_world_size", "is_main", "is_distributed",
           "barrier", "shard", "split_even", "rank0_only", "main_progress", "all_reduce_sum", "all_reduce_max",
           "broadcast_json", "wrap_model", "grad_sync", "unwrap", "is_fsdp", "full_state_dict", "STRATEGIES",
           "DEFAULT_TIMEOUT_S", "run_as_rank"]

T = TypeVar("T")
STRATEGIES = ("ddp", "fsdp")
DEFAULT_TIMEOUT_S = 3600  # collectives (barriers) wait this long; EDGEKD_DIST_TIMEOUT overrides


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node) and the
    backend of the process group (None for a world of one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def device(self) -> str:
        """``cuda:<local_rank>`` under NCCL, else ``cpu``."""
        return f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"


def env_ranks(environ: dict | None = None) -> tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` from torchrun's environment (``(0, 1, 0)`` when unset)."""
    env = os.environ if environ is None else environ
    vals = []
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = env.get(name)
        try:
            vals.append(default if raw in (None, "") else int(raw))
        except ValueError:
            raise EdgekdValueError(f"distributed: {name}={raw!r} is not an integer; launch with torchrun "
                                   f"or unset {name}") from None
    rank, world, local = vals
    if world < 1 or not 0 <= rank < world or local < 0:
        raise EdgekdValueError(f"distributed: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} are inconsistent "
                               "(need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE); launch with torchrun")
    return rank, world, local


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def dist_context(backend: str | None = None) -> DistContext:
    """The process's :class:`DistContext`; starts the default process group on first call when
    torchrun says ``WORLD_SIZE`` > 1 (``backend``: ``gloo``/``nccl``, default NCCL when CUDA is
    available, else gloo; ``EDGEKD_DIST_BACKEND`` overrides the default). Idempotent."""
    import torch
    import torch.distributed as dist

    if _initialized():
        local = env_ranks()[2]
        return DistContext(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())
    rank, world, local = env_ranks()
    if world == 1:
        return DistContext()
    if not dist.is_available():
        raise EdgekdValueError("distributed: this torch build has no torch.distributed; run a single process")
    backend = backend or os.environ.get("EDGEKD_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl"):
        raise EdgekdValueError(f"distributed: backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(local)
    import datetime

    timeout = float(os.environ.get("EDGEKD_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout))
    return DistContext(rank, world, local, backend)


def get_rank() -> int:
    """This process's rank (the process group's, else torchrun's ``RANK``, else 0)."""
    if _initialized():
        import torch.distributed as dist

        return dist.get_rank()
    return env_ranks()[0]


def get_world_size() -> int:
    if _initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return env_ranks()[1]


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files, logs and shows bars."""
    return get_rank() == 0


def is_distributed() -> bool:
    """True when a process group of more than one rank is running."""
    return _initialized() and get_world_size() > 1


def _comm_device():
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if is_distributed():
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            import torch

            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shard(indices: Iterable[T], rank: int | None = None, world: int | None = None) -> list[T]:
    """This rank's share of ``indices``: strided, ``indices[rank::world]``.

    Deterministic (a function of the list, the rank and the world size only), disjoint, and the
    union over the ranks is the whole list; shares differ by at most one item. Strided rather than
    contiguous so that work whose cost drifts along the list (a shorter last chunk, rows sorted by
    length, the missing chunks of a resumed run) is spread over the ranks."""
    rank = get_rank() if rank is None else rank
    world = get_world_size() if world is None else world
    if world < 1 or not 0 <= rank < world:
        raise EdgekdValueError(f"shard: need 0 <= rank < world, got rank={rank}, world={world}")
    return list(indices)[rank::world]


def split_even(items: Sequence[T], rank: int | None = None, world: int | None = None) -> list[T]:
    """This rank's contiguous part of ``items`` (a step's global batch): parts differ in size by at
    most one, the first ``len % world`` ranks get one more, and a rank may get none when there are
    fewer items than ranks."""
    rank = get_rank() if rank is None else rank
    world = get_world_size() if world is None else world
    if world < 1 or not 0 <= rank < world:
        raise EdgekdValueError(f"split_even: need 0 <= rank < world, got rank={rank}, world={world}")
    q, r = divmod(len(items), world)
    lo = rank * q + min(rank, r)
    return list(items[lo:lo + q + (1 if rank < r else 0)])


def rank0_only(fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """``fn`` on rank 0, a no-op elsewhere (for ``log=print`` callbacks); None stays None."""
    if fn is None:
        return None

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if is_main():
            return fn(*args, **kwargs)
        return None

    return wrapped


def main_progress(progress: bool) -> bool:
    """Whether to show a progress bar: ``progress`` on rank 0, never on the others."""
    return bool(progress) and is_main()


def _all_reduce(values: Sequence[float], op: str) -> list[float]:
    vals = [float(v) for v in values]
    if not is_distributed():
        return vals
    import torch
    import torch.distributed as dist

    t = torch.tensor(vals, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return [float(x) for x in t.cpu()]


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (float64; the values themselves in one process)."""
    return _all_reduce(values, "sum")


def all_reduce_max(values: Sequence[float]) -> list[float]:
    """Element-wise maximum of ``values`` over the ranks."""
    return _all_reduce(values, "max")


def broadcast_json(obj: Any = None, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank, sent as JSON bytes (never pickle; numpy and torch values
    become plain lists and numbers); ``obj`` is ignored on the other ranks. In one process it is
    returned as is."""
    if not is_distributed():
        return obj
    import torch
    import torch.distributed as dist

    dev = _comm_device()
    if get_rank() == src:
        data = json.dumps(obj, default=_plain).encode()
        n = torch.tensor([len(data)], dtype=torch.int64, device=dev)
    else:
        data, n = b"", torch.zeros(1, dtype=torch.int64, device=dev)
    dist.broadcast(n, src)
    buf = torch.zeros(int(n.item()), dtype=torch.uint8, device=dev)
    if get_rank() == src:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src)
    return json.loads(bytes(buf.cpu().tolist()).decode())


def _plain(x: Any) -> Any:
    """numpy / torch scalars and arrays as plain Python values for JSON."""
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"broadcast_json: {type(x).__name__} is not JSON-serialisable")


def wrap_model(model, strategy: str = "ddp"):
    """``model`` wrapped for data-parallel training in the running process group.

    ``ddp``: :class:`torch.nn.parallel.DistributedDataParallel` (every rank holds the whole model;
    gradients are averaged in buckets during backward; a CPU model in an NCCL job, e.g. the BiLSTM
    student next to a GPU teacher, syncs over a gloo group). ``fsdp``: FSDP2's ``fully_shard`` on every
    direct child that has parameters and on the root (parameters, gradients and optimizer state
    sharded over the ranks, for models that do not fit one device); it changes ``model`` in place and
    its parameters become DTensors, so build the optimizer after wrapping and read the weights with
    :func:`full_state_dict`. In a single process ``model`` is returned unchanged."""
    if strategy not in STRATEGIES:
        raise EdgekdValueError(f"wrap_model: strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not is_distributed():
        return model
    import torch

    ctx = dist_context()
    on_cuda = any(p.is_cuda for p in model.parameters())
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        if on_cuda:
            return DistributedDataParallel(model, device_ids=[next(model.parameters()).device.index])
        # a CPU model (the BiLSTM student) in an NCCL job: its gradients go over a gloo group
        return DistributedDataParallel(model, process_group=_cpu_group() if ctx.backend == "nccl" else None)
    if ctx.backend == "nccl" and not on_cuda:
        raise EdgekdValueError("wrap_model: FSDP of a CPU model in an NCCL job; move the model to "
                               f"cuda:{ctx.local_rank} or set EDGEKD_DIST_BACKEND=gloo")
    from torch.distributed.fsdp import fully_shard

    for child in _shard_units(model):
        fully_shard(child)
    fully_shard(model)
    return model


_CPU_GROUP = None


def _cpu_group():
    """A gloo group of all ranks, made once (a collective: every rank gets here together)."""
    global _CPU_GROUP
    if _CPU_GROUP is None:
        import torch.distributed as dist

        _CPU_GROUP = dist.new_group(backend="gloo")
    return _CPU_GROUP


def _shard_units(model) -> list:
    """The sub-modules FSDP shards one by one: the layers of a transformer stack (any ModuleList),
    else the direct children that hold parameters."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if lists:
        return [layer for ml in lists for layer in ml if any(True for _ in layer.parameters())]
    return [c for c in model.children() if any(True for _ in c.parameters())]


def grad_sync(net, enabled: bool):
    """A context in which the backward of ``net`` does (``enabled``) or does not all-reduce the
    gradients: the micro-batches of an accumulated step sync only on the last one."""
    if enabled or not is_distributed():
        return contextlib.nullcontext()
    if hasattr(net, "no_sync"):  # DDP
        return net.no_sync()
    if hasattr(net, "set_requires_gradient_sync"):  # FSDP2
        @contextlib.contextmanager
        def off():
            net.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                net.set_requires_gradient_sync(True)
        return off()
    return contextlib.nullcontext()


def unwrap(net):
    """The module inside a DDP wrapper (FSDP2 modules are their own)."""
    return getattr(net, "module", net) if type(net).__name__ == "DistributedDataParallel" else net


def is_fsdp(model) -> bool:
    """True when ``fully_shard`` was applied to ``model``."""
    return type(model).__name__.startswith("FSDP")


def full_state_dict(model) -> dict:
    """The whole model's weights on CPU: gathered from every rank for an FSDP model (a collective:
    call it on every rank; the other ranks get an empty dict), else ``model.state_dict()``."""
    if not is_fsdp(model):
        return unwrap(model).state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def run_as_rank(func: Callable[[Any], Any], args: Any) -> Any:
    """Run the command-line verb ``func(args)`` as one rank of a ``torchrun`` job: the process group
    is started first (:func:`dist_context`), only rank 0 prints to stdout (the other ranks' stdout
    goes to /dev/null; errors still reach stderr), and the group is closed at the end. With one
    process it is ``func(args)``."""
    import contextlib

    rank, world, _ = env_ranks()
    if world == 1:
        return func(args)
    import torch.distributed as tdist

    dist_context()
    try:
        if rank == 0:
            return func(args)
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            return func(args)
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
