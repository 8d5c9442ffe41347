"""Student models of edgekd (DiXtill's self-explaining masked-attention BiLSTM)."""
from edgekd.students.bilstm_attention import (
    BiLSTMAttentionStudent,
    Explanation,
    StudentOutput,
    native_available,
)

__all__ = ["BiLSTMAttentionStudent", "StudentOutput", "Explanation", "native_available"]
