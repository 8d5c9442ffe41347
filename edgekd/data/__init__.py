"""Labelled text datasets and the student's word tokenizer.

``load_dataset`` reads (text, label) pairs from CSV/TSV, JSONL, Parquet, a local Hugging Face
``datasets`` directory (``save_to_disk`` format) or, when online, the Hugging Face hub by name.
``load_tfns`` finds Twitter Financial News Sentiment in the shared data folder (or the hub).
``WordTokenizer`` is the student's word-level tokenizer, saved as a plain ``tokenizer.json``.
"""
from edgekd.data.datasets import (
    TFNS_HUB_NAME,
    TFNS_LABEL_NAMES,
    TextDataset,
    find_tfns_dir,
    load_dataset,
    load_tfns,
)
from edgekd.data.tokenizer import PAD_ID, PAD_TOKEN, UNK_ID, UNK_TOKEN, WordTokenizer

__all__ = [
    "TextDataset",
    "load_dataset",
    "load_tfns",
    "find_tfns_dir",
    "TFNS_LABEL_NAMES",
    "TFNS_HUB_NAME",
    "WordTokenizer",
    "PAD_ID",
    "UNK_ID",
    "PAD_TOKEN",
    "UNK_TOKEN",
]
