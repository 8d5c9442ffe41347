"""Hostile and corrupt bundles (issue 12): each is refused with a BundleError naming the problem,
before anything is written for zips; loading writes only the selected variant; temporary
directories are owned by their process and removed on SIGTERM."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile

import onnx
import pytest
from onnx import TensorProto, helper

from edgekd.errors import BundleError
from edgekd.runtime import Bundle
from edgekd.runtime import archive, bundle as bundle_mod
from edgekd.runtime.bundle import onnx_external_data_locations, read_and_verify, write_manifest, write_zip
from hostile import CASES, copy_dir, manifest, save


@pytest.fixture
def tmp_tempdir(tmp_path, monkeypatch) -> pathlib.Path:
    """Point tempfile at an empty folder so tests can see what loading writes."""
    d = tmp_path / "tmpdir"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_bundle_refused(case, student_bundle, tmp_path, tmp_tempdir):
    build, pattern = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    path, kwargs = build(student_bundle, student_bundle.with_suffix(".zip"), work)
    with pytest.raises(BundleError, match=pattern):
        Bundle.load(path, **kwargs)
    assert list(tmp_tempdir.iterdir()) == [], "a refused bundle left files in the temp dir"


def test_zip_refused_before_writing(student_bundle, tmp_path, tmp_tempdir, monkeypatch):
    """An unlisted or oversized entry is refused from the central directory: nothing is extracted."""
    from hostile import rezip

    z = rezip(student_bundle.with_suffix(".zip"), tmp_path / "bomb.zip", [("bomb.bin", b"\0" * (8 << 20))])
    calls = []
    monkeypatch.setattr(archive, "extract_entries", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(archive, "TempDir", lambda *a, **k: calls.append("tmp"))
    with pytest.raises(BundleError, match="compression-ratio|not listed"):
        Bundle.load(z)
    assert calls == []


def test_many_entries_refused_fast(student_bundle, tmp_path):
    from hostile import rezip

    z = rezip(student_bundle.with_suffix(".zip"), tmp_path / "many.zip", [(f"d/e{k}", b"") for k in range(5000)])
    t0 = time.perf_counter()
    with pytest.raises(BundleError, match="over the limit of 4096"):
        Bundle.load(z)
    assert time.perf_counter() - t0 < 2.0


def test_directory_entry_limit(student_bundle, tmp_path):
    from edgekd.runtime.archive import BundleLimits

    d = copy_dir(student_bundle, tmp_path)
    (d / "junk").mkdir()
    for k in range(30):
        (d / "junk" / f"{k}").write_bytes(b"")
    with pytest.raises(BundleError, match="holds over 20 entries"):
        Bundle.load(d, limits=BundleLimits(max_entries=20))


def test_digest_allows_reformatting(student_bundle, tmp_path):
    """The digest covers the canonical JSON form: re-indenting manifest.json is not an edit."""
    d = copy_dir(student_bundle, tmp_path)
    m = manifest(d)
    (d / "manifest.json").write_text(json.dumps(m, indent=7, sort_keys=True))
    assert Bundle.load(d).label_names == m["label_names"]


def test_bad_digest_file(student_bundle, tmp_path):
    d = copy_dir(student_bundle, tmp_path)
    (d / "manifest.sha256").write_text("not a digest\n")
    with pytest.raises(BundleError, match="manifest.sha256 does not hold a sha256"):
        Bundle.load(d)


@pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": Infinity}', '{"format": 1, "format": 2}', "[" * 100000])
def test_manifest_json_oddities(student_bundle, tmp_path, text):
    d = copy_dir(student_bundle, tmp_path)
    (d / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match="manifest"):
        Bundle.load(d)


def test_record_profile_rewrites_digest(student_bundle, tmp_path):
    d = copy_dir(student_bundle, tmp_path)
    m = read_and_verify(d)
    m["variants"][0]["profiles"] = {"x": {"p50_ms": 1.0}}
    write_manifest(d, m)
    assert read_and_verify(d)["variants"][0]["profiles"] == {"x": {"p50_ms": 1.0}}
    assert Bundle.load(d, precision=m["variants"][0]["precision"]).manifest["variants"][0]["profiles"] == {"x": {"p50_ms": 1.0}}


def test_compile_writes_digest(student_bundle):
    assert (student_bundle / "manifest.sha256").is_file()
    with zipfile.ZipFile(student_bundle.with_suffix(".zip")) as zf:
        assert "manifest.sha256" in zf.namelist()


# ------------------------------------------------------------------ memory and disk (item 6)
def test_zip_load_writes_only_the_selected_variant(student_bundle, tmp_tempdir):
    b = Bundle.load(student_bundle.with_suffix(".zip"), precision="fp32")
    (root,) = list(tmp_tempdir.iterdir())
    assert sorted(p.name for p in root.iterdir()) == ["model.fp32.onnx", "tokenizer.json"]
    assert b.predict("oil prices slump").labels
    del b
    import gc

    gc.collect()
    assert list(tmp_tempdir.iterdir()) == []


def test_each_file_hashed_once_by_streaming(student_bundle, tmp_path, monkeypatch):
    """Loading hashes every listed file exactly once, in bounded chunks (never read whole)."""
    d = copy_dir(student_bundle, tmp_path)
    big = d / "blob.bin"
    big.write_bytes(os.urandom(24 << 20))
    write_manifest(d, manifest(d))
    seen: list[str] = []
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p, *a: (seen.append(pathlib.Path(p).name), real(p, *a))[1])
    tracemalloc.start()
    try:
        Bundle.load(d, precision="int8")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(seen) == sorted(manifest(d)["files"])
    assert peak < 8 << 20, f"loading allocated {peak / 2**20:.1f} MiB in Python for a 24 MiB file"


def test_zip_unselected_variant_hashed_not_written(student_bundle, tmp_path, tmp_tempdir):
    from hostile import rezip

    # the fp32 model changed inside the zip (same size): loading int8 still checks it by streaming
    z = rezip(student_bundle.with_suffix(".zip"), tmp_path / "s.zip", store=True)
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo("model.fp32.onnx")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 100] ^= 0x01
    z.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.fp32.onnx"):
        Bundle.load(z, precision="int8")
    assert Bundle.load(z, precision="int8", verify="selected").variant["precision"] == "int8"


def test_forked_child_keeps_parents_dir(student_bundle):
    b = Bundle.load(student_bundle.with_suffix(".zip"), precision="fp32")
    root = b.root
    pid = os.fork()
    if pid == 0:  # child: its finalizers run at exit, and must leave the parent's copy alone
        code = 0
        try:
            b._tmpdir.cleanup()
            del b
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert root.is_dir() and (root / "model.fp32.onnx").is_file()
    assert b.predict("oil").labels


def test_sigterm_removes_extracted_dir(student_bundle, tmp_path):
    code = ("import sys, time; from edgekd.runtime import Bundle\n"
            "b = Bundle.load(sys.argv[1], precision='fp32'); print(b.root, flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(student_bundle.with_suffix(".zip"))],
                         stdout=subprocess.PIPE, text=True, cwd=pathlib.Path(__file__).resolve().parents[2])
    root = pathlib.Path(p.stdout.readline().strip())
    assert root.is_dir()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == -signal.SIGTERM
    assert not root.exists()


# ------------------------------------------------------------------ external data scan (item 9)
def _with_external(model: onnx.ModelProto, tensor: onnx.TensorProto, location: str) -> None:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, val in (("location", location), ("offset", "0"), ("length", "16")):
        e = tensor.external_data.add()
        e.key, e.value = key, val


def _tiny_graph(**kw) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    return helper.make_model(helper.make_graph(kw.pop("nodes", [helper.make_node("Identity", ["x"], ["y"])]),
                                               "g", [x], [y], **kw), **{})


def test_scan_covers_sparse_and_functions(tmp_path):
    # sparse initializer
    vals = helper.make_tensor("sv", TensorProto.FLOAT, [1], [1.0])
    idx = helper.make_tensor("si", TensorProto.INT64, [1], [0])
    _with_external(None, vals, "../sparse.bin")
    m = _tiny_graph(sparse_initializer=[helper.make_sparse_tensor(vals, idx, [2])])
    p = tmp_path / "sparse.onnx"
    p.write_bytes(m.SerializeToString())
    assert onnx_external_data_locations(p) == ["../sparse.bin"]
    # a sparse-tensor constant inside a model-local function
    sv = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    _with_external(None, sv, "/etc/passwd")
    const = helper.make_node("Constant", [], ["c"], sparse_value=helper.make_sparse_tensor(
        sv, helper.make_tensor("i", TensorProto.INT64, [1], [0]), [2]))
    fn = helper.make_function("local", "f", ["a"], ["b"], [const, helper.make_node("Identity", ["a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    m2 = _tiny_graph(nodes=[helper.make_node("f", ["x"], ["y"], domain="local")])
    m2.functions.append(fn)
    p2 = tmp_path / "fn.onnx"
    p2.write_bytes(m2.SerializeToString())
    assert onnx_external_data_locations(p2) == ["/etc/passwd"]


@pytest.mark.parametrize("location", ["../../secret.bin", "/etc/passwd", "not_listed.bin"])
def test_external_data_in_zip(student_bundle, tmp_path, location):
    d = copy_dir(student_bundle, tmp_path)
    p = d / "model.fp32.onnx"
    model = onnx.load(str(p))
    _with_external(model, model.graph.initializer[0], location)
    p.write_bytes(model.SerializeToString())
    write_manifest(d, manifest(d))
    z = write_zip(d, tmp_path / "ext.zip")
    with pytest.raises(BundleError, match="external data"):
        Bundle.load(z, precision="fp32")
