"""ARM64 parity under emulation (qemu-user, ../shared/tools/arm64): the bundle's arm64 variants
run on an emulated Neoverse-N1 give the same outputs as this machine. Skipped only when the
emulator's setup script is absent; any other failure fails."""
from __future__ import annotations

import pytest

from factories import LABELS, TEXTS
from edgekd.runtime.cpu import cpu_features, has_int8_dot_product
from edgekd.runtime.emulation import arm64_available, arm64_tool

pytestmark = pytest.mark.skipif(not arm64_available(), reason=f"ARM64 emulator setup script not found at {arm64_tool()}")


def test_arm64_variants_match_host_and_count(student_bundle):
    from edgekd.compile.arm64 import check_arm64_bundle

    res = check_arm64_bundle(student_bundle, TEXTS[:6], LABELS[:6], count_repeat=2)
    assert set(res) == {"arm64-fp32", "arm64-int8"}
    fp32, int8 = res["arm64-fp32"], res["arm64-int8"]
    assert fp32["max_abs_logit_diff_vs_host_same_file"] <= 1e-4
    assert fp32["max_abs_attention_diff_vs_host_same_file"] <= 1e-4
    # int8 (full-range weights): exact vs the host's int8 run of the same file on a host with an
    # int8 dot product (VNNI), else close to the host's fp32 run with the same label on clear margins
    assert int8["max_abs_logit_diff_vs_host_fp32"] <= 0.25
    assert int8["label_agreement_on_clear_margins"] in (None, 1.0)
    if has_int8_dot_product("x86_64", cpu_features()):
        # VNNI host: the host's int8 run of the same file is the reference, within the bound
        assert "same file (VNNI host)" in int8["check"]
        assert int8["max_abs_logit_diff_vs_host_same_file"] <= int8["int8_bound"]
    else:
        assert "fp32 run" in int8["check"]
    for r in (fp32, int8):
        # a tiny BiLSTM: well above zero, far below a transformer's ~1e8+
        assert 1e4 < r["instructions_per_inference"] < 5e7
        assert r["emulated_cpu"] == "neoverse-n1"


def test_arm64_check_takes_a_relative_bundle_path(student_bundle, monkeypatch):
    # `make demo` compiles into runs/demo-quick/bundles/...: a relative path, while the emulated
    # probe runs in a temporary directory
    from edgekd.compile.arm64 import check_arm64_bundle

    monkeypatch.chdir(student_bundle.parent)
    res = check_arm64_bundle(student_bundle.name, TEXTS[:2])
    assert set(res) == {"arm64-fp32", "arm64-int8"}


def test_arm64_generative_fp32_greedy_identical(lm_bundle):
    """A generative bundle's fp32 greedy tokens on the emulated ARM64 CPU (plain onnxruntime + the
    runtime's KV loop) are those of this x86-64 machine."""
    from edgekd.compile.arm64 import check_arm64_generative

    res = check_arm64_generative(lm_bundle, ["The quick brown fox", "Stocks rose on"], precision="fp32",
                                 max_new_tokens=8)
    assert res["prompts"] == 2 and res["identical"], res["rows"]
    assert all(len(r["x86_64_tokens"]) > 0 for r in res["rows"])
