"""Every ```python block of README.md runs.

Each block runs in its own subprocess (the repository's edgekd first on the path), in one temporary
folder shared by all blocks in README order, so a block may use the files an earlier block wrote
(``save_pretrained("student-tfns")``, a compiled bundle). Running one block's test alone runs the
blocks before it first.

A block that needs something a test machine may lack is preceded by a marker comment::

    <!-- readme-test: needs asset:minilm data:tfns -->

``asset:NAME`` is an installed model package (:mod:`edgekd.assets`), ``data:NAME`` a folder of the
shared data. When one is missing the block's test is skipped and says which; when all are present
it runs like the others.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHARED_DATA = REPO.parent / "shared" / "data"
MARKER = re.compile(r"<!--\s*readme-test:\s*needs\s+(?P<needs>[^>]*?)\s*-->")
TIMEOUT_S = 600


def python_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """(1-based line of the opening fence, code, needs) for every ```python block."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            prev = next((lines[j] for j in range(start - 2, -1, -1) if lines[j].strip()), "")
            m = MARKER.search(prev)
            out.append((start, "\n".join(body) + "\n", m.group("needs").split() if m else []))
        i += 1
    return out


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def missing(needs: list[str]) -> list[str]:
    from edgekd.assets import find_asset

    absent = []
    for need in needs:
        kind, _, name = need.partition(":")
        if kind == "asset":
            ok = find_asset(name) is not None
        elif kind == "data":
            ok = (SHARED_DATA / name).is_dir()
        else:
            raise AssertionError(f"README marker: unknown requirement {need!r} (use asset:NAME or data:NAME)")
        if not ok:
            absent.append(need)
    return absent


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return {"dir": tmp_path_factory.mktemp("readme"), "ran": {}}


def _run(workdir, k: int) -> subprocess.CompletedProcess | str:
    """Run block ``k`` (after the blocks before it); a str result = skipped, with the reason."""
    ran = workdir["ran"]
    if k in ran:
        return ran[k]
    for j in range(k):
        _run(workdir, j)
    line, code, needs = BLOCKS[k]
    absent = missing(needs)
    if absent:
        ran[k] = f"README.md line {line}: needs {', '.join(absent)}, which this machine lacks"
        return ran[k]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    script = workdir["dir"] / f"readme_block_{line}.py"
    script.write_text(code, encoding="utf-8")
    ran[k] = subprocess.run([sys.executable, str(script)], cwd=workdir["dir"], env=env, capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    return ran[k]


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 5 and all(code.strip() for _, code, _ in BLOCKS)


@pytest.mark.parametrize("k", range(len(BLOCKS)), ids=[f"line{line}" for line, _, _ in BLOCKS])
def test_readme_python_block_runs(workdir, k):
    r = _run(workdir, k)
    if isinstance(r, str):
        pytest.skip(r)
    line = BLOCKS[k][0]
    assert r.returncode == 0, f"README.md block at line {line} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"


def test_marker_parsing():
    text = "x\n<!-- readme-test: needs asset:minilm data:tfns -->\n\n```python\nprint(1)\n```\n```python\npass\n```\n"
    assert python_blocks(text) == [(4, "print(1)\n", ["asset:minilm", "data:tfns"]), (7, "pass\n", [])]


def layout_rows(text: str) -> list[list[str]]:
    """The table rows (cells) of README's "## Layout" section."""
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("path", "---"):
            rows.append(cells)
    return rows


def test_layout_table_matches_the_tree():
    from edgekd.tools.layers import LAYER_OF, top_level

    rows = layout_rows(README.read_text(encoding="utf-8"))
    listed: dict[str, str | None] = {}
    for cells in rows:
        for path in re.findall(r"`([^`]+)`", cells[0]):
            pattern = re.sub(r"<[a-z]+>", "*", path)
            assert list(REPO.glob(pattern.rstrip("/"))), f"README layout: {path} is not in the tree"
            listed[path.rstrip("/")] = cells[1] if len(cells) == 3 else None
    pkg = REPO / "edgekd"
    present = {f"edgekd/{p.name}" for p in pkg.iterdir()
               if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))
               and p.name != "__pycache__" and not p.is_symlink()}
    assert present <= set(listed), f"README layout misses {sorted(present - set(listed))}"
    for path, layer in listed.items():
        if path in present and layer is not None:
            module = "edgekd" if path == "edgekd/__init__.py" else "edgekd." + path.split("/", 1)[1].removesuffix(".py")
            assert layer == str(LAYER_OF[top_level(module)]), f"README layout: {path} is on layer {layer}, " \
                f"edgekd/tools/layers.py says {LAYER_OF[top_level(module)]}"
