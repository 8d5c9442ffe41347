"""train_loop under torchrun (2 processes, gloo, 1 thread each): DDP follows the single-process loss
curve with the same global batch (float64), and a job whose rank was killed resumes from rank 0's
checkpoint, with 2 ranks or with 1."""
import json
import pathlib
import shutil

import pytest
import torch

from dist_worker import loop_problem
from factories import torchrun
from numerics import assert_close_f64

from edgekd.training import train_loop

WORKER = str(pathlib.Path(__file__).resolve().parents[1] / "dist_worker.py")
N_ACC = 10_000  # accumulation length for the float64 tolerance: 12 Adam steps of tiny matmuls


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch.set_num_threads(1)
    model, make_batch, loss_fn, evaluate, cfg = loop_problem()
    res = train_loop(model, 22, make_batch, cfg, loss_fn=loss_fn, evaluate=evaluate, progress=False,
                     checkpoint_dir=tmp_path_factory.mktemp("ref"))
    return res, {k: v.clone() for k, v in model.state_dict().items()}


def _check(got: dict, reference) -> None:
    res, weights = reference
    f64 = torch.float64
    assert_close_f64(torch.tensor(got["losses"], dtype=f64), torch.tensor(res.losses, dtype=f64), n=N_ACC,
                     name="losses")
    assert [h["step"] for h in got["history"]] == [h["step"] for h in res.history]
    assert got["best"]["step"] == res.best["step"]
    for k, w in weights.items():
        assert_close_f64(torch.tensor(got["weights"][k], dtype=torch.float64), w, n=N_ACC, name=k)


def test_two_ranks_follow_the_single_process_loss_curve(reference, tmp_path):
    r = torchrun([WORKER, "loop", json.dumps({"out": str(tmp_path / "out"), "ckpt": str(tmp_path / "ckpt")})])
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["losses"] == ranks[1]["losses"]
    assert len(ranks[0]["losses"]) == reference[0].total_steps == 12
    for got in ranks:
        _check(got, reference)
    state = json.loads((tmp_path / "ckpt" / "last" / "loop_state.json").read_text())
    assert state["step"] == 12 and (tmp_path / "ckpt" / "best" / "model.safetensors").is_file()


def test_killed_rank_resumes_from_the_checkpoint_with_two_or_one_ranks(reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    args = {"out": str(tmp_path / "a"), "ckpt": str(ckpt), "kill_rank": 1, "kill_at": 7}
    r = torchrun([WORKER, "loop", json.dumps(args)])
    assert r.returncode != 0 and "exitcode  : 3" in r.stderr, r.stderr[-3000:]
    assert json.loads((ckpt / "last" / "loop_state.json").read_text())["step"] == 6  # save_every=2
    shutil.copytree(ckpt, tmp_path / "ckpt1")

    r = torchrun([WORKER, "loop", json.dumps({"out": str(tmp_path / "b"), "ckpt": str(ckpt), "resume": True})])
    assert r.returncode == 0, r.stderr[-3000:]
    _check(json.loads((tmp_path / "b" / "rank0.json").read_text()), reference)

    # the same checkpoint resumed by a single process: the world size is not part of it
    model, make_batch, loss_fn, evaluate, cfg = loop_problem(seed=9)
    res = train_loop(model, 22, make_batch, cfg, loss_fn=loss_fn, evaluate=evaluate, progress=False,
                     checkpoint_dir=tmp_path / "ckpt1", resume=True)
    assert res.resumed_from == 6
    _check({"losses": res.losses, "history": res.history, "best": res.best,
            "weights": {k: v.tolist() for k, v in model.state_dict().items()}}, reference)
