"""The README's command lines for demo / distill / teacher / explain / compile / prune parse with today's
flags (no deprecated spelling among them), and its config examples load without warnings."""
from __future__ import annotations

import pathlib
import re
import shlex
import tomllib
import warnings

import pytest

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
VERBS = ("demo", "distill", "teacher", "explain", "compile", "prune")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _commands() -> list[str]:
    cmds = []
    for block in _blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("edgekd ") and line.split()[1] in VERBS:
                cmds.append(line)
    return cmds


def test_the_readme_has_examples_for_every_verb():
    seen = {c.split()[1] for c in _commands()}
    assert set(VERBS) <= seen, set(VERBS) - seen


@pytest.mark.parametrize("line", _commands())
def test_readme_command_parses_without_deprecations(line, capsys):
    from edgekd.cli import build_parser

    argv = shlex.split(re.split(r" [>|] ", line)[0])[1:]  # the command, without a shell redirection
    args, extra = build_parser().parse_known_args(argv)
    assert all("=" in e for e in extra + list(getattr(args, "overrides", None) or [])) and hasattr(args, "func")
    assert capsys.readouterr().err == ""


def test_readme_config_examples_load_without_warnings():
    from edgekd.distill import DistillConfig

    tomls = [b for b in _blocks("toml") if "[train]" in b]
    assert tomls
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for b in tomls:
            cfg = DistillConfig.from_dict(tomllib.loads(b), "README")
            cfg.validate()
        api = next(b for b in _blocks("python") if "Distiller(cfg)" in b)
        code = "\n".join(ln for ln in api.replace("\n" + " " * 20, " ").splitlines() if ln.startswith("cfg ="))
        ns: dict = {"DistillConfig": DistillConfig}
        exec(code, ns)  # noqa: S102  (the README's own example)
    cfg = ns["cfg"]
    assert (cfg.data.sample, cfg.teacher.sample, cfg.ig.steps, cfg.ig.sample, cfg.eval.ig_steps) == (600, 300, 4, 60, 4)
    assert (cfg.train.epochs, cfg.train.alpha, cfg.run.out) == (2, 0.7, "runs/api")
