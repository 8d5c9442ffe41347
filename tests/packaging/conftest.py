"""Fixtures for the packaging tests: the two wheels built from this checkout, fresh virtual
environments, and a real (tiny) student bundle made by the compile step."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# compile_helpers (the compile tests' tiny models): tests/compile/, or tests/ where it may move
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "compile")]
sys.path.insert(0, str(REPO / "packaging" / "runtime"))  # runtime_layout: the runtime's file list


def run(cmd, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run a command; on failure the assertion shows its output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of this checkout leaks in
    env.update(kw.pop("env", {}))
    t0 = time.perf_counter()
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env, **kw)
    r.seconds = time.perf_counter() - t0
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def build(project: pathlib.Path, out: pathlib.Path, env: dict | None = None) -> dict[str, pathlib.Path]:
    """``python -m build --no-isolation`` (sdist, then the wheel from the sdist) with this
    interpreter's setuptools/torch; returns {"sdist": ..., "wheel": ...}."""
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, project], env=env or {})
    return {"sdist": next(out.glob("*.tar.gz")), "wheel": next(out.glob("*.whl"))}


def make_venv(path: pathlib.Path) -> pathlib.Path:
    """A fresh virtual environment from the base interpreter (none of this one's packages)."""
    base = getattr(sys, "_base_executable", sys.executable)
    run([base, "-m", "venv", path])
    return path / "bin" / "python"


@pytest.fixture(scope="session")
def runtime_dist(tmp_path_factory) -> dict[str, pathlib.Path]:
    return build(REPO / "packaging" / "runtime", tmp_path_factory.mktemp("runtime-dist"))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> pathlib.Path:
    """A BiLSTM student compiled by edgekd.compile (x86_64 and arm64 variants, fp32 and int8, with
    their ORT-format copies)."""
    from tokenizers import Tokenizer

    from compile_helpers import LABELS, TEXTS, make_word_tokenizer, save_random_student
    from edgekd.compile import compile_student

    tmp = tmp_path_factory.mktemp("pkg-bundle")
    tok = make_word_tokenizer(TEXTS, tmp / "tokenizer.json")
    student = save_random_student(tmp / "student", Tokenizer.from_file(str(tok)).get_vocab_size() + 3)
    (student / "tokenizer.json").write_bytes(tok.read_bytes())
    return compile_student(student, tmp / "bundle", eval_texts=TEXTS, eval_labels=LABELS, max_length=16,
                           arm64_check=False, progress=False, ort_format=True)
