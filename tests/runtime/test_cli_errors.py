"""No tracebacks for user errors: every case of issue 12 through the CLI gives one line naming
the file, row or key, and exit code 2."""
from __future__ import annotations

import json
import os
import re
import pathlib
import subprocess
import sys

import pytest

from factories import LABELS, TEXTS
from edgekd.cli import main
from hostile import CASES

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_error(args, capsys, needle: str, regex: bool = False) -> str:
    capsys.readouterr()
    rc = main([str(a) for a in args])  # an unhandled exception here is a traceback: the test fails
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("edgekd: error:") and "\n" not in err, err
    assert re.search(needle, err) if regex else needle in err, err
    return err


CLI_CASES = sorted(c for c in CASES if c not in (  # these need non-default limits (covered through the API)
    "zip_too_many_entries", "zip_entry_over_file_limit", "zip_total_over_limit", "manifest_too_big"))


@pytest.mark.parametrize("case", CLI_CASES)
def test_predict_hostile_bundle(case, student_bundle, tmp_path, capsys):
    build, pattern = CASES[case]
    path, kwargs = build(student_bundle, student_bundle.with_suffix(".zip"), tmp_path)
    extra = ["--precision", kwargs["precision"]] if "precision" in kwargs else []
    run_error(["predict", path, "oil prices slump", *extra], capsys, pattern, regex=True)


def _write(p: pathlib.Path, data) -> pathlib.Path:
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return p


def _csv(rows: list[str]) -> str:
    return "text,label\n" + "\n".join(rows) + "\n"


DATA_CASES = {
    "non_integer_label.csv": (_csv(["up,1", "down,bullish?"]), "line 3: label 'bullish?' is not an integer"),
    "latin1.csv": ("text,label\ncaf\xe9,1\n".encode("latin-1"), "line 2: not valid UTF-8"),
    "utf16.csv": ("text,label\nup,1\n".encode("utf-16"), "is UTF-16"),
    "binary.txt": (b"\x00\x01\x02\xff" * 10, "NUL bytes"),
    "bad_line.jsonl": ('{"text": "up", "label": 1}\n{"text": \n', "line 2: not valid JSON"),
    "no_text.jsonl": ('{"sentence": "up", "label": 1}\n', "line 1: no 'text' field"),
    "huge_field.csv": (_csv(["x" * 131_073 + ",1"]), "line 2"),
    "huge_text.jsonl": (json.dumps({"text": "x" * 131_073}) + "\n", "over the limit of 131,072"),
    "missing_label.csv": (_csv(["up,1", "down,", "flat,2"]), "line 3: no label while other rows have one"),
    "label_7.csv": (_csv(["up,1", "down,7"]), "label 7"),
    "label_minus_1.csv": (_csv(["up,-1", "down,0"]), "label -1"),
    "empty.csv": ("text,label\n", "holds no texts"),
    "no_text_column.csv": ("sentence,label\nup,1\n", "needs a 'text' column"),
}


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_bench_bad_data(name, student_bundle, tmp_path, capsys):
    data, needle = DATA_CASES[name]
    p = _write(tmp_path / name, data)
    err = run_error(["bench", student_bundle, "--data", p, "--min-time", "0.01", "--batches", "1"], capsys, needle)
    assert name in err  # the file is named


@pytest.mark.parametrize("path,needle", [(".", "is a directory"), ("/dev/null", "not a regular file"),
                                         ("missing.csv", "does not exist")])
def test_bench_data_not_a_file(path, needle, student_bundle, tmp_path, capsys):
    run_error(["bench", student_bundle, "--data", tmp_path / path if path != "/dev/null" else path], capsys, needle)


def test_bench_bom_is_read(student_bundle, tmp_path, capsys):
    p = _write(tmp_path / "bom.csv", b"\xef\xbb\xbf" + _csv([f"{t.replace(',', ' ')},{y}" for t, y in zip(TEXTS, LABELS)]).encode())
    assert main(["bench", str(student_bundle), "--data", str(p), "--min-time", "0.01", "--batches", "1",
                 "--precision", "fp32"]) == 0
    assert "12 labelled texts" in capsys.readouterr().out


def test_invalid_utf8_argv(student_bundle):
    r = subprocess.run([sys.executable, "-m", "edgekd", "predict", str(student_bundle).encode(), b"oil \xff\xfe slump"],
                       capture_output=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    row = json.loads(r.stdout.decode("utf-8"))
    assert row["text"] == "oil \ufffd\ufffd slump"
    r = subprocess.run([sys.executable, "-m", "edgekd", "predict", b"/nonexistent/\xff.zip", b"x"],
                       capture_output=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and b"Traceback" not in r.stderr and r.stderr.count(b"\n") == 1


def test_compile_truncated_safetensors(student_dir, tmp_path, capsys):
    import shutil

    src = tmp_path / "trunc"
    shutil.copytree(student_dir, src)
    st = src / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    data = _write(tmp_path / "e.csv", _csv(["up,1", "down,0"]))
    run_error(["compile", src, "--out", tmp_path / "out", "--eval-data", data, "--no-arm64-check"], capsys,
              "model.safetensors")


def test_sign_and_verify_errors(student_bundle, tmp_path, capsys):
    import shutil

    d = tmp_path / "b"
    shutil.copytree(student_bundle, d)
    run_error(["sign", d, "--key", tmp_path / "nokey"], capsys, "nokey")
    run_error(["sign", d], capsys, "--key")
    assert main(["sign", "--generate-key", str(tmp_path / "k")]) == 0
    run_error(["sign", "--generate-key", tmp_path / "k"], capsys, "exists")
    run_error(["verify", d, "--trusted-key", tmp_path / "k.pub"], capsys, "not signed")
    run_error(["verify", d, "--trusted-key", tmp_path / "e.csv"], capsys, "trusted_keys")
    (d / "tokenizer.json").write_text("{}")
    run_error(["verify", d], capsys, "checksum mismatch for 'tokenizer.json'")


def test_compare_bad_json(student_bundle, tmp_path, capsys):
    p = _write(tmp_path / "r.json", "{broken")
    run_error(["compare", p], capsys, "r.json")
    run_error(["bench", student_bundle, "--batches", "0"], capsys, "batches")
    run_error(["bench", student_bundle, "--threads", "0", "--min-time", "0.01"], capsys, "threads")
