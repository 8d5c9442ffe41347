"""train_causal_lm under torchrun (2 processes, gloo, 1 thread each): DDP and FSDP2 take the steps
of a single process (float64 tiny llama, token-normalised KD over the whole step, a padded row)."""
import json
import pathlib

import pytest
import torch

from dist_worker import llm_problem
from factories import torchrun
from numerics import assert_close_f64

from edgekd.errors import EdgekdValueError
from edgekd.llm.trainer import LLMTrainConfig, train_causal_lm

WORKER = str(pathlib.Path(__file__).resolve().parents[1] / "dist_worker.py")


def test_ddp_and_fsdp_take_the_single_process_steps(tmp_path):
    r = torchrun([WORKER, "llm", json.dumps({"out": str(tmp_path)})])
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((tmp_path / "rank0.json").read_text())
    torch.set_num_threads(1)
    student, teacher, data, cfg = llm_problem()
    res = train_causal_lm(student, data, teacher=teacher, config=cfg, progress=False)
    sd = student.state_dict()
    for parallel in ("ddp", "fsdp"):
        g = got[parallel]
        assert g["tokens"] == res.tokens_trained
        f64 = torch.float64
        assert_close_f64(torch.tensor(g["losses"], dtype=f64), torch.tensor(res.loop.losses, dtype=f64), n=10_000,
                         name=f"{parallel} losses")
        assert g["weights"]
        for k, w in g["weights"].items():
            assert_close_f64(torch.tensor(w, dtype=torch.float64), sd[k], n=10_000, name=f"{parallel} {k}")


def test_parallel_setting_is_checked():
    with pytest.raises(EdgekdValueError, match="parallel must be one of"):
        LLMTrainConfig(parallel="zero3").validate()
