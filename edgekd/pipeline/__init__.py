"""The main job, top floor: profiles and the run data -> teacher -> annotate -> students ->
compile -> compare -> report (``edgekd demo``, ``make demo``).

>>> from edgekd.pipeline import profile_config, run_pipeline      # doctest: +SKIP
>>> result = run_pipeline(profile_config("quick", {"train.epochs": 3}))   # doctest: +SKIP

The names below are imported on first use (the CLI imports this package to register ``demo``).
"""
from edgekd._lazy import lazy_package

_EXPORTS = {
    **dict.fromkeys(["profile_config", "profile_notes", "profiles", "profile_path"], "profiles"),
    **dict.fromkeys(["run_pipeline", "compile_step"], "run"),
}
lazy_package(__name__, _EXPORTS)
