"""DiXtill distillation: losses, trainer, metrics, explanations and the pipeline API.

>>> from edgekd.distill import Distiller, DistillConfig          # doctest: +SKIP
>>> report = Distiller(DistillConfig(train_limit=2000, epochs=3)).run()   # doctest: +SKIP
"""
from edgekd.distill.api import (
    ALL_METHODS,
    DistillConfig,
    Distiller,
    MethodResult,
    distill,
    format_table,
    profile_config,
    student_attention_logits,
    student_integrated_gradients,
)
from edgekd.distill.explain import Explanation, explain, save_html, to_html_page
from edgekd.distill.losses import cross_entropy, distillation_loss, kl_loss, mse_loss, xai_loss
from edgekd.distill.metrics import classification_metrics, explanation_agreement, feature_agreement, sign_agreement
from edgekd.distill.trainer import EncodedSplit, TrainConfig, TrainResult, train_student

__all__ = [
    "ALL_METHODS", "DistillConfig", "Distiller", "MethodResult", "distill", "format_table", "profile_config",
    "student_attention_logits", "student_integrated_gradients",
    "Explanation", "explain", "save_html", "to_html_page",
    "cross_entropy", "kl_loss", "mse_loss", "xai_loss", "distillation_loss",
    "classification_metrics", "explanation_agreement", "feature_agreement", "sign_agreement",
    "EncodedSplit", "TrainConfig", "TrainResult", "train_student",
]
