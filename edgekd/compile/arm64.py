"""Check a bundle's arm64 variants under the ARM64 emulator against this (x86-64) machine.

fp32 variants must match the host run of the same file (max abs diff <= ``atol``). int8 variants
use full-range int8 weights on ARM64 and are checked against a bound (``int8_atol`` times the
largest reference logit, at least ``int8_atol``) plus label agreement wherever the margin is clear:
int8 kernels of different ISAs round their requantization differently (a MiniLM teacher's emulated
arm64 int8 logits differ by ~0.14 from the VNNI host's run of the same file). The reference is the
host's run of the same file on a host with an int8 dot product (VNNI); on an x86-64 host without one,
onnxruntime's u8s8 kernels saturate on full-range weights, and the host's fp32 run is the reference.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import numpy as np

from edgekd.metrics import macro_f1
from edgekd.runtime.cpu import cpu_features, has_int8_dot_product
from edgekd.runtime.emulation import EmulationError, arm64_available, run_probe_arm64
from edgekd.runtime.model import Bundle

__all__ = ["arm64_available", "check_arm64_bundle", "check_arm64_generative"]


def check_arm64_bundle(bundle_dir: str | pathlib.Path, texts: Sequence[str], labels: Sequence[int] | None = None,
                       record: bool = False, atol: float = 1e-4, int8_atol: float = 0.25,
                       count_repeat: int = 0) -> dict[str, Any]:
    """Run every arm64 variant of ``bundle_dir`` on the emulated CPU on ``texts`` (one batch) and
    compare with this machine (see the module doc); ``count_repeat`` > 0 also counts emulated
    instructions per batch-1 inference of the first text. Raises :class:`EmulationError` when outside
    the bounds; with ``record=True`` stores the result in each variant's ``parity.emulated_arm64``."""
    from edgekd.runtime.bundle import MANIFEST, write_manifest

    bundle_dir = pathlib.Path(bundle_dir)
    manifest = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))
    host_dot = has_int8_dot_product("x86_64", cpu_features())
    fp32_host = None
    results: dict[str, Any] = {}
    arm = [v for v in manifest["variants"] if v["target"] == "arm64"]
    if not arm:
        return results
    emus = run_probe_arm64(bundle_dir, texts, [v["precision"] for v in arm], count_repeat=count_repeat)
    for v, emu in zip(arm, emus):
        if emu["variant"] != v["id"]:
            raise EmulationError(f"arm64: the emulator picked {emu['variant']!r}, expected {v['id']!r}")
        e_logits = np.asarray(emu["logits"], dtype=np.float32)
        host = Bundle.load(bundle_dir, target="arm64", precision=v["precision"], threads=1)
        out = host.run(host.preprocessor(list(texts)).feeds)
        if fp32_host is None:
            fb = Bundle.load(bundle_dir, target="arm64" if any(x["id"] == "arm64-fp32" for x in manifest["variants"])
                             else "x86_64", precision="fp32", threads=1)
            fp32_host = fb.run(fb.preprocessor(list(texts)).feeds)["logits"]
        res: dict[str, Any] = {
            "texts": len(texts), "emulator": "qemu-user (shared/tools/arm64)",
            "max_abs_logit_diff_vs_host_same_file": float(np.abs(e_logits - out["logits"]).max()),
            "max_abs_logit_diff_vs_host_fp32": float(np.abs(e_logits - fp32_host).max()),
            "label_agreement_vs_host_fp32": float((e_logits.argmax(-1) == fp32_host.argmax(-1)).mean()),
        }
        if emu.get("attention") is not None and "attention" in out:
            res["max_abs_attention_diff_vs_host_same_file"] = float(np.abs(np.asarray(emu["attention"]) - out["attention"]).max())
        if count_repeat:
            res["instructions_per_inference"] = emu["instructions_per_inference"]
            res["emulated_cpu"] = emu["cpu"]
        if labels is not None:
            y = np.asarray(list(labels))
            res["accuracy"] = float((e_logits.argmax(-1) == y).mean())
            res["macro_f1"] = macro_f1(y, e_logits.argmax(-1), len(manifest["label_names"]))
        if v["precision"] == "fp32":
            res["check"] = f"emulated == host run of the same file (atol {atol:g})"
            ok = res["max_abs_logit_diff_vs_host_same_file"] <= atol and res.get(
                "max_abs_attention_diff_vs_host_same_file", 0.0) <= atol
        else:
            # int8 kernels differ between ISAs in their requantization rounding, so an int8 variant is
            # checked against a bound, not for equality. The reference is the host run of the same
            # file where the host has an int8 dot product (VNNI: it computes full-range weights
            # faithfully); without one, onnxruntime's u8s8 kernels saturate on such weights and the
            # host's fp32 run is the reference. The error grows with the logits' scale (a fine-tuned
            # transformer's logits span several units), hence the bound int8_atol x max(1, max |ref|).
            ref = out["logits"] if host_dot else fp32_host
            d = res["max_abs_logit_diff_vs_host_same_file"] if host_dot else res["max_abs_logit_diff_vs_host_fp32"]
            bound = int8_atol * max(1.0, float(np.abs(ref).max()))
            res["int8_bound"] = bound
            top2 = np.sort(ref, axis=-1)[:, -2:]
            clear = (top2[:, 1] - top2[:, 0]) > 2 * d  # rows whose label cannot flip within the error
            res["label_agreement_on_clear_margins"] = float(
                (e_logits.argmax(-1) == ref.argmax(-1))[clear].mean()) if clear.any() else None
            what = ("the host's int8 run of the same file (VNNI host)" if host_dot else
                    "the host's fp32 run (host has no int8 dot product: u8s8 saturates on full-range weights)")
            res["check"] = (f"emulated int8 vs {what} within {int8_atol:g} x max(1, max |logit|) = {bound:.3g}; "
                            f"same label wherever the top-2 margin > 2x the observed error")
            ok = d <= bound and res["label_agreement_on_clear_margins"] in (None, 1.0)
        if not ok:
            raise EmulationError(f"arm64 variant {v['id']}: emulated outputs outside the bounds: {res}")
        results[v["id"]] = res
        if record:
            v["parity"]["emulated_arm64"] = res
    if record and results:
        write_manifest(bundle_dir, manifest)
    return results


