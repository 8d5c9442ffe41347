"""Build the ONNX graph of the BiLSTM + masked-attention student straight from its weights.

The student's PyTorch forward runs a masked bidirectional LSTM (each row only over its valid,
post-padded tokens; the backward direction starts at the row's last valid token), additive
attention ``e_t = v^T tanh(W h_t)`` with a softmax over the valid positions, and a linear
classifier on the attention-weighted context. Tracing that forward would capture edgekd's custom
ops (or PyTorch's packed-sequence machinery); instead this module writes the *equivalent
standard-op graph* with :mod:`onnx.helper`:

``Gather`` (embedding) -> ``LSTM`` (direction=bidirectional, ``sequence_lens`` = mask row sums)
-> ``MatMul``/``Tanh``/``MatMul`` (attention scores) -> ``Where`` + ``Softmax`` (masked softmax)
-> ``MatMul`` (context) -> ``MatMul`` + ``Add`` (classifier).

Only default-domain operators appear (opset 17 by default), batch and sequence axes are dynamic,
and the graph needs nothing but ``config.json`` and ``model.safetensors``. Gate order: PyTorch
stores the LSTM gates as (i, f, g, o), ONNX wants (i, o, f, c); ``W``/``R`` are
``[num_directions, 4H, in]`` and ``B`` is ``[num_directions, 8H]`` = ``[Wb, Rb]``.

onnxruntime's LSTM leaves ``Y`` at 0 for time steps ``>= sequence_lens`` and runs the reverse
direction from each row's last valid step, which is exactly the packed-sequence semantics of the
PyTorch student (checked in ``tests/compile/test_student_export.py``).
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekd.errors import EdgekdValueError
from edgekd.settings import read_json_object

STUDENT_MODEL_TYPE = "bilstm_attention"
#: a large finite negative used for masked attention scores (exp underflows to exactly 0)
MASK_FILL = -1.0e9

_REQUIRED_CONFIG = ("vocab_size", "embed_dim", "hidden_size", "num_classes", "pad_id", "attention_dim")


@dataclass(frozen=True)
class StudentWeights:
    """The student's config and its weights as float32 numpy arrays (the fixed safetensors names)."""

    config: dict[str, Any]
    tensors: dict[str, np.ndarray]

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])


