"""Tiny models and data for the tests, written once (no download): random BERT classifiers and
encoders with a WordPiece tokenizer, a word tokenizer, a random BiLSTM student, and a random
llama-architecture causal LM with a word-level tokenizer.

Import by name (``from factories import ...``): ``tests/`` is on ``sys.path`` because the root
``conftest.py`` lives there. torch, transformers and tokenizers are imported inside the functions.
"""
from __future__ import annotations

import collections
import json
import pathlib
import re
import string
import threading
import time
from typing import Sequence

# Twelve finance headlines with 3-class labels (the TFNS classes), for compile/runtime/bench tests
TEXTS = [
    "Stocks rally as $AAPL beats earnings estimates",
    "Oil prices slump on weak demand outlook",
    "Fed holds rates steady, markets flat",
    "Tesla shares plunge after recall of 2 million cars",
    "Bank of Japan keeps policy unchanged",
    "Gold climbs to a record high on safe-haven buying",
    "Retail sales miss forecasts; dollar weakens",
    "Nvidia surges 10% on strong data center revenue",
    "Bond yields rise as inflation stays hot",
    "Amazon to cut 9,000 more jobs",
    "Shares of Boeing fall after the FAA grounds jets",
    "Microsoft raises its dividend and buyback",
]
LABELS = [1, 0, 2, 0, 2, 1, 0, 1, 0, 0, 0, 1]
LABEL_NAMES = ["bearish", "bullish", "neutral"]

# The same twelve rows lower-cased without punctuation or tickers (CLI tests write them to files)
CLI_TEXTS = [
    "stocks rally as profits beat estimates", "oil prices slump on weak demand", "the fed holds rates steady",
    "shares plunge after the recall", "bank keeps policy unchanged", "gold climbs to a record high",
    "retail sales miss forecasts", "chip maker surges on strong revenue", "bond yields rise as inflation stays hot",
    "retailer to cut more jobs", "airline shares fall after the grounding", "software maker raises its dividend",
]
CLI_LABELS = LABELS
CLI_LABEL_NAMES = LABEL_NAMES

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

__all__ = ["TEXTS", "LABELS", "LABEL_NAMES", "CLI_TEXTS", "CLI_LABELS", "CLI_LABEL_NAMES", "wordpiece_tokenizer",
           "make_word_tokenizer", "tiny_config", "tiny_classifier", "tiny_encoder", "make_batch", "save_tiny_bert",
           "make_tiny_teacher", "save_tiny_model_dir", "make_tiny_bert", "save_random_student", "tiny_llama",
           "llama_word_tokenizer", "LLAMA_WORDS", "free_port", "torchrun", "save_bow_embedder"]


# ----------------------------------------------------------------------------------- tokenizers
def wordpiece_tokenizer(texts: Sequence[str], *, char_fallback: bool = False, min_count: int = 1,
                        extra_tokens: Sequence[str] = ()):
    """A BERT-style WordPiece ``tokenizers.Tokenizer`` (ids 0..4 = [PAD] [UNK] [CLS] [SEP] [MASK]).

    Default vocabulary: every word of ``texts`` (BERT pre-tokenizer, lower-cased), sorted, then
    ``extra_tokens``. ``char_fallback``: single characters and their ``##`` forms, then the words
    (letters only) seen at least ``min_count`` times, so any text encodes without [UNK].
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pre = pre_tokenizers.BertPreTokenizer()
    if char_fallback:
        counts = collections.Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()))
        chars = list(string.ascii_lowercase + string.digits + string.punctuation)
        words = chars + ["##" + c for c in chars] + sorted(w for w, c in counts.items() if c >= min_count and len(w) > 1)
    else:
        words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t.lower())})
    vocab = {t: i for i, t in enumerate(_SPECIALS + words + list(extra_tokens))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    return tok


def make_word_tokenizer(texts: list[str], path: pathlib.Path) -> pathlib.Path:
    """A WordLevel tokenizer like the distillation helper's: 0=[PAD], 1=[UNK], lowercase."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words: list[str] = []
    pre = pre_tokenizers.Whitespace()
    for t in texts:
        for w, _ in pre.pre_tokenize_str(t.lower()):
            if w not in words:
                words.append(w)
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    tok.save(str(path))
    return path


# ----------------------------------------------------------------------------------- tiny BERTs
def tiny_config(attn: str | None = "eager", **overrides):
    """A ``BertConfig``: 4 layers, 4 heads, 32 wide, vocabulary 97, 3 labels (``overrides`` win)."""
    import transformers

    kwargs = dict(vocab_size=97, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.1,
                  attention_probs_dropout_prob=0.1)
    kwargs.update(overrides)
    cfg = transformers.BertConfig(**kwargs)
    if attn is not None:
        cfg._attn_implementation = attn
    return cfg


