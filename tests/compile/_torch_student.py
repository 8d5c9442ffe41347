"""An independent PyTorch implementation of the student's forward (nn.LSTM + packed sequences),
used as the parity reference when ``edgekd.students`` is not importable."""
from __future__ import annotations

import json
import pathlib

import torch
from safetensors.torch import load_file


class PackedStudent(torch.nn.Module):
    def __init__(self, model_dir: pathlib.Path):
        super().__init__()
        cfg = json.loads((pathlib.Path(model_dir) / "config.json").read_text())
        V, E, H, C, A = (cfg[k] for k in ("vocab_size", "embed_dim", "hidden_size", "num_classes", "attention_dim"))
        self.embedding = torch.nn.Embedding(V, E, padding_idx=cfg["pad_id"])
        self.lstm = torch.nn.LSTM(E, H, batch_first=True, bidirectional=True)
        self.attention = torch.nn.Module()
        self.attention.W = torch.nn.Parameter(torch.empty(A, 2 * H))
        self.attention.v = torch.nn.Parameter(torch.empty(A))
        self.classifier = torch.nn.Linear(2 * H, C)
        self.load_state_dict(load_file(str(pathlib.Path(model_dir) / "model.safetensors")))

    def forward(self, input_ids, attention_mask):
        lengths = attention_mask.sum(1)
        x = self.embedding(input_ids)
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = torch.nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=input_ids.shape[1])
        e = torch.tanh(h @ self.attention.W.T) @ self.attention.v
        e = e.masked_fill(attention_mask == 0, float("-inf"))
        a = torch.softmax(e, dim=-1)
        ctx = (a.unsqueeze(-1) * h).sum(1)
        return {"logits": self.classifier(ctx), "attention": a}
