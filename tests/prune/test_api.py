"""The prune Python API (edgekd.prune.train_token_pruned / prune_heads_by_importance) and the CLI
flags over it, on tiny random BERTs and a dozen rows."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch
from safetensors.torch import load_file

from edgekd.cli import main
from edgekd.data import TextDataset
from edgekd.errors import EdgekdValueError
from edgekd.prune import (
    PruneResult,
    load_head_pruned_model,
    load_pruned_model,
    prune_heads_by_importance,
    remaining_heads,
    train_token_pruned,
)
from edgekd.training import LoopConfig
from factories import CLI_LABEL_NAMES, CLI_LABELS, CLI_TEXTS, save_tiny_model_dir, tiny_classifier

FAST = ["--num-samples", "8", "--batch-size", "4", "--max-length", "16", "--no-progress"]


@pytest.fixture(scope="module")
def train_data():
    return TextDataset(list(CLI_TEXTS), list(CLI_LABELS), list(CLI_LABEL_NAMES), source="rows")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return save_tiny_model_dir(tmp_path_factory.mktemp("clf") / "model", label_names=CLI_LABEL_NAMES)


@pytest.fixture(scope="module")
def train_csv(data):
    return data / "train.csv"


def _weights(d):
    return {**load_file(str(d / "model.safetensors")), **load_file(str(d / "token_pruner.safetensors"))}


def test_the_cli_is_the_api(classifier_dir, train_csv, train_data, tmp_path):
    """`edgekd prune tokens` and train_token_pruned with the same settings train the same weights."""
    assert main(["prune", "tokens", "--model", str(classifier_dir), "--layer", "2", "--keep", "0.5", "--train",
                 str(train_csv), "--valid", str(train_csv), "--epochs", "2", "--lr", "1e-3", "--scorer-lr", "2e-3",
                 "--seed", "3", "--out", str(tmp_path / "cli"), *FAST]) == 0
    res = train_token_pruned(classifier_dir, train_data, train_data, layer=2, keep_ratio=0.5, num_samples=8,
                             training=LoopConfig(epochs=2, lr=1e-3, batch_size=4, seed=3), scorer_lr=2e-3,
                             max_length=16, out=tmp_path / "api", progress=False)
    assert isinstance(res, PruneResult) and not res.model.training and res.model.progress == 1.0
    cli, api = _weights(tmp_path / "cli"), _weights(tmp_path / "api")
    assert cli.keys() == api.keys()
    for k in cli:
        assert torch.equal(cli[k], api[k]), k
    m_cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    m_api = json.loads((tmp_path / "api" / "metrics.json").read_text())
    assert m_cli["command"] == "edgekd prune tokens" and "command" not in m_api
    assert m_cli["train"]["final_loss"] == m_api["train"]["final_loss"] == res.loop.final_loss
    assert m_cli["train"]["steps"] == res.loop.steps == 6 and m_api["train"]["data"] == "rows"
    assert {k: v for k, v in m_cli["valid"].items() if k != "data"} == {
        k: v for k, v in m_api["valid"].items() if k != "data"}
    assert m_api == {**res.metrics, "out": str(tmp_path / "api")}


def test_train_token_pruned_on_a_module_with_dev_selection_and_resume(train_data, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(save_tiny_model_dir(tmp_path / "m")))
    model = tiny_classifier(vocab_size=len(tok), max_position_embeddings=64)
    loop = LoopConfig(max_steps=6, lr=1e-3, batch_size=4, eval_every=2, metric="accuracy")
    res = train_token_pruned(model, train_data, train_data, tokenizer=tok, layer=1, keep_ratio=0.6, num_samples=4,
                             sigma=0.5, training=loop, max_length=16, noise_seed=1, progress=False,
                             checkpoint_dir=tmp_path / "ckpt")
    assert res.model.model is model and [h["step"] for h in res.loop.history] == [2, 4, 6]
    assert res.metrics["train"]["best"] == res.loop.best
    assert res.metrics["valid"]["accuracy"] == res.loop.best["accuracy"]  # the best dev step's weights
    # the finished checkpoint resumes to the same model (noise generator included in the checkpoint)
    again = train_token_pruned(tiny_classifier(seed=5, vocab_size=len(tok), max_position_embeddings=64),
                               train_data, train_data, tokenizer=tok, layer=1, keep_ratio=0.6, num_samples=4,
                               sigma=0.5, training=loop, max_length=16, noise_seed=1, progress=False,
                               checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert again.loop.resumed_from == 6
    for (k, a), b in zip(res.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_train_token_pruned_errors(classifier_dir, train_data, tmp_path):
    kw = dict(layer=1, keep_ratio=0.5, max_length=16, progress=False)
    cases = [
        (dict(model=tmp_path / "nowhere"), "model: .* is not a directory"),
        (dict(layer=4), "layer: 4 is out of range .* 4 encoder layers"),
        (dict(max_length=2), "max_length: 2 is below the pruned model's minimum sequence length 3"),
        (dict(max_length=100), "max_length: 100 exceeds the model's max_position_embeddings 64"),
        (dict(train=TextDataset(["a b"], [0], ["x", "y"])), r"train: the data has 2 classes"),
        (dict(train=TextDataset(CLI_TEXTS, CLI_LABELS, ["a", "b", "c"])), "differ from the classifier's labels"),
        (dict(train=[("a", 0)]), "train: expected an edgekd.data.TextDataset"),
        (dict(model=tiny_classifier()), "tokenizer: give the model's tokenizer"),
        (dict(model=tiny_classifier(num_labels=2), tokenizer=object()), "the classifier in the model has 2 labels"),
        (dict(model=tiny_classifier(), tokenizer=object(), max_length=100), "max_length: 100 exceeds"),
        (dict(model=tiny_classifier(), tokenizer=object(), layer=4), "layer: 4 is out of range for the model"),
        (dict(model=torch.nn.Linear(2, 2)), "model: token-pruning training needs a BertForSequenceClassification"),
        (dict(keep_ratio=None), "give exactly one of keep_ratio and k"),
        (dict(training={"epoch": 1}), "unknown training settings"),
        (dict(training=LoopConfig(grad_accum=0)), "LoopConfig.grad_accum must be an int >= 1"),
        (dict(scorer_lr=-1.0), "scorer_lr: expected a positive number"),
    ]
    for change, message in cases:
        args = {"model": classifier_dir, "train": train_data, **kw, **change}
        with pytest.raises(EdgekdValueError, match=message):
            train_token_pruned(args.pop("model"), args.pop("train"), **args)
    assert not list(tmp_path.iterdir())


def test_prune_heads_by_importance(classifier_dir, train_data, tmp_path):
    res = prune_heads_by_importance(classifier_dir, train_data, fraction=0.25, batch_size=4, max_length=16,
                                    out=tmp_path / "ahp", progress=False)
    assert res.metrics["num_heads"] == 4 and sum(len(v) for v in res.metrics["removed_heads"].values()) == 4
    assert sum(len(h) for h in remaining_heads(load_head_pruned_model(tmp_path / "ahp"))) == 12
    m = json.loads((tmp_path / "ahp" / "metrics.json").read_text())
    assert m["parameters"]["after"] < m["parameters"]["before"] and m["dev"]["before"]["n"] == 12
    # a model in memory is pruned in place; the same importance ranks the same heads
    model = load_head_pruned_model(classifier_dir)
    tok = res.tokenizer
    again = prune_heads_by_importance(model, train_data, tokenizer=tok, num_heads=4, batch_size=4, max_length=16,
                                      progress=False)
    assert again.model is model and again.metrics["removed_heads"] == res.metrics["removed_heads"]
    for change, message in [
        (dict(num_heads=None), "give exactly one of num_heads and fraction"),
        (dict(fraction=0.5), "give exactly one of num_heads and fraction"),
        (dict(num_heads=13), "num_heads: 13 exceeds the 12 heads"),
        (dict(num_heads=0), "num_heads: expected an int >= 1"),
        (dict(num_heads=None, fraction=1.0), r"fraction: expected a number in \(0, 1\)"),
        (dict(dev=TextDataset(["a"], [0], ["x", "y"])), "dev: the data has 2 classes"),
        (dict(model=tmp_path / "ahp" / "metrics.json"), "model: .* is not a directory"),
    ]:
        args = {"model": classifier_dir, "dev": train_data, "num_heads": 2, "progress": False, **change}
        with pytest.raises(EdgekdValueError, match=message):
            prune_heads_by_importance(args.pop("model"), args.pop("dev"), **args)


def test_limit_takes_the_first_rows_and_sample_a_stratified_one(classifier_dir, train_csv, tmp_path, capsys):
    base = ["prune", "tokens", "--model", str(classifier_dir), "--layer", "1", "--keep", "0.5", "--train",
            str(train_csv), "--epochs", "1", *FAST]
    assert main(base + ["--limit", "5", "--out", str(tmp_path / "lim")]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == ("edgekd: note: prune tokens --limit now takes the FIRST N rows; "
                                   "--sample N takes the class-stratified sample it took before")
    assert err.count("edgekd: note") == 1 and "warning" not in err
    assert json.loads((tmp_path / "lim" / "metrics.json").read_text())["train"]["examples"] == 5
    assert main(base + ["--sample", "6", "--valid", str(train_csv), "--valid-sample", "9",
                        "--out", str(tmp_path / "smp")]) == 0
    assert "note" not in capsys.readouterr().err
    m = json.loads((tmp_path / "smp" / "metrics.json").read_text())
    assert m["train"]["examples"] == 6 and m["valid"]["n"] == 9
    # the old stratified --valid-limit is a deprecated spelling of --valid-sample
    assert main(base + ["--valid", str(train_csv), "--valid-limit", "9", "--out", str(tmp_path / "vl")]) == 0
    assert capsys.readouterr().err.count("edgekd: warning: --valid-limit is deprecated, use --valid-sample") == 1
    assert json.loads((tmp_path / "vl" / "metrics.json").read_text())["valid"]["n"] == 9
    # which rows: the first 5 (steps see them); the sample keeps the class shares of the file
    from edgekd.data import load_dataset

    full = load_dataset(str(train_csv))
    assert full.head(5).texts == CLI_TEXTS[:5]
    assert sorted(full.stratified_sample(6, seed=0).class_counts().values()) == [1, 2, 3]


def test_old_spellings_still_work_with_one_deprecation_line(classifier_dir, train_csv, tmp_path, capsys):
    assert main(["prune", "heads", "--model", str(classifier_dir), "--num-heads", "2", "--dev", str(train_csv),
                 "--batch", "4", "--max-len", "16", "--text-col", "text", "--label-col", "label", "--no-progress",
                 "--out", str(tmp_path / "o")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert err == [f"edgekd: warning: {old} is deprecated, use {new}" for old, new in
                   (("--batch", "--batch-size"), ("--max-len", "--max-length"), ("--text-col", "--text-column"),
                    ("--label-col", "--label-column"))]


def test_prune_tokens_eval_every_and_checkpoints(classifier_dir, train_csv, tmp_path, capsys):
    assert main(["prune", "tokens", "--model", str(classifier_dir), "--layer", "1", "--keep", "0.5", "--train",
                 str(train_csv), "--valid", str(train_csv), "--epochs", "2", "--eval-every", "epoch",
                 "--grad-accum", "2", "--checkpoint-dir", str(tmp_path / "ck"), "--out", str(tmp_path / "o"),
                 *FAST]) == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["train"]["steps"] == 4 and m["train"]["grad_accum"] == 2  # 12 rows / (4 x 2) -> 2 steps an epoch
    assert [h["step"] for h in m["train"]["dev_history"]] == [2, 4]
    assert (tmp_path / "ck" / "last" / "loop_state.json").is_file()
    assert load_pruned_model(tmp_path / "o").pruning_config.layer == 1
    for extra, message in ((["--eval-every", "x"], "expected a number of steps or 'epoch'"),
                           (["--resume"], "--resume: needs --checkpoint-dir"),
                           (["--patience", "2"], "--patience: needs --eval-every")):
        with pytest.raises(SystemExit) if extra[0] == "--eval-every" else contextlib.nullcontext():
            rc = main(["prune", "tokens", "--model", str(classifier_dir), "--layer", "1", "--keep", "0.5", "--train",
                       str(train_csv), "--out", str(tmp_path / "x"), *FAST, *extra])
            assert rc == 2
        assert message in capsys.readouterr().err

