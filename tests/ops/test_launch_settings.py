"""The one launch-settings rule of the Triton launchers (kernels/utils.py: calculate_settings)."""
from __future__ import annotations

import ast
import pathlib

import pytest

from edgekd.kernels.utils import MAX_FUSED_SIZE, calculate_settings

KERNELS = pathlib.Path(__file__).resolve().parents[2] / "kernels"


@pytest.mark.parametrize(
    "n, kwargs, expected",
    [
        (1, {}, (1, 4)),
        (37, {}, (64, 4)),
        (4096, {}, (4096, 4)),
        (4097, {}, (8192, 8)),  # a row of more than 4096 elements: 8 warps
        (3, dict(min_block=16), (16, 4)),
        (5000, dict(max_block=1024), (1024, 4)),
        (50, dict(min_block=16, tile=4 * 64), (64, 8)),  # masked BiLSTM, H = 50: 4 x 64 x 64 W_hh
        (32, dict(min_block=16, tile=4 * 32), (32, 4)),
        (100, dict(min_block=16, tile=32), (128, 4)),  # attention pooling, D = 100
    ],
)
def test_calculate_settings(n, kwargs, expected):
    assert calculate_settings(n, **kwargs) == expected


def test_too_large_block_raises():
    with pytest.raises(ValueError, match="needs a block over 65536"):
        calculate_settings(MAX_FUSED_SIZE + 1)


def test_every_launcher_uses_the_one_helper():
    # no launcher computes its own block sizes or warp counts
    for path in sorted(KERNELS.glob("*.py")):
        if path.name in ("__init__.py", "utils.py"):
            continue
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert "next_power_of_2" not in names, path.name
        assert "calculate_settings" in names, path.name
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "num_warps":
                assert not isinstance(node.value, (ast.Constant, ast.IfExp)), f"{path.name}: a literal num_warps"
