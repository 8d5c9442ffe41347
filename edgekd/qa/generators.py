"""Text generators behind one interface: a local causal LM, or any OpenAI-compatible HTTP endpoint.

:class:`Generator` is what the triplet synthesiser (:mod:`edgekd.qa.synth`) talks to::

    gen.generate(prompts, max_new_tokens=96, temperature=0.0, top_p=1.0, stop=["\\n\\n"], seed=0)
    -> [Completion(text, prompt_tokens, completion_tokens, finish_reason), ...]   # input order

A prompt is a string (raw text, continued as is) or a list of chat messages
(``[{"role": "user", "content": ...}]``, rendered by the model's chat template). Every generator
has a ``name``, a ``fingerprint`` (what cache keys are made of: the same fingerprint must mean the
same model and decoding) and ``usage`` (running totals: requests, prompt and completion tokens,
seconds spent generating).

Backends
--------
:class:`LocalCausalLM`
    A transformers causal LM in this process: a model directory, a GGUF file (dequantised by
    :func:`edgekd.llm.load_causal_lm`) or an asset name (``smollm2``, ``gemma3-270m``). Prompts are
    generated in batches with left padding; greedy at ``temperature=0``, else seeded sampling.
:class:`OpenAICompatible`
    ``POST {base_url}/chat/completions`` or ``/completions`` on vLLM, llama.cpp's server
    (``python -m llama_cpp.server``), Ollama (``http://localhost:11434/v1``) or a hosted API.

HTTP client: ``requests`` (already installed with ``datasets``/``transformers``), not the
``openai`` package or ``httpx``: the two endpoints need one JSON POST each, and what the official
client would add (its own retry policy, async) is what this module must control and test itself:
retries with exponential backoff on connection errors, timeouts, 5xx and 429 (honouring
``Retry-After``), a bounded thread pool that keeps ``concurrency`` requests in flight and returns
results in input order, and one clear :class:`GeneratorUnavailableError` naming the URL when the
server is down or answers something that is not an OpenAI-compatible response.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

from edgekd.errors import EdgekdValueError

__all__ = ["Prompt", "Completion", "Usage", "Generator", "LocalCausalLM", "OpenAICompatible",
           "GeneratorUnavailableError", "GeneratorRequestError", "make_generator"]

Prompt = Union[str, list]  # raw text, or chat messages [{"role": ..., "content": ...}, ...]


class GeneratorUnavailableError(EdgekdValueError):
    """The generator's server cannot be reached, keeps failing, or answers garbage; the message names the URL."""


class GeneratorRequestError(EdgekdValueError):
    """The server refused a request (HTTP 4xx other than 429): a wrong model name, bad settings, a bad key."""


@dataclass(frozen=True)
class Completion:
    """One generated text. ``finish_reason``: ``"stop"`` (end of sequence or a stop string) or
    ``"length"`` (``max_new_tokens`` reached); token counts are -1 when the server did not say."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Completion":
        return cls(str(d["text"]), int(d["prompt_tokens"]), int(d["completion_tokens"]), str(d["finish_reason"]))


@dataclass
class Usage:
    """Running totals of a generator: requests (prompts sent), tokens, seconds of wall time spent in
    :meth:`Generator.generate`, retries, and completions without token counts."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    retries: int = 0
    missing_usage: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, c: Completion) -> None:
        with self._lock:
            self.requests += 1
            if c.prompt_tokens < 0 or c.completion_tokens < 0:
                self.missing_usage += 1
            else:
                self.prompt_tokens += c.prompt_tokens
                self.completion_tokens += c.completion_tokens

    @property
    def tokens_per_second(self) -> float:
        """Completion tokens per second of generation wall time (0 before any)."""
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "seconds": round(self.seconds, 3),
                "completion_tokens_per_second": round(self.tokens_per_second, 2),
                "retries": self.retries, "missing_usage": self.missing_usage}