_GENERATE_PROBE = r"""
import json, sys
from edgekd.runtime.generative import GenerativeBundle
bundle, precision, n, prompts = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
lm = GenerativeBundle.load(bundle, precision=precision, threads=1)
for p in prompts:
    print(json.dumps({"prompt": p, "tokens": lm.generate(p, max_new_tokens=n).token_ids}))
"""


def check_arm64_generative(bundle_dir: str | pathlib.Path, prompts: Sequence[str], precision: str = "fp32",
                           max_new_tokens: int = 8, record: bool = False, timeout: float = 3600) -> dict[str, Any]:
    """Greedy generation with a generative bundle on the emulated ARM64 CPU (plain onnxruntime and
    edgekd's KV loop: the ``ort`` engine) against this machine; returns per prompt whether the tokens
    are identical. With ``record=True`` the result goes into the variant's ``parity.emulated_arm64``."""
    import os
    import subprocess

    from edgekd.runtime.bundle import MANIFEST, write_manifest
    from edgekd.runtime.emulation import _env, ensure_arm64
    from edgekd.runtime.generative import GenerativeBundle

    bundle_dir = pathlib.Path(bundle_dir).resolve()
    d = ensure_arm64()
    cmd = [str(d / "python"), "-c", _GENERATE_PROBE, str(bundle_dir), precision, str(max_new_tokens),
           json.dumps(list(prompts))]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=os.getcwd())
    except subprocess.TimeoutExpired as exc:
        raise EmulationError(f"arm64 generate probe: no answer within {timeout:.0f} s") from exc
    if r.returncode != 0:
        raise EmulationError(f"arm64 generate probe failed (rc={r.returncode}): {r.stderr[-3000:]}")
    arm = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    host = GenerativeBundle.load(bundle_dir, precision=precision, threads=1)
    rows = []
    for a in arm:
        want = host.generate(a["prompt"], max_new_tokens=max_new_tokens).token_ids
        rows.append({"prompt": a["prompt"], "identical": a["tokens"] == want, "arm64_tokens": a["tokens"],
                     "x86_64_tokens": want})
    res = {"precision": precision, "engine": "ort (plain onnxruntime)", "emulator": "qemu-user (shared/tools/arm64)",
           "cpu": (d / "cpu").read_text().strip() if (d / "cpu").is_file() else None, "max_new_tokens": max_new_tokens,
           "prompts": len(rows), "identical": bool(rows) and all(x["identical"] for x in rows), "rows": rows}
    if record:
        manifest = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))
        for v in manifest["variants"]:
            if v["precision"] == precision:
                v.setdefault("parity", {})["emulated_arm64"] = {k: res[k] for k in res if k != "rows"}
        write_manifest(bundle_dir, manifest)
    return res
