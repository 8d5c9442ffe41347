"""The sparse teacher cache under torchrun (2 processes, gloo, 1 thread each): the ranks share the
chunks out (each teacher batch runs once) and the files are those of a single process."""
import json
import pathlib

import torch

from dist_worker import sparse_cache
from factories import torchrun

WORKER = str(pathlib.Path(__file__).resolve().parents[1] / "dist_worker.py")


def test_two_ranks_build_the_single_process_cache(tmp_path):
    torch.set_num_threads(1)
    one = sparse_cache(None, {"cache": str(tmp_path / "one")})
    r = torchrun([WORKER, "sparse_cache", json.dumps({"out": str(tmp_path / "res"), "cache": str(tmp_path / "two")})])
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / "res" / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert all(x["key"] == one["key"] and x["n"] == one["n"] == 5 for x in ranks)
    assert sorted(x["calls"] for x in ranks) == [2, 3] and one["calls"] == 5  # 5 chunks of one batch, shared out
    want = sorted((tmp_path / "one" / one["key"]).iterdir())
    got = sorted((tmp_path / "two" / one["key"]).iterdir())
    assert [p.name for p in got] == [p.name for p in want]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(got, want))  # chunks and meta.json, byte for byte
