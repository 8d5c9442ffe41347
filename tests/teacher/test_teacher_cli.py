"""`edgekd teacher finetune` and `edgekd teacher annotate` end to end on a tiny teacher and real TFNS rows."""
from __future__ import annotations

import json

from edgekd.cli import main


def test_finetune_then_annotate(tmp_path, tiny_teacher_dir, tfns_dir, capsys):
    train, valid = str(tfns_dir / "sent_train.csv"), str(tfns_dir / "sent_valid.csv")
    out = tmp_path / "teacher"
    assert main(["teacher", "finetune", "--encoder", str(tiny_teacher_dir), "--train", train, "--valid", valid,
                 "--limit", "300", "--sample", "60", "--valid-sample", "30", "--epochs", "1", "--batch-size", "16",
                 "--max-length", "32", "--device", "cpu", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    rec = json.loads(cap.out.strip().splitlines()[-1])
    assert rec["train_examples"] == 60 and rec["reused"] is False and 0 <= rec["valid_accuracy"] <= 1
    assert "--limit now takes the FIRST N rows" in cap.err  # --limit changed meaning: one note
    saved = json.loads((out / "edgekd_teacher.json").read_text())
    assert saved["config"]["head_lr_multiplier"] == 10.0 and saved["config"]["max_length"] == 32

    cache = tmp_path / "ann"
    assert main(["teacher", "annotate", "--teacher", str(out), "--data", valid, "--limit", "40", "--ig-sample", "10",
                 "--ig-steps", "2", "--max-length", "32", "--device", "cpu", "--out", str(cache)]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["texts"] == 40 and rep["attributed"] == 10 and (cache / "tokenizer.json").is_file()
