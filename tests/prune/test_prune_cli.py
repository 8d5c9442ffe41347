"""``edgekd prune tokens`` / ``edgekd prune heads`` run in-process on tiny random BERTs and a dozen rows."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from edgekd.cli import build_parser, main
from factories import CLI_LABEL_NAMES, save_tiny_model_dir

FAST = ["--num-samples", "8", "--batch-size", "4", "--max-length", "16", "--no-progress"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return save_tiny_model_dir(tmp_path_factory.mktemp("clf") / "model", label_names=CLI_LABEL_NAMES)


@pytest.fixture(scope="module")
def pruned_out(tmp_path_factory, classifier_dir, data):
    out = tmp_path_factory.mktemp("out") / "pruned"
    rc = main(["prune", "tokens", "--model", str(classifier_dir), "--layer", "2", "--keep", "0.5", "--train",
               str(data / "train.csv"), "--valid", str(data / "train.csv"), "--epochs", "1", "--lr", "1e-3",
               "--sigma", "0.3", "--out", str(out), *FAST])
    assert rc == 0
    return out


def test_prune_tokens_saves_a_reloadable_pruned_model(pruned_out, capsys):
    from edgekd.prune import load_pruned_model

    names = {p.name for p in pruned_out.iterdir()}
    assert {"config.json", "model.safetensors", "token_pruner.safetensors", "token_pruning.json", "tokenizer.json",
            "metrics.json"} <= names
    m = json.loads((pruned_out / "metrics.json").read_text())
    assert m["pruning"]["layer"] == 2 and m["pruning"]["keep_ratio"] == 0.5 and m["pruning"]["num_samples"] == 8
    assert m["train"]["steps"] == 3 and m["train"]["examples"] == 12 and m["min_seq_len"] == 3
    v = m["valid"]
    assert v["n"] == 12 and 0 <= v["accuracy"] <= 1 and 0 <= v["macro_f1"] <= 1 and 0 < v["kept_token_fraction"] < 1
    model = load_pruned_model(pruned_out)
    assert model.pruning_config.sigma == 0.3 and model.config.id2label[0] == "bearish"
    out = model(input_ids=torch.tensor([[2, 10, 11, 12, 13, 3]]))
    assert out.logits.shape == (1, 3) and out.last_hidden_state.shape[1] == 3  # ceil(0.5 * 6)


def test_prune_tokens_follows_the_sigma_schedule(classifier_dir, data, tmp_path, monkeypatch):
    """set_progress(step / total) is called every step (sigma decays linearly), then 1.0 at the end."""
    from edgekd.prune.tokens import TokenPrunedModel

    seen: list[float] = []
    orig = TokenPrunedModel.set_progress

    def spy(self, progress):
        seen.append(progress)
        orig(self, progress)

    monkeypatch.setattr(TokenPrunedModel, "set_progress", spy)
    rc = main(["prune", "tokens", "--model", str(classifier_dir), "--layer", "1", "--keep", "0.6", "--scorer", "mlp",
               "--estimator", "diagonal", "--train", str(data / "train.csv"), "--epochs", "2", "--limit", "8",
               "--out", str(tmp_path / "o"), *FAST])
    assert rc == 0
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0]  # 8 rows / batch 4 = 2 steps per epoch, 2 epochs
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["valid"] is None and m["pruning"]["scorer"] == "mlp" and m["pruning"]["estimator"] == "diagonal"


def test_prune_tokens_from_an_encoder_takes_the_labels_of_the_data(tmp_path, data):
    """A pretrained encoder dir (BertModel) gets a new head with the data's classes (JSONL, named columns)."""
    from edgekd.prune import load_pruned_model

    enc = save_tiny_model_dir(tmp_path / "enc", classifier=False)
    rc = main(["prune", "tokens", "--model", str(enc), "--layer", "1", "--keep", "0.5", "--train",
               str(data / "dev.jsonl"), "--text-column", "sentence", "--label-column", "sentiment", "--epochs", "1",
               "--out", str(tmp_path / "o"), *FAST])
    assert rc == 0
    model = load_pruned_model(tmp_path / "o")
    assert model.architecture == "BertForSequenceClassification"
    assert [model.config.id2label[i] for i in range(3)] == sorted(CLI_LABEL_NAMES)
    # integer labels get their names from --label-names
    rc = main(["prune", "tokens", "--model", str(enc), "--layer", "1", "--keep", "0.5", "--train",
               str(data / "train.csv"), "--label-names", "down,up,flat", "--epochs", "1", "--limit", "4",
               "--out", str(tmp_path / "o2"), *FAST])
    assert rc == 0
    assert load_pruned_model(tmp_path / "o2").config.id2label == {0: "down", 1: "up", 2: "flat"}


def test_pruned_model_from_the_cli_compiles_to_a_bundle(pruned_out, data, tmp_path):
    from edgekd.runtime import Bundle

    bundle = tmp_path / "bundle"
    assert main(["compile", str(pruned_out), str(bundle), "--eval-data", str(data / "train.csv"), "--max-length", "16",
                 "--targets", "x86_64", "--precisions", "fp32", "--no-arm64-check", "--no-zip"]) == 0
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["model_kind"] == "token_pruned_bert" and m["preprocessing"]["min_length"] == 3
    assert m["variants"][0]["parity"]["max_abs_logit_diff"] <= 1e-4
    assert Bundle.load(bundle).predict(["oil prices slump", ""]).probabilities.shape == (2, 3)
    # the explicit kind works too
    assert main(["compile", "token_pruned_bert", str(pruned_out), str(tmp_path / "b2"), "--eval-data",
                 str(data / "train.csv"), "--max-length", "16", "--targets", "x86_64", "--precisions", "fp32",
                 "--no-arm64-check", "--no-zip"]) == 0


