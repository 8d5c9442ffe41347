"""DiXtill distillation: losses, trainer, metrics, explanations and the pipeline API.

>>> from edgekd.distill import Distiller, DistillConfig          # doctest: +SKIP
>>> report = Distiller(DistillConfig(data={"sample": 2000}, train={"epochs": 3})).run()   # doctest: +SKIP

The names below are imported on first use (the CLI imports this package to register its
commands, and the torch-free commands must not pay for torch).
"""
from edgekd._lazy import lazy_package

_EXPORTS = {
    **dict.fromkeys(["Distiller", "MethodResult", "distill", "minilm_dir"], "api"),
    **dict.fromkeys(["ALL_METHODS", "DistillConfig", "TrainSettings", "EvalConfig", "RunConfig"], "config"),
    **dict.fromkeys(["format_table", "write_results"], "report"),
    **dict.fromkeys(["student_attention_logits", "student_integrated_gradients"], "attributions"),
    **dict.fromkeys(["Explanation", "explain", "save_html", "to_html_page"], "explain"),
    **dict.fromkeys(["cross_entropy", "kl_loss", "mse_loss", "xai_loss", "distillation_loss"], "losses"),
    **dict.fromkeys(["classification_metrics", "explanation_agreement", "feature_agreement", "sign_agreement"],
                    "metrics"),
    **dict.fromkeys(["EncodedSplit", "TrainResult", "train_student"], "trainer"),
    "TrainConfig": "config",
}
lazy_package(__name__, _EXPORTS)
