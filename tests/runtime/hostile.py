"""A generator of corrupt and hostile bundles: every case of issue 12 (and the older integrity
cases) as ``name -> builder(src_dir, src_zip, tmp) -> (path, load kwargs)`` plus the pattern the
:class:`edgekd.errors.BundleError` message must match. Used by the runtime tests and the CLI tests."""
from __future__ import annotations

import json
import pathlib
import shutil
import stat
import warnings
import zipfile
from typing import Any, Callable

from edgekd.runtime.archive import BundleLimits
from edgekd.runtime.bundle import write_zip
from edgekd.runtime.manifest import manifest_digest

Builder = Callable[[pathlib.Path, pathlib.Path, pathlib.Path], tuple[pathlib.Path, dict[str, Any]]]


def copy_dir(src: pathlib.Path, tmp: pathlib.Path) -> pathlib.Path:
    d = tmp / "b"
    shutil.copytree(src, d)
    return d


def manifest(d: pathlib.Path) -> dict[str, Any]:
    return json.loads((d / "manifest.json").read_text())


def save(d: pathlib.Path, m: Any, digest: bool = True) -> None:
    """Write ``m`` as the manifest; ``digest=True`` also writes a matching manifest.sha256 (a
    forger who knows the format), so that the checks after the digest are what is tested."""
    (d / "manifest.json").write_text(json.dumps(m))
    if digest:
        (d / "manifest.sha256").write_text(manifest_digest(m) + "\n")


def rezip(src_zip: pathlib.Path, dst: pathlib.Path, extra=(), drop=(), store: bool = False) -> pathlib.Path:
    with zipfile.ZipFile(src_zip) as zin, zipfile.ZipFile(dst, "w") as zout, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are one of the cases
        for info in zin.infolist():
            if info.filename in drop:
                continue
            data = zin.read(info)
            if store:
                info.compress_type = zipfile.ZIP_STORED
            zout.writestr(info, data)
        for info, data in extra:
            if isinstance(info, str):
                info = zipfile.ZipInfo(info)
                info.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(info, data)
    return dst


def _edit(fn: Callable[[dict], None], digest: bool = True, as_zip: bool = False) -> Builder:
    def build(src, src_zip, tmp):
        d = copy_dir(src, tmp)
        m = manifest(d)
        fn(m)
        save(d, m, digest)
        if as_zip:
            return write_zip(d, tmp / "edited.zip"), {}
        return d, {}
    return build


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def fn(m):
        *parents, last = path.split(".")
        obj = m
        for p in parents:
            obj = obj[p]
        if value is _DELETE:
            del obj[last]
        else:
            obj[last] = value
    return fn


_DELETE = object()


def _swap_labels(m):
    m["label_names"][0], m["label_names"][1] = m["label_names"][1], m["label_names"][0]


def _file_edit(name: str, fn: Callable[[pathlib.Path], None], precision: str = "fp32") -> Builder:
    def build(src, src_zip, tmp):
        d = copy_dir(src, tmp)
        fn(d / name if name else d)
        return d, {"precision": precision}
    return build


def _flip_byte(p: pathlib.Path) -> None:
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x01
    p.write_bytes(bytes(data))


def _zip_extra(extra_fn: Callable[[], list], **limit_kw: Any) -> Builder:
    def build(src, src_zip, tmp):
        kwargs = {"limits": BundleLimits(**limit_kw)} if limit_kw else {}
        return rezip(src_zip, tmp / "x.zip", extra_fn()), kwargs
    return build


def _link_info() -> list:
    info = zipfile.ZipInfo("link.onnx")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return [(info, "/etc/passwd")]


def _bad_crc(src, src_zip, tmp):
    z = rezip(src_zip, tmp / "stored.zip", store=True)
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo("tokenizer.json")
    # local header: 30 bytes + name + extra; flip one byte in the middle of the stored data
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.file_size // 2] ^= 0x20
    z.write_bytes(bytes(data))
    return z, {}


def _file_and_folder(src, src_zip, tmp):
    # "tokenizer.json" is a file and "tokenizer.json/x" would make it a folder too
    return rezip(src_zip, tmp / "ff.zip", [("tokenizer.json/x", b"x")]), {}


def _big_manifest(src, src_zip, tmp):
    d = copy_dir(src, tmp)
    m = manifest(d)
    m["padding"] = "x" * (2 << 20)
    save(d, m)
    return d, {"limits": BundleLimits(max_manifest_bytes=1 << 20)}


def _dangling_digest(src, src_zip, tmp):
    d = copy_dir(src, tmp)
    (d / "manifest.sha256").unlink()
    return d, {}


def _pad_outside_vocab(key: str) -> Builder:
    return _edit(_set(f"preprocessing.{key}", 10_000))


