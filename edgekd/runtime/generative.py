"""Generative (causal-LM) bundles: ``GenerativeBundle.load(path).generate(prompt)`` with a KV cache,
greedy or sampled decoding, streaming, batches and stop strings. Torch-free.

>>> from edgekd.runtime import GenerativeBundle            # doctest: +SKIP
>>> lm = GenerativeBundle.load("smollm2.zip", precision="int4", threads=2)
>>> lm.generate("The capital of France is", max_new_tokens=16).text
>>> for piece in lm.stream([{"role": "user", "content": "Hi"}], max_new_tokens=32):
...     print(piece, end="", flush=True)

**Bundle.** Same files, manifest, digest, signature and loading rules as a classifier bundle
(:mod:`edgekd.runtime.bundle`), with ``task: "text-generation"``, no ``label_names`` and a
``generation`` table (context length, EOS/BOS/pad ids, layer/KV-head/head sizes, the decoder's
input/output convention ``io``, the chat template file). One variant per weight precision
(``fp32``, ``int8``, ``int4``: MatMulNBits weight-only blocks), each an ONNX decoder written by
onnxruntime-genai's model builder (``edgekd compile-lm``), with its ``genai_config.json``,
``block_size`` and a measured ``quality`` record (held-out perplexity and its delta to fp32).
An optional ``retrieval/`` folder (manifest ``retrieval: {"dir": "retrieval", "sgp": {...}}``, written
by ``edgekd compile-lm --retrieval INDEX_DIR``) holds a retrieval index of the bundle's own documents,
verified like every other file; ``answer(question)`` answers from it with the Selective Generative
Paradigm (:mod:`edgekd.runtime.sgp`).

**Engines.** ``engine="ort"`` (default): the decoder runs in a plain ``onnxruntime`` session and
the KV loop is here in numpy (past key/values fed back each step, right-padded batches with one
valid length per row, finished rows dropped from the batch). It needs only onnxruntime, so it runs
wherever onnxruntime has a wheel (ARM64 included). ``engine="genai"`` hands the loop to
``onnxruntime-genai`` (optional extra ``edgekd-runtime[generate]``, imported only then), which
keeps a static KV buffer; it runs one row at a time. ``ort`` samples here (seeded numpy),
``genai`` with its own sampler (seeded by ``seed``), so only greedy output is engine-independent.

**Context.** ``generation.context_length`` is a hard cap: a prompt whose tokens plus
``max_new_tokens`` do not fit is refused with :class:`~edgekd.errors.EdgekdValueError`, or, with
``truncate=True``, cut to its last ``context_length - max_new_tokens`` tokens.
"""
from __future__ import annotations

import json
import os
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from edgekd.errors import BundleError, EdgekdValueError
from edgekd.runtime.archive import BundleLimits
from edgekd.runtime.bundle import open_bundle
from edgekd.runtime.manifest import GENERATIVE_TASK

GEN_PRECISIONS = ("int4", "int8", "fp32")  # "auto" picks the first the bundle has
ENGINES = ("ort", "genai")
Messages = Sequence[dict[str, str]]


