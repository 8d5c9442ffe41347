"""Every corrupt / unsafe bundle is refused with a clear BundleError."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import stat
import zipfile

import onnx
import pytest

from edgekd.errors import BundleError
from edgekd.runtime import Bundle
from edgekd.runtime.bundle import onnx_external_data_locations, write_manifest, write_zip
from edgekd.runtime.manifest import manifest_digest


@pytest.fixture
def bundle_copy(student_bundle, tmp_path) -> pathlib.Path:
    d = tmp_path / "b"
    shutil.copytree(student_bundle, d)
    return d


def _manifest(d):
    return json.loads((d / "manifest.json").read_text())


def _save_manifest(d, m):
    """Write an edited manifest with a matching digest, as a careful forger would: these tests are
    about the checks that come after the digest (the digest itself: test_manifest_edit_refused)."""
    (d / "manifest.json").write_text(json.dumps(m))
    (d / "manifest.sha256").write_text(manifest_digest(m) + "\n")


def test_clean_bundle_and_zip_load(student_bundle):
    assert Bundle.load(student_bundle).predict("oil prices slump").labels
    assert Bundle.load(student_bundle.with_suffix(".zip")).predict("oil prices slump").labels


def test_changed_file(bundle_copy):
    p = bundle_copy / "model.fp32.onnx"
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch for 'model.fp32.onnx'"):
        Bundle.load(bundle_copy, precision="fp32")


def test_changed_tokenizer(bundle_copy):
    p = bundle_copy / "tokenizer.json"
    p.write_text(p.read_text().replace('"[UNK]"', '"[UNX]"', 1))
    with pytest.raises(BundleError, match="checksum mismatch for 'tokenizer.json'"):
        Bundle.load(bundle_copy)


def test_missing_file(bundle_copy):
    (bundle_copy / "model.int8.onnx").unlink()
    with pytest.raises(BundleError, match="'model.int8.onnx' listed in the manifest is missing"):
        Bundle.load(bundle_copy)


def test_missing_tokenizer(bundle_copy):
    (bundle_copy / "tokenizer.json").unlink()
    m = _manifest(bundle_copy)
    del m["files"]["tokenizer.json"]  # even a manifest that no longer lists it
    _save_manifest(bundle_copy, m)
    with pytest.raises(BundleError, match="tokenizer"):
        Bundle.load(bundle_copy)


def test_unlisted_file(bundle_copy):
    (bundle_copy / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="'extra.bin' is not listed"):
        Bundle.load(bundle_copy)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_unknown_schema_version(bundle_copy, version):
    m = _manifest(bundle_copy)
    m["schema_version"] = version
    _save_manifest(bundle_copy, m)
    with pytest.raises(BundleError, match="unknown schema_version"):
        Bundle.load(bundle_copy)


def test_not_a_manifest(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(bundle_copy)
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json not found"):
        Bundle.load(bundle_copy)


@pytest.mark.parametrize("bad", ["../outside.onnx", "/etc/passwd", "a/../../x"])
def test_manifest_path_escapes(bundle_copy, bad):
    m = _manifest(bundle_copy)
    m["files"][bad] = {"sha256": "0" * 64, "size": 1}
    _save_manifest(bundle_copy, m)
    with pytest.raises(BundleError, match="escapes|absolute|'\\.\\.'"):
        Bundle.load(bundle_copy)


def test_symlink_in_directory(bundle_copy, tmp_path):
    target = tmp_path / "elsewhere.onnx"
    shutil.copy(bundle_copy / "model.fp32.onnx", target)
    (bundle_copy / "model.fp32.onnx").unlink()
    os.symlink(target, bundle_copy / "model.fp32.onnx")
    with pytest.raises(BundleError, match="symbolic link"):
        Bundle.load(bundle_copy)


def _rezip(src_zip, dst_zip, extra):
    with zipfile.ZipFile(src_zip) as zin, zipfile.ZipFile(dst_zip, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        for info, data in extra:
            zout.writestr(info, data)


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "sub/../../evil.txt"])
def test_zip_entry_escapes(student_bundle, tmp_path, name):
    z = tmp_path / "bad.zip"
    _rezip(student_bundle.with_suffix(".zip"), z, [(zipfile.ZipInfo(name), b"evil")])
    with pytest.raises(BundleError, match="escapes|absolute|'\\.\\.'"):
        Bundle.load(z)
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_entry(student_bundle, tmp_path):
    info = zipfile.ZipInfo("link.onnx")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = tmp_path / "link.zip"
    _rezip(student_bundle.with_suffix(".zip"), z, [(info, "/etc/passwd")])
    with pytest.raises(BundleError, match="symbolic link"):
        Bundle.load(z)


def test_zip_not_a_zip(tmp_path):
    p = tmp_path / "x.zip"
    p.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a readable zip"):
        Bundle.load(p)
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.load(tmp_path / "missing.zip")


def test_zip_with_changed_file(student_bundle, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(student_bundle, d)
    (d / "tokenizer.json").write_text((d / "tokenizer.json").read_text() + " ")
    write_zip(d, tmp_path / "t.zip")
    with pytest.raises(BundleError, match="checksum mismatch"):
        Bundle.load(tmp_path / "t.zip")


@pytest.mark.parametrize("location", ["../../secret.bin", "/etc/passwd", "not_listed.bin"])
def test_external_data_outside_bundle(bundle_copy, location):
    """A (re-hashed, so checksums pass) model whose initializer points at external data elsewhere."""
    p = bundle_copy / "model.fp32.onnx"
    model = onnx.load(str(p))
    init = model.graph.initializer[0]
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    for key, val in (("location", location), ("offset", "0"), ("length", "16")):
        e = init.external_data.add()
        e.key, e.value = key, val
    p.write_bytes(model.SerializeToString())
    write_manifest(bundle_copy, _manifest(bundle_copy))
    assert location in onnx_external_data_locations(p)
    with pytest.raises(BundleError, match="external data"):
        Bundle.load(bundle_copy, precision="fp32")


@pytest.mark.parametrize("target", ["riscv64", "mips"])
def test_unknown_target(student_bundle, target):
    with pytest.raises(BundleError, match="unknown target"):
        Bundle.load(student_bundle, target=target)


def test_target_absent_from_bundle(bundle_copy):
    m = _manifest(bundle_copy)
    m["variants"] = [v for v in m["variants"] if v["target"] != "arm64"]
    _save_manifest(bundle_copy, m)
    with pytest.raises(BundleError, match="no variant for target 'arm64'"):
        Bundle.load(bundle_copy, target="arm64")