def tiny_classifier(seed: int = 0, attn: str = "eager", **overrides):
    """A random ``BertForSequenceClassification`` from :func:`tiny_config`, in eval mode."""
    import torch
    import transformers

    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(tiny_config(attn, **overrides)).eval()


def tiny_encoder(seed: int = 0, attn: str = "eager", **overrides):
    """A random ``BertModel`` from :func:`tiny_config`, in eval mode."""
    import torch
    import transformers

    torch.manual_seed(seed)
    return transformers.BertModel(tiny_config(attn, **overrides)).eval()


def make_batch(batch: int, seq: int, lengths: list[int] | None = None, seed: int = 0, vocab: int = 97):
    """BERT feeds ``input_ids`` / ``attention_mask``; rows right-padded (id 0) to ``lengths``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if lengths is not None:
        for row, n in enumerate(lengths):
            mask[row, n:] = 0
            ids[row, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def save_tiny_bert(path, texts: Sequence[str] = TEXTS, *, classifier: bool = True, seed: int = 0,
                   num_labels: int = 3, label_names: Sequence[str] | None = None, attn: str | None = None,
                   hf_tokenizer: bool = False, char_fallback: bool = False, min_count: int = 1,
                   extra_tokens: Sequence[str] = (), **config) -> pathlib.Path:
    """Save a random tiny BERT (:func:`tiny_config` plus ``config``) with ``save_pretrained`` and a
    :func:`wordpiece_tokenizer` over ``texts`` in ``path``: a ``tokenizer.json`` (which
    ``AutoTokenizer`` loads for model_type bert), or with ``hf_tokenizer`` a full
    ``PreTrainedTokenizerFast`` save. ``label_names`` set ``id2label``/``label2id``."""
    import torch
    import transformers

    d = pathlib.Path(path)
    d.mkdir(parents=True, exist_ok=True)
    tok = wordpiece_tokenizer(texts, char_fallback=char_fallback, min_count=min_count, extra_tokens=extra_tokens)
    if hf_tokenizer:
        transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]").save_pretrained(str(d))
    else:
        tok.save(str(d / "tokenizer.json"))
    kwargs = dict(vocab_size=tok.get_vocab_size(), num_labels=num_labels)
    if label_names is not None:
        kwargs.update(id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)})
    kwargs.update(config)
    cfg = tiny_config(attn, **kwargs)
    torch.manual_seed(seed)
    model = (transformers.BertForSequenceClassification if classifier else transformers.BertModel)(cfg)
    model.eval().save_pretrained(str(d))
    return d


def make_tiny_teacher(d: pathlib.Path) -> pathlib.Path:
    """The compile tests' teacher: 2 layers, 2 heads, 32 wide, WordPiece over :data:`TEXTS`."""
    return save_tiny_bert(d, TEXTS, label_names=LABEL_NAMES, extra_tokens=("##s", "##ing"),
                          num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def save_tiny_model_dir(d, classifier: bool = True, num_labels: int = 3, seed: int = 0, label_names=None,
                        **overrides) -> pathlib.Path:
    """The prune CLI tests' model: :func:`tiny_config` (4 layers, 4 heads), WordPiece over :data:`CLI_TEXTS`."""
    return save_tiny_bert(d, CLI_TEXTS, classifier=classifier, seed=seed, num_labels=num_labels,
                          label_names=label_names, attn="eager", **overrides)


def make_tiny_bert(path, texts, num_labels: int = 3, seed: int = 0, hidden: int = 16, layers: int = 2):
    """The distillation tests' teacher: a random ``layers``-layer, ``hidden``-wide BERT classifier whose
    vocabulary covers any text (characters, their ## forms, and the words of ``texts`` seen twice)."""
    return save_tiny_bert(pathlib.Path(path), texts, seed=seed, num_labels=num_labels,
                          label_names=LABEL_NAMES[:num_labels], hf_tokenizer=True, char_fallback=True, min_count=2,
                          hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                          intermediate_size=2 * hidden, max_position_embeddings=128, hidden_dropout_prob=0.1,
                          attention_probs_dropout_prob=0.1)


# ----------------------------------------------------------------------------------- students
def save_random_student(out: pathlib.Path, vocab_size: int, E: int = 16, H: int = 12, A: int = 10, C: int = 3,
                        seed: int = 0, scale: float = 0.5) -> pathlib.Path:
    """Save an edgekd BiLSTMAttentionStudent with random weights (std ``scale``, so that logits
    and attention are far from uniform) through its own ``save_pretrained``."""
    import torch

    from edgekd.students import BiLSTMAttentionStudent

    torch.manual_seed(seed)
    model = BiLSTMAttentionStudent(vocab_size, embed_dim=E, hidden_size=H, num_classes=C, pad_id=0,
                                   attention_dim=A, label_names=LABEL_NAMES[:C])
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.normal_(0.0, scale)
        model.embedding.weight[0] = 0.0
    model.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------------- causal LMs
LLAMA_WORDS = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(44)]  # ids 0..47; "w<i>" is id i + 4


