"""Transformer teachers: wrap or fine-tune a Hugging Face classifier, and annotate data with its
logits and Integrated-Gradients word attributions (cached on disk).

The names below are imported on first use (torch and transformers load only when needed)."""
from edgekd._lazy import lazy_package

_EXPORTS = {
    **dict.fromkeys(["Annotations", "annotate", "merge_subwords_to_words"], "annotate"),
    **dict.fromkeys(["Teacher", "finetune_teacher", "hash_model_dir"], "model"),
    **dict.fromkeys(["FinetuneConfig", "IGConfig", "TeacherConfig", "AnnotateConfig", "resolve_device"], "config"),
}
lazy_package(__name__, _EXPORTS)
