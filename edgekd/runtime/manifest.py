"""The bundle manifest: parsing, schema validation and the manifest's own digest.

Torch-free and dependency-free: the schema is checked by the small validator below (types, ranges,
required keys), so every malformed manifest is a :class:`~edgekd.errors.BundleError` naming the key
before anything uses it.

**Manifest digest.** ``manifest.sha256`` holds the sha256 (64 hex digits, one line) of the
manifest's *canonical JSON form*: ``json.dumps(manifest, sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False)`` encoded as UTF-8. ``write_manifest`` writes it; loading
recomputes it and refuses a manifest that was edited afterwards (re-indenting the file is not an
edit). It protects against accidental and casual edits; for authenticity sign the digest
(:mod:`edgekd.runtime.signing`).
"""
from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
from typing import Any

from edgekd.errors import BundleError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
BUNDLE_FORMAT = "edgekd-bundle"
MANIFEST = "manifest.json"
DIGEST_FILE = "manifest.sha256"
SIGNATURE_FILE = "manifest.sig"
META_FILES = (MANIFEST, DIGEST_FILE, SIGNATURE_FILE)  # files about the manifest, not listed in it

GENERATIVE_TASK = "text-generation"  # causal-LM bundles (edgekd.runtime.generative); no label_names
# decoder graph conventions the runtime's KV loop knows (see generative.py): "gqa" (the model
# builder's graph), "gqa+logits_index" (the same with a logits_index input: logits only where asked)
GENERATIVE_IO = ("gqa", "gqa+logits_index")
MAX_INT_ID = 2**31 - 1  # token ids and lengths are int32-safe
MAX_LENGTH = 1 << 20
MAX_FILE_SIZE = 1 << 53
_HEX64 = re.compile(r"[0-9a-f]{64}")


def check_relpath(rel: str, what: str) -> str:
    """Return ``rel`` normalised, or raise if it is absolute or escapes the bundle root."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{what}: expected a non-empty relative path, got {rel!r:.80}")
    if "\\" in rel or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":") or "\x00" in rel:
        raise BundleError(f"{what}: absolute or non-POSIX path {rel!r:.200} is not allowed in a bundle")
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../") or norm.startswith("/") or norm == ".":
        raise BundleError(f"{what}: path {rel!r:.200} escapes the bundle")
    if any(part == ".." for part in rel.split("/")):
        raise BundleError(f"{what}: path {rel!r:.200} contains '..'")
    return norm


# ------------------------------------------------------------------------------------- parsing
def _no_constants(name: str) -> Any:
    raise BundleError(f"bundle: {MANIFEST} holds {name}, which is not JSON (NaN/Infinity are refused)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise BundleError(f"bundle: {MANIFEST} has the key {k!r} twice")
        out[k] = v
    return out


def parse_manifest(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """Parse ``manifest.json`` bytes (refusing more than ``max_bytes``, NaN/Infinity, duplicate
    keys) and validate the schema; returns the manifest."""
    if len(raw) > max_bytes:
        raise BundleError(f"bundle: {MANIFEST} is {len(raw)} bytes, over the limit of {max_bytes}")
    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"bundle: {MANIFEST} is not valid JSON: {exc}") from exc
    validate_manifest(manifest)
    return manifest


def canonical_json(manifest: dict[str, Any]) -> bytes:
    """The canonical form the digest covers (sorted keys, no whitespace, UTF-8)."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def manifest_digest(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


def check_digest(manifest: dict[str, Any], digest_text: bytes | None) -> str:
    """Compare ``manifest.sha256``'s content with the manifest; returns the digest."""
    if digest_text is None:
        raise BundleError(f"bundle: {DIGEST_FILE} is missing (the manifest's own digest; bundles compiled by "
                          f"edgekd >= 0.1 have it: re-run edgekd compile)")
    text = digest_text[:200].decode("ascii", errors="replace").strip()
    want = text.split()[0] if text else ""
    if not _HEX64.fullmatch(want):
        raise BundleError(f"bundle: {DIGEST_FILE} does not hold a sha256 hex digest")
    got = manifest_digest(manifest)
    if got != want:
        raise BundleError(f"bundle: {MANIFEST} was changed after the bundle was written (its digest does not "
                          f"match {DIGEST_FILE})")
    return got


# ------------------------------------------------------------------------------------- schema
def _type_name(v: Any) -> str:
    return type(v).__name__


