"""Bounded, verify-first reading of bundle zips, and the temporary directories they extract to.

Order of work for a ``.zip`` (nothing is written before the last step):

1. the central directory: at most ``limits.max_entries`` entries; every name a safe relative path
   (no ``..``, no absolute path, no link, no device), no duplicates, no entry that is both a file
   and a folder (``x`` and ``x/y``); declared sizes within ``max_file_bytes`` each and
   ``max_total_bytes`` together, and a compression ratio within ``max_ratio`` (zip bombs);
2. ``manifest.json`` (read up to ``max_manifest_bytes``), its schema, its digest
   (``manifest.sha256``) and, when trusted keys are given, its signature (``manifest.sig``);
3. every file entry must be listed in the manifest with the same size, and every listed file must
   be present;
4. only the files a variant needs are extracted, each hashed while it streams to disk and cut off
   at its listed size; the other listed files are hash-checked by streaming, never written.

Temporary directories remember the process that made them: only that process removes them (a
forked child's exit never deletes its parent's copy), at garbage collection, at exit, and on
SIGTERM (a handler is installed when none was set; it cleans up, then re-raises the signal).
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import signal
import stat
import tempfile
import threading
import weakref
import zipfile
from dataclasses import dataclass
from typing import Iterable

from edgekd.errors import BundleError
from edgekd.runtime.manifest import DIGEST_FILE, MANIFEST, META_FILES, SIGNATURE_FILE, check_relpath

_CHUNK = 1 << 20


@dataclass(frozen=True)
class BundleLimits:
    """Limits applied before anything is extracted. Defaults fit a generative bundle of a few GB
    (a few hundred MB per variant is typical)."""

    max_entries: int = 4096
    max_file_bytes: int = 8 << 30
    max_total_bytes: int = 32 << 30
    max_ratio: float = 100.0  # uncompressed / compressed, checked for entries over ratio_min_bytes
    ratio_min_bytes: int = 1 << 20
    max_manifest_bytes: int = 8 << 20
    max_meta_bytes: int = 64 << 10  # manifest.sha256 and manifest.sig


DEFAULT_LIMITS = BundleLimits()

ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError,
              OSError, ValueError)  # bad CRC / header, zip64 off, unknown method, encrypted, truncated


def _is_link(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def open_zip(path: str | os.PathLike, limits: BundleLimits = DEFAULT_LIMITS
             ) -> tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]:
    """Open ``path`` and check its central directory (step 1); returns the zip and its file
    entries by normalised name."""
    try:
        zf = zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise BundleError(f"bundle: {path} is not a readable zip file: {exc}") from exc
    try:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise BundleError(f"bundle zip: {len(infos)} entries, over the limit of {limits.max_entries}")
        files: dict[str, zipfile.ZipInfo] = {}
        dirs: set[str] = set()
        total = 0
        for info in infos:
            name = info.filename
            if _is_link(info):
                raise BundleError(f"bundle zip: entry {name!r} is a symbolic link; links are not allowed")
            rel = check_relpath(name.rstrip("/") if info.is_dir() else name, "bundle zip entry")
            fmt = stat.S_IFMT(info.external_attr >> 16)
            if info.create_system == 3 and fmt and fmt not in (stat.S_IFREG, stat.S_IFDIR):
                raise BundleError(f"bundle zip: entry {name!r} is not a regular file")
            if rel in files or rel in dirs:
                raise BundleError(f"bundle zip: duplicate entry {name!r}")
            if info.flag_bits & 0x1:
                raise BundleError(f"bundle zip: entry {name!r} is encrypted")
            if info.is_dir():
                dirs.add(rel)
                continue
            files[rel] = info
            if info.file_size > limits.max_file_bytes:
                raise BundleError(f"bundle zip: entry {name!r} is {info.file_size} bytes, over the per-file limit "
                                  f"of {limits.max_file_bytes}")
            total += info.file_size
            if total > limits.max_total_bytes:
                raise BundleError(f"bundle zip: entries add up to over {limits.max_total_bytes} bytes")
            if info.file_size > limits.ratio_min_bytes and \
                    info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise BundleError(f"bundle zip: entry {name!r} expands {info.file_size / max(info.compress_size, 1):.0f}x, "
                                  f"over the compression-ratio limit of {limits.max_ratio:g}x (zip bomb?)")
        parents = {rel.rsplit("/", k)[0] for rel in files for k in range(1, rel.count("/") + 1)}
        clash = sorted(parents & set(files))
        if clash:
            raise BundleError(f"bundle zip: {clash[0]!r} is both a file and a folder")
        return zf, files
    except BaseException:
        zf.close()
        raise


def read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes:
    """Read one (small) entry, at most ``max_bytes``."""
    if info.file_size > max_bytes:
        raise BundleError(f"bundle: {info.filename} is {info.file_size} bytes, over the limit of {max_bytes}")
    try:
        with zf.open(info) as src:
            data = src.read(info.file_size + 1)  # ZipExtFile stops at the declared size
    except ZIP_ERRORS as exc:
        raise BundleError(f"bundle zip: entry {info.filename!r} is corrupt: {exc}") from exc
    if len(data) > max_bytes:
        raise BundleError(f"bundle: {info.filename} is over the limit of {max_bytes} bytes")
    return data


def read_meta(zf: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], limits: BundleLimits
              ) -> tuple[bytes, bytes | None, bytes | None]:
    """``manifest.json``, ``manifest.sha256`` and ``manifest.sig`` (the last two may be absent)."""
    if MANIFEST not in files:
        raise BundleError(f"bundle: {MANIFEST} not found in the zip")
    raw = read_entry(zf, files[MANIFEST], limits.max_manifest_bytes)
    digest = read_entry(zf, files[DIGEST_FILE], limits.max_meta_bytes) if DIGEST_FILE in files else None
    sig = read_entry(zf, files[SIGNATURE_FILE], limits.max_meta_bytes) if SIGNATURE_FILE in files else None
    return raw, digest, sig


def check_listing(files: dict[str, zipfile.ZipInfo], listed: dict[str, dict]) -> None:
    """Step 3: the zip holds exactly the listed files (plus the manifest's own files), sizes agree."""
    for rel, info in files.items():
        if rel in META_FILES:
            continue
        entry = listed.get(rel)
        if entry is None:
            raise BundleError(f"bundle: file {rel!r} is not listed in the manifest")
        if info.file_size != entry["size"]:
            raise BundleError(f"bundle: checksum mismatch for {rel!r}: the file was changed or corrupted "
                              f"({info.file_size} bytes in the zip, the manifest lists {entry['size']})")
    for rel in listed:
        if rel not in files:
            raise BundleError(f"bundle: file {rel!r} listed in the manifest is missing")


def _stream(zf: zipfile.ZipFile, info: zipfile.ZipInfo, entry: dict, out) -> None:
    rel, size = info.filename, entry["size"]
    h, n = hashlib.sha256(), 0
    try:
        with zf.open(info) as src:
            while True:
                block = src.read(min(_CHUNK, size - n + 1))
                if not block:
                    break
                n += len(block)
                if n > size:
                    raise BundleError(f"bundle: {rel!r} is longer than the {size} bytes the manifest lists")
                h.update(block)
                if out is not None:
                    out.write(block)
    except ZIP_ERRORS as exc:
        raise BundleError(f"bundle zip: entry {rel!r} is corrupt: {exc}") from exc
    if n != size or h.hexdigest() != entry["sha256"]:
        raise BundleError(f"bundle: checksum mismatch for {rel!r}: the file was changed or corrupted")


def hash_entries(zf: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], listed: dict[str, dict],
                 names: Iterable[str]) -> None:
    """Check the sha256 of ``names`` by streaming them (nothing is written)."""
    for rel in names:
        _stream(zf, files[rel], listed[rel], None)


