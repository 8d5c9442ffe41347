"""Check a bundle's arm64 variants under the ARM64 emulator against this (x86-64) machine.

fp32 variants must match the host run of the same file (max abs diff <= ``atol``). int8 variants
use full-range int8 weights on ARM64; on an x86-64 host *without* int8 dot-product instructions
(no VNNI) onnxruntime's u8s8 kernels saturate on such weights, so the host run of that file is not
a faithful reference there: the emulated int8 outputs are then compared with the host's fp32
outputs (bound ``int8_atol`` times the largest fp32 logit, at least ``int8_atol``, and label
agreement) instead. On a VNNI host they must match the host
int8 run exactly.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import numpy as np

from edgekd.runtime.cpu import cpu_features, has_int8_dot_product
from edgekd.runtime.emulation import EmulationError, arm64_available, run_probe_arm64
from edgekd.runtime.model import Bundle
from edgekd.runtime.preprocess import macro_f1

__all__ = ["arm64_available", "check_arm64_bundle"]


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
        exact = v["precision"] == "fp32" or host_dot
        if exact:
            res["check"] = f"emulated == host run of the same file (atol {atol:g})"
            ok = res["max_abs_logit_diff_vs_host_same_file"] <= atol and res.get(
                "max_abs_attention_diff_vs_host_same_file", 0.0) <= atol
        else:
            d = res["max_abs_logit_diff_vs_host_fp32"]
            # int8 error grows with the logits' scale (a fine-tuned transformer's logits span several
            # units): the bound is int8_atol relative to the largest fp32 logit, at least int8_atol
            bound = int8_atol * max(1.0, float(np.abs(fp32_host).max()))
            res["int8_bound"] = bound
            top2 = np.sort(fp32_host, axis=-1)[:, -2:]
            clear = (top2[:, 1] - top2[:, 0]) > 2 * d  # rows whose label cannot flip within the error
            res["label_agreement_on_clear_margins"] = float(
                (e_logits.argmax(-1) == fp32_host.argmax(-1))[clear].mean()) if clear.any() else None
            res["check"] = (f"host has no int8 dot product (u8s8 saturates on full-range weights): emulated int8 vs "
                            f"host fp32 within {int8_atol:g} x max(1, max |fp32 logit|) = {bound:.3g}; same label wherever "
                            f"the fp32 top-2 margin > 2x the observed error")
            ok = d <= bound and res["label_agreement_on_clear_margins"] in (None, 1.0)
        if not ok:
            raise EmulationError(f"arm64 variant {v['id']}: emulated outputs outside the bounds: {res}")
        results[v["id"]] = res
        if record:
            v["parity"]["emulated_arm64"] = res
    if record and results:
        write_manifest(bundle_dir, manifest)
    return results
