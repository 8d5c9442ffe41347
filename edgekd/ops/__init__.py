"""Custom ops of edgekd, registered with ``torch.library`` in the ``edgekd`` namespace.

Order matters: the native extension is loaded first (its C++ kernels register themselves for the
CPU), then each op module ``edgekd/ops/<op>.py`` defines, in the same sections in every module:
schema, fake kernel, CPU fallback (only when the extension is missing), CUDA (Triton), autograd,
public function, reference, input checks. CUDA tensors without Triton raise
:class:`MissingTritonError` (``pip install edgekd[gpu]``).
"""
from edgekd._ext import has_extension  # noqa: F401  (loads edgekd._C first)
from edgekd.ops._common import MissingTritonError  # noqa: E402

__all__ = ["has_extension", "MissingTritonError"]

from edgekd.ops.perturbed_topk import (  # noqa: E402
    perturbed_topk_gather,
    perturbed_topk_indicators,
    topk_indices,
)

__all__ += ["perturbed_topk_gather", "perturbed_topk_indicators", "topk_indices"]

from edgekd.ops.masked_bilstm import masked_bilstm, masked_bilstm_module  # noqa: E402

__all__ += ["masked_bilstm", "masked_bilstm_module"]

from edgekd.ops.masked_attention_pool import masked_attention_pool  # noqa: E402

__all__ += ["masked_attention_pool"]

from edgekd.ops.bilstm_attention import bilstm_attention_forward  # noqa: E402

__all__ += ["bilstm_attention_forward"]

from edgekd.ops.fused_linear_kd import fused_linear_kd  # noqa: E402

__all__ += ["fused_linear_kd"]