def extract_entries(zf: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], listed: dict[str, dict],
                    names: Iterable[str], dest: pathlib.Path) -> None:
    """Extract ``names`` into ``dest``, hashing while writing; a file that fails is removed."""
    for rel in names:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(target, "xb") as out:
                _stream(zf, files[rel], listed[rel], out)
        except BaseException:
            target.unlink(missing_ok=True)
            raise


# -------------------------------------------------------------------------- temporary directories
_LIVE: dict[str, int] = {}  # path -> pid of the process that made it
_LOCK = threading.Lock()
_HANDLER_INSTALLED = False


def _remove(path: str, pid: int) -> None:
    if os.getpid() != pid:  # a forked child never removes its parent's directory
        return
    with _LOCK:
        _LIVE.pop(path, None)
    shutil.rmtree(path, ignore_errors=True)


def _on_sigterm(signum, frame) -> None:  # pragma: no cover - exercised in a subprocess test
    for path, pid in list(_LIVE.items()):
        _remove(path, pid)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handler() -> None:
    global _HANDLER_INSTALLED
    if _HANDLER_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    _HANDLER_INSTALLED = True
    try:
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter / no signals here
        pass


class TempDir:
    """A temporary directory removed by its creating process only (see the module doc)."""

    def __init__(self, prefix: str = "edgekd-bundle-"):
        _install_handler()
        self.path = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
        self.pid = os.getpid()
        with _LOCK:
            _LIVE[str(self.path)] = self.pid
        self._finalizer = weakref.finalize(self, _remove, str(self.path), self.pid)

    def cleanup(self) -> None:
        self._finalizer()
