"""Student models of edgekd (DiXtill's self-explaining masked-attention BiLSTM).

The names below are imported on first use (``StudentConfig`` is torch-free, so the command line
can build its flags without loading torch)."""
from edgekd._lazy import lazy_package

_EXPORTS = {
    **dict.fromkeys(["BiLSTMAttentionStudent", "Explanation", "StudentOutput", "native_available"],
                    "bilstm_attention"),
    "StudentConfig": "config",
}
lazy_package(__name__, _EXPORTS)
