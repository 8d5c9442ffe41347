"""Every op module follows the one template (STYLE.md, README "Layout"): the same sections in the
same order, the same registration idiom, one naming scheme (old names kept as aliases)."""
from __future__ import annotations

import importlib
import pathlib
import re

import pytest

OPS = pathlib.Path(__file__).resolve().parents[2] / "edgekd" / "ops"
OP_MODULES = ["perturbed_topk", "masked_bilstm", "masked_attention_pool", "bilstm_attention", "fused_linear_kd"]
SECTIONS = [
    "Schema",
    "Fake kernel",
    "CPU fallback (only when edgekd._C is missing)",
    "CUDA (Triton)",
    "Autograd",
    "Public function",
    "Reference",
    "Input checks",
]


@pytest.mark.parametrize("op", OP_MODULES)
def test_sections_in_order_and_one_registration_idiom(op):
    text = (OPS / f"{op}.py").read_text()
    found = re.findall(r"^# -{20,}\n# (.+)\n# -{20,}$", text, re.M)
    assert found == SECTIONS, found
    assert "Library(" not in text  # torch.library.define / register_* only
    assert "torch.library.define(" in text and "register_fake(" in text and "register_autograd(" in text
    assert 'register_kernel(_' in text and '"cuda")' in text
    module = importlib.import_module(f"edgekd.ops.{op}")
    assert any(name.startswith("check_") and name.endswith("_inputs") for name in module.__all__), op
    assert any(name.endswith("_reference") or "_reference_" in name for name in module.__all__), op


def test_old_reference_names_are_aliases():
    map_, mb, pt = (importlib.import_module(f"edgekd.ops.{op}") for op in OP_MODULES[2::-1])

    assert map_.reference_forward is map_.masked_attention_pool_reference_forward
    assert map_.reference_backward is map_.masked_attention_pool_reference_backward
    assert mb._reference_forward_with_saved is mb.masked_bilstm_reference_forward
    assert mb._reference_backward is mb.masked_bilstm_reference_backward
    assert pt.reference_select is pt.perturbed_topk_reference_select
    assert pt.reference_gather_forward is pt.perturbed_topk_gather_reference_forward
    assert pt.reference_gather_backward is pt.perturbed_topk_gather_reference_backward
    assert pt.reference_indicators_forward is pt.perturbed_topk_indicators_reference_forward
    assert pt.reference_indicators_backward is pt.perturbed_topk_indicators_reference_backward


def test_files_stay_under_500_lines():
    root = OPS.parent
    for path in sorted([*OPS.glob("*.py"), *(root / "students").glob("*.py")]):
        assert len(path.read_text().splitlines()) < 500, path.name


def test_the_student_calls_public_op_functions_only():
    text = (OPS.parent / "students" / "bilstm_attention.py").read_text()
    assert "torch.ops.edgekd" not in text and "_flat_weights" not in text
