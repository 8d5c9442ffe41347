"""`torchrun --nproc-per-node 2 -m edgekd teacher annotate`: the ranks share the IG chunks out and
write the files a single process writes, byte for byte; a rank killed mid-annotation leaves its
finished chunks, and the rerun computes only the missing ones (2 processes, gloo, 1 thread each)."""
import csv
import json
import pathlib

import pytest

from factories import CLI_LABEL_NAMES, CLI_LABELS, CLI_TEXTS, make_tiny_bert, torchrun

WORKER = str(pathlib.Path(__file__).resolve().parents[1] / "dist_worker.py")
CHUNK = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist_annotate")
    texts = CLI_TEXTS + [t + " today" for t in CLI_TEXTS] + CLI_TEXTS[:3]  # 27 rows: 7 chunks, the last short
    labels = CLI_LABELS + CLI_LABELS + CLI_LABELS[:3]
    data = d / "data.csv"
    with open(data, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows((t, CLI_LABEL_NAMES[y]) for t, y in zip(texts, labels))
    teacher = make_tiny_bert(d / "teacher", texts)
    return d, data, teacher, len(texts)


def argv(teacher, data, out):
    return ["teacher", "annotate", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
            "--label-names", ",".join(CLI_LABEL_NAMES), "--ig-steps", "4", "--ig-batch-size", "4",
            "--ig-chunk-size", str(CHUNK), "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def single(setup):
    """The single-process run, in this process."""
    from edgekd.cli import main

    d, data, teacher, _ = setup
    assert main(argv(teacher, data, d / "one")) == 0
    (key,) = [p for p in (d / "one").iterdir() if p.is_dir()]
    return key.name, {p.name: p.read_bytes() for p in key.glob("chunk_*.safetensors")}


def test_two_ranks_write_the_single_process_chunks(setup, single):
    d, data, teacher, n = setup
    key, want = single
    r = torchrun(["-m", "edgekd", *argv(teacher, data, d / "two")])
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1 and lines[0]["texts"] == n  # rank 0 alone prints
    got = {p.name: p.read_bytes() for p in (d / "two" / key).glob("chunk_*.safetensors")}
    assert len(want) == -(-n // CHUNK) and sorted(got) == sorted(want)
    assert all(got[k] == want[k] for k in want)  # bit-identical, chunk for chunk


def test_killed_rank_then_rerun_computes_only_missing_chunks(setup, single):
    d, data, teacher, n = setup
    key, want = single
    out, res = d / "killed", d / "results"
    args = {"argv": argv(teacher, data, out), "kill_rank": 1, "kill_at": "first_chunk", "out": str(res / "a")}
    r = torchrun([WORKER, "cli", json.dumps(args)])
    assert r.returncode != 0 and "exitcode  : 3" in r.stderr, r.stderr[-3000:]  # rank 1 died; torchrun stopped the job
    folder = out / key
    left = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.glob("chunk_*.safetensors")}
    assert 1 <= len(left) < len(want)  # rank 1's first chunk at least, not all of them
    assert all(b == want[k] for k, (b, _) in left.items())

    args = {"argv": argv(teacher, data, out), "out": str(res / "b")}
    r = torchrun([WORKER, "cli", json.dumps(args)])
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((res / "b" / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert all(x["rc"] == 0 for x in ranks)
    recomputed = sorted(row // CHUNK for x in ranks for row in x["first_rows"])
    missing = sorted(int(k[6:11]) for k in want if k not in left)
    assert recomputed == missing  # each missing chunk once, no finished one again
    if len(missing) >= 2:  # the missing chunks were shared out again
        assert ranks[0]["first_rows"] and ranks[1]["first_rows"]
    for k, (b, mtime) in left.items():  # the finished chunks were not rewritten
        assert (folder / k).stat().st_mtime_ns == mtime
    got = {p.name: p.read_bytes() for p in folder.glob("chunk_*.safetensors")}
    assert got == want

