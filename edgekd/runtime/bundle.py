"""The on-disk bundle format: manifest, checksums and the safety checks done before anything loads.

A bundle is a directory (or the same tree as one ``.zip``) holding ``manifest.json``, the
tokenizer and one ONNX file per variant. ``manifest.json`` lists the sha256 and size of every
other file; nothing outside that list may be present. Loading refuses, with
:class:`edgekd.errors.BundleError`: an unknown schema version, a missing, changed or unlisted file,
a path that escapes the bundle (``..``, absolute, a link), zip entries that do so, an ONNX model
whose external-data references point outside the bundle, a missing tokenizer.

Torch-free: only the standard library is used here (the ONNX protobuf is walked by hand so that
``onnx`` is not needed on the device).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import posixpath
import stat
import zipfile
from typing import Any, Iterator

from edgekd.errors import BundleError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST = "manifest.json"
BUNDLE_FORMAT = "edgekd-bundle"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_relpath(rel: str, what: str) -> str:
    """Return ``rel`` normalised, or raise if it is absolute or escapes the bundle root."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{what}: expected a non-empty relative path, got {rel!r}")
    if "\\" in rel or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise BundleError(f"{what}: absolute or non-POSIX path {rel!r} is not allowed in a bundle")
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../") or norm.startswith("/") or norm == ".":
        raise BundleError(f"{what}: path {rel!r} escapes the bundle")
    if any(part == ".." for part in rel.split("/")):
        raise BundleError(f"{what}: path {rel!r} contains '..'")
    return norm


# --------------------------------------------------------------------------------------- zip files
def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return info.create_system == 3 and stat.S_ISLNK(mode)