def tiny_llama(*, layers: int = 4, heads: int = 4, kv_heads: int = 2, vocab: int = 48, seed: int = 0,
               tie: bool = True, std: float = 0.2):
    """A random LlamaForCausalLM (hidden 32, MLP 40, head_dim 8, grouped-query attention with
    ``heads // kv_heads`` query heads per KV head) in eval mode; std 0.2 so that blocks matter."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=40, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=8,
                      max_position_embeddings=64, tie_word_embeddings=tie, initializer_range=std,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def llama_word_tokenizer():
    """A fast word-level tokenizer over :data:`LLAMA_WORDS` (whitespace split; pad 0, bos 1, eos 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(LLAMA_WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


# ----------------------------------------------------------------------------------- torchrun
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for torchrun's rendezvous)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: Sequence[str], *, nproc: int = 2, timeout: float = 900, cwd=None, env: dict | None = None):
    """Run ``torchrun --nproc-per-node nproc ARGS`` (``python -m torch.distributed.run``: gloo on
    127.0.0.1, a free port, one torch thread per process) and return the CompletedProcess (text
    stdout / stderr; no check of the return code). ``ARGS``: a script and its arguments, or
    ``["-m", "edgekd", ...]``."""
    import os
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGEKD_DIST_BACKEND": "gloo", "EDGEKD_DIST_TIMEOUT": "300",
                "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--nnodes=1",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or root, env=full_env)


# ------------------------------------------------------------------- OpenAI-compatible test server
class FakeOpenAIServer:
    """An OpenAI-compatible server whose next answers are scripted: ``plan`` is a list of actions
    consumed one per POST (``"ok"``, ``503``, ``429``, ``"sleep"``, ``"garbage"``, ``"nousage"``,
    ``400``); when it is empty, "ok". Records requests and the most requests in flight at once.
    ``respond(text) -> text`` makes the completion (default: ``"echo: " + prompt + " STOP tail"``,
    a server that ignores ``stop``)."""

    def __init__(self, delay: float = 0.0, respond=None):
        self.plan: list = []
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.delay = delay
        self.respond = respond or (lambda text: "echo: " + text + " STOP tail")
        self.lock = threading.Lock()
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body, headers=()):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "fake-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with srv.lock:
                    action = srv.plan.pop(0) if srv.plan else "ok"
                    srv.requests.append({"path": self.path, "body": body, "action": action,
                                         "auth": self.headers.get("Authorization")})
                    srv.in_flight += 1
                    srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
                try:
                    if srv.delay:
                        time.sleep(srv.delay)
                    if action == "sleep":
                        time.sleep(1.0)
                        return self._send(200, {})
                    if action in (503, 500):
                        return self._send(action, {"error": "overloaded"})
                    if action == 429:
                        return self._send(429, {"error": "slow down"}, [("Retry-After", "0.05")])
                    if action == 400:
                        return self._send(400, {"error": "model not found"})
                    if action == "garbage":
                        return self._send(200, b"<html>hello</html>")
                    if action == "nochoices":
                        return self._send(200, {"weird": True})
                    text = srv.respond(body["messages"][-1]["content"] if "messages" in body else body["prompt"])
                    ch = {"finish_reason": "length", "index": 0}
                    ch.update({"message": {"role": "assistant", "content": text}} if "messages" in body
                              else {"text": text})
                    out = {"choices": [ch]}
                    if action != "nousage":
                        out["usage"] = {"prompt_tokens": len(text.split()), "completion_tokens": body["max_tokens"]}
                    return self._send(200, out)
                finally:
                    with srv.lock:
                        srv.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# ------------------------------------------------------------------------------ llama.cpp server