CASES: dict[str, tuple[Builder, str]] = {
    # manifest edits without a new digest (issue item 2)
    "swap_label_names": (_edit(_swap_labels, digest=False), "was changed after the bundle was written"),
    "max_length_4": (_edit(_set("preprocessing.max_length", 4), digest=False), "was changed"),
    "swap_label_names_zip": (_edit(_swap_labels, digest=False, as_zip=True), "was changed"),
    "no_digest_file": (_dangling_digest, "manifest.sha256 is missing"),
    # malformed manifests (item 3), each naming the key
    "missing_label_names": (_edit(_set("label_names", _DELETE)), "label_names"),
    "label_names_not_list": (_edit(_set("label_names", "bearish")), "label_names must be a list"),
    "label_name_int": (_edit(_set("label_names", ["a", 2, "c"])), r"label_names\[1\]"),
    "max_length_str": (_edit(_set("preprocessing.max_length", "abc")), "preprocessing.max_length must be an integer"),
    "max_length_1e20": (_edit(_set("preprocessing.max_length", 1e20)), "preprocessing.max_length must be an integer"),
    "max_length_huge_int": (_edit(_set("preprocessing.max_length", 10**20)), r"preprocessing.max_length must lie in"),
    "max_length_zero": (_edit(_set("preprocessing.max_length", 0)), "preprocessing.max_length must lie in"),
    "pad_id_2_70": (_edit(_set("preprocessing.pad_id", 2**70)), "preprocessing.pad_id must lie in"),
    "pad_id_outside_vocab": (_pad_outside_vocab("pad_id"), "preprocessing.pad_id 10000 is outside the tokenizer"),
    "unk_id_outside_vocab": (_pad_outside_vocab("unk_id"), "preprocessing.unk_id 10000 is outside the tokenizer"),
    "five_labels_three_outputs": (_edit(_set("label_names", ["a", "b", "c", "d", "e"])), "5 names but the model"),
    "two_labels_three_outputs": (_edit(_set("label_names", ["a", "b"])), "2 names but the model"),
    "schema_version_1.0": (_edit(_set("schema_version", 1.0)), "unknown schema_version 1.0"),
    "schema_version_true": (_edit(_set("schema_version", True)), "unknown schema_version True"),
    "no_preprocessing": (_edit(_set("preprocessing", _DELETE)), "required key preprocessing is missing"),
    "files_size_str": (_edit(lambda m: m["files"]["tokenizer.json"].update(size="12")),
                       r"files\['tokenizer.json'\].size must be an integer"),
    "variants_empty": (_edit(_set("variants", [])), "variants must have"),
    "variant_no_file": (_edit(lambda m: m["variants"][0].pop("file")), r"variants\[0\].file is missing"),
    "manifest_too_big": (_big_manifest, "over the limit"),
    # changed / missing / unlisted files (older cases, kept)
    "changed_model": (_file_edit("model.fp32.onnx", _flip_byte), "checksum mismatch for 'model.fp32.onnx'"),
    "changed_unselected_model": (_file_edit("model.fp32.onnx", _flip_byte, precision="int8"),
                                 "checksum mismatch for 'model.fp32.onnx'"),
    "unlisted_file": (_file_edit("", lambda d: (d / "extra.bin").write_bytes(b"x")), "'extra.bin' is not listed"),
    # zips (items 1, 4)
    "zip_unlisted_entry": (_zip_extra(lambda: [("bomb.bin", b"\0" * 200_000)]), "'bomb.bin' is not listed"),
    "zip_ratio_bomb": (_zip_extra(lambda: [("bomb.bin", b"\0" * (3 << 20))]), "compression-ratio limit"),
    "zip_too_many_entries": (_zip_extra(lambda: [(f"e{k}", b"") for k in range(60)], max_entries=50),
                             "entries, over the limit of 50"),
    "zip_entry_over_file_limit": (_zip_extra(lambda: [], max_file_bytes=1000), "over the per-file limit"),
    "zip_total_over_limit": (_zip_extra(lambda: [], max_total_bytes=5000), "add up to over 5000 bytes"),
    "zip_bad_crc": (_bad_crc, "corrupt|checksum mismatch"),
    "zip_file_and_folder": (_file_and_folder, "both a file and a folder"),
    "zip_symlink": (_zip_extra(_link_info), "symbolic link"),
    "zip_escape": (_zip_extra(lambda: [("../evil.txt", b"evil")]), "escapes|'\\.\\.'"),
    "zip_duplicate": (_zip_extra(lambda: [("tokenizer.json", b"{}")]), "duplicate entry"),
    "zip_missing_manifest": (lambda s, z, t: (rezip(z, t / "nm.zip", drop=("manifest.json",)), {}),
                             "manifest.json not found"),
    "not_a_zip": (lambda s, z, t: ((t / "x.zip").write_bytes(b"PK\x03\x04 not a zip") and t / "x.zip", {}),
                  "not a readable zip"),
}
