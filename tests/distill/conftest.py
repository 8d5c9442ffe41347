"""Fixtures for the distillation tests: small real TFNS slices and a tiny random BERT teacher."""
from __future__ import annotations

import os

import pytest

from factories import make_tiny_bert

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TFNS_TRAIN_SHA = "184e6322b7f0e84c3103a83d198f1be8203de8b63a857f67a2964321b71c4e8d"


@pytest.fixture(scope="session")
def tfns_dir(shared_data):
    d = shared_data / "tfns"
    if not (d / "sent_train.csv").exists():
        pytest.skip("TFNS not in shared data")
    return d


@pytest.fixture(scope="session")
def tfns_small(tfns_dir):
    """(train, valid): 600 / 200 stratified real TFNS tweets."""
    from edgekd.data import load_tfns

    tr = load_tfns("train", root=tfns_dir).stratified_sample(600, seed=1)
    va = load_tfns("validation", root=tfns_dir).stratified_sample(200, seed=1)
    return tr, va


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tfns_small):
    tr, _ = tfns_small
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tr.texts)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These tests use tiny models: one thread is faster (and far faster on a shared machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