def _check_prompts(prompts: Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, (str, dict)):
        raise EdgekdValueError("generate: prompts must be a list of prompts (strings or message lists), "
                               "got a single " + type(prompts).__name__)
    out = list(prompts)
    for i, p in enumerate(out):
        if isinstance(p, str):
            if not p.strip():
                raise EdgekdValueError(f"generate: prompt {i} is empty")
        elif isinstance(p, list):
            if not p or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                and isinstance(m.get("content"), str) for m in p):
                raise EdgekdValueError(f"generate: prompt {i} is not a list of {{'role': str, 'content': str}} "
                                       "messages")
        else:
            raise EdgekdValueError(f"generate: prompt {i} is a {type(p).__name__}, expected a string or a "
                                   "list of chat messages")
    return out


def _check_settings(max_new_tokens: int, temperature: float, top_p: float) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise EdgekdValueError(f"generate: max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not (temperature >= 0.0):  # also catches NaN
        raise EdgekdValueError(f"generate: temperature must be >= 0, got {temperature!r}")
    if not (0.0 < top_p <= 1.0):
        raise EdgekdValueError(f"generate: top_p must be in (0, 1], got {top_p!r}")


def _cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """``text`` up to the first stop string (excluded), and whether one was found."""
    cut = len(text)
    for s in stop or ():
        if s:
            i = text.find(s)
            if 0 <= i < cut:
                cut = i
    return text[:cut], cut < len(text)


class Generator(ABC):
    """A text generator (see the module doc). Subclasses implement :meth:`_generate` and set
    :attr:`name`; :meth:`generate` checks arguments, times the call and keeps :attr:`usage`."""

    name: str = "generator"

    def __init__(self) -> None:
        self.usage = Usage()

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """A short string that identifies the model and how prompts are sent (for cache keys)."""

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0, stop: Sequence[str] | None = None, seed: int = 0) -> list[Completion]:
        """One completion per prompt, in input order. ``temperature=0``: greedy; else sampling
        seeded by ``seed`` (prompt ``i`` of the call uses ``seed + i`` where the backend allows)."""
        prompts = _check_prompts(prompts)
        _check_settings(max_new_tokens, temperature, top_p)
        if isinstance(stop, str):
            stop = [stop]
        if not prompts:
            return []
        t0 = time.perf_counter()
        out = self._generate(prompts, max_new_tokens=max_new_tokens, temperature=float(temperature),
                             top_p=float(top_p), stop=list(stop or []), seed=int(seed))
        self.usage.seconds += time.perf_counter() - t0
        for c in out:
            self.usage.add(c)
        return out

    @abstractmethod
    def _generate(self, prompts: list[Prompt], *, max_new_tokens: int, temperature: float, top_p: float,
                  stop: list[str], seed: int) -> list[Completion]:
        ...

    def close(self) -> None:
        """Release what the generator holds (HTTP sessions); it may still be used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# local transformers model


class LocalCausalLM(Generator):
    """A transformers causal LM in this process.

    ``source``: a model directory, a ``.gguf`` file or an asset name (``smollm2``,
    ``gemma3-270m``; :func:`edgekd.assets.asset_path`); or pass ``model=`` and ``tokenizer=``
    directly. Prompts go in batches of ``batch_size`` with left padding (the attention mask and
    the position ids skip the padding, so a batch gives what one-by-one greedy decoding gives).
    Chat prompts use the tokenizer's chat template with the generation prompt appended.
    """

    def __init__(self, source: str | os.PathLike | None = None, *, model: Any = None, tokenizer: Any = None,
                 batch_size: int = 8, threads: int | None = None, dtype: Any = "float32", name: str | None = None):
        super().__init__()
        if batch_size < 1:
            raise EdgekdValueError(f"LocalCausalLM: batch_size must be >= 1, got {batch_size}")
        if threads is not None:
            import torch

            torch.set_num_threads(int(threads))
        if model is None:
            if source is None:
                raise EdgekdValueError("LocalCausalLM: give a model source (directory, .gguf file or asset name) "
                                       "or model= and tokenizer=")
            from edgekd.assets import ASSETS, asset_path
            from edgekd.llm.models import load_causal_lm

            src = str(source)
            path = asset_path(src) if src in ASSETS else Path(src)
            model, tokenizer = load_causal_lm(path, dtype=dtype)
            name = name or Path(path).name
        if tokenizer is None:
            raise EdgekdValueError("LocalCausalLM: model= needs tokenizer= as well")
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        # what the model computes, not where it was loaded from: the class, the weights' size and
        # statistics, the tokenizer's size and chat template (a saved and reloaded model keeps it)
        import torch

        with torch.no_grad():
            params = list(model.state_dict().values())
            n = sum(p.numel() for p in params)
            s1 = float(sum(p.double().sum() for p in params))
            s2 = float(sum(p.double().square().sum() for p in params))
        template = getattr(tokenizer, "chat_template", "") or ""
        ident = f"{type(model).__name__}|{n}|{s1:.6e}|{s2:.6e}|{len(tokenizer)}|{template}"
        self._fp = "local:" + hashlib.sha256(ident.encode()).hexdigest()[:16]

    @property
    def fingerprint(self) -> str:
        return self._fp

    def _text(self, p: Prompt) -> str:
        if isinstance(p, str):
            return p
        if not getattr(self.tokenizer, "chat_template", None):
            raise EdgekdValueError(f"LocalCausalLM: {self.name} has no chat template; give text prompts "
                                   "(a completion template) instead of chat messages")
        return self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)

    def _generate(self, prompts, *, max_new_tokens, temperature, top_p, stop, seed):
        import torch

        tok = self.tokenizer
        eos = tok.eos_token_id
        pad = tok.pad_token_id
        out: list[Completion] = []
        for b0 in range(0, len(prompts), self.batch_size):
            texts = [self._text(p) for p in prompts[b0:b0 + self.batch_size]]
            old_side = tok.padding_side
            tok.padding_side = "left"
            try:
                # chat templates already hold the BOS token: adding special tokens would repeat it
                enc = tok(texts, return_tensors="pt", padding=True,
                          add_special_tokens=all(isinstance(p, str) for p in prompts[b0:b0 + self.batch_size]))
            finally:
                tok.padding_side = old_side
            kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
            if temperature > 0:
                kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
                torch.manual_seed(seed + b0)
            else:
                kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            with torch.no_grad():
                gen = self.model.generate(**enc, **kw)
            new = gen[:, enc["input_ids"].shape[1]:]
            for i in range(new.shape[0]):
                ids = new[i].tolist()
                hit_eos = eos is not None and eos in ids
                n = ids.index(eos) + 1 if hit_eos else len(ids)
                text = tok.decode(ids[:n], skip_special_tokens=True)
                text, hit_stop = _cut_at_stop(text, stop)
                out.append(Completion(text, int(enc["attention_mask"][i].sum()), n,
                                      "stop" if (hit_eos or hit_stop) else "length"))
        return out


# --------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP endpoint


def _normalise_base_url(url: str) -> str:
    from urllib.parse import urlparse

    u = str(url).strip().rstrip("/")
    parsed = urlparse(u)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise EdgekdValueError(f"endpoint: {url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
    if parsed.path in ("", "/"):
        u += "/v1"  # llama.cpp, vLLM and Ollama serve the OpenAI API under /v1
    return u


class _Retryable(Exception):
    def __init__(self, what: str, retry_after: float | None = None):
        super().__init__(what)
        self.retry_after = retry_after


class OpenAICompatible(Generator):
    """Any OpenAI-compatible endpoint (vLLM, llama.cpp server, Ollama, hosted APIs).

    ``base_url``: e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is added to a bare host);
    ``api="chat"`` (``/chat/completions``; text prompts become one user message) or
    ``"completions"`` (``/completions``; text prompts only, for base models and few-shot templates).
    ``api_key``: sent as a bearer token (default ``$OPENAI_API_KEY`` if set).
    ``concurrency`` requests are kept in flight; each gets ``timeout`` seconds and up to
    ``max_retries`` retries after ``backoff * 2**attempt`` seconds (capped at ``max_backoff``, or the
    server's ``Retry-After``) on connection errors, timeouts, HTTP 5xx and 429.
    """

    def __init__(self, base_url: str, model: str, *, api: str = "chat", api_key: str | None = None,
                 concurrency: int = 4, timeout: float = 120.0, max_retries: int = 4, backoff: float = 0.5,
                 max_backoff: float = 30.0, extra_body: dict | None = None):
        super().__init__()
        if api not in ("chat", "completions"):
            raise EdgekdValueError(f"endpoint: api must be 'chat' or 'completions', got {api!r}")
        if not model or not str(model).strip():
            raise EdgekdValueError("endpoint: give the model name the server serves (--model)")
        if concurrency < 1 or max_retries < 0 or timeout <= 0 or backoff < 0:
            raise EdgekdValueError(f"endpoint: need concurrency >= 1, max_retries >= 0, timeout > 0, backoff >= 0 "
                                   f"(got {concurrency}, {max_retries}, {timeout}, {backoff})")
        self.base_url = _normalise_base_url(base_url)
        self.model, self.api = str(model), api
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.concurrency, self.timeout, self.max_retries = int(concurrency), float(timeout), int(max_retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.extra_body = dict(extra_body or {})
        self.name = f"{self.model} @ {self.base_url} ({api})"
        self._local = threading.local()
        self._sessions: list[Any] = []
        self._sessions_lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        # the model and the API, not the URL: the same model behind another port is the same model
        return f"openai:{self.api}:{self.model}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.api == 'chat' else 'completions'}"

    def _session(self):
        s = getattr(self._local, "session", None)
        if s is None:
            import requests

            s = requests.Session()
            if self.api_key:
                s.headers["Authorization"] = f"Bearer {self.api_key}"
            self._local.session = s
            with self._sessions_lock:
                self._sessions.append(s)
        return s

    def close(self) -> None:
        with self._sessions_lock:
            for s in self._sessions:
                s.close()
            self._sessions.clear()
        self._local = threading.local()

    def models(self) -> list[str]:
        """The model ids the server lists at ``GET /models`` (a quick check that it is up)."""
        url = f"{self.base_url}/models"
        body = self._request("GET", url, None)
        try:
            return [str(m["id"]) for m in body["data"]]
        except (KeyError, TypeError):
            raise GeneratorUnavailableError(f"{url}: answered {str(body)[:200]!r}, not an OpenAI model list") from None

    def _payload(self, p: Prompt, max_new_tokens, temperature, top_p, stop, seed) -> dict:
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_new_tokens, "temperature": temperature,
                                "top_p": top_p, "seed": seed, "stream": False}
        if stop:
            body["stop"] = stop[:4]  # OpenAI accepts up to 4 stop sequences
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": p}] if isinstance(p, str) else p
        else:
            if not isinstance(p, str):
                raise EdgekdValueError("endpoint: api='completions' takes text prompts; use api='chat' for "
                                       "chat messages")
            body["prompt"] = p
        body.update(self.extra_body)
        return body

    def _request(self, method: str, url: str, body: dict | None) -> Any:
        """One request with retries; the parsed JSON answer."""
        import requests

        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self.usage._lock:
                    self.usage.retries += 1
            try:
                try:
                    r = self._session().request(method, url, json=body, timeout=self.timeout)
                except requests.Timeout:
                    raise _Retryable(f"no answer within {self.timeout:g} s") from None
                except requests.ConnectionError as exc:
                    raise _Retryable(f"cannot connect ({type(exc).__name__})") from None
                if r.status_code == 429 or r.status_code >= 500:
                    ra = r.headers.get("Retry-After")
                    try:
                        ra_s = float(ra) if ra is not None else None
                    except ValueError:
                        ra_s = None
                    raise _Retryable(f"HTTP {r.status_code}: {r.text[:200]!r}", ra_s)
                if r.status_code >= 400:
                    raise GeneratorRequestError(f"{url}: HTTP {r.status_code}: {r.text[:300]!r} (check --model, "
                                                "--api and the settings the server accepts)")
                try:
                    return r.json()
                except ValueError:
                    raise GeneratorUnavailableError(f"{url}: answered {r.text[:200]!r}, not JSON; is this an "
                                                    "OpenAI-compatible endpoint (e.g. http://HOST:PORT/v1)?") from None
            except _Retryable as exc:
                last = str(exc)
                if attempt == self.max_retries:
                    break
                wait = min(self.max_backoff, self.backoff * (2 ** attempt))
                if exc.retry_after is not None:
                    wait = min(self.max_backoff, max(wait, exc.retry_after))
                time.sleep(wait)
        raise GeneratorUnavailableError(f"{url}: {last}, after {self.max_retries + 1} attempt(s). Is the server "
                                        f"running (e.g. python -m llama_cpp.server --model FILE.gguf)?")

    def _one(self, p: Prompt, max_new_tokens, temperature, top_p, stop, seed) -> Completion:
        body = self._request("POST", self.url, self._payload(p, max_new_tokens, temperature, top_p, stop, seed))
        try:
            ch = body["choices"][0]
            text = ch["message"]["content"] if self.api == "chat" else ch["text"]
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise GeneratorUnavailableError(f"{self.url}: answered {str(body)[:200]!r}, not an OpenAI "
                                            f"{self.api} completion") from None
        text, hit = _cut_at_stop(text, stop)  # servers that ignore `stop` (or return it) still stop here
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        fr = ch.get("finish_reason") or ("stop" if hit else "length")
        return Completion(text, int(usage.get("prompt_tokens", -1) if usage.get("prompt_tokens") is not None else -1),
                          int(usage.get("completion_tokens", -1) if usage.get("completion_tokens") is not None else -1),
                          "stop" if hit else str(fr))

    def _generate(self, prompts, *, max_new_tokens, temperature, top_p, stop, seed):
        from concurrent.futures import ThreadPoolExecutor

        args = [(p, max_new_tokens, temperature, top_p, stop, seed + i) for i, p in enumerate(prompts)]
        if self.api == "completions":
            for p, *_ in args:
                if not isinstance(p, str):
                    raise EdgekdValueError("endpoint: api='completions' takes text prompts; use api='chat' "
                                           "for chat messages")
        if self.concurrency == 1 or len(prompts) == 1:
            return [self._one(*a) for a in args]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            futures = [pool.submit(self._one, *a) for a in args]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


# --------------------------------------------------------------------------------------------


def make_generator(*, local: str | None = None, endpoint: str | None = None, model: str | None = None,
                   api: str = "chat", api_key: str | None = None, concurrency: int = 4, timeout: float = 120.0,
                   max_retries: int = 4, batch_size: int = 8, threads: int | None = None) -> Generator:
    """A :class:`LocalCausalLM` (``local``: directory, .gguf or asset name) or an
    :class:`OpenAICompatible` (``endpoint`` + ``model``); exactly one of ``local``/``endpoint``."""
    if (local is None) == (endpoint is None):
        raise EdgekdValueError("give exactly one generator: a local model (--generator) or an endpoint "
                               "(--endpoint URL --model NAME)")
    if endpoint is not None:
        if not model:
            raise EdgekdValueError("--endpoint needs --model (the model name the server serves)")
        return OpenAICompatible(endpoint, model, api=api, api_key=api_key, concurrency=concurrency,
                                timeout=timeout, max_retries=max_retries)
    return LocalCausalLM(local, batch_size=batch_size, threads=threads)
