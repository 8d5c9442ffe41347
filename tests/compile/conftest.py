"""Fixtures for the compile / runtime / bench tests: a tiny word tokenizer, a tiny student saved
in the student's on-disk format, and compiled bundles (built once per session)."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from factories import (LABEL_NAMES, LABELS, TEXTS, make_tiny_teacher, make_word_tokenizer,  # noqa: F401
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