def _int(v: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise BundleError(f"manifest: {key} must be an integer, got {_type_name(v)} {v!r:.60}")
    if not lo <= v <= hi:
        raise BundleError(f"manifest: {key} must lie in [{lo}, {hi}], got {v}")
    return v


def _str(v: Any, key: str, max_len: int = 4096) -> str:
    if not isinstance(v, str) or not v:
        raise BundleError(f"manifest: {key} must be a non-empty string, got {_type_name(v)} {v!r:.60}")
    if len(v) > max_len:
        raise BundleError(f"manifest: {key} is longer than {max_len} characters")
    return v


def _dict(v: Any, key: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise BundleError(f"manifest: {key} must be an object, got {_type_name(v)}")
    return v


def _list(v: Any, key: str, min_items: int = 0, max_items: int = 100_000) -> list[Any]:
    if not isinstance(v, list):
        raise BundleError(f"manifest: {key} must be a list, got {_type_name(v)}")
    if not min_items <= len(v) <= max_items:
        raise BundleError(f"manifest: {key} must have {min_items}..{max_items} items, got {len(v)}")
    return v


def _required(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise BundleError(f"manifest: required key {where}{key} is missing")
    return d[key]


def validate_manifest(m: Any) -> None:
    """Check types, ranges and required keys; raise :class:`BundleError` naming the key."""
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"bundle: {MANIFEST} is not an edgekd bundle manifest (format != {BUNDLE_FORMAT!r})")
    version = m.get("schema_version")
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:  # 1.0 and true are refused
        raise BundleError(f"bundle: unknown schema_version {version!r}; this edgekd reads "
                          f"{list(SUPPORTED_SCHEMA_VERSIONS)} (an integer)")
    for key in ("name", "task", "model_kind"):
        if key in m and m[key] is not None:
            _str(m[key], key)
    generative = m.get("task") == GENERATIVE_TASK
    if not generative or "label_names" in m:
        labels = _list(_required(m, "label_names", ""), "label_names", 1, 100_000)
        for k, name in enumerate(labels):
            _str(name, f"label_names[{k}]", 256)
        if len(set(labels)) != len(labels):
            raise BundleError(f"manifest: label_names has duplicates: {labels}")
    if "outputs" in m:
        for k, o in enumerate(_list(m["outputs"], "outputs", 1, 64)):
            _str(o, f"outputs[{k}]", 256)
    if "inputs" in m:
        for k, i in enumerate(_list(m["inputs"], "inputs", 1, 64)):
            _str(_required(_dict(i, f"inputs[{k}]"), "name", f"inputs[{k}]."), f"inputs[{k}].name", 256)

    files = _dict(_required(m, "files", ""), "files")
    if not files:
        raise BundleError("bundle: manifest has no 'files' table")
    for rel, entry in files.items():
        if check_relpath(rel, "manifest files") != rel:
            raise BundleError(f"manifest: files key {rel!r:.200} is not in normal form ({check_relpath(rel, 'files')!r})")
        entry = _dict(entry, f"files[{rel!r}]")
        sha = _required(entry, "sha256", f"files[{rel!r}].")
        if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
            raise BundleError(f"manifest: files[{rel!r}].sha256 must be 64 lowercase hex digits")
        _int(_required(entry, "size", f"files[{rel!r}]."), f"files[{rel!r}].size", 0, MAX_FILE_SIZE)

    pre = _dict(_required(m, "preprocessing", ""), "preprocessing")
    tok = _str(_required(pre, "tokenizer", "preprocessing."), "preprocessing.tokenizer")
    if check_relpath(tok, "preprocessing.tokenizer") not in files:
        raise BundleError(f"bundle: tokenizer {tok!r} is missing (manifest preprocessing.tokenizer is not in files)")
    max_len = _int(_required(pre, "max_length", "preprocessing."), "preprocessing.max_length", 1, MAX_LENGTH)
    if "min_length" in pre:
        _int(pre["min_length"], "preprocessing.min_length", 1, max_len)
    if "pad_id" in pre:
        _int(pre["pad_id"], "preprocessing.pad_id", 0, MAX_INT_ID)
    if pre.get("unk_id") is not None:
        _int(pre["unk_id"], "preprocessing.unk_id", 0, MAX_INT_ID)

    variants = _list(_required(m, "variants", ""), "variants", 1, 1000)
    ids: set[str] = set()
    for k, v in enumerate(variants):
        where = f"variants[{k}]"
        v = _dict(v, where)
        vid = _str(_required(v, "id", where + "."), where + ".id", 256)
        if vid in ids:
            raise BundleError(f"manifest: {where}.id {vid!r} is used twice")
        ids.add(vid)
        _str(_required(v, "target", where + "."), where + ".target", 64)
        _str(_required(v, "precision", where + "."), where + ".precision", 64)
        f = _str(_required(v, "file", where + "."), where + ".file")
        if check_relpath(f, f"variant {vid!r} file") not in files:
            raise BundleError(f"bundle: model file {f!r} of variant {vid!r} is missing (not in files)")
        for j, r in enumerate(_list(v.get("requires", []), where + ".requires", 0, 64)):
            _str(r, f"{where}.requires[{j}]", 64)
        if v.get("ort") is not None:  # its ORT-format copy (compile --ort)
            o = _str(_required(_dict(v["ort"], where + ".ort"), "file", where + ".ort."), where + ".ort.file")
            if check_relpath(o, f"variant {vid!r} ort file") not in files:
                raise BundleError(f"bundle: ORT model file {o!r} of variant {vid!r} is missing (not in files)")
    if generative:
        _validate_generation(m, files)
    for key in ("opset", "fp32_tolerance"):
        if key in m and (isinstance(m[key], bool) or not isinstance(m[key], (int, float))
                         or not math.isfinite(m[key])):
            raise BundleError(f"manifest: {key} must be a number, got {m[key]!r:.60}")


def _validate_generation(m: dict[str, Any], files: dict[str, Any]) -> None:
    """The ``generation`` table of a causal-LM bundle (``task == "text-generation"``)."""
    g = _dict(_required(m, "generation", ""), "generation")
    ctx = _int(_required(g, "context_length", "generation."), "generation.context_length", 2, MAX_LENGTH)
    pre_max = m["preprocessing"]["max_length"]
    if pre_max != ctx:
        raise BundleError(f"manifest: preprocessing.max_length ({pre_max}) must equal generation.context_length ({ctx})")
    for key in ("num_layers", "num_kv_heads", "head_dim"):
        _int(_required(g, key, "generation."), f"generation.{key}", 1, 1 << 16)
    vocab = _int(_required(g, "vocab_size", "generation."), "generation.vocab_size", 2, MAX_INT_ID)
    eos = _list(_required(g, "eos_token_ids", "generation."), "generation.eos_token_ids", 0, 64)
    for k, e in enumerate(eos):
        _int(e, f"generation.eos_token_ids[{k}]", 0, vocab - 1)
    _int(_required(g, "pad_token_id", "generation."), "generation.pad_token_id", 0, vocab - 1)
    if g.get("bos_token_id") is not None:
        _int(g["bos_token_id"], "generation.bos_token_id", 0, vocab - 1)
    io = _str(_required(g, "io", "generation."), "generation.io", 64)
    if io not in GENERATIVE_IO:
        raise BundleError(f"manifest: generation.io {io!r} is not one this edgekd knows ({list(GENERATIVE_IO)})")
    for key in ("chat_template", "tokenizer_config"):
        if g.get(key) is not None:
            rel = _str(g[key], f"generation.{key}")
            if check_relpath(rel, f"generation.{key}") not in files:
                raise BundleError(f"bundle: generation.{key} file {rel!r} is missing (not in files)")
    if m.get("retrieval") is not None:  # hook for edgekd.runtime.retrieval: a folder of listed files
        r = _dict(m["retrieval"], "retrieval")
        folder = check_relpath(_str(_required(r, "dir", "retrieval."), "retrieval.dir"), "retrieval.dir")
        if not any(rel.startswith(folder + "/") for rel in files):
            raise BundleError(f"bundle: retrieval.dir {folder!r} holds no file listed in the manifest")
        if r.get("sgp") is not None:  # the SGP settings of `edgekd answer` (edgekd.runtime.sgp)
            from edgekd.errors import EdgekdValueError
            from edgekd.runtime.sgp import sgp_settings

            try:
                sgp_settings(r["sgp"], has_chat_template=g.get("chat_template") is not None)
            except EdgekdValueError as exc:
                raise BundleError(f"manifest: {exc}") from None
    for k, v in enumerate(m["variants"]):
        if v.get("genai_config") is not None:
            rel = _str(v["genai_config"], f"variants[{k}].genai_config")
            if check_relpath(rel, f"variants[{k}].genai_config") not in files:
                raise BundleError(f"bundle: genai_config {rel!r} of variant {v['id']!r} is missing (not in files)")
