"""The main job, top floor: profiles and the run data -> teacher -> annotate -> students ->
compile -> compare -> report (``edgekd demo``, ``make demo``).

>>> from edgekd.pipeline import legal_qa_config, profile_config, run_legal_qa, run_pipeline   # doctest: +SKIP
>>> result = run_pipeline(profile_config("quick", {"train.epochs": 3}))   # doctest: +SKIP
>>> result = run_legal_qa(legal_qa_config("quick"))                      # doctest: +SKIP  (edgekd demo --task legal-qa)

The names below are imported on first use (the CLI imports this package to register ``demo``).
"""
from edgekd._lazy import lazy_package

_EXPORTS = {
    **dict.fromkeys(["profile_config", "profile_notes", "profiles", "profile_path"], "profiles"),
    **dict.fromkeys(["run_pipeline", "compile_step"], "run"),
    **dict.fromkeys(["LegalQAConfig", "legal_qa_config", "run_legal_qa"], "legal_qa"),
}
lazy_package(__name__, _EXPORTS)
