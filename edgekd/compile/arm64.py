"""Check a bundle's arm64 variants under the ARM64 emulator against this (x86-64) machine."""
from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import numpy as np

from edgekd.runtime.emulation import arm64_available, run_probe_arm64
from edgekd.runtime.model import Bundle

__all__ = ["arm64_available", "check_arm64_bundle"]


def check_arm64_bundle(bundle_dir: str | pathlib.Path, texts: Sequence[str], record: bool = False,
                       atol: float = 1e-4) -> dict[str, Any]:
    """Run every arm64 variant of ``bundle_dir`` on the emulated CPU on ``texts`` (one batch) and
    compare logits and attention with the same file run here. Raises if they differ by more than
    ``atol``; with ``record=True`` stores the result in each variant's ``parity.emulated_arm64``."""
    from edgekd.runtime.bundle import MANIFEST, write_manifest
    from edgekd.runtime.emulation import EmulationError

    bundle_dir = pathlib.Path(bundle_dir)
    manifest = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))
    results: dict[str, Any] = {}
    for v in manifest["variants"]:
        if v["target"] != "arm64":
            continue
        emu = run_probe_arm64(bundle_dir, texts, v["precision"])
        if emu["variant"] != v["id"]:
            raise EmulationError(f"arm64: the emulator picked {emu['variant']!r}, expected {v['id']!r}")
        host = Bundle.load(bundle_dir, target="arm64", precision=v["precision"], threads=1)
        feeds = host.preprocessor(list(texts)).feeds
        out = host.run(feeds)
        d_logits = float(np.abs(np.asarray(emu["logits"]) - out["logits"]).max())
        d_att = (float(np.abs(np.asarray(emu["attention"]) - out["attention"]).max())
                 if emu.get("attention") is not None and "attention" in out else None)
        res = {"max_abs_logit_diff_vs_host": d_logits, "max_abs_attention_diff_vs_host": d_att,
               "label_agreement_vs_host": float((np.asarray(emu["logits"]).argmax(-1) == out["logits"].argmax(-1)).mean()),
               "texts": len(texts), "emulator": "qemu-user (shared/tools/arm64)"}
        if not d_logits <= atol or (d_att is not None and not d_att <= atol):
            raise EmulationError(f"arm64 variant {v['id']}: emulated outputs differ from the host run: {res}")
        results[v["id"]] = res
        if record:
            v["parity"]["emulated_arm64"] = res
    if record and results:
        write_manifest(bundle_dir, manifest)
    return results
