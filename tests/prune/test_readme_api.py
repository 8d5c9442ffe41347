"""The README's prune Python API example runs as written (a tiny random BERT, a few seconds)."""
from __future__ import annotations

import json
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _example(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"expected one README python block with {marker!r}, found {len(found)}"
    return found[0]


def test_readme_prune_api_example_runs(tmp_path, monkeypatch, capsys):
    from edgekd.prune import load_head_pruned_model, remaining_heads

    code = _example("train_token_pruned(")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(README) + ":prune-api", "exec"), scope)
    res, ahp = scope["res"], scope["ahp"]
    assert res.loop.steps == 18 and len(res.loop.history) == 3  # 24 rows / batch 4 x 3 epochs, one eval an epoch
    valid = res.metrics["valid"]
    # the best epoch's weights were kept: the final dev evaluation is the best one
    assert valid["macro_f1"] == res.loop.best["macro_f1"] == max(h["macro_f1"] for h in res.loop.history)
    saved = json.loads((tmp_path / "pruned-tiny" / "metrics.json").read_text())
    assert saved["valid"] == valid and saved["pruning"]["keep_ratio"] == 0.5 and saved["out"] == "pruned-tiny"
    assert sum(len(h) for h in remaining_heads(load_head_pruned_model(tmp_path / "ahp-tiny"))) == 16 - 4
    assert sum(len(v) for v in ahp.metrics["removed_heads"].values()) == 4
    out = capsys.readouterr().out
    assert "kept_token_fraction" in out
