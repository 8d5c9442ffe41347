"""Transformer teachers: wrap or fine-tune a Hugging Face classifier, and annotate data with its
logits and Integrated-Gradients word attributions (cached on disk)."""
from edgekd.teacher.annotate import Annotations, IGConfig, annotate, merge_subwords_to_words
from edgekd.teacher.model import FinetuneConfig, Teacher, finetune_teacher, hash_model_dir

__all__ = [
    "Teacher",
    "FinetuneConfig",
    "finetune_teacher",
    "hash_model_dir",
    "IGConfig",
    "Annotations",
    "annotate",
    "merge_subwords_to_words",
]