def safe_extract_zip(zip_path: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Extract a bundle zip after checking every entry: no absolute paths, no ``..``, no links,
    no duplicates, regular files and directories only."""
    dest = pathlib.Path(dest)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"bundle: {zip_path} is not a readable zip file: {exc}") from exc
    with zf:
        seen: set[str] = set()
        infos = zf.infolist()
        for info in infos:
            name = info.filename
            if _zip_is_link(info):
                raise BundleError(f"bundle zip: entry {name!r} is a symbolic link; links are not allowed")
            rel = check_relpath(name.rstrip("/") if info.is_dir() else name, "bundle zip entry")
            fmt = stat.S_IFMT(info.external_attr >> 16)
            if info.create_system == 3 and fmt and fmt not in (stat.S_IFREG, stat.S_IFDIR):
                raise BundleError(f"bundle zip: entry {name!r} is not a regular file")
            if rel in seen:
                raise BundleError(f"bundle zip: duplicate entry {name!r}")
            seen.add(rel)
        for info in infos:
            if info.is_dir():
                continue
            target = dest / check_relpath(info.filename, "bundle zip entry")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while True:
                    block = src.read(1 << 20)
                    if not block:
                        break
                    out.write(block)


def write_zip(bundle_dir: str | os.PathLike, zip_path: str | os.PathLike) -> pathlib.Path:
    """Write the bundle directory as one zip (deflated; entries sorted, fixed timestamps)."""
    bundle_dir, zip_path = pathlib.Path(bundle_dir), pathlib.Path(zip_path)
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(bundle_dir.rglob("*")):
            if p.is_file():
                rel = p.relative_to(bundle_dir).as_posix()
                info = zipfile.ZipInfo(rel, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.create_system = 3
                with open(p, "rb") as fh:
                    zf.writestr(info, fh.read())
    os.replace(tmp, zip_path)
    return zip_path


# ------------------------------------------------------------------ ONNX external-data references
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise BundleError("onnx model: truncated protobuf (varint)")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise BundleError("onnx model: malformed protobuf varint")


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """Yield (field_number, wire_type, value) of one protobuf message; length-delimited values
    are returned as bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            val, i = _varint(buf, i)
        elif wt == 1:
            val, i = buf[i:i + 8], i + 8
        elif wt == 2:
            length, i = _varint(buf, i)
            if i + length > n:
                raise BundleError("onnx model: truncated protobuf (length-delimited field)")
            val, i = buf[i:i + length], i + length
        elif wt == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise BundleError(f"onnx model: unsupported protobuf wire type {wt}")
        yield field, wt, val


def _tensor_locations(tensor: bytes) -> list[str]:
    locs = []
    for f, wt, v in _fields(tensor):
        if f == 13 and wt == 2:  # TensorProto.external_data: StringStringEntryProto
            kv = {ff: vv for ff, w2, vv in _fields(v) if w2 == 2}
            if kv.get(1, b"") == b"location":
                locs.append(kv.get(2, b"").decode("utf-8", errors="replace"))
    return locs


def _graph_locations(graph: bytes) -> list[str]:
    locs: list[str] = []
    for f, wt, v in _fields(graph):
        if wt != 2:
            continue
        if f == 5:  # initializer
            locs += _tensor_locations(v)
        elif f == 15:  # sparse_initializer: values(1), indices(2)
            for ff, w2, vv in _fields(v):
                if w2 == 2 and ff in (1, 2):
                    locs += _tensor_locations(vv)
        elif f == 1:  # node -> attribute(5)
            for ff, w2, vv in _fields(v):
                if ff == 5 and w2 == 2:
                    for af, aw, av in _fields(vv):
                        if aw != 2:
                            continue
                        if af in (5, 10):  # t, tensors
                            locs += _tensor_locations(av)
                        elif af in (6, 11):  # g, graphs
                            locs += _graph_locations(av)
    return locs


def onnx_external_data_locations(model_path: str | os.PathLike) -> list[str]:
    """All ``location`` entries of external-data tensors in an ONNX model (graph, subgraphs,
    functions are not allowed to hold initializers)."""
    buf = pathlib.Path(model_path).read_bytes()
    locs: list[str] = []
    for f, wt, v in _fields(buf):
        if f == 7 and wt == 2:  # ModelProto.graph
            locs += _graph_locations(v)
    return locs


def check_external_data(model_path: pathlib.Path, root: pathlib.Path, listed: set[str]) -> None:
    """Refuse external-data references that leave the bundle or name files the manifest does not list."""
    model_dir_rel = posixpath.dirname(model_path.relative_to(root).as_posix())
    for loc in onnx_external_data_locations(model_path):
        if os.path.isabs(loc) or loc.startswith("/") or "\\" in loc:
            raise BundleError(f"{model_path.name}: external data location {loc!r} is an absolute path")
        rel = posixpath.normpath(posixpath.join(model_dir_rel, loc))
        if rel == ".." or rel.startswith("../") or any(p == ".." for p in loc.split("/")):
            raise BundleError(f"{model_path.name}: external data location {loc!r} points outside the bundle")
        if rel not in listed:
            raise BundleError(f"{model_path.name}: external data file {loc!r} is not listed in the manifest")


# ------------------------------------------------------------------------------------ manifests
def file_entry(path: pathlib.Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def write_manifest(bundle_dir: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file under ``bundle_dir`` (except the manifest), store the table in
    ``manifest['files']`` and write ``manifest.json`` atomically. Returns the manifest."""
    bundle_dir = pathlib.Path(bundle_dir)
    files = {}
    for p in sorted(bundle_dir.rglob("*")):
        if p.is_symlink():
            raise BundleError(f"bundle: {p} is a symbolic link; bundles hold regular files only")
        if p.is_file() and p.relative_to(bundle_dir).as_posix() != MANIFEST:
            files[p.relative_to(bundle_dir).as_posix()] = file_entry(p)
    manifest = dict(manifest)
    manifest["files"] = files
    tmp = bundle_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, bundle_dir / MANIFEST)
    return manifest


def read_and_verify(root: str | os.PathLike) -> dict[str, Any]:
    """Read ``manifest.json`` of an (extracted) bundle directory and verify everything; returns it."""
    root = pathlib.Path(root)
    mpath = root / MANIFEST
    if not mpath.is_file() or mpath.is_symlink():
        raise BundleError(f"bundle: {MANIFEST} not found in {root}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle: {MANIFEST} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"bundle: {MANIFEST} is not an edgekd bundle manifest (format != {BUNDLE_FORMAT!r})")
    version = manifest.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(
            f"bundle: unknown schema_version {version!r}; this edgekd reads {list(SUPPORTED_SCHEMA_VERSIONS)}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError("bundle: manifest has no 'files' table")
    listed: set[str] = set()
    for rel, entry in files.items():
        rel_n = check_relpath(rel, "manifest files")
        p = root / rel_n
        if p.is_symlink():
            raise BundleError(f"bundle: {rel!r} is a symbolic link; links are not allowed")
        if not p.is_file():
            raise BundleError(f"bundle: file {rel!r} listed in the manifest is missing")
        if not isinstance(entry, dict) or "sha256" not in entry:
            raise BundleError(f"bundle: manifest entry of {rel!r} has no sha256")
        if p.stat().st_size != entry.get("size", p.stat().st_size) or sha256_file(p) != entry["sha256"]:
            raise BundleError(f"bundle: checksum mismatch for {rel!r}: the file was changed or corrupted")
        listed.add(rel_n)
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            raise BundleError(f"bundle: {rel!r} is a symbolic link; links are not allowed")
        if p.is_file() and rel != MANIFEST and rel not in listed:
            raise BundleError(f"bundle: file {rel!r} is not listed in the manifest")
    pre = manifest.get("preprocessing") or {}
    tok = pre.get("tokenizer")
    if not tok or check_relpath(tok, "preprocessing.tokenizer") not in listed:
        raise BundleError(f"bundle: tokenizer {tok!r} is missing (manifest preprocessing.tokenizer)")
    variants = manifest.get("variants")
    if not isinstance(variants, list) or not variants:
        raise BundleError("bundle: manifest lists no model variants")
    for v in variants:
        rel = check_relpath(v.get("file", ""), f"variant {v.get('id')!r} file")
        if rel not in listed:
            raise BundleError(f"bundle: model file {rel!r} of variant {v.get('id')!r} is missing")
        check_external_data(root / rel, root, listed)
        if v.get("ort") is not None:  # the ORT-format copy (compile --ort); no external data in that format
            ort_rel = check_relpath((v["ort"] or {}).get("file", ""), f"variant {v.get('id')!r} ort file")
            if ort_rel not in listed:
                raise BundleError(f"bundle: ORT model file {ort_rel!r} of variant {v.get('id')!r} is missing")
    return manifest
