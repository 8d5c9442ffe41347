"""edgekd-runtime installs alone: its wheel goes into a fresh venv without torch (x86-64) and into
the emulated aarch64 Python of ../shared/tools/arm64, and predicts with a real compiled bundle in
both. About 40 s here (venv + pip install from the local index), plus about 20 s emulated."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from packaging_helpers import REPO, make_venv, run
from factories import TEXTS
from edgekd.runtime.emulation import arm64_available, arm64_tool, ensure_arm64
from runtime_layout import runtime_files

pytestmark = [pytest.mark.slow, pytest.mark.packaging]


def _host_predictions(bundle: pathlib.Path, texts: list[str], **kw):
    from edgekd.runtime import Bundle

    b = Bundle.load(bundle, **kw)
    return b, b.predict(texts)


def _check_rows(stdout: str, texts: list[str], bundle: pathlib.Path, atol: float, **kw) -> None:
    rows = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    host, pred = _host_predictions(bundle, texts, **kw)
    assert [r["text"] for r in rows] == texts
    assert [r["label"] for r in rows] == list(pred.labels)
    got = np.array([[r["probabilities"][n] for n in host.label_names] for r in rows])
    np.testing.assert_allclose(got, pred.probabilities, rtol=0, atol=atol)
    assert all(isinstance(r["explanation"], list) and r["explanation"] for r in rows)


def test_runtime_wheel_is_pure_python_with_only_the_runtime(runtime_dist):
    wheel = runtime_dist["wheel"]
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert sorted(n for n in names if n.startswith("edgekd/")) == runtime_files(REPO)
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    base = sorted(r.split(">")[0].split("=")[0].split("<")[0] for r in requires if "extra ==" not in r)
    assert base == ["numpy", "onnxruntime", "tokenizers"]
    # optional only, and torch-free: manifest signatures ([sign]), BM25 retrieval ([retrieval]) and
    # generative bundles' chat templates + onnxruntime-genai engine ([generate])
    extras = sorted(r for r in requires if "extra ==" in r)
    assert extras == sorted(['cryptography>=42; extra == "sign"', 'bm25s>=0.2; extra == "retrieval"',
                             'jinja2>=3; extra == "generate"', 'onnxruntime-genai>=0.8; extra == "generate"'])
    assert not any("torch" in r or "transformers" in r for r in requires)
    assert "edgekd = edgekd.cli:main" in entry_points
    # its sdist holds the same sources, so a build from the sdist (what `build` did) is the same
    with tarfile.open(runtime_dist["sdist"]) as t:
        in_sdist = {pathlib.PurePosixPath(*pathlib.PurePosixPath(n).parts[1:]).as_posix() for n in t.getnames()}
    assert set(runtime_files(REPO)) <= in_sdist


def test_runtime_wheel_installs_without_torch_and_predicts(runtime_dist, tiny_bundle, tmp_path):
    py = make_venv(tmp_path / "venv")
    r = run([py, "-m", "pip", "install", "-q", "--no-compile", runtime_dist["wheel"]])
    print(f"pip install of the runtime wheel with its dependencies: {r.seconds:.1f} s")
    edgekd = py.parent / "edgekd"

    # no torch, nor anything else of the SDK's
    r = run([py, "-m", "pip", "list", "--format=json"])
    installed = {d["name"].lower() for d in json.loads(r.stdout)}
    assert {"edgekd-runtime", "numpy", "onnxruntime", "tokenizers"} <= installed
    assert not installed & {"torch", "edgekd", "safetensors", "transformers", "onnx"}
    probe = "import importlib.util as u; print(u.find_spec('torch') is None)"
    assert run([py, "-c", probe], cwd=tmp_path).stdout.strip() == "True"
    r = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr

    # the command has the torch-free verbs only (the SDK's command modules are absent)
    r = run([edgekd, "--help"], cwd=tmp_path)
    for verb in ("predict", "bench", "compare"):
        assert verb in r.stdout
    for verb in ("distill", "compile", "prune"):
        assert f"    {verb}" not in r.stdout

    # predict with the bundle directory and its zip: same labels and probabilities as in-process here
    texts = TEXTS[:4]
    for bundle in (tiny_bundle, tiny_bundle.with_suffix(".zip")):
        r = run([edgekd, "predict", bundle, *texts, "--precision", "fp32"], cwd=tmp_path)
        _check_rows(r.stdout, texts, tiny_bundle, atol=1e-5, precision="fp32")
    r = run([py, "-c", "import edgekd.runtime, sys; print(edgekd.runtime.__file__); print('torch' in sys.modules)"],
            cwd=tmp_path)
    where, torch_loaded = r.stdout.split()
    assert where.startswith(str(tmp_path / "venv")) and torch_loaded == "False"

    # bench and compare run too
    out = tmp_path / "bench.json"
    run([edgekd, "bench", tiny_bundle, "--batches", "1", "--min-time", "0.05", "--json", out], cwd=tmp_path)
    res = json.loads(out.read_text())
    assert res["variant"].startswith("x86_64-")
    r = run([edgekd, "compare", out, out], cwd=tmp_path)
    assert "|" in r.stdout


@pytest.mark.skipif(not arm64_available(), reason=f"ARM64 emulator setup script not found at {arm64_tool()}")
def test_runtime_wheel_predicts_on_emulated_arm64(runtime_dist, tiny_bundle, tmp_path):
    """pip installs the wheel for an aarch64 target (it is py3-none-any) into a folder that the
    emulated Python takes on PYTHONPATH, next to its own aarch64 numpy/onnxruntime/tokenizers."""
    arm = ensure_arm64()
    site = tmp_path / "arm64-site"
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:", "--platform",
         "manylinux2014_aarch64", "--python-version", "3.11", "--target", site, runtime_dist["wheel"]])
    texts = TEXTS[:3]
    env = {"PYTHONPATH": str(site)}
    r = run([arm / "python", "-c", "import platform, importlib.util as u; "
             "print(platform.machine(), u.find_spec('torch') is None)"], cwd=tmp_path, env=env)
    assert r.stdout.split() == ["aarch64", "True"]
    r = run([arm / "python", "-m", "edgekd", "predict", tiny_bundle.with_suffix(".zip"), *texts, "--precision",
             "fp32"], cwd=tmp_path, env=env)
    print(f"emulated aarch64 `edgekd predict`: {r.seconds:.1f} s")
    # the emulated CPU picks the arm64 fp32 variant; the same file on this host gives the same numbers
    _check_rows(r.stdout, texts, tiny_bundle, atol=1e-4, precision="fp32", target="arm64")
    # and its ORT-format copy (what ONNX Runtime Mobile runs) through aarch64 onnxruntime
    r = run([arm / "python", "-m", "edgekd", "predict", tiny_bundle.with_suffix(".zip"), *texts, "--precision",
             "fp32", "--format", "ort"], cwd=tmp_path, env=env)
    _check_rows(r.stdout, texts, tiny_bundle, atol=1e-4, precision="fp32", target="arm64", format="ort")
