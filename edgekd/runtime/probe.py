"""A tiny torch-free probe run on a device (or under the ARM64 emulator, or valgrind):

    python -m edgekd.runtime.probe BUNDLE --target arm64 --precision fp32,int8 --texts texts.json [--repeat N]

For each precision it loads the bundle variant single-threaded and prints one JSON line
``{"variant", "logits", "attention"}`` for the texts (one batch); then it runs ``--repeat`` more
batch-1 ``session.run`` calls on the first text between two instruction-count marks. A mark is
both ``os.lseek(-4242, TAG, 0)`` (the ARM64 tool's ``count`` wrapper reports ``insncount mark TAG
N``) and ``os.getsid(0)`` (``valgrind --tool=callgrind --dump-before=getsid`` dumps a profile
part there); elsewhere both are harmless. Variant ``k`` (0-based) uses tags ``2k+1`` and ``2k+2``.
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
    os.getsid(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgekd.runtime.probe")
    ap.add_argument("bundle")
    ap.add_argument("--target", default="auto")
    ap.add_argument("--precision", default="auto", help="comma-separated: auto, int8, fp32")
    ap.add_argument("--texts", required=True, help="JSON file with a list of texts")
    ap.add_argument("--repeat", type=int, default=0, help="batch-1 inferences between count marks")
    ap.add_argument("--no-output", action="store_true", help="skip the batch run (for instruction counting)")
    args = ap.parse_args(argv)
    from edgekd.runtime.model import Bundle

    with open(args.texts, encoding="utf-8") as fh:
        texts = json.load(fh)
    for k, precision in enumerate(args.precision.split(",")):
        bundle = Bundle.load(args.bundle, target=args.target, precision=precision, threads=1)
        row = {"variant": bundle.variant["id"], "precision": precision}
        if not args.no_output:
            out = bundle.run(bundle.preprocessor(texts).feeds)
            row["logits"] = out["logits"].tolist()
            row["attention"] = out["attention"].tolist() if "attention" in out else None
        feeds = bundle.preprocessor(texts[:1]).feeds
        sess = bundle.session
        sess.run(None, feeds)  # warm-up outside the counted region
        _mark(2 * k + 1)
        for _ in range(args.repeat):
            sess.run(None, feeds)
        _mark(2 * k + 2)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
