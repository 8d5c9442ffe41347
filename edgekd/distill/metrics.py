"""Deprecated location: the metrics live in :mod:`edgekd.metrics` (numpy only, ground floor).

The names stay importable from here for one release.
"""
from edgekd.metrics import classification_metrics, explanation_agreement, feature_agreement, sign_agreement

__all__ = [
    "classification_metrics",
    "feature_agreement",
    "sign_agreement",
    "explanation_agreement",
]
