"""Optional ed25519 signatures over a bundle's manifest digest (extra ``edgekd[sign]``:
``cryptography``).

``manifest.sig`` (JSON) holds ``{"algorithm": "ed25519", "key_id": ..., "signature": <base64>}``;
the signed message is ``b"edgekd-bundle-manifest-sha256:" + <hex digest of the canonical
manifest>``. The digest covers the manifest, and the manifest lists the sha256 of every other
file, so one signature covers the whole bundle. ``Bundle.load(..., trusted_keys=[...])`` refuses
an unsigned bundle and one signed by a key outside the list. Keys are PEM files
(``edgekd sign --generate-key KEY`` writes ``KEY`` (private, mode 0600) and ``KEY.pub``).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
from typing import Any, Iterable, Union

from edgekd.errors import BundleError, EdgekdValueError

ALGORITHM = "ed25519"
_PREFIX = b"edgekd-bundle-manifest-sha256:"
KeyLike = Union[str, os.PathLike, bytes, Any]


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise EdgekdValueError("signing: needs the 'cryptography' package (pip install edgekd[sign])") from exc
    return serialization, ed25519


def _raw_public(key) -> bytes:
    serialization, _ = _crypto()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key) -> str:
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def generate_key(path: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    """Write a new private key to ``path`` (PEM, mode 0600) and its public key to ``path.pub``."""
    serialization, ed25519 = _crypto()
    path = pathlib.Path(path)
    pub_path = path.with_name(path.name + ".pub")
    for p in (path, pub_path):
        if p.exists():
            raise EdgekdValueError(f"key: {p} exists; refusing to overwrite a key")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, pub_path


def load_private_key(path: str | os.PathLike):
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(pathlib.Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise EdgekdValueError(f"key: cannot read the private key {path}: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise EdgekdValueError(f"key: {path} is not an ed25519 private key")
    return key


def load_public_key(key: KeyLike):
    """An ed25519 public key from a PEM file path, PEM bytes, 32 raw bytes or a key object."""
    serialization, ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key()
    try:
        if isinstance(key, (bytes, bytearray)):
            data = bytes(key)
            if len(data) == 32:
                return ed25519.Ed25519PublicKey.from_public_bytes(data)
        else:
            data = pathlib.Path(key).read_bytes()
        pub = serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"trusted_keys: cannot read public key {key!r:.80}: {exc}") from exc
    if not isinstance(pub, ed25519.Ed25519PublicKey):
        raise BundleError(f"trusted_keys: {key!r:.80} is not an ed25519 public key")
    return pub


def sign_digest(digest: str, private_key) -> bytes:
    """The content of ``manifest.sig`` for a manifest ``digest``."""
    sig = private_key.sign(_PREFIX + digest.encode("ascii"))
    return (json.dumps({"algorithm": ALGORITHM, "key_id": key_id(private_key.public_key()),
                        "signature": base64.b64encode(sig).decode("ascii")}, indent=2) + "\n").encode("utf-8")


def verify_signature(digest: str, sig_file: bytes | None, trusted_keys: Iterable[KeyLike]) -> str:
    """Check ``manifest.sig`` against ``trusted_keys``; returns the key id that signed it."""
    keys = [load_public_key(k) for k in trusted_keys]
    if not keys:
        raise BundleError("trusted_keys: an empty list trusts nothing; pass None to skip signature checks")
    if sig_file is None:
        raise BundleError("bundle: not signed (no manifest.sig) but trusted_keys were given")
    try:
        sig = json.loads(sig_file.decode("utf-8"))
        if not isinstance(sig, dict) or sig.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm must be {ALGORITHM!r}")
        raw = base64.b64decode(str(sig["signature"]), validate=True)
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle: manifest.sig is malformed: {exc}") from exc
    from cryptography.exceptions import InvalidSignature

    for key in keys:
        try:
            key.verify(raw, _PREFIX + digest.encode("ascii"))
            return key_id(key)
        except InvalidSignature:
            continue
    raise BundleError(f"bundle: the signature (key id {str(sig.get('key_id'))[:16]!r}) does not verify with any "
                      f"trusted key, or the manifest was changed after signing")


# ------------------------------------------------------------------------------ whole bundles
def verify_bundle(path: str | os.PathLike, trusted_keys: Iterable[KeyLike] | None = None,
                  limits: Any = None) -> dict[str, Any]:
    """Check everything in a bundle directory or zip: manifest (schema, digest, signature when
    ``trusted_keys``), every file's sha256 (streaming), every variant's external data. A zip's
    model files are written to a temporary directory one at a time for the external-data scan.
    Returns a summary (``files``, ``variants``, ``digest``, ``signed``)."""
    from edgekd.runtime import archive, bundle

    limits = limits or archive.DEFAULT_LIMITS
    p = pathlib.Path(path)
    if p.is_dir():
        manifest = bundle.read_and_verify(p, trusted_keys=trusted_keys, limits=limits)
        signed = (p / bundle.SIGNATURE_FILE).is_file()
    elif p.is_file():
        zf, entries = archive.open_zip(p, limits)
        with zf:
            manifest = bundle.check_manifest(*archive.read_meta(zf, entries, limits), limits, trusted_keys)
            archive.check_listing(entries, manifest["files"])
            models = {v["file"] for v in manifest["variants"]}
            archive.hash_entries(zf, entries, manifest["files"], [r for r in manifest["files"] if r not in models])
            for rel in sorted(models):
                tmp = archive.TempDir(prefix="edgekd-verify-")
                try:
                    archive.extract_entries(zf, entries, manifest["files"], [rel], tmp.path)
                    bundle.external_data_files(tmp.path / rel, tmp.path, manifest["files"])
                finally:
                    tmp.cleanup()
            signed = bundle.SIGNATURE_FILE in entries
    else:
        raise BundleError(f"bundle: {path} does not exist")
    from edgekd.runtime.manifest import manifest_digest

    return {"bundle": str(p), "files": len(manifest["files"]), "variants": [v["id"] for v in manifest["variants"]],
            "digest": manifest_digest(manifest), "signed": signed,
            "signature_checked": trusted_keys is not None}


def sign_bundle(path: str | os.PathLike, key_path: str | os.PathLike) -> str:
    """Verify the bundle (directory or zip), then write ``manifest.sig`` signed with the private
    key at ``key_path`` (a zip is rewritten with the new entry). Returns the key id."""
    import shutil
    import zipfile

    from edgekd.runtime.bundle import SIGNATURE_FILE

    key = load_private_key(key_path)
    summary = verify_bundle(path)
    sig = sign_digest(summary["digest"], key)
    p = pathlib.Path(path)
    if p.is_dir():
        (p / SIGNATURE_FILE).write_bytes(sig)
    else:
        tmp = p.with_name(p.name + ".tmp")
        with zipfile.ZipFile(p) as zin, zipfile.ZipFile(tmp, "w", allowZip64=True) as zout:
            for info in zin.infolist():
                if info.filename == SIGNATURE_FILE:
                    continue
                with zin.open(info) as src, zout.open(info, "w", force_zip64=info.file_size > (1 << 31)) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            info = zipfile.ZipInfo(SIGNATURE_FILE, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr, info.create_system = 0o100644 << 16, 3
            zout.writestr(info, sig, compress_type=zipfile.ZIP_DEFLATED)
        os.replace(tmp, p)
    return key_id(key.public_key())
