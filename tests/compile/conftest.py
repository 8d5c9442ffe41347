"""Fixtures for the compile / runtime / bench tests: a tiny word tokenizer, a tiny student saved
in the student's on-disk format, and compiled bundles (built once per session)."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from compile_helpers import LABEL_NAMES, LABELS, TEXTS, make_word_tokenizer, save_random_student  # noqa: E402,F401

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



def make_tiny_teacher(d: pathlib.Path) -> pathlib.Path:
    """A 2-layer, 32-wide random BERT classifier with a WordPiece tokenizer.json over TEXTS."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification

    d.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in TEXTS for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(t.lower())})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + ["##s", "##ing"])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(d / "tokenizer.json"))
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=3,
                     id2label=dict(enumerate(LABEL_NAMES)), label2id={n: i for i, n in enumerate(LABEL_NAMES)})
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def teacher_bundle(tmp_path_factory) -> pathlib.Path:
    from edgekd.compile import compile_teacher

    src = make_tiny_teacher(tmp_path_factory.mktemp("teacher") / "teacher")
    return compile_teacher(src, tmp_path_factory.mktemp("bundles") / "teacher", eval_texts=TEXTS, eval_labels=LABELS,
                           max_length=24, arm64_check=False, progress=False)
