"""The transformer teacher: wrap a local Hugging Face sequence-classification directory, or
fine-tune a pretrained encoder directory into one."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgekd import distributed as dist
from edgekd.data.datasets import TextDataset
from edgekd.errors import EdgekdValueError
from edgekd.teacher.config import FinetuneConfig  # defined once there, with the other teacher settings
from edgekd.training import NO_DECAY, LoopConfig, param_groups, seed_everything, train_loop

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_FINETUNE_RECORD = "edgekd_teacher.json"


def _tqdm(*args, **kwargs):
    from tqdm.auto import tqdm

    if not dist.is_main():  # under torchrun: bars on rank 0 only
        kwargs["disable"] = True
    return tqdm(*args, **kwargs)


def _check_model_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise EdgekdValueError(f"{what}: {path} is not a directory")
    if not (path / "config.json").is_file():
        raise EdgekdValueError(f"{what}: {path} holds no config.json (not a Hugging Face model directory)")


def hash_model_dir(path: str | os.PathLike) -> str:
    """sha256 over a model directory's config.json and weight files."""
    p = Path(path)
    h = hashlib.sha256()
    for name in ("config.json",) + _WEIGHT_FILES:
        f = p / name
        if f.is_file():
            h.update(name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
    return h.hexdigest()


def hash_state_dict(model: torch.nn.Module) -> str:
    """sha256 over a module's parameters and buffers (name, shape, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Teacher:
    """A Hugging Face sequence classifier and its (fast) tokenizer.

    Args:
        model: an ``AutoModelForSequenceClassification`` instance.
        tokenizer: its fast tokenizer (offsets are needed to map sub-words onto words).
        max_length: truncation length in sub-word tokens.
        fingerprint: identifies the weights (for caches); computed from the state dict if not given.
    """

    def __init__(self, model, tokenizer, *, max_length: int = 64, fingerprint: str | None = None, path: str | None = None):
        if not getattr(tokenizer, "is_fast", False):
            raise EdgekdValueError("Teacher: a fast tokenizer is required (offset mapping)")
        if max_length < 4:
            raise EdgekdValueError(f"Teacher: max_length must be >= 4, got {max_length}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.path = path
        self._fingerprint = fingerprint

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, max_length: int = 64, device: str = "cpu") -> "Teacher":
        """Load a local sequence-classification model directory (config.json + weights + tokenizer)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        p = Path(path)
        _check_model_dir(p, "Teacher.from_pretrained")
        model = AutoModelForSequenceClassification.from_pretrained(str(p), local_files_only=True).to(device)
        tok = AutoTokenizer.from_pretrained(str(p), use_fast=True, local_files_only=True)
        return cls(model, tok, max_length=max_length, fingerprint=hash_model_dir(p), path=str(p))

    # ----------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def label_names(self) -> list[str]:
        id2label = self.model.config.id2label
        return [str(id2label[i]) for i in range(len(id2label))]

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = hash_state_dict(self.model)
        return self._fingerprint

    def encode(self, texts: Sequence[str], *, offsets: bool = False) -> dict:
        """Tokenize with dynamic padding (to the longest text of the batch)."""
        return self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
            return_offsets_mapping=offsets,
            return_special_tokens_mask=offsets,
        )

    @torch.inference_mode()
    def logits(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Logits ``[N, C]`` (float32) of ``texts``; batches are formed by length to cut padding."""
        texts = list(texts)
        out = np.zeros((len(texts), self.num_labels), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self.model.eval()
        for idx in _tqdm(batches, desc="teacher logits", disable=not progress, unit="batch"):
            enc = self.encode([texts[i] for i in idx])
            enc = {k: v.to(self.device) for k, v in enc.items()}
            out[idx] = self.model(**enc).logits.float().cpu().numpy()
        return out

    def predict(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        return self.logits(texts, batch_size=batch_size).argmax(-1)


# --------------------------------------------------------------------------------------------
# fine-tuning


def finetune_teacher(
    encoder_dir: str | os.PathLike,
    train: TextDataset,
    out_dir: str | os.PathLike,
    *,
    valid: TextDataset | None = None,
    config: FinetuneConfig | None = None,
    device: str = "cpu",
    progress: bool = True,
    reuse: bool = True,
) -> tuple[Teacher, dict]:
    """Fine-tune a pretrained encoder directory into a sequence classifier.

    The classifier head is new (random); the whole encoder is trained with AdamW and a linear
    warm-up/decay schedule, with dynamic padding. The result is saved with ``save_pretrained``
    (safetensors) in ``out_dir`` with a record ``edgekd_teacher.json`` of the run; if that record
    matches (same encoder, data and settings) and ``reuse`` is true, the saved teacher is
    loaded instead of training again.

    Returns:
        the teacher and the record (settings, train time, validation metrics).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg = config or FinetuneConfig()
    cfg.validate()
    enc_dir = Path(encoder_dir)
    _check_model_dir(enc_dir, "finetune_teacher")
    out = Path(out_dir)
    key = hashlib.sha256(
        json.dumps(
            {
                "encoder": hash_model_dir(enc_dir),
                "train": train.fingerprint(),
                "valid": valid.fingerprint() if valid is not None else None,
                "config": asdict(cfg),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    record_path = out / _FINETUNE_RECORD
    if reuse and record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except json.JSONDecodeError:
            record = {}
        if record.get("key") == key and (out / "model.safetensors").is_file():
            teacher = Teacher.from_pretrained(out, max_length=cfg.max_length, device=device)
            record["reused"] = True
            return teacher, record

    seed_everything(cfg.seed)
    names = list(train.label_names)
    tok = AutoTokenizer.from_pretrained(str(enc_dir), use_fast=True, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(enc_dir),
        num_labels=len(names),
        id2label={i: n for i, n in enumerate(names)},
        label2id={n: i for i, n in enumerate(names)},
        local_files_only=True,
    ).to(device)
    if cfg.freeze_embeddings:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(False)
    teacher = Teacher(model, tok, max_length=cfg.max_length)

    # the shared loop: AdamW with decay / no-decay and body / head groups, linear warm-up/decay,
    # clipping at 1.0, a random.Random(seed) shuffle
    n = len(train)
    labels = torch.tensor(train.labels, dtype=torch.long)
    loop = LoopConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
                      warmup_ratio=cfg.warmup_ratio, seed=cfg.seed, shuffle="python", grad_clip=1.0)
    groups = param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay, head_lr_multiplier=cfg.head_lr_multiplier,
                          no_decay=NO_DECAY)
    result = train_loop(model, n, lambda idx: {**teacher.encode([train.texts[i] for i in idx]), "labels": labels[idx]},
                        loop, groups=groups, progress=progress, desc="teacher fine-tune")
    total_steps, losses, train_s = result.steps, result.losses, result.seconds
    record: dict = {
        "key": key,
        "encoder_dir": str(enc_dir),
        "config": asdict(cfg),
        "train_examples": n,
        "steps": total_steps,
        "train_seconds": round(train_s, 1),
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "label_names": names,
    }
    if valid is not None:  # under torchrun: rank 0 scores and writes, the others wait for the files
        from edgekd.metrics import classification_metrics

        if dist.is_main():
            pred = teacher.logits(valid.texts, batch_size=cfg.eval_batch_size, progress=progress).argmax(-1)
            record["valid"] = classification_metrics(valid.labels, pred, names)
        record["valid"] = dist.broadcast_json(record.get("valid"))
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
        record_path.write_text(json.dumps(record, indent=2))
    dist.barrier()
    teacher = Teacher(model, tok, max_length=cfg.max_length, fingerprint=hash_model_dir(out), path=str(out))
    record["reused"] = False
    return teacher, record