def test_prune_heads_saves_the_smaller_model(classifier_dir, data, tmp_path):
    from edgekd.prune import load_head_pruned_model, remaining_heads

    out = tmp_path / "ahp"
    rc = main(["prune", "heads", "--model", str(classifier_dir), "--num-heads", "5", "--dev", str(data / "dev.jsonl"),
               "--text-column", "sentence", "--label-column", "sentiment", "--out", str(out), "--batch-size", "4",
               "--max-length", "16", "--no-progress"])
    assert rc == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.json"} <= {p.name for p in out.iterdir()}
    m = json.loads((out / "metrics.json").read_text())
    assert sum(len(v) for v in m["removed_heads"].values()) == 5
    assert m["parameters"]["after"] < m["parameters"]["before"]
    assert len(m["importance"]) == 4 and m["dev"]["before"]["n"] == 12
    smaller = load_head_pruned_model(out)
    assert sum(len(h) for h in remaining_heads(smaller)) == 16 - 5
    assert smaller(input_ids=torch.tensor([[2, 10, 11, 3]])).logits.shape == (1, 3)
    # AHP on top of AHP: the already pruned model loads and loses 3 more heads
    assert main(["prune", "heads", "--model", str(out), "--num-heads", "3", "--dev", str(data / "train.csv"),
                 "--out", str(tmp_path / "ahp2"), "--no-progress"]) == 0
    assert sum(len(h) for h in remaining_heads(load_head_pruned_model(tmp_path / "ahp2"))) == 16 - 8


@pytest.mark.parametrize("extra, message", [
    (["--keep", "0"], "--keep: expected a fraction in (0, 1]"),
    (["--keep", "1.5"], "--keep: expected a fraction in (0, 1]"),
    (["--keep", "nan"], "--keep"),
    (["--layer", "4"], "--layer: 4 is out of range"),
    (["--layer", "-1"], "--layer"),
    (["--epochs", "0"], "--epochs"),
    (["--max-length", "2"], "--max-length: 2 is below the pruned model's minimum sequence length 3"),
    (["--max-length", "100"], "--max-length: 100 exceeds the model's max_position_embeddings 64"),
    (["--text-column", "body"], "missing column(s) ['body']"),
    (["--train", "{data}/header_only.csv"], "no rows"),
    (["--train", "{data}/missing.csv"], "does not exist"),
    (["--model", "{tmp}/nowhere"], "--model: {tmp}/nowhere is not a directory"),
    (["--model", "{tmp}"], "holds no config.json"),
    (["--label-names", "a,b,c"], "differ from the classifier's labels"),
    (["--label-names", "a,a,b"], "--label-names: expected distinct"),
])
def test_prune_tokens_errors(extra, message, classifier_dir, data, tmp_path, capsys):
    args = {"--model": str(classifier_dir), "--layer": "1", "--keep": "0.5", "--train": str(data / "train.csv"),
            "--out": str(tmp_path / "o"), "--max-length": "16"}
    for k, v in zip(extra[::2], extra[1::2]):
        args[k] = v.format(data=data, tmp=tmp_path)
    argv = ["prune", "tokens", "--no-progress", "--num-samples", "4"] + [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgekd: error:") and message.format(tmp=tmp_path) in err, err
    assert not (tmp_path / "o").exists()


def test_prune_heads_errors(classifier_dir, data, tmp_path, capsys):
    base = ["prune", "heads", "--dev", str(data / "train.csv"), "--out", str(tmp_path / "o"), "--no-progress"]
    cases = [
        (["--model", str(classifier_dir), "--num-heads", "13"], "exceeds the 12 heads"),
        (["--model", str(classifier_dir), "--num-heads", "0"], "--num-heads: expected an int >= 1"),
        (["--model", str(tmp_path / "nowhere"), "--num-heads", "1"], "is not a directory"),
        (["--model", str(classifier_dir), "--num-heads", "1", "--label-column", "y"], "missing column(s) ['y']"),
    ]
    two = save_tiny_model_dir(tmp_path / "two", num_labels=2)
    cases.append((["--model", str(two), "--num-heads", "1"], "the data has 3 classes"))
    enc = save_tiny_model_dir(tmp_path / "enc", classifier=False)
    cases.append((["--model", str(enc), "--num-heads", "1"], "needs a fine-tuned BertForSequenceClassification"))
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err, (extra, err)
    assert not (tmp_path / "o").exists()


def test_prune_cli_parses_and_stays_light():
    a = build_parser().parse_args(["prune", "tokens", "--model", "m", "--layer", "3", "--keep", "0.5", "--train", "t",
                                   "--out", "o", "--scorer", "mlp", "--estimator", "diagonal", "--batch-size", "8"])
    assert a.func.__name__ == "cmd_tokens" and a.layer == 3 and a.batch_size == 8 and a.sigma == 0.2
    a = build_parser().parse_args(["prune", "heads", "--model", "m", "--num-heads", "6", "--dev", "d", "--out", "o"])
    assert a.func.__name__ == "cmd_heads" and a.num_heads == 6
    assert main(["prune"]) == 2
    # building the command line (edgekd --help, the torch-free commands) imports neither torch nor transformers
    code = ("import sys; from edgekd.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
