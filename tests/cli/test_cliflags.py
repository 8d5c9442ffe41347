"""edgekd.cliflags: shared flags, deprecated aliases, flags built from dataclasses."""
from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from edgekd import cliflags


@dataclass
class _Cfg:
    epochs: float = field(default=1.0, metadata={"help": "passes over the data"})
    lr: float = 5e-5
    batch_size: int = 16
    limit: int | None = None
    methods: list[str] = field(default_factory=lambda: ["a", "b"])
    progress: bool = True
    baseline: str = field(default="pad", metadata={"choices": ("pad", "mask")})
    hidden: str = field(default="x", metadata={"cli": False})


def test_shared_flags_parse_canonical_names():
    p = argparse.ArgumentParser()
    cliflags.add_flags(p, *cliflags.FLAGS)
    a = p.parse_args(["--out", "o", "--max-length", "32", "--batch-size", "4", "--text-column", "t",
                      "--label-column", "l", "--label-names", "neg, pos", "--seed", "3", "--device", "cpu",
                      "--threads", "2", "--limit", "10", "--sample", "20"])
    assert (a.out, a.max_length, a.batch_size, a.text_column, a.label_column) == ("o", 32, 4, "t", "l")
    assert a.label_names == ["neg", "pos"]
    assert (a.seed, a.device, a.threads, a.limit, a.sample) == (3, "cpu", 2, 10, 20)
    empty = p.parse_args([])
    assert all(getattr(empty, k) is None for k in vars(empty))


def test_add_flags_changes_and_unknown():
    p = argparse.ArgumentParser()
    cliflags.add_flags(p, "--out", out=dict(required=True))
    with pytest.raises(SystemExit):
        p.parse_args([])
    with pytest.raises(KeyError, match="--nope"):
        cliflags.add_flags(p, "--nope")


def test_alias_works_warns_once_and_is_hidden(capsys):
    p = argparse.ArgumentParser()
    cliflags.add_flags(p, "--max-length", "--batch-size")
    cliflags.add_alias(p, "--max-len", "--max-length")
    cliflags.add_alias(p, "--batch", "--batch-size")
    cliflags.add_alias(p, "--quiet", "--no-progress", dest="no_progress", action="store_true")
    a = p.parse_args(["--max-len", "48", "--batch", "7", "--quiet"])
    assert (a.max_length, a.batch_size, a.no_progress) == (48, 7, True)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["edgekd: warning: --max-len is deprecated, use --max-length",
                   "edgekd: warning: --batch is deprecated, use --batch-size",
                   "edgekd: warning: --quiet is deprecated, use --no-progress"]
    help_text = p.format_help()
    assert "--max-length" in help_text and "--max-len " not in help_text and "--batch " not in help_text
    # the canonical spelling prints nothing
    p.parse_args(["--max-length", "4"])
    assert capsys.readouterr().err == ""


def test_dataclass_flags_types_defaults_and_help():
    p = argparse.ArgumentParser()
    m = cliflags.add_dataclass_flags(p, _Cfg, prefix="teacher-", skip=("lr",), rename={"limit": "--teacher-limit"})
    assert "hidden" not in m.values() and "lr" not in m.values()
    a = p.parse_args(["--teacher-epochs", "2.5", "--teacher-batch-size", "8", "--teacher-limit", "5",
                      "--teacher-methods", "x,y", "--teacher-progress", "false", "--teacher-baseline", "mask"])
    assert cliflags.dataclass_values(a, m) == {"epochs": 2.5, "batch_size": 8, "limit": 5, "methods": ["x", "y"],
                                               "progress": False, "baseline": "mask"}
    assert cliflags.dataclass_values(p.parse_args([]), m) == {}  # nothing restated: the dataclass keeps its defaults
    h = " ".join(p.format_help().split())
    assert "passes over the data (default: 1.0)" in h
    assert "default: a,b" in h
    q = argparse.ArgumentParser()
    cliflags.add_dataclass_flags(q, _Cfg, only=["limit", "epochs"], helps={"limit": "first N rows here"})
    qh = " ".join(q.format_help().split())
    assert "--limit N first N rows here" in qh and "--epochs X passes over the data (default: 1.0)" in qh
    assert "--lr" not in qh
    with pytest.raises(SystemExit):
        p.parse_args(["--teacher-baseline", "zeros"])
    with pytest.raises(SystemExit):
        p.parse_args(["--teacher-progress", "maybe"])


def test_cliflags_is_torch_free():
    code = "import sys, edgekd.cliflags; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
