import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from edgekd.cli import main
from edgekd.llm.models import save_causal_lm


@pytest.fixture
def files(tmp_path, model, tokenizer):
    save_causal_lm(model, tmp_path / "teacher", tokenizer)
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(f"w{int(i)}" for i in torch.randint(0, 44, (9,), generator=g)) for _ in range(30)]
    (tmp_path / "train.txt").write_text("\n".join(lines[:24]) + "\n")
    (tmp_path / "valid.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[24:]))
    return tmp_path


def test_prune_then_distill(files, capsys):
    t = files
    assert main(["llm", "prune", "--model", str(t / "teacher"), "--calib", str(t / "train.txt"), "--keep-layers", "2",
                 "--kv-heads", "1", "--intermediate-size", "20", "--max-length", "8", "--out", str(t / "s")]) == 0
    assert "kept layers" in capsys.readouterr().out
    s = AutoModelForCausalLM.from_pretrained(str(t / "s"))
    c = s.config
    assert (c.num_hidden_layers, c.num_key_value_heads, c.num_attention_heads, c.intermediate_size) == (2, 1, 2, 20)
    for loss in ("ce", "forward_kl"):
        out = t / f"d_{loss}"
        args = ["llm", "distill", "--student", str(t / "s"), "--train", str(t / "train.txt"),
                "--valid", str(t / "valid.jsonl"), "--loss", loss, "--max-length", "8", "--max-steps", "3",
                "--lr", "1e-3", "--out", str(out)]
        if loss != "ce":
            args += ["--teacher", str(t / "teacher")]
        assert main(args) == 0
        assert "held-out perplexity" in capsys.readouterr().out
        assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
        assert AutoModelForCausalLM.from_pretrained(str(out)).config.num_hidden_layers == 2


def test_user_errors_exit_2(files, capsys):
    t = files
    assert main(["llm", "prune", "--model", str(t / "teacher"), "--calib", str(t / "train.txt"), "--keep-layers", "9",
                 "--max-length", "8", "--out", str(t / "s")]) == 2
    assert "keep must be an int in [1, 4]" in capsys.readouterr().err
    assert main(["llm", "prune", "--model", str(t / "nope"), "--calib", str(t / "train.txt"), "--keep-layers", "2",
                 "--out", str(t / "s")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["llm", "distill", "--student", str(t / "teacher"), "--train", str(t / "train.txt"),
                 "--out", str(t / "d")]) == 2
    assert "--teacher is required" in capsys.readouterr().err
    assert main(["llm", "distill", "--student", str(t / "teacher"), "--train", str(t / "valid.jsonl"),
                 "--text-column", "body", "--loss", "ce", "--out", str(t / "d")]) == 2
    assert "valid.jsonl: line 1: no 'body' field" in capsys.readouterr().err
    (t / "blank.txt").write_text("\n  \n")
    assert main(["llm", "distill", "--student", str(t / "teacher"), "--train", str(t / "blank.txt"),
                 "--loss", "ce", "--out", str(t / "d")]) == 2
    assert "blank.txt: holds no texts" in capsys.readouterr().err


def test_distill_on_policy_and_fused_flags(files, capsys, monkeypatch):
    t = files
    args = ["llm", "distill", "--student", str(t / "teacher"), "--teacher", str(t / "teacher"),
            "--train", str(t / "train.txt"), "--loss", "jsd", "--beta", "0.3", "--on-policy-lambda", "1",
            "--max-new-tokens", "3", "--sampling-temperature", "0.7", "--fused", "--max-length", "8",
            "--max-steps", "2"]
    # a real run with every new flag
    assert main(args + ["--out", str(t / "d_gkd")]) == 0
    assert "2 steps" in capsys.readouterr().out
    assert (t / "d_gkd" / "model.safetensors").is_file()
    # the flags reach the trainer's config
    import edgekd.llm.trainer as trainer

    seen = {}

    def fake_train(student, data, *, config, **kw):
        seen["config"] = config
        raise KeyboardInterrupt  # stop before training; main() answers 130

    monkeypatch.setattr(trainer, "train_causal_lm", fake_train)
    assert main(args + ["--out", str(t / "d_seen")]) == 130
    c = seen["config"]
    assert (c.loss, c.beta, c.on_policy_lambda, c.max_new_tokens, c.sampling_temperature, c.fused) == (
        "jsd", 0.3, 1.0, 3, 0.7, True)
    monkeypatch.undo()
    capsys.readouterr()
    # bad settings: one line, exit 2
    assert main(args + ["--on-policy-lambda", "1.5", "--out", str(t / "bad")]) == 2
    assert "on_policy_lambda" in capsys.readouterr().err
    assert main(["llm", "distill", "--student", str(t / "teacher"), "--train", str(t / "train.txt"), "--loss", "ce",
                 "--fused", "--out", str(t / "bad2")]) == 2
    assert "fused=True" in capsys.readouterr().err