# `python -m llama_cpp.server` with llama.cpp's extra weight buffers (weight repacking) turned off:
# this VM's CPU advertises AMX, and ggml's AMX matmul (an extra buffer type) dies in `ldtilecfg`
# with a general-protection fault (SIGSEGV) even after the AMX permission is granted; without the
# extra buffers ggml uses its AVX-512 kernels. Weight repacking is a speed-up only.
LLAMA_SERVER_LAUNCHER = """
import sys
import llama_cpp.llama as L
_default = L.llama_cpp.llama_model_default_params
def _params():
    p = _default()
    p.use_extra_bufts = False
    return p
L.llama_cpp.llama_model_default_params = _params
from llama_cpp.server.__main__ import main
sys.argv[0] = "llama_cpp.server"
main()
"""


def llama_server_command(gguf, port: int, threads: int = 1, n_ctx: int = 1024, alias: str | None = None) -> list[str]:
    """The command line of an OpenAI-compatible llama.cpp server on 127.0.0.1:``port`` (see above)."""
    import sys

    return [sys.executable, "-c", LLAMA_SERVER_LAUNCHER, "--model", str(gguf), "--host", "127.0.0.1",
            "--port", str(port), "--n_threads", str(threads), "--n_ctx", str(n_ctx),
            "--model_alias", alias or pathlib.Path(gguf).stem, "--verbose", "False"]


# ----------------------------------------------------------------------------------- embedders
def save_bow_embedder(path, texts: Sequence[str], *, dim: int = 16, seed: int = 0):
    """A torch-free ONNX sentence embedder for edgekd.runtime.retrieval.OnnxSentenceEmbedder: the
    graph looks each token up in a random ``(vocab, dim)`` table (one ``Gather``), so the sentence
    vector is the mean of its tokens' rows ([CLS]/[SEP] included; [PAD] and [UNK] rows are zero).
    WordPiece vocabulary over ``texts``. Returns ``(folder, table)``."""
    import json

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = pathlib.Path(path)
    d.mkdir(parents=True, exist_ok=True)
    tok = wordpiece_tokenizer(texts)
    tok.save(str(d / "tokenizer.json"))
    table = np.random.default_rng(seed).normal(size=(tok.get_vocab_size(), dim)).astype(np.float32)
    table[:2] = 0.0  # [PAD], [UNK]
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"], axis=0),
         helper.make_node("Identity", ["attention_mask"], ["mask_out"])],
        "bow",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", dim]),
         helper.make_tensor_value_info("mask_out", TensorProto.INT64, ["batch", "seq"])],
        [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(d / "model.onnx"))
    (d / "embedder.json").write_text(json.dumps({"format": "edgekd-sentence-embedder", "max_length": 64, "dim": dim,
                                                 "pooling": "mean", "normalize": True,
                                                 "output": "last_hidden_state", "pad_id": 0}))
    return d, table


LM_CORPUS = ["The quick brown fox jumps over the lazy dog.", "Stocks rose on Monday after the central bank held rates.",
             "Once upon a time, in a small village, there lived a baker.", "def add(a, b):\n    return a + b",
             "Prices of oil fell for a third week; analysts expect more cuts.", "Café au lait, naïve, déjà vu: ünïcödé."]
LM_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_tiny_causal_lm(out: pathlib.Path, *, layers: int = 2, seed: int = 0, max_positions: int = 64,
                        corpus: Sequence[str] | None = None, vocab_size: int = 300,
                        intermediate_size: int = 96) -> pathlib.Path:
    """A random tiny Llama causal LM with a byte-level BPE tokenizer (``vocab_size`` entries trained
    on ``corpus``, default :data:`LM_CORPUS`; special tokens <|endoftext|> = 0 = eos = pad,
    <|im_start|>, <|im_end|>) and a chat template, saved as a Hugging Face directory (what
    ``edgekd compile-lm`` reads)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(corpus or LM_CORPUS) * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")
    fast.chat_template = LM_CHAT_TEMPLATE
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=intermediate_size,
                      num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=max_positions,
                      tie_word_embeddings=True, initializer_range=0.2, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    out = pathlib.Path(out)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def memorize_texts(model_dir: pathlib.Path, texts: Sequence[str], *, steps: int = 150, lr: float = 1e-2,
                   seed: int = 0) -> pathlib.Path:
    """Train the causal LM saved in ``model_dir`` (:func:`save_tiny_causal_lm`) until it knows
    ``texts`` by heart (next-token loss on every token, one batch of all texts, Adam) and save
    it back: a tiny LM with strong, known preferences (e.g. which paragraph answers a question)."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    enc = tok(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(model_dir)
    return model_dir