def load_student_weights(model_dir: str | pathlib.Path) -> StudentWeights:
    """Read ``config.json`` + ``model.safetensors`` of a saved student and check every shape."""
    from safetensors.numpy import load_file

    model_dir = pathlib.Path(model_dir)
    cfg_path, st_path = model_dir / "config.json", model_dir / "model.safetensors"
    for p in (cfg_path, st_path):
        if not p.is_file():
            raise EdgekdValueError(f"model_dir: expected a saved student with {p.name}, but {p} does not exist")
    config = read_json_object(cfg_path, "model_dir")
    if config.get("model_type") != STUDENT_MODEL_TYPE:
        raise EdgekdValueError(
            f"model_dir: config.json model_type must be {STUDENT_MODEL_TYPE!r}, got {config.get('model_type')!r}"
        )
    missing = [k for k in _REQUIRED_CONFIG if k not in config]
    if missing:
        raise EdgekdValueError(f"model_dir: config.json lacks {missing}")
    from safetensors import SafetensorError

    try:
        raw = load_file(str(st_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise EdgekdValueError(f"model_dir: {st_path} is not a readable safetensors file (truncated or corrupt?): "
                               f"{exc}") from exc
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in raw.items()}
    V, E, H = int(config["vocab_size"]), int(config["embed_dim"]), int(config["hidden_size"])
    C, A = int(config["num_classes"]), int(config["attention_dim"])
    expected = {
        "embedding.weight": (V, E),
        "attention.W": (A, 2 * H),
        "attention.v": (A,),
        "classifier.weight": (C, 2 * H),
        "classifier.bias": (C,),
    }
    for sfx in ("", "_reverse"):
        expected[f"lstm.weight_ih_l0{sfx}"] = (4 * H, E)
        expected[f"lstm.weight_hh_l0{sfx}"] = (4 * H, H)
        expected[f"lstm.bias_ih_l0{sfx}"] = (4 * H,)
        expected[f"lstm.bias_hh_l0{sfx}"] = (4 * H,)
    for name, shape in expected.items():
        if name not in tensors:
            raise EdgekdValueError(f"model_dir: {st_path.name} lacks tensor {name!r} (has {sorted(tensors)})")
        if tensors[name].shape != shape:
            raise EdgekdValueError(
                f"model_dir: tensor {name!r} has shape {tensors[name].shape}, expected {shape} from config.json"
            )
    return StudentWeights(config=config, tensors=tensors)


def _pt_to_onnx_gates(w: np.ndarray, hidden: int) -> np.ndarray:
    """Reorder the gate blocks of a PyTorch LSTM tensor (i, f, g, o) to ONNX order (i, o, f, c)."""
    i, f, g, o = (w[k * hidden:(k + 1) * hidden] for k in range(4))
    return np.concatenate([i, o, f, g], axis=0)


def build_student_onnx(weights: StudentWeights, opset: int = 17) -> "onnx.ModelProto":  # noqa: F821
    """Return the student as a checked ONNX model with inputs ``input_ids``/``attention_mask``
    (int64, ``[batch, sequence]``) and outputs ``logits`` ``[batch, classes]`` and ``attention``
    ``[batch, sequence]`` (0 at padding)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if opset < 17:
        raise EdgekdValueError(f"opset: must be >= 17, got {opset}")
    t, H = weights.tensors, weights.hidden_size
    C = int(weights.config["num_classes"])

    W = np.stack([_pt_to_onnx_gates(t["lstm.weight_ih_l0"], H), _pt_to_onnx_gates(t["lstm.weight_ih_l0_reverse"], H)])
    R = np.stack([_pt_to_onnx_gates(t["lstm.weight_hh_l0"], H), _pt_to_onnx_gates(t["lstm.weight_hh_l0_reverse"], H)])
    B = np.stack([
        np.concatenate([_pt_to_onnx_gates(t["lstm.bias_ih_l0"], H), _pt_to_onnx_gates(t["lstm.bias_hh_l0"], H)]),
        np.concatenate([_pt_to_onnx_gates(t["lstm.bias_ih_l0_reverse"], H),
                        _pt_to_onnx_gates(t["lstm.bias_hh_l0_reverse"], H)]),
    ])

    def init(name: str, arr: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.ascontiguousarray(arr), name)

    initializers = [
        init("embedding.weight", t["embedding.weight"]),
        init("lstm.W", W.astype(np.float32)),
        init("lstm.R", R.astype(np.float32)),
        init("lstm.B", B.astype(np.float32)),
        init("attention.W_t", t["attention.W"].T.copy()),  # (2H, A)
        init("attention.v_col", t["attention.v"].reshape(-1, 1).copy()),  # (A, 1)
        init("classifier.weight_t", t["classifier.weight"].T.copy()),  # (2H, C)
        init("classifier.bias", t["classifier.bias"]),
        init("const.axis1", np.array([1], dtype=np.int64)),
        init("const.axis2", np.array([2], dtype=np.int64)),
        init("const.shape_bt2h", np.array([0, 0, -1], dtype=np.int64)),
        init("const.mask_fill", np.array(MASK_FILL, dtype=np.float32)),
    ]
    n = helper.make_node
    nodes = [
        # lengths and masks
        n("ReduceSum", ["attention_mask", "const.axis1"], ["lengths_i64"], keepdims=0, name="lengths_sum"),
        n("Cast", ["lengths_i64"], ["sequence_lens"], to=TensorProto.INT32, name="lengths_cast"),
        n("Cast", ["attention_mask"], ["mask_bool"], to=TensorProto.BOOL, name="mask_bool"),
        n("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT, name="mask_float"),
        # embedding -> time-major
        n("Gather", ["embedding.weight", "input_ids"], ["embedded"], axis=0, name="embedding"),
        n("Transpose", ["embedded"], ["embedded_tbe"], perm=[1, 0, 2], name="to_time_major"),
        # masked bidirectional LSTM
        n("LSTM", ["embedded_tbe", "lstm.W", "lstm.R", "lstm.B", "sequence_lens"], ["lstm_y"],
          direction="bidirectional", hidden_size=H, name="bilstm"),
        n("Transpose", ["lstm_y"], ["lstm_y_bt2h"], perm=[2, 0, 1, 3], name="to_batch_major"),
        n("Reshape", ["lstm_y_bt2h", "const.shape_bt2h"], ["hidden"], name="concat_directions"),
        # additive attention with masked softmax
        n("MatMul", ["hidden", "attention.W_t"], ["att_proj"], name="attention_proj"),
        n("Tanh", ["att_proj"], ["att_tanh"], name="attention_tanh"),
        n("MatMul", ["att_tanh", "attention.v_col"], ["att_scores3"], name="attention_score"),
        n("Squeeze", ["att_scores3", "const.axis2"], ["att_scores"], name="attention_squeeze"),
        n("Where", ["mask_bool", "att_scores", "const.mask_fill"], ["att_masked"], name="attention_mask_fill"),
        n("Softmax", ["att_masked"], ["att_softmax"], axis=-1, name="attention_softmax"),
        n("Mul", ["att_softmax", "mask_f"], ["attention"], name="attention_zero_padding"),
        # context and classifier
        n("Unsqueeze", ["attention", "const.axis1"], ["attention_b1t"], name="attention_unsqueeze"),
        n("MatMul", ["attention_b1t", "hidden"], ["context3"], name="context"),
        n("Squeeze", ["context3", "const.axis1"], ["context"], name="context_squeeze"),
        n("MatMul", ["context", "classifier.weight_t"], ["logits_nobias"], name="classifier_matmul"),
        n("Add", ["logits_nobias", "classifier.bias"], ["logits"], name="classifier_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "edgekd_bilstm_attention_student",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        outputs=[
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", C]),
            helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["batch", "sequence"]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="edgekd",
        doc_string="edgekd BiLSTM + masked attention student (standard ONNX ops only)",
    )
    model.ir_version = min(model.ir_version, 9)  # loadable by onnxruntime >= 1.18
    onnx.checker.check_model(model, full_check=True)
    return model


def student_numpy_reference(weights: StudentWeights, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """A slow, loop-based float64 numpy forward of the student (logits), used only to cross-check
    the graph builder independently of onnxruntime and PyTorch."""
    t, H = weights.tensors, weights.hidden_size

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x))

    def run(x: np.ndarray, sfx: str) -> np.ndarray:
        Wih, Whh = t[f"lstm.weight_ih_l0{sfx}"].astype(np.float64), t[f"lstm.weight_hh_l0{sfx}"].astype(np.float64)
        b = (t[f"lstm.bias_ih_l0{sfx}"] + t[f"lstm.bias_hh_l0{sfx}"]).astype(np.float64)
        h, c, out = np.zeros(H), np.zeros(H), []
        for xt in x:
            z = Wih @ xt + Whh @ h + b
            i, f, g, o = sigmoid(z[:H]), sigmoid(z[H:2 * H]), np.tanh(z[2 * H:3 * H]), sigmoid(z[3 * H:])
            c = f * c + i * g
            h = o * np.tanh(c)
            out.append(h)
        return np.array(out)

    emb = t["embedding.weight"].astype(np.float64)
    logits = []
    for ids, m in zip(input_ids, attention_mask):
        L = int(m.sum())
        x = emb[ids[:L]]
        hs = np.concatenate([run(x, ""), run(x[::-1], "_reverse")[::-1]], axis=1)
        e = np.tanh(hs @ t["attention.W"].T.astype(np.float64)) @ t["attention.v"].astype(np.float64)
        a = np.exp(e - e.max())
        a /= a.sum()
        ctx = a @ hs
        logits.append(t["classifier.weight"].astype(np.float64) @ ctx + t["classifier.bias"])
    return np.array(logits)
