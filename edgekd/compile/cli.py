"""``edgekd compile``: model directory -> verified bundle (directory + .zip)."""
from __future__ import annotations

import argparse

from edgekd import cliflags
from edgekd.errors import EdgekdValueError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile a student, a Hugging Face teacher or a pruned model into an ONNX bundle",
                       usage="edgekd compile [-h] [KIND] SOURCE --out DIR --eval-data FILE [options]")
    # [KIND] SOURCE [OUT]: sorted out in _compile (an optional positional before a required one
    # cannot be told apart by argparse); a positional OUT is the deprecated spelling of --out
    p.add_argument("paths", nargs="+", metavar="[KIND] SOURCE",
                   help="model kind: bilstm_attention (student), hf_sequence_classification (teacher, head-pruned "
                        "BERT), token_pruned_bert (edgekd prune tokens); default auto: detected from SOURCE. "
                        "SOURCE: the model directory")
    cliflags.add_flags(p, "--out", out=dict(help="bundle directory to write (the .zip goes next to it)"))
    p.add_argument("--tokenizer", help="tokenizer.json (default: SOURCE/tokenizer.json)")
    p.add_argument("--eval-data", required=True, help="held-out CSV/JSONL (text[,label]) for the parity check")
    p.add_argument("--eval-limit", type=int, default=256)
    cliflags.add_flags(p, "--max-length", max_length=dict(default=64, help="maximum tokens per text (default: 64)"))
    p.add_argument("--targets", default="x86_64,arm64")
    p.add_argument("--precisions", default="fp32,int8")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--name")
    p.add_argument("--no-arm64-check", action="store_true", help="skip running the arm64 variants under emulation")
    p.add_argument("--int8-scheme", default="static", choices=["static", "dynamic"],
                   help="static (default): calibrated QDQ, a text's label does not depend on its batch; dynamic: "
                        "activation scales computed per batch at run time")
    p.add_argument("--calibration-data", help="CSV/JSONL/text file whose texts calibrate static int8 (training "
                                              "texts; default: the --eval-data slice)")
    p.add_argument("--no-zip", action="store_true")
    p.add_argument("--ort", action="store_true",
                   help="also write ORT-format (.ort) copies and required-operators configs (ONNX Runtime Mobile)")
    p.add_argument("--overwrite", action="store_true")
    cliflags.add_old_spellings(p)
    p.set_defaults(func=_compile)

    lm = sub.add_parser("compile-lm", help="compile a causal LM (HF directory or .gguf) into a generative bundle "
                                           "with a KV cache (fp32 / int8 / int4 variants)",
                        usage="edgekd compile-lm SOURCE --out DIR --eval-data FILE [options]")
    lm.add_argument("source", help="Hugging Face model directory (e.g. from `edgekd llm prune`) or a .gguf file")
    cliflags.add_flags(lm, "--out", "--text-column", out=dict(required=True, help="bundle directory (the .zip goes next to it)"),
                       text_column=dict(default="text"))
    lm.add_argument("--eval-data", dest="eval_data", required=True,
                    help="held-out texts (txt/CSV/JSONL/Parquet) for the perplexity of every variant")
    lm.add_argument("--eval-limit", dest="eval_limit", type=int, default=64, help="first N held-out texts (default 64)")
    lm.add_argument("--max-eval-tokens", dest="max_eval_tokens", type=int, default=256, help="tokens scored per text")
    lm.add_argument("--precisions", default="fp32,int8,int4")
    lm.add_argument("--block-size", dest="block_size", type=int, default=32, help="weights per scale of int8/int4 (16..256)")
    lm.add_argument("--accuracy-level", dest="accuracy_level", type=int,
                    help="MatMulNBits activation type: 1 fp32, 2 fp16, 3 bf16, 4 int8 (builder default on CPU: 4)")
    lm.add_argument("--quant-method", dest="quant_method",
                    help="int8/int4 weight rounding (the builder's algo_config): default (onnxruntime's MLAS "
                         "round-to-nearest), rtn, k_quant (default: rtn for int4 and asymmetric int8, default for "
                         "symmetric int8)")
    sym = lm.add_mutually_exclusive_group()
    sym.add_argument("--asymmetric", dest="symmetric", action="store_false", default=None,
                     help="int8/int4 weights with a zero point per block (not with --quant-method default; "
                          "default for int4)")
    sym.add_argument("--symmetric", dest="symmetric", action="store_true", default=None,
                     help="no zero points (default for int8)")
    lm.add_argument("--last-logits", dest="last_logits", action="store_true",
                    help="add a logits_index input so that prefill computes the LM head for the last prompt "
                         "token only (faster time to first token; such bundles run with engine ort only)")
    lm.add_argument("--int8-matmuls", dest="int8_matmuls",
                    help="comma-separated MatMul groups the int4 variant keeps at int8: last_matmul (the LM head, "
                         "and the embedding tied to it), mixed_layers; 'none': all int4 (default: last_matmul)")
    lm.add_argument("--context-length", dest="context_length", type=int,
                    help="hard cap on prompt + generated tokens (default: the model's max_position_embeddings)")
    lm.add_argument("--retrieval", dest="retrieval_dir", metavar="INDEX_DIR",
                    help="retrieval index (edgekd qa index, with its paragraph texts) copied into the bundle as "
                         "retrieval/: `edgekd answer BUNDLE QUESTION` answers from it")
    lm.add_argument("--sgp-k", dest="sgp_k", type=int, help="with --retrieval: candidate paragraphs (default 5)")
    lm.add_argument("--sgp-weight", dest="sgp_weight", type=float,
                    help="with --retrieval: the retriever's share of the SGP score, 0..1 (default 0.5)")
    lm.add_argument("--sgp-threshold", dest="sgp_threshold", type=float,
                    help="with --retrieval: abstain below this SGP score (default: never abstain)")
    lm.add_argument("--sgp-terms", dest="sgp_terms", help="with --retrieval: LM terms, question,answer (default both)")
    lm.add_argument("--sgp-max-new-tokens", dest="sgp_max_new_tokens", type=int,
                    help="with --retrieval: answer length cap in tokens (default 32)")
    lm.add_argument("--prompt-style", dest="prompt_style", choices=["plain", "chat"],
                    help="with --retrieval: QA prompt, plain 'Context: ... Question: ... Answer:' or the chat template "
                         "(default: chat when the model has a template)")
    lm.add_argument("--system", help="with --retrieval and the chat style: the system message of QA prompts "
                                     "(default: the QA students' instruction)")
    lm.add_argument("--name")
    lm.add_argument("--no-zip", action="store_true")
    lm.add_argument("--overwrite", action="store_true")
    lm.set_defaults(func=_compile_lm)