# ------------------------------------------------------------------------------------- results
@dataclass
class Generation:
    """One generated completion. ``finish_reason``: ``"eos"`` (an EOS token), ``"stop"`` (a stop
    string; ``text`` ends before it), ``"length"`` (``max_new_tokens`` reached). ``token_ids``: the
    generated ids (EOS excluded). Times in seconds: ``ttft_s`` from the call to the first token,
    ``decode_s`` from the first to the last token."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    ttft_s: float = 0.0
    decode_s: float = 0.0
    truncated_prompt: bool = False

    @property
    def decode_tokens_per_s(self) -> float:
        return (len(self.token_ids) - 1) / self.decode_s if len(self.token_ids) > 1 and self.decode_s > 0 else 0.0


@dataclass
class SamplingConfig:
    """``temperature`` <= 0 (or None): greedy (argmax, first index on ties). Otherwise logits are
    divided by ``temperature``, cut to the ``top_k`` best (0: all) and to the smallest set whose
    probability reaches ``top_p`` (1.0: all), and sampled with ``numpy.random.default_rng(seed)``."""

    max_new_tokens: int = 128
    temperature: float | None = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    truncate: bool = False
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise EdgekdValueError(f"max_new_tokens: expected a positive int, got {n!r}")
        t = self.temperature
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t < 0):
            raise EdgekdValueError(f"temperature: expected a finite number >= 0 (0: greedy), got {t!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise EdgekdValueError(f"top_p: expected a number in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise EdgekdValueError(f"top_k: expected an int >= 0 (0: no cut), got {self.top_k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise EdgekdValueError(f"seed: expected a non-negative int or None, got {self.seed!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        for s in stop:
            if not isinstance(s, str) or not s:
                raise EdgekdValueError(f"stop: expected non-empty strings, got {s!r}")
        self.stop = stop

    @property
    def greedy(self) -> bool:
        return not self.temperature


def sample_next(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator | None) -> np.ndarray:
    """Next token per row of ``logits`` ``(B, V)`` under ``cfg`` (see :class:`SamplingConfig`)."""
    if cfg.greedy:
        return logits.argmax(axis=-1)
    out = np.empty(logits.shape[0], dtype=np.int64)
    for b, row in enumerate(np.asarray(logits, dtype=np.float64)):
        x = row / float(cfg.temperature)
        if cfg.top_k and cfg.top_k < x.size:
            kth = np.partition(x, -cfg.top_k)[-cfg.top_k]
            x = np.where(x < kth, -np.inf, x)
        x = x - x.max()
        p = np.exp(x)
        p /= p.sum()
        if cfg.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            keep = np.cumsum(p[order]) - p[order] < cfg.top_p  # the smallest prefix reaching top_p
            mask = np.zeros_like(p, dtype=bool)
            mask[order[keep]] = True
            p = np.where(mask, p, 0.0)
            p /= p.sum()
        out[b] = int(rng.choice(p.size, p=p))
    return out


# ------------------------------------------------------------------------------------- text
class _Detok:
    """Incremental detokenisation of one row with stop strings: ``push(id)`` returns the text that
    is safe to emit (not a possible start of a stop string, no half UTF-8 character)."""

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tok, self.stop, self.ids, self.emitted, self.text = tokenizer, stop, [], 0, ""
        self.stopped = False

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character still incomplete
            return ""
        self.text = text
        hits = [i for s in self.stop if (i := text.find(s, max(0, self.emitted - len(s) + 1))) >= 0]
        if hits:
            self.text, self.stopped = text[:min(hits)], True
            return self._emit(len(self.text))
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if s.startswith(text[-k:]):
                    hold = k
                    break
        return self._emit(len(text) - hold)

    def _emit(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        piece, self.emitted = self.text[self.emitted:upto], upto
        return piece

    def finish(self) -> str:
        """The rest of the text (at the end of generation: EOS, length or stop)."""
        if not self.stopped:
            self.text = self.tok.decode(self.ids, skip_special_tokens=True)
        return self._emit(len(self.text))


def render_chat(template: str, messages: Messages, special: dict[str, Any], add_generation_prompt: bool = True) -> str:
    """Render a Hugging Face chat template (jinja2, sandboxed: the template comes from the bundle)."""
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as exc:
        raise EdgekdValueError("messages: chat templates need jinja2 (pip install 'edgekd-runtime[generate]'); "
                               "or pass a plain prompt string") from exc
    if not isinstance(messages, (list, tuple)) or not messages:
        raise EdgekdValueError("messages: expected a non-empty list of {'role': ..., 'content': ...} dicts")
    for k, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise EdgekdValueError(f"messages[{k}]: expected a dict with string 'role' and 'content', got {msg!r:.120}")

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                                **special)
    except TemplateError as exc:
        raise EdgekdValueError(f"messages: the bundle's chat template refused them: {exc}") from None


# ------------------------------------------------------------------------------------- engines
class _OrtDecoder:
    """Plain onnxruntime decoder with the ``gqa`` convention (onnxruntime-genai's model builder):
    inputs ``input_ids (B, S)``, ``attention_mask (B, total)`` whose row sums give each row's valid
    length (GroupQueryAttention places a row's new keys right after its own ``sum - S`` past ones,
    so rows are right-padded), ``past_key_values.{i}.key/value (B, kv_heads, past, head_dim)``;
    outputs ``logits (B, S, V)`` and ``present.{i}.key/value``."""

    def __init__(self, model_path: pathlib.Path, gen: dict[str, Any], threads: int | None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types
            raise BundleError(f"bundle: onnxruntime cannot load {model_path.name}: {str(exc)[:500]}") from exc
        self.L, self.kvh, self.hd = gen["num_layers"], gen["num_kv_heads"], gen["head_dim"]
        self.pad = gen["pad_token_id"]
        names = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [f"past_key_values.{i}.{kv}" for i in range(self.L) for kv in ("key", "value")]
        missing = [n for n in ["input_ids", "attention_mask", *self.past_names] if n not in names]
        if missing:
            raise BundleError(f"bundle: decoder {model_path.name} lacks the inputs {missing[:4]} of the 'gqa' convention")
        self.kv_dtype = np.float16 if names[self.past_names[0]].type == "tensor(float16)" else np.float32
        # "gqa+logits_index": the LM head runs only at the positions in logits_index (B, K)
        self.logits_index = "logits_index" in names
        if self.logits_index != (gen.get("io", "gqa") == "gqa+logits_index"):
            raise BundleError(f"bundle: decoder {model_path.name} does not match generation.io {gen.get('io')!r} "
                              "(logits_index input present: " + str(self.logits_index) + ")")
        outs = [o.name for o in self.session.get_outputs()]
        if not outs or outs[0] != "logits":
            raise BundleError(f"bundle: decoder {model_path.name}'s first output is not 'logits' ({outs[:3]})")
        self.out_names = outs
        self.present_to_past = {o: o.replace("present.", "past_key_values.") for o in outs[1:]}

    def _run(self, ids: np.ndarray, lens_after: np.ndarray, past: dict[str, np.ndarray],
             positions: np.ndarray | None = None):
        """One decoder call; ``positions`` (B, K): the positions of ``ids`` whose logits are wanted
        (only a ``logits_index`` graph uses it; the others return every position's)."""
        width = int(lens_after.max())
        mask = (np.arange(width)[None, :] < lens_after[:, None]).astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, **past}
        if self.logits_index:
            feed["logits_index"] = (np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape)
                                    if positions is None else np.ascontiguousarray(positions, dtype=np.int64))
        res = self.session.run(None, feed)
        new_past = {self.present_to_past[n]: v for n, v in zip(self.out_names[1:], res[1:])}
        return res[0], new_past

    def prefill(self, rows: list[list[int]]) -> tuple[np.ndarray, dict[str, Any]]:
        lens = np.array([len(r) for r in rows], dtype=np.int64)
        ids = np.full((len(rows), int(lens.max())), self.pad, dtype=np.int64)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = r
        empty = np.zeros((len(rows), self.kvh, 0, self.hd), dtype=self.kv_dtype)
        if self.logits_index:  # the LM head only at each row's last prompt token
            logits, past = self._run(ids, lens, {n: empty for n in self.past_names}, (lens - 1)[:, None])
            return logits[:, 0], {"lens": lens, "past": past}
        logits, past = self._run(ids, lens, {n: empty for n in self.past_names})
        return logits[np.arange(len(rows)), lens - 1], {"lens": lens, "past": past}

    def step(self, tokens: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        lens = state["lens"] + 1
        logits, state["past"] = self._run(np.asarray(tokens, dtype=np.int64).reshape(-1, 1), lens, state["past"])
        state["lens"] = lens
        return logits[:, -1]

    def keep(self, state: dict[str, Any], rows: np.ndarray) -> None:
        """Drop finished rows: keep only ``rows`` (indices into the current batch)."""
        state["lens"] = state["lens"][rows]
        state["past"] = {n: v[rows] for n, v in state["past"].items()}


class _GenaiDecoder:
    """onnxruntime-genai's own loop (one row at a time), for ``engine="genai"``."""

    def __init__(self, variant_dir: pathlib.Path, threads: int | None):
        try:
            import onnxruntime_genai as og
        except ImportError as exc:
            raise EdgekdValueError("engine='genai' needs onnxruntime-genai (pip install 'edgekd-runtime[generate]'); "
                                   "engine='ort' needs only onnxruntime") from exc
        self.og = og
        cfg = og.Config(str(variant_dir))
        so: dict[str, Any] = {"inter_op_num_threads": 1}
        if threads is not None:
            so["intra_op_num_threads"] = threads
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": so}}}))
        try:
            self.model = og.Model(cfg)
        except Exception as exc:
            raise BundleError(f"bundle: onnxruntime-genai cannot load {variant_dir.name}: {str(exc)[:500]}") from exc

    def tokens(self, ids: list[int], cfg: SamplingConfig, max_new: int) -> Iterator[int]:
        og = self.og
        params = og.GeneratorParams(self.model)
        opts: dict[str, Any] = {"max_length": len(ids) + max_new, "do_sample": not cfg.greedy}
        if not cfg.stop_at_eos:
            opts["min_length"] = len(ids) + max_new
        if not cfg.greedy:
            opts.update(temperature=float(cfg.temperature), top_p=float(cfg.top_p), top_k=int(cfg.top_k or 0))
            if cfg.seed is not None:
                opts["random_seed"] = int(cfg.seed)
        params.set_search_options(**opts)
        g = og.Generator(self.model, params)
        g.append_tokens(np.asarray(ids, dtype=np.int32))
        for _ in range(max_new):
            if g.is_done():
                return
            g.generate_next_token()
            yield int(g.get_next_tokens()[0])


# ------------------------------------------------------------------------------------- bundle
def select_generative_variant(manifest: dict[str, Any], precision: str = "auto") -> dict[str, Any]:
    """The variant of ``precision`` (``"auto"``: int4, then int8, then fp32)."""
    if manifest.get("task") != GENERATIVE_TASK:
        raise BundleError("bundle: this is not a generative bundle (task != 'text-generation'); "
                          "load it with edgekd.runtime.Bundle / edgekd predict")
    have = [v["precision"] for v in manifest["variants"]]
    if precision not in ("auto",) + GEN_PRECISIONS:
        raise EdgekdValueError(f"precision: expected 'auto' or one of {list(GEN_PRECISIONS)}, got {precision!r}")
    for prec in (GEN_PRECISIONS if precision == "auto" else (precision,)):
        for v in manifest["variants"]:
            if v["precision"] == prec:
                return v
    raise BundleError(f"precision: the bundle has no {precision} variant (it has {have})")


class GenerativeBundle:
    """A loaded generative bundle (see the module doc). Not thread-safe: one generation at a time."""

    def __init__(self, root: pathlib.Path, manifest: dict[str, Any], variant: dict[str, Any], threads: int | None,
                 engine: str, source: pathlib.Path, tmpdir: Any = None):
        from tokenizers import Tokenizer

        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise EdgekdValueError(f"threads: expected a positive int or None, got {threads!r}")
        self.root, self.manifest, self.variant, self.source, self._tmpdir = root, manifest, variant, source, tmpdir
        self.threads, self.engine = threads, engine
        self.gen: dict[str, Any] = manifest["generation"]
        self.context_length: int = self.gen["context_length"]
        self.eos_ids = frozenset(self.gen["eos_token_ids"])
        try:
            self.tokenizer = Tokenizer.from_file(str(root / manifest["preprocessing"]["tokenizer"]))
        except Exception as exc:  # tokenizers raises a plain Exception on a bad file
            raise BundleError(f"bundle: cannot read the tokenizer: {str(exc)[:300]}") from exc
        self._template = None
        self._retrieval: pathlib.Path | None = None
        self._qa: Any = None
        if self.gen.get("chat_template"):
            self._template = (root / self.gen["chat_template"]).read_text(encoding="utf-8")
        model_path = root / variant["file"]
        if engine == "genai":
            if self.gen.get("io", "gqa") != "gqa":
                raise BundleError(f"engine='genai': this bundle's decoder has the {self.gen['io']!r} convention "
                                  "(compile-lm --last-logits), which only engine='ort' runs")
            if not variant.get("genai_config"):
                raise BundleError(f"engine='genai': variant {variant['id']!r} has no genai_config.json")
            self._decoder: Any = _GenaiDecoder(model_path.parent, threads)
        else:
            self._decoder = _OrtDecoder(model_path, self.gen, threads)

    @classmethod
    def load(cls, path: str | os.PathLike, precision: str = "auto", threads: int | None = None, *,
             engine: str = "ort", trusted_keys: Iterable[Any] | None = None, limits: BundleLimits | None = None,
             verify: str = "all") -> "GenerativeBundle":
        """Verify (every checksum, the manifest digest, the signature when ``trusted_keys`` are given:
        :func:`edgekd.runtime.bundle.open_bundle`) and load a generative bundle directory or ``.zip``."""
        if engine not in ENGINES:
            raise EdgekdValueError(f"engine: expected one of {list(ENGINES)}, got {engine!r}")
        path = pathlib.Path(path)
        chooser = lambda m: select_generative_variant(m, precision)  # noqa: E731
        root, manifest, variant, tmp = open_bundle(path, chooser, trusted_keys=trusted_keys, limits=limits, verify=verify)
        try:
            if tmp is not None:  # a zip: open_bundle extracted the tokenizer and the model; add the small extras
                extra = [manifest["generation"].get("chat_template")]
                extra += [variant.get("genai_config")] if engine == "genai" else []
                _extract_extra(path, manifest, [e for e in extra if e], tmp.path)
            return cls(root, manifest, variant, threads, engine, path, tmp)
        except BaseException:
            if tmp is not None:
                tmp.cleanup()
            raise

    # ------------------------------------------------------------------------------ prompts
    @property
    def retrieval_dir(self) -> pathlib.Path | None:
        """The bundle's ``retrieval/`` folder (read by :mod:`edgekd.runtime.retrieval`), or None when
        the bundle has none. Its files are checked against the manifest's sha256 on first use: in a
        bundle directory they are hashed again (they may have changed since the load), from a zip
        they are extracted into the bundle's temporary folder, hashed while written."""
        r = self.manifest.get("retrieval")
        if not r:
            return None
        if self._retrieval is None:
            from edgekd.runtime.bundle import sha256_file
            from edgekd.runtime.manifest import check_relpath

            folder = check_relpath(r["dir"], "retrieval.dir")
            files = self.manifest["files"]
            names = [rel for rel in files if rel.startswith(folder + "/")]
            if self._tmpdir is None:
                for rel in names:
                    p = self.root / rel
                    if p.is_symlink() or not p.is_file():
                        raise BundleError(f"bundle: retrieval file {rel!r} is missing or a link")
                    if p.stat().st_size != files[rel]["size"] or sha256_file(p) != files[rel]["sha256"]:
                        raise BundleError(f"bundle: checksum mismatch for {rel!r}: the file was changed or corrupted")
            else:
                _extract_extra(self.source, self.manifest, [n for n in names if not (self.root / n).exists()],
                               self.root)
            self._retrieval = self.root / folder
        return self._retrieval

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def render_chat(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        """Chat ``messages`` rendered with the bundle's chat template (the prompt text)."""
        if self._template is None:
            raise EdgekdValueError("messages: this bundle has no chat template; pass a prompt string")
        special = {k: self._token_text(self.gen.get(k + "_id")) for k in ("bos_token", "eos_token")}
        return render_chat(self._template, messages, special, add_generation_prompt)

    def answer(self, question: str, mode: str = "sgp", *, k: int | None = None, **overrides: Any):
        """Answer ``question`` from the bundle's own documents (its ``retrieval/`` index and SGP
        settings, ``edgekd compile-lm --retrieval``): ``mode`` ``"sgp"``, ``"top1"`` or
        ``"closed-book"`` -> :class:`edgekd.runtime.sgp.QAResult` (see :class:`edgekd.runtime.sgp.BundleQA`;
        ``overrides``: ``weight``, ``threshold``, ``terms``, ``max_new_tokens``)."""
        if self._qa is None:
            from edgekd.runtime.sgp import BundleQA

            self._qa = BundleQA(self)
        return self._qa.answer(question, mode, k=k, **overrides)

    def encode(self, prompt: str | Messages) -> list[int]:
        """Token ids of a prompt string (the tokenizer's special tokens added as the model's own
        tokenizer does) or of chat ``messages`` rendered with the bundle's chat template."""
        if isinstance(prompt, str):
            if not prompt:
                raise EdgekdValueError("prompt: empty string; give some text or chat messages")
            return list(self.tokenizer.encode(prompt, add_special_tokens=True).ids)
        return list(self.tokenizer.encode(self.render_chat(prompt), add_special_tokens=False).ids)

    def _token_text(self, tid: int | None) -> str:
        return "" if tid is None else (self.tokenizer.id_to_token(tid) or "")

    def _fit(self, ids: list[int], cfg: SamplingConfig) -> tuple[list[int], bool]:
        ctx, n = self.context_length, cfg.max_new_tokens
        if n >= ctx:
            raise EdgekdValueError(f"max_new_tokens={n} does not fit the bundle's context of {ctx} tokens")
        if len(ids) + n <= ctx:
            return ids, False
        if not cfg.truncate:
            raise EdgekdValueError(
                f"prompt: {len(ids)} tokens + max_new_tokens={n} exceed the bundle's context of {ctx} tokens; shorten "
                f"the prompt, lower max_new_tokens, or pass truncate=True (keeps the last {ctx - n} prompt tokens)")
        return ids[len(ids) - (ctx - n):], True

    # ------------------------------------------------------------------------------ generation
    def generate(self, prompt: str | Messages | Sequence[str | Messages], max_new_tokens: int = 128,
                 temperature: float | None = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                 stop: str | Sequence[str] = (), *, truncate: bool = False,
                 ignore_eos: bool = False) -> Generation | list[Generation]:
        """Complete one prompt (a string or chat messages) -> :class:`Generation`, or a list of
        prompts -> a list (decoded as one batch; each row stops on its own EOS / stop string).
        ``ignore_eos``: go on past EOS tokens (benchmarks: a fixed number of new tokens)."""
        cfg = SamplingConfig(max_new_tokens, temperature, top_p, top_k, seed, stop, truncate, not ignore_eos)
        single = isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], dict))
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            raise EdgekdValueError("prompt: expected a prompt, chat messages, or a non-empty list of them")
        results = self._batch(prompts, cfg, None)
        return results[0] if single else results

    def stream(self, prompt: str | Messages, max_new_tokens: int = 128, temperature: float | None = 0.0,
               top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop: str | Sequence[str] = (), *,
               truncate: bool = False, ignore_eos: bool = False) -> Iterator[str]:
        """Yield the completion's text piece by piece as tokens arrive (the pieces join to
        ``generate(...).text`` with the same arguments)."""
        cfg = SamplingConfig(max_new_tokens, temperature, top_p, top_k, seed, stop, truncate, not ignore_eos)
        pieces: list[str] = []
        it = self._rows([prompt], cfg, pieces)
        for _ in it:
            while pieces:
                yield pieces.pop(0)
        while pieces:
            yield pieces.pop(0)

    def _batch(self, prompts: list, cfg: SamplingConfig, sink: list[str] | None) -> list[Generation]:
        gens: list[Generation] = []
        for out in self._rows(prompts, cfg, sink):
            gens = out
        return gens

    def _rows(self, prompts: list, cfg: SamplingConfig, sink: list[str] | None) -> Iterator[list[Generation]]:
        """The decoding loop, one yield per step; ``sink`` (single row) receives text pieces."""
        t0 = time.perf_counter()
        fitted = [self._fit(self.encode(p), cfg) for p in prompts]
        if self.engine == "genai":
            yield from self._rows_genai(fitted, cfg, sink, t0)
            return
        B = len(fitted)
        rng = None if cfg.greedy else np.random.default_rng(cfg.seed)
        detoks = [_Detok(self.tokenizer, cfg.stop) for _ in range(B)]
        gens = [Generation("", [], len(ids), "length", truncated_prompt=tr) for ids, tr in fitted]
        logits, state = self._decoder.prefill([ids for ids, _ in fitted])
        active = np.arange(B)
        t_first = None
        for step in range(cfg.max_new_tokens):
            nxt = sample_next(logits, cfg, rng)
            now = time.perf_counter()
            if t_first is None:
                t_first = now
            keep = []
            for j, b in enumerate(active):
                tok = int(nxt[j])
                g = gens[b]
                if step == 0:
                    g.ttft_s = now - t0
                g.decode_s = now - t_first
                if cfg.stop_at_eos and tok in self.eos_ids:
                    g.finish_reason = "eos"
                    piece = detoks[b].finish()
                else:
                    g.token_ids.append(tok)
                    piece = detoks[b].push(tok)
                    if detoks[b].stopped:
                        g.finish_reason = "stop"
                    elif step == cfg.max_new_tokens - 1:
                        piece += detoks[b].finish()
                    else:
                        keep.append(j)
                if sink is not None and piece:
                    sink.append(piece)
                g.text = detoks[b].text if detoks[b].stopped else g.text
            yield gens
            if not keep:
                break
            if len(keep) < len(active):
                self._decoder.keep(state, np.asarray(keep))
                active = active[keep]
                nxt = nxt[keep]
            logits = self._decoder.step(nxt, state)
        for b, g in enumerate(gens):
            if not detoks[b].stopped:
                g.text = self.tokenizer.decode(g.token_ids, skip_special_tokens=True)
        yield gens

    def _rows_genai(self, fitted, cfg: SamplingConfig, sink, t0) -> Iterator[list[Generation]]:
        gens = []
        for ids, tr in fitted:
            g = Generation("", [], len(ids), "length", truncated_prompt=tr)
            gens.append(g)
            d = _Detok(self.tokenizer, cfg.stop)
            t_start, t_first = time.perf_counter() if gens[:-1] else t0, None
            for tok in self._decoder.tokens(ids, cfg, cfg.max_new_tokens):
                now = time.perf_counter()
                if t_first is None:
                    t_first, g.ttft_s = now, now - t_start
                g.decode_s = now - t_first
                if cfg.stop_at_eos and tok in self.eos_ids:
                    g.finish_reason = "eos"
                    break
                g.token_ids.append(tok)
                piece = d.push(tok)
                if sink is not None and piece:
                    sink.append(piece)
                if d.stopped:
                    g.finish_reason = "stop"
                    break
                yield gens
            if sink is not None:
                rest = d.finish()
                if rest:
                    sink.append(rest)
            g.text = d.text if d.stopped else self.tokenizer.decode(g.token_ids, skip_special_tokens=True)
        yield gens

    # ------------------------------------------------------------------------------ scoring
    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits ``(len(ids), V)`` of one token sequence in one forward pass (engine ``ort`` only)."""
        if self.engine != "ort":
            raise EdgekdValueError("logits: needs engine='ort'")
        if not 0 < len(ids) <= self.context_length:
            raise EdgekdValueError(f"logits: expected 1..{self.context_length} token ids, got {len(ids)}")
        d = self._decoder
        lens = np.array([len(ids)], dtype=np.int64)
        empty = np.zeros((1, d.kvh, 0, d.hd), dtype=d.kv_dtype)
        out, _ = d._run(np.asarray([ids], dtype=np.int64), lens, {n: empty for n in d.past_names})
        return np.asarray(out[0], dtype=np.float32)

    @property
    def size_bytes(self) -> int:
        """Bytes on disk of what this variant needs: its model file(s) plus the tokenizer."""
        files = self.manifest["files"]
        prefix = self.variant["file"].rsplit("/", 1)[0] + "/" if "/" in self.variant["file"] else None
        own = [r for r in files if prefix and r.startswith(prefix)] or [self.variant["file"]]
        return int(sum(files[r]["size"] for r in own) + files[self.manifest["preprocessing"]["tokenizer"]]["size"])

    def __repr__(self) -> str:
        return (f"GenerativeBundle({str(self.source)!r}, variant={self.variant['id']!r}, engine={self.engine!r}, "
                f"context_length={self.context_length})")


def _extract_extra(zip_path: pathlib.Path, manifest: dict[str, Any], names: list[str], dest: pathlib.Path) -> None:
    from edgekd.runtime.archive import DEFAULT_LIMITS, extract_entries, open_zip

    zf, entries = open_zip(zip_path, DEFAULT_LIMITS)
    with zf:
        extract_entries(zf, entries, manifest["files"], names, dest)


def perplexity(bundle: GenerativeBundle, texts: Sequence[str], max_tokens: int | None = None) -> dict[str, float]:
    """Token-level perplexity of ``bundle`` on ``texts`` (each scored alone, cut to the context or
    ``max_tokens``): ``exp(mean NLL)`` over every predicted token; returns perplexity, mean NLL, tokens."""
    nll, n = 0.0, 0
    cap = min(bundle.context_length, max_tokens or bundle.context_length)
    for t in texts:
        ids = bundle.encode(t)[:cap]
        if len(ids) < 2:
            continue
        lg = bundle.logits(ids).astype(np.float64)[:-1]
        lg -= lg.max(axis=-1, keepdims=True)
        lp = lg - np.log(np.exp(lg).sum(axis=-1, keepdims=True))
        nll -= float(lp[np.arange(len(ids) - 1), ids[1:]].sum())
        n += len(ids) - 1
    if n == 0:
        raise EdgekdValueError("perplexity: the texts hold no scorable tokens (each needs at least 2)")
    return {"perplexity": float(np.exp(nll / n)), "mean_nll": nll / n, "tokens": n}


__all__ = ["GenerativeBundle", "Generation", "SamplingConfig", "sample_next", "select_generative_variant",
           "render_chat", "perplexity", "GEN_PRECISIONS", "ENGINES"]
