"""The BiLSTM student trainer under torchrun (2 processes, gloo, 1 thread each): DDP with the batch
split over the ranks gives the single-process epochs (float64), for the DiXtill ``code`` variant
(whose ``1 - exp(-KL)`` is not a sum over texts) and for KL; rank 0 alone writes the log."""
import json
import pathlib

import pytest
import torch

from dist_worker import student_problem
from factories import torchrun
from numerics import assert_close_f64

from edgekd.distill.trainer import train_student

WORKER = str(pathlib.Path(__file__).resolve().parents[1] / "dist_worker.py")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    d = tmp_path_factory.mktemp("student_ddp")
    r = torchrun([WORKER, "student", json.dumps({"out": str(d)})])
    assert r.returncode == 0, r.stderr[-3000:]
    return d, [json.loads((d / f"rank{k}.json").read_text()) for k in (0, 1)]


@pytest.mark.parametrize("method,variant", [("dixtill", "code"), ("kl", "paper")])
def test_two_ranks_train_the_single_process_student(two_ranks, tmp_path, method, variant):
    d, ranks = two_ranks
    torch.set_num_threads(1)
    student, train, valid, cfg = student_problem(method, variant)
    res = train_student(student, train, valid, cfg, tmp_path, progress=False, log=None)
    assert ranks[0][method]["weights"] == ranks[1][method]["weights"]
    got = ranks[0][method]
    assert got["best_epoch"] == res.best_epoch and len(got["history"]) == len(res.history) == 3
    for key in ("train_loss", "train_ce", "train_kl", "valid_loss", "valid_macro_f1"):
        # the history rounds to 6 decimals: compare at that resolution
        assert [h[key] for h in got["history"]] == pytest.approx([h[key] for h in res.history], abs=2e-6), key
    for k, w in student.state_dict().items():
        assert_close_f64(torch.tensor(got["weights"][k], dtype=torch.float64), w, n=10_000, name=k)
    log = (d / f"{method}-{variant}" / "log.jsonl").read_text().splitlines()
    assert len(log) == 3  # one line per epoch: rank 0 alone wrote it
    assert (d / f"{method}-{variant}" / "best" / "model.safetensors").is_file()
