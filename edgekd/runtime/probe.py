"""A tiny torch-free probe run on a device (or under the ARM64 emulator, or valgrind):

    python -m edgekd.runtime.probe BUNDLE --target arm64 --precision int8 --texts texts.json [--repeat N]

Loads the bundle single-threaded, prints one JSON line ``{"variant", "logits", "attention"}`` for the
texts (one batch), then runs ``--repeat`` more batch-1 inferences of the first text between two
instruction-count marks (``os.lseek(-4242, TAG, 0)``, which the ARM64 tool's ``count`` wrapper
reports as ``insncount mark TAG N``; elsewhere the call fails harmlessly).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _mark(tag: int) -> None:
    try:
        os.lseek(-4242, tag, 0)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgekd.runtime.probe")
    ap.add_argument("bundle")
    ap.add_argument("--target", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--texts", required=True, help="JSON file with a list of texts")
    ap.add_argument("--repeat", type=int, default=0, help="extra batch-1 inferences between count marks")
    ap.add_argument("--no-output", action="store_true", help="skip the batch run (for instruction counting)")
    args = ap.parse_args(argv)
    from edgekd.runtime.model import Bundle

    with open(args.texts, encoding="utf-8") as fh:
        texts = json.load(fh)
    bundle = Bundle.load(args.bundle, target=args.target, precision=args.precision, threads=1)
    if not args.no_output:
        pred = bundle.predict(texts)
        out = bundle.run(bundle.preprocessor(texts).feeds)
        print(json.dumps({"variant": bundle.variant["id"], "logits": pred.logits.tolist(),
                          "attention": out["attention"].tolist() if "attention" in out else None}))
    feeds = bundle.preprocessor(texts[:1]).feeds
    bundle.run(feeds)  # warm-up outside the counted region
    _mark(1)
    for _ in range(args.repeat):
        bundle.run(feeds)
    _mark(2)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
