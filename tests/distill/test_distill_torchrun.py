"""`torchrun --nproc-per-node 2 -m edgekd distill` end to end on a tiny teacher and 48 rows (2
processes, gloo, 1 thread each): teacher fine-tune (DDP), annotation (chunks shared out), students
(DDP); rank 0 alone prints and writes the results, which match a single-process run."""
import csv
import json

import pytest

from factories import CLI_LABEL_NAMES, CLI_LABELS, CLI_TEXTS, save_tiny_bert, torchrun


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill_torchrun")
    rows = [(t + s, CLI_LABEL_NAMES[y]) for s in ("", " today", " again") for t, y in zip(CLI_TEXTS, CLI_LABELS)]
    for name, part in (("train.csv", rows), ("valid.csv", rows[:12])):
        with open(d / name, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label"])
            w.writerows(part)
    # no dropout: DDP ranks draw their own dropout masks, so only a dropout-free teacher is the same model
    enc = save_tiny_bert(d / "encoder", [r[0] for r in rows], classifier=False, hf_tokenizer=True, char_fallback=True,
                         hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config = d / "tiny.toml"
    config.write_text(f"""
[data]
train = "{d / 'train.csv'}"
valid = "{d / 'valid.csv'}"
label_names = {json.dumps(CLI_LABEL_NAMES)}
dev_fraction = 0.25
[teacher]
encoder = "{enc}"
epochs = 2.0
batch_size = 8
max_length = 24
[ig]
steps = 4
chunk_size = 8
[student]
embeddings = "random"
embed_dim = 8
hidden_size = 8
max_length = 16
[train]
epochs = 2
batch_size = 8
methods = ["kl", "dixtill"]
[eval]
ig_steps = 2
baselines = false
[run]
progress = false
device = "cpu"
threads = 1
""")
    return d, config


def _run_args(d, config, name):
    return ["distill", "--config", str(config), "--out", str(d / name), f"run.cache_dir={d / name / 'cache'}"]


def test_torchrun_distill_matches_one_process(setup):
    from edgekd.cli import main

    d, config = setup
    assert main(_run_args(d, config, "one")) == 0
    r = torchrun(["-m", "edgekd", *_run_args(d, config, "two")])
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads((d / "one" / "results.json").read_text())
    two = json.loads((d / "two" / "results.json").read_text())
    assert r.stdout.count('"stage": "annotate"') == 1  # rank 0 alone logs
    assert [row["method"] for row in two["rows"]] == [row["method"] for row in one["rows"]] == ["teacher", "kl",
                                                                                                 "dixtill"]
    for a, b in zip(one["rows"], two["rows"]):
        assert b["accuracy"] == pytest.approx(a["accuracy"], abs=1 / 12 + 1e-9), a["method"]  # one text at most
    assert two["teacher"]["steps"] == one["teacher"]["steps"]
    assert two["attributed"] == one["attributed"]
