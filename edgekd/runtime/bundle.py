"""The on-disk bundle format: manifest, checksums and the safety checks done before anything loads.

A bundle is a directory (or the same tree as one ``.zip``) holding ``manifest.json``, its digest
``manifest.sha256`` (optionally a signature ``manifest.sig``), the tokenizer and one ONNX file per
variant. ``manifest.json`` lists the sha256 and size of every other file; nothing outside that
list may be present. Loading refuses, with :class:`edgekd.errors.BundleError`: a manifest that
breaks the schema (:mod:`edgekd.runtime.manifest`; the error names the key), is over the size
limit, was edited (digest) or is not signed by a trusted key (when keys are given); a missing,
changed or unlisted file; a path that escapes the bundle (``..``, absolute, a link); zip entries
that do so, duplicate or clash (``x`` and ``x/y``), or break the limits of
:class:`~edgekd.runtime.archive.BundleLimits` (entries, sizes, compression ratio); an ONNX model
whose external-data references point outside the bundle; a missing tokenizer.

Zips are checked before anything is written and only the selected variant is extracted
(:mod:`edgekd.runtime.archive`). Files are hashed by streaming, once each.

Torch-free: only the standard library is used here (the ONNX protobuf is walked by hand so that
``onnx`` is not needed on the device: :mod:`edgekd.runtime.onnxscan`).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import posixpath
import stat
import zipfile
from typing import Any, Callable, Iterable

from edgekd.errors import BundleError
from edgekd.runtime.archive import (DEFAULT_LIMITS, BundleLimits, TempDir, check_listing, extract_entries,
                                    hash_entries, open_zip, read_meta)
from edgekd.runtime.manifest import (BUNDLE_FORMAT, DIGEST_FILE, MANIFEST, META_FILES, SCHEMA_VERSION,  # noqa: F401
                                     SIGNATURE_FILE, SUPPORTED_SCHEMA_VERSIONS, check_digest, check_relpath,
                                     manifest_digest, parse_manifest)
from edgekd.runtime.onnxscan import onnx_external_data_locations  # noqa: F401  (public name, kept here)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------- writing
def file_entry(path: pathlib.Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def write_manifest(bundle_dir: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file under ``bundle_dir`` (except the manifest's own files), store the table in
    ``manifest['files']``, validate, and write ``manifest.json`` and ``manifest.sha256``
    atomically. A ``manifest.sig`` no longer matches and is removed (sign again). Returns the manifest."""
    from edgekd.runtime.manifest import validate_manifest

    bundle_dir = pathlib.Path(bundle_dir)
    files = {}
    for p in sorted(bundle_dir.rglob("*")):
        if p.is_symlink():
            raise BundleError(f"bundle: {p} is a symbolic link; bundles hold regular files only")
        rel = p.relative_to(bundle_dir).as_posix()
        if p.is_file() and rel not in META_FILES and not rel.endswith(".tmp"):
            files[rel] = file_entry(p)
    manifest = dict(manifest)
    manifest["files"] = files
    validate_manifest(manifest)
    for name, text in ((MANIFEST, json.dumps(manifest, indent=2, sort_keys=False, allow_nan=False) + "\n"),
                       (DIGEST_FILE, manifest_digest(manifest) + "\n")):
        tmp = bundle_dir / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, bundle_dir / name)
    (bundle_dir / SIGNATURE_FILE).unlink(missing_ok=True)
    return manifest


