"""edgekd.distributed: torchrun's environment, sharding, rank-0 helpers, and the collectives in a
real 2-process gloo group."""
import json
import pathlib

import pytest
import torch

from factories import torchrun

from edgekd import distributed as dist
from edgekd.errors import EdgekdValueError

WORKER = str(pathlib.Path(__file__).resolve().parent / "dist_worker.py")


def test_env_ranks_reads_torchrun_and_rejects_bad_values():
    assert dist.env_ranks({}) == (0, 1, 0)
    assert dist.env_ranks({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(EdgekdValueError, match="WORLD_SIZE='two' is not an integer"):
        dist.env_ranks({"WORLD_SIZE": "two"})
    with pytest.raises(EdgekdValueError, match="inconsistent"):
        dist.env_ranks({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(EdgekdValueError, match="inconsistent"):
        dist.env_ranks({"WORLD_SIZE": "0"})


def test_shard_is_strided_disjoint_and_complete():
    items = list(range(11))
    parts = [dist.shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(parts, [])) == items
    assert dist.shard(items) == items  # a world of one takes everything
    with pytest.raises(EdgekdValueError, match="0 <= rank < world"):
        dist.shard(items, 3, 3)


def test_split_even_is_contiguous_and_covers_short_steps():
    parts = [dist.split_even(list(range(7)), r, 3) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert [dist.split_even([8], r, 2) for r in range(2)] == [[8], []]  # fewer items than ranks
    with pytest.raises(EdgekdValueError, match="0 <= rank < world"):
        dist.split_even([1], -1, 2)


def test_single_process_helpers_are_no_ops():
    ctx = dist.dist_context()
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main, ctx.device) == (0, 1, None, True, "cpu")
    assert dist.is_main() and not dist.is_distributed()
    dist.barrier()
    assert dist.all_reduce_sum([1, 2.5]) == [1.0, 2.5] and dist.all_reduce_max([3]) == [3.0]
    assert dist.broadcast_json({"a": 1}) == {"a": 1}
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        dist._plain(object())
    m = torch.nn.Linear(2, 2)
    assert dist.wrap_model(m, "ddp") is m and dist.full_state_dict(m).keys() == m.state_dict().keys()
    with pytest.raises(EdgekdValueError, match="strategy must be one of"):
        dist.wrap_model(m, "zero")
    assert dist.main_progress(True) and not dist.main_progress(False)
    seen = []
    assert dist.rank0_only(seen.append)("x") is None and seen == ["x"] and dist.rank0_only(None) is None


def test_rank0_only_is_silent_on_other_ranks(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = []
    dist.rank0_only(seen.append)("x")
    assert seen == [] and not dist.is_main() and not dist.main_progress(True)


def test_bad_backend_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("EDGEKD_DIST_BACKEND", "mpi")
    with pytest.raises(EdgekdValueError, match="backend must be 'gloo' or 'nccl'"):
        dist.dist_context()


def test_collectives_in_a_two_process_group(tmp_path):
    r = torchrun([WORKER, "collectives", json.dumps({"out": str(tmp_path)})])
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [(x["rank"], x["world"], x["backend"], x["main"]) for x in ranks] == [(0, 2, "gloo", True),
                                                                              (1, 2, "gloo", False)]
    assert ranks[0]["shard"] == [0, 2, 4, 6, 8] and ranks[1]["shard"] == [1, 3, 5, 7, 9]
    assert ranks[0]["split"] == [0, 1, 2] and ranks[1]["split"] == [3, 4]
    for x in ranks:
        assert x["sum"] == [3.0, 1.0] and x["max"] == [1.0, 0.0]
        # rank 0's object, as JSON (no pickle; numpy and torch values as plain numbers and lists)
        assert x["json"] == {"from": 0, "x": [1.5, "é"], "np": 0.5, "t": [0, 1]}
