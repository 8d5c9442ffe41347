"""The command-line grammar: every verb parses, the same flags mean the same thing, old spellings
still work and warn, and `edgekd teacher finetune` / `edgekd distill` fine-tune the same teacher."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from edgekd.cli import build_parser, main


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


def test_every_command_parses(parser):
    a = parser.parse_args(["demo", "--profile", "full", "--threads", "2", "--set", "train.epochs=3", "ig.steps=4"])
    assert a.profile == "full" and a.func.__name__ == "cmd_demo" and a.overrides == ["ig.steps=4"]
    assert a.no_compile is False and parser.parse_args(["demo", "--no-compile"]).no_compile is True
    a = parser.parse_args(["distill", "--config", "c.toml", "--out", "o", "--sample", "100", "--limit", "500"])
    assert a.func.__name__ == "cmd_distill" and (a.out, a.sample, a.limit) == ("o", 100, 500)
    a = parser.parse_args(["teacher", "finetune", "--out", "x", "--sample", "10", "--limit", "20"])
    assert a.func.__name__ == "cmd_finetune" and (a.sample, a.limit) == (10, 20)
    a = parser.parse_args(["teacher", "annotate", "--teacher", "t", "--out", "c", "--ig-steps", "3", "--limit", "5"])
    assert a.func.__name__ == "cmd_annotate" and a.ig_steps == 3 and a.limit == 5
    a = parser.parse_args(["compile", "bilstm_attention", "src", "--out", "b", "--eval-data", "v.csv"])
    assert a.paths == ["bilstm_attention", "src"] and a.out == "b"
    a = parser.parse_args(["explain", "--model", "m", "--text", "t", "--out", "e.html"])
    assert a.out == "e.html"


def _finetune(parser, argv):
    from edgekd.teacher.cli import finetune_config_from_args

    return finetune_config_from_args(parser.parse_args(["teacher", "finetune", "--out", "x", *argv]))


def _distill(parser, argv):
    from edgekd.distill.cli import config_from_args

    return config_from_args(parser.parse_args(["distill", *argv])).finetune_config()


def test_teacher_finetune_and_distill_fine_tune_the_same_teacher(parser):
    from edgekd.teacher.config import FinetuneConfig

    assert _finetune(parser, []) == _distill(parser, []) == FinetuneConfig()
    # the drift of edgekd 0.1 (distill: 10x head learning rate, teacher finetune: 1x) is gone: 10x is
    # what every published run used (benchmarks/results/distill_tfns.md)
    assert _finetune(parser, []).head_lr_multiplier == 10.0
    same = _finetune(parser, ["--epochs", "2", "--lr", "1e-4", "--batch-size", "8", "--max-length", "48",
                              "--seed", "3", "--head-lr-multiplier", "5", "--warmup-ratio", "0.2"])
    assert same == _distill(parser, ["--teacher-epochs", "2", "--teacher-lr", "1e-4", "--teacher-batch-size", "8",
                                     "--teacher-max-length", "48", "--seed", "3", "--teacher-head-lr-multiplier", "5",
                                     "--teacher-warmup-ratio", "0.2"])
    assert same == _distill(parser, ["teacher.epochs=2", "teacher.lr=1e-4", "teacher.batch_size=8",
                                     "teacher.max_length=48", "run.seed=3", "teacher.head_lr_multiplier=5",
                                     "teacher.warmup_ratio=0.2"])


def test_demo_fine_tunes_as_its_profile_says(parser):
    from edgekd.distill.cli import overrides_from_args
    from edgekd.pipeline import profile_config

    a = parser.parse_args(["demo", "--profile", "quick", "--teacher-epochs", "2"])
    cfg = profile_config(a.profile, overrides_from_args(a))
    assert cfg.finetune_config() == profile_config("quick", {"teacher.epochs": 2.0}).finetune_config()
    assert cfg.finetune_config().lr == 1e-4 and cfg.finetune_config().head_lr_multiplier == 10.0


@pytest.mark.parametrize("argv, attr, value, old", [
    (["distill", "--attribute-limit", "5"], "ig_sample", 5, "--attribute-limit"),
    (["distill", "--eval-attribute-limit", "6"], "ig_valid_sample", 6, "--eval-attribute-limit"),
    (["distill", "--valid-limit", "7"], "valid_sample", 7, "--valid-limit"),
    (["distill", "--teacher-limit", "8"], "teacher_sample", 8, "--teacher-limit"),
    (["demo", "--max-len", "32"], "max_length", 32, "--max-len"),
    (["demo", "--batch", "16"], "batch_size", 16, "--batch"),
    (["teacher", "finetune", "--out", "x", "--valid-limit", "9"], "valid_sample", 9, "--valid-limit"),
    (["teacher", "finetune", "--out", "x", "--text-col", "t"], "text_column", "t", "--text-col"),
    (["teacher", "annotate", "--teacher", "t", "--out", "c", "--baseline", "mask"], "ig_baseline", "mask", "--baseline"),
    (["teacher", "annotate", "--teacher", "t", "--out", "c", "--chunk-size", "3"], "ig_chunk_size", 3, "--chunk-size"),
    (["teacher", "annotate", "--teacher", "t", "--out", "c", "--attribute-limit", "4"], "ig_sample", 4,
     "--attribute-limit"),
    (["explain", "--model", "m", "--html", "e.html"], "out", "e.html", "--html"),
    (["compile", "src", "--out", "b", "--eval-data", "v", "--max-len", "16"], "max_length", 16, "--max-len"),
])
def test_old_spellings_work_warn_once_and_are_hidden(parser, capsys, argv, attr, value, old):
    a = parser.parse_args(argv)
    assert getattr(a, attr) == value
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"edgekd: warning: {old} is deprecated, use --")
    # hidden: the verb's help does not show it
    sub = parser._subparsers._group_actions[0].choices[argv[0]]
    if argv[0] == "teacher":
        sub = sub._subparsers._group_actions[0].choices[argv[1]]
    assert f"{old} " not in sub.format_help().replace(f"{old}-", "")


def test_compile_positional_out_is_deprecated(parser, capsys):
    from edgekd.compile.cli import _positionals
    from edgekd.errors import EdgekdValueError

    def pos(*argv):
        return _positionals(parser.parse_args(["compile", *argv, "--eval-data", "v.csv"]))

    assert pos("bilstm_attention", "src", "--out", "b") == ("bilstm_attention", "src", "b")
    assert pos("src", "--out", "b") == ("auto", "src", "b")
    assert capsys.readouterr().err == ""
    assert pos("src", "b") == ("auto", "src", "b")
    assert pos("hf_sequence_classification", "src", "b") == ("hf_sequence_classification", "src", "b")
    assert capsys.readouterr().err.count("positional OUT) is deprecated, use --out OUT") == 2
    with pytest.raises(EdgekdValueError, match="give --out DIR"):
        pos("src")
    with pytest.raises(EdgekdValueError, match="give the output once"):
        pos("src", "b", "--out", "c")


def test_limit_note(capsys):
    from edgekd.cliflags import note_limit

    note_limit(argparse.Namespace(limit=None), "distill")
    assert capsys.readouterr().err == ""
    note_limit(argparse.Namespace(limit=5), "distill")
    assert "distill --limit now takes the FIRST N rows; --sample N" in capsys.readouterr().err


def test_overrides_anywhere_after_the_verb(monkeypatch):
    import edgekd.pipeline.cli as pcli

    seen = {}

    def fake(args):
        seen.update(vars(args))
        return 0

    monkeypatch.setattr(pcli, "cmd_demo", fake)
    assert main(["demo", "train.epochs=3", "--threads", "2", "ig.steps=4", "--profile", "full"]) == 0
    assert seen["overrides"] == ["train.epochs=3", "ig.steps=4"] and seen["threads"] == 2
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--nope"])
    assert exc.value.code == 2


def test_bad_setting_is_one_line_and_exit_2(capsys):
    assert main(["demo", "--no-compile", "nope.x=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown setting 'nope.x'" in err[0]
    assert main(["demo", "--profile", "nope"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err


def test_help_lists_flat_and_nested_verbs_without_torch():
    code = ("import sys; from edgekd.cli import build_parser; h = build_parser().format_help(); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(h)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    for verb in ("demo", "distill", "explain", "teacher", "compile"):
        assert f"\n    {verb} " in out
    flat = " ".join(out.split())
    assert "nested commands: teacher finetune, teacher annotate" in flat


def test_old_setting_names_warn_in_one_line(capsys):
    """An edgekd 0.1 flat name given with --set still works and warns like an old flag; the next bad
    key then stops the command with one error line."""
    assert main(["demo", "--set", "epochs=2", "nope.x=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["edgekd: warning: command line: the flat setting 'epochs' is deprecated, use 'train.epochs'",
                   "edgekd: error: command line: unknown setting 'nope.x' ('nope' is not one of "
                   "['data', 'teacher', 'ig', 'student', 'train', 'eval', 'run'])"]


def test_print_config_is_a_config_file(tmp_path, capsys):
    from edgekd.distill import DistillConfig
    from edgekd.pipeline import profile_config

    assert main(["demo", "--profile", "quick", "--print-config", "--epochs", "3", "ig.steps=16"]) == 0
    p = tmp_path / "quick.toml"
    p.write_text(capsys.readouterr().out)
    assert DistillConfig.from_toml(p) == profile_config("quick", {"train.epochs": 3, "ig.steps": 16})
    assert main(["distill", "--config", str(p), "--print-config", "--out", "runs/x"]) == 0
    again = tmp_path / "again.toml"
    again.write_text(capsys.readouterr().out)
    assert DistillConfig.from_toml(again) == DistillConfig.from_toml(p).override({"run.out": "runs/x"})