def write_zip(bundle_dir: str | os.PathLike, zip_path: str | os.PathLike) -> pathlib.Path:
    """Write the bundle directory as one zip (deflated; entries sorted, fixed timestamps), streaming."""
    bundle_dir, zip_path = pathlib.Path(bundle_dir), pathlib.Path(zip_path)
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for p in sorted(bundle_dir.rglob("*")):
            if p.is_file():
                rel = p.relative_to(bundle_dir).as_posix()
                info = zipfile.ZipInfo(rel, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.create_system = 3
                info.file_size = p.stat().st_size
                with open(p, "rb") as fh, zf.open(info, "w", force_zip64=info.file_size > (1 << 31)) as out:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        out.write(block)
    os.replace(tmp, zip_path)
    return zip_path


# --------------------------------------------------------------------------------- reading
def _read_small(p: pathlib.Path, limit: int, what: str) -> bytes | None:
    if p.is_symlink():
        raise BundleError(f"bundle: {what} is a symbolic link; links are not allowed")
    if not p.exists():
        return None
    if not p.is_file():
        raise BundleError(f"bundle: {what} is not a regular file")
    size = p.stat().st_size
    if size > limit:
        raise BundleError(f"bundle: {what} is {size} bytes, over the limit of {limit}")
    with open(p, "rb") as fh:
        data = fh.read(size + 1)  # not limit + 1: read() allocates what it is asked for
    if len(data) > limit:
        raise BundleError(f"bundle: {what} grew over the limit of {limit} bytes while being read")
    return data


def check_manifest(raw: bytes, digest: bytes | None, sig: bytes | None, limits: BundleLimits,
                   trusted_keys: Iterable[Any] | None) -> dict[str, Any]:
    """Parse + schema, digest, and (with ``trusted_keys``) signature: the manifest is usable after this."""
    manifest = parse_manifest(raw, limits.max_manifest_bytes)
    digest_hex = check_digest(manifest, digest)
    if trusted_keys is not None:
        from edgekd.runtime.signing import verify_signature

        verify_signature(digest_hex, sig, trusted_keys)
    return manifest


def read_dir_manifest(root: pathlib.Path, limits: BundleLimits = DEFAULT_LIMITS,
                      trusted_keys: Iterable[Any] | None = None) -> dict[str, Any]:
    raw = _read_small(root / MANIFEST, limits.max_manifest_bytes, MANIFEST)
    if raw is None:
        raise BundleError(f"bundle: {MANIFEST} not found in {root}")
    digest = _read_small(root / DIGEST_FILE, limits.max_meta_bytes, DIGEST_FILE)
    sig = _read_small(root / SIGNATURE_FILE, limits.max_meta_bytes, SIGNATURE_FILE)
    return check_manifest(raw, digest, sig, limits, trusted_keys)


def verify_dir_files(root: pathlib.Path, manifest: dict[str, Any], hash_names: Iterable[str] | None = None,
                     limits: BundleLimits = DEFAULT_LIMITS) -> None:
    """Every listed file present with its size, no unlisted file, no link, at most
    ``limits.max_entries`` entries; the sha256 of ``hash_names`` (default: every listed file)
    checked by streaming."""
    files = manifest["files"]
    if len(files) > limits.max_entries:
        raise BundleError(f"bundle: the manifest lists {len(files)} files, over the limit of {limits.max_entries}")
    entries = []
    for p in root.rglob("*"):  # counted first: a folder of a million files is refused quickly
        entries.append(p)
        if len(entries) > limits.max_entries + len(META_FILES):
            raise BundleError(f"bundle: {root} holds over {limits.max_entries} entries")
    for p in entries:
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            raise BundleError(f"bundle: {rel!r} is a symbolic link; links are not allowed")
        if not p.is_dir() and rel not in META_FILES and rel not in files:
            raise BundleError(f"bundle: file {rel!r} is not listed in the manifest")
    for rel, entry in files.items():
        p = root / rel
        if p.is_symlink():
            raise BundleError(f"bundle: {rel!r} is a symbolic link; links are not allowed")
        if not p.is_file():
            raise BundleError(f"bundle: file {rel!r} listed in the manifest is missing")
        if p.stat().st_size != entry["size"]:
            raise BundleError(f"bundle: checksum mismatch for {rel!r}: the file was changed or corrupted (size)")
    for rel in (files if hash_names is None else hash_names):
        if sha256_file(root / rel) != files[rel]["sha256"]:
            raise BundleError(f"bundle: checksum mismatch for {rel!r}: the file was changed or corrupted")


def external_data_files(model_path: pathlib.Path, root: pathlib.Path, listed: Iterable[str]) -> list[str]:
    """The bundle files that ``model_path``'s external-data references name; refuses references
    that leave the bundle or name files the manifest does not list."""
    if model_path.suffix == ".ort":  # an ORT-format copy (compile --ort): that format has no external data
        return []
    listed = set(listed)
    model_dir_rel = posixpath.dirname(model_path.relative_to(root).as_posix())
    out: list[str] = []
    for loc in onnx_external_data_locations(model_path):
        if os.path.isabs(loc) or loc.startswith("/") or "\\" in loc:
            raise BundleError(f"{model_path.name}: external data location {loc!r} is an absolute path")
        rel = posixpath.normpath(posixpath.join(model_dir_rel, loc))
        if rel == ".." or rel.startswith("../") or any(p == ".." for p in loc.split("/")):
            raise BundleError(f"{model_path.name}: external data location {loc!r} points outside the bundle")
        if rel not in listed or rel in META_FILES:
            raise BundleError(f"{model_path.name}: external data file {loc!r} is not listed in the manifest")
        if rel not in out:
            out.append(rel)
    return out


def check_external_data(model_path: pathlib.Path, root: pathlib.Path, listed: set[str]) -> None:
    """Refuse external-data references that leave the bundle or name files the manifest does not list."""
    external_data_files(model_path, root, listed)


def variant_files(manifest: dict[str, Any], variant: dict[str, Any]) -> list[str]:
    """Files a variant needs before its external data is known: the tokenizer and its model file."""
    return [manifest["preprocessing"]["tokenizer"], variant["file"]]


def open_bundle(path: str | os.PathLike, choose: Callable[[dict[str, Any]], dict[str, Any]], *,
                trusted_keys: Iterable[Any] | None = None, limits: BundleLimits | None = None,
                verify: str = "all") -> tuple[pathlib.Path, dict[str, Any], dict[str, Any], TempDir | None]:
    """Verify a bundle directory or zip and make the variant ``choose(manifest)`` returns loadable.

    Returns ``(root, manifest, variant, tempdir)``; for a zip only the variant's files are
    extracted into ``tempdir``. ``verify="all"`` hash-checks every listed file (streaming, the
    unselected ones are never written); ``"selected"`` only the files the variant needs (sizes and
    the listing are still checked for all)."""
    if verify not in ("all", "selected"):
        raise BundleError(f"verify: expected 'all' or 'selected', got {verify!r}")
    limits = limits or DEFAULT_LIMITS
    p = pathlib.Path(path)
    if p.is_dir():
        manifest = read_dir_manifest(p, limits, trusted_keys)
        variant = choose(manifest)
        need = variant_files(manifest, variant)
        verify_dir_files(p, manifest, None if verify == "all" else need, limits)
        external = external_data_files(p / variant["file"], p, manifest["files"])
        if verify == "selected":
            verify_dir_files(p, manifest, external, limits)
        return p, manifest, variant, None
    if not p.exists():
        raise BundleError(f"bundle: {path} does not exist")
    if not p.is_file():
        raise BundleError(f"bundle: {path} is neither a bundle directory nor a .zip file")
    zf, entries = open_zip(p, limits)
    with zf:
        manifest = check_manifest(*read_meta(zf, entries, limits), limits, trusted_keys)
        check_listing(entries, manifest["files"])
        variant = choose(manifest)
        need = variant_files(manifest, variant)
        tmp = TempDir()
        try:
            extract_entries(zf, entries, manifest["files"], need, tmp.path)
            external = external_data_files(tmp.path / variant["file"], tmp.path, manifest["files"])
            extract_entries(zf, entries, manifest["files"], external, tmp.path)
            if verify == "all":
                hash_entries(zf, entries, manifest["files"], [r for r in manifest["files"] if r not in need + external])
        except BaseException:
            tmp.cleanup()
            raise
    return tmp.path, manifest, variant, tmp


def peek_manifest(path: str | os.PathLike, limits: BundleLimits | None = None) -> dict[str, Any]:
    """The checked manifest (schema and digest) of a bundle directory or zip, without touching
    its other files (for example to learn the label names before reading a data file)."""
    limits = limits or DEFAULT_LIMITS
    p = pathlib.Path(path)
    if p.is_dir():
        return read_dir_manifest(p, limits)
    if not p.is_file():
        raise BundleError(f"bundle: {path} does not exist")
    zf, entries = open_zip(p, limits)
    with zf:
        return check_manifest(*read_meta(zf, entries, limits), limits, None)


def safe_extract_zip(zip_path: str | os.PathLike, dest: str | os.PathLike, limits: BundleLimits | None = None) -> None:
    """Check a bundle zip (central directory, limits, manifest, listing) and extract all of it into
    ``dest``, hashing each file while writing."""
    limits = limits or DEFAULT_LIMITS
    dest = pathlib.Path(dest)
    zf, entries = open_zip(zip_path, limits)
    with zf:
        raw, digest, sig = read_meta(zf, entries, limits)
        manifest = check_manifest(raw, digest, sig, limits, None)
        check_listing(entries, manifest["files"])
        extract_entries(zf, entries, manifest["files"], list(manifest["files"]), dest)
        for name, data in ((MANIFEST, raw), (DIGEST_FILE, digest), (SIGNATURE_FILE, sig)):
            if data is not None:
                (dest / name).write_bytes(data)


def read_and_verify(root: str | os.PathLike, trusted_keys: Iterable[Any] | None = None,
                    limits: BundleLimits | None = None) -> dict[str, Any]:
    """Read ``manifest.json`` of an (extracted) bundle directory and verify everything (every file's
    hash, every variant's external data); returns the manifest."""
    root = pathlib.Path(root)
    limits = limits or DEFAULT_LIMITS
    manifest = read_dir_manifest(root, limits, trusted_keys)
    verify_dir_files(root, manifest, None, limits)
    for v in manifest["variants"]:
        external_data_files(root / v["file"], root, manifest["files"])
    return manifest
