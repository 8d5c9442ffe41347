"""Torch-free device runtime for edgekd bundles (extra ``edgekd[runtime]``: numpy, onnxruntime,
tokenizers only).

>>> from edgekd.runtime import Bundle
>>> bundle = Bundle.load("student.zip")            # verifies manifest + every checksum, picks the variant for this CPU
>>> pred = bundle.predict(["$AAPL beats estimates"])
>>> pred.labels, pred.probabilities, pred.explanations
>>> from edgekd.runtime import GenerativeBundle      # causal-LM bundles (edgekd compile-lm)
>>> GenerativeBundle.load("lm.zip", precision="int4").generate("Hello", max_new_tokens=16).text
>>> GenerativeBundle.load("qa.zip").answer("Can I delete my data?")   # its own documents (compile-lm --retrieval)

Nothing here imports torch or transformers (a test checks ``sys.modules`` in a subprocess).
"""
from edgekd.runtime.archive import BundleLimits
from edgekd.runtime.bundle import SCHEMA_VERSION
from edgekd.runtime.cpu import KNOWN_TARGETS, cpu_features, host_target
from edgekd.runtime.generative import Generation, GenerativeBundle
from edgekd.runtime.model import Bundle, Predictions, load, select_variant

__all__ = ["Bundle", "Predictions", "load", "select_variant", "host_target", "cpu_features",
           "KNOWN_TARGETS", "SCHEMA_VERSION", "BundleLimits", "GenerativeBundle", "Generation"]
