"""Data files shared by the prune CLI and API tests."""
from __future__ import annotations

import csv
import json

import pytest

from factories import CLI_LABEL_NAMES, CLI_LABELS, CLI_TEXTS


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """train.csv (text,label; integer labels), dev.jsonl (sentence,sentiment; label names) and a
    header-only CSV, over the dozen CLI_TEXTS."""
    d = tmp_path_factory.mktemp("data")
    with open(d / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(CLI_TEXTS, CLI_LABELS))
    with open(d / "dev.jsonl", "w") as f:  # other column names, string labels
        for t, y in zip(CLI_TEXTS, CLI_LABELS):
            f.write(json.dumps({"sentence": t, "sentiment": CLI_LABEL_NAMES[y]}) + "\n")
    (d / "header_only.csv").write_text("text,label\n")
    return d
