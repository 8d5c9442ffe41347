"""Fixtures for the packaging tests: the runtime distribution built from this checkout and a
real (tiny) student bundle made by the compile step."""
from __future__ import annotations

import pathlib

import pytest

from packaging_helpers import REPO, build


@pytest.fixture(scope="session")
def runtime_dist(tmp_path_factory) -> dict[str, pathlib.Path]:
    return build(REPO / "packaging" / "runtime", tmp_path_factory.mktemp("runtime-dist"))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, student_dir) -> pathlib.Path:
    """The tiny student of tests/conftest.py compiled by edgekd.compile (x86_64 and arm64
    variants, fp32 and int8, with their ORT-format copies)."""
    from factories import LABELS, TEXTS
    from edgekd.compile import compile_student

    return compile_student(student_dir, tmp_path_factory.mktemp("pkg-bundle") / "bundle", eval_texts=TEXTS,
                           eval_labels=LABELS, max_length=16, arm64_check=False, progress=False, ort_format=True)