def _positionals(args: argparse.Namespace) -> tuple[str, str, str]:
    """(kind, source, out) from ``[KIND] SOURCE [OUT]`` and ``--out``."""
    from edgekd.compile.specs import registered_kinds

    paths = list(args.paths)
    kind = paths.pop(0) if len(paths) > 1 and paths[0] in (*registered_kinds(), "auto") else "auto"
    if not paths or len(paths) > 2:
        raise EdgekdValueError("compile: expected [KIND] SOURCE --out DIR")
    source = paths[0]
    out = args.out
    if len(paths) == 2:
        if out is not None:
            raise EdgekdValueError(f"compile: give the output once (--out {out}, or the positional {paths[1]})")
        cliflags.deprecation("edgekd compile [KIND] SOURCE OUT (positional OUT)", "--out OUT")
        out = paths[1]
    if out is None:
        raise EdgekdValueError("compile: give --out DIR (the bundle directory to write)")
    return kind, source, out


def _compile(args: argparse.Namespace) -> int:
    args.kind, args.source, args.out = _positionals(args)
    from edgekd.compile.pipeline import compile_model
    from edgekd.runtime.bench import load_texts

    texts, labels = load_texts(args.eval_data, args.eval_limit)
    calib = load_texts(args.calibration_data, 512)[0] if args.calibration_data else None
    out = compile_model(args.kind, args.source, args.out, eval_texts=texts, eval_labels=labels,
                        tokenizer=args.tokenizer, max_length=args.max_length,
                        targets=tuple(t for t in args.targets.split(",") if t),
                        precisions=tuple(p for p in args.precisions.split(",") if p), opset=args.opset,
                        name=args.name, arm64_check=not args.no_arm64_check and "auto",
                        make_zip=not args.no_zip, overwrite=args.overwrite, int8_scheme=args.int8_scheme,
                        calibration_texts=calib, ort_format=args.ort)
    print(out)
    return 0


def _compile_lm(args: argparse.Namespace) -> int:
    from edgekd.compile.generative import compile_causal_lm
    from edgekd.data.readers import read_texts

    texts = [t for t in read_texts(args.eval_data, args.eval_limit, text_column=args.text_column,
                                   label_column=None)[0] if t.strip()]
    out = compile_causal_lm(args.source, args.out, eval_texts=texts,
                            precisions=tuple(p for p in args.precisions.split(",") if p), block_size=args.block_size,
                            accuracy_level=args.accuracy_level, symmetric=args.symmetric,
                            quant_method=args.quant_method,
                            last_logits=args.last_logits,
                            int8_matmuls=None if args.int8_matmuls is None else
                            tuple(g for g in args.int8_matmuls.split(",") if g and g != "none"),
                            context_length=args.context_length,
                            max_eval_tokens=args.max_eval_tokens, name=args.name, retrieval_dir=args.retrieval_dir,
                            sgp=_sgp_flags(args), make_zip=not args.no_zip, overwrite=args.overwrite)
    print(out)
    return 0


def _sgp_flags(args: argparse.Namespace) -> dict | None:
    """The SGP settings given on the command line (None: none given, the defaults)."""
    given = {key: getattr(args, dest) for key, dest in (("k", "sgp_k"), ("weight", "sgp_weight"),
                                                         ("threshold", "sgp_threshold"), ("terms", "sgp_terms"),
                                                         ("max_new_tokens", "sgp_max_new_tokens"),
                                                         ("prompt", "prompt_style"), ("system", "system"))
             if getattr(args, dest) is not None}
    if "terms" in given:
        given["terms"] = [t.strip() for t in given["terms"].split(",") if t.strip()]
    if given and not args.retrieval_dir:
        raise EdgekdValueError(f"compile-lm: {', '.join('--' + _FLAG_NAMES[k] for k in given)} need "
                               "--retrieval INDEX_DIR")
    return given or None


_FLAG_NAMES = {"k": "sgp-k", "weight": "sgp-weight", "threshold": "sgp-threshold", "terms": "sgp-terms",
               "max_new_tokens": "sgp-max-new-tokens", "prompt": "prompt-style", "system": "system"}
