import os

# Triton kernels run in the interpreter on CPU tensors unless a GPU is present. The variable must
# be set before any @triton.jit function is created, so it is set here, before test modules import.
try:
    import torch

    _has_cuda = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pathlib

import pytest

from factories import make_tiny_bert

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"


# --- text data and a tiny teacher (tests/data, tests/teacher, tests/distill, tests/pipeline) ---
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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one thread (and far faster on a shared machine); a folder's
    conftest makes this autouse."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


# ------------------------------------------------------------------ compiled bundles (compile + runtime tests)
# a tiny word tokenizer, a tiny student in the student's on-disk format, a tiny BERT teacher, and
# their compiled bundles, built once per session (helpers: tests/factories.py)
from factories import (LABEL_NAMES, LABELS, TEXTS, make_tiny_teacher, make_word_tokenizer,  # noqa: E402,F401
                       save_random_student)


@pytest.fixture(scope="session")
def word_tokenizer(tmp_path_factory) -> pathlib.Path:
    return make_word_tokenizer(TEXTS, tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory, word_tokenizer) -> pathlib.Path:
    from tokenizers import Tokenizer

    V = Tokenizer.from_file(str(word_tokenizer)).get_vocab_size()
    d = save_random_student(tmp_path_factory.mktemp("student") / "student", V + 3)
    (d / "tokenizer.json").write_bytes(word_tokenizer.read_bytes())
    return d


@pytest.fixture(scope="session")
def student_bundle(tmp_path_factory, student_dir) -> pathlib.Path:
    """The tiny student compiled for both targets (no arm64 emulation here: its own test does it)."""
    from edgekd.compile import compile_student

    out = tmp_path_factory.mktemp("bundles") / "student"
    return compile_student(student_dir, out, eval_texts=TEXTS, eval_labels=LABELS, max_length=16,
                           arm64_check=False, progress=False)



@pytest.fixture(scope="session")
def teacher_bundle(tmp_path_factory) -> pathlib.Path:
    from edgekd.compile import compile_teacher

    src = make_tiny_teacher(tmp_path_factory.mktemp("teacher") / "teacher")
    return compile_teacher(src, tmp_path_factory.mktemp("bundles") / "teacher", eval_texts=TEXTS, eval_labels=LABELS,
                           max_length=24, arm64_check=False, progress=False)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> pathlib.Path:
    """A random 2-layer Llama causal LM with a byte-level BPE tokenizer and a chat template."""
    from factories import save_tiny_causal_lm

    return save_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "tiny_lm")


@pytest.fixture(scope="session")
def lm_bundle(tmp_path_factory, tiny_lm_dir) -> pathlib.Path:
    """``tiny_lm_dir`` compiled into a generative bundle (fp32 + int4, block 32; directory + zip)."""
    from factories import LM_CORPUS
    from edgekd.compile.generative import compile_causal_lm

    return compile_causal_lm(tiny_lm_dir, tmp_path_factory.mktemp("bundles") / "lm", eval_texts=LM_CORPUS[:3],
                             precisions=("fp32", "int4"), block_size=32, parity_tokens=12)


@pytest.fixture(scope="session")
def rag_lm_bundle(tmp_path_factory, lm_bundle) -> pathlib.Path:
    """``lm_bundle`` with a BM25 index of :data:`factories.LM_CORPUS` (ids p0..p5) in ``retrieval/``
    and SGP settings ``{"k": 3}`` (directory + zip). The LM is random: its answers mean nothing."""
    import json
    import shutil

    from factories import LM_CORPUS
    from edgekd.runtime.bundle import write_manifest, write_zip
    from edgekd.runtime.retrieval import BM25Index

    out = tmp_path_factory.mktemp("bundles") / "rag"
    shutil.copytree(lm_bundle, out)
    BM25Index.build([f"p{i}" for i in range(len(LM_CORPUS))], LM_CORPUS).save(out / "retrieval")
    m = json.loads((out / "manifest.json").read_text())
    m["retrieval"] = {"dir": "retrieval", "sgp": {"k": 3}}
    write_manifest(out, m)
    write_zip(out, out.with_suffix(".zip"))
    return out
