"""Generators: a tiny random local causal LM, and an OpenAI-compatible client against a local
HTTP server of our own (http.server in a thread) that injects failures."""
import json
import socket
import time

import pytest

from edgekd.errors import EdgekdValueError
from edgekd.qa.generators import (Completion, GeneratorRequestError, GeneratorUnavailableError, LocalCausalLM,
                                  OpenAICompatible, make_generator)
from factories import FakeOpenAIServer as FakeServer
from factories import llama_word_tokenizer, tiny_llama

# ------------------------------------------------------------------------------------- local model

PROMPTS = ["w1 w2 w3", "w5", "w7 w8 w9 w10 w11 w12", "w3 w3"]


@pytest.fixture(scope="module")
def local():
    tok = llama_word_tokenizer()
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}w40{% endif %}")
    return LocalCausalLM(model=tiny_llama(), tokenizer=tok, batch_size=4)


def test_local_batched_equals_one_by_one_greedy(local):
    batched = local.generate(PROMPTS, max_new_tokens=8)
    single = [local.generate([p], max_new_tokens=8)[0] for p in PROMPTS]
    assert batched == single
    assert [c.prompt_tokens for c in batched] == [3, 1, 6, 2]
    assert all(1 <= c.completion_tokens <= 8 for c in batched)
    assert {c.finish_reason for c in batched} <= {"stop", "length"}
    # finish "length" means all 8 tokens were generated
    assert all(c.completion_tokens == 8 for c in batched if c.finish_reason == "length")


def test_local_usage_and_fingerprint(local):
    before = local.usage.completion_tokens
    out = local.generate(PROMPTS[:2], max_new_tokens=4)
    assert local.usage.completion_tokens - before == sum(c.completion_tokens for c in out)
    assert local.usage.seconds > 0 and local.fingerprint.startswith("local:")
    other = LocalCausalLM(model=tiny_llama(seed=1), tokenizer=llama_word_tokenizer())
    assert other.fingerprint != local.fingerprint


def test_local_sampling_is_seeded(local):
    a = local.generate(PROMPTS, max_new_tokens=6, temperature=1.0, seed=3)
    b = local.generate(PROMPTS, max_new_tokens=6, temperature=1.0, seed=3)
    assert a == b
    draws = {tuple(c.text for c in local.generate(PROMPTS, max_new_tokens=6, temperature=1.5, seed=s))
             for s in range(4)}
    assert len(draws) > 1


def test_local_chat_template_and_stop(local):
    msgs = [{"role": "user", "content": "w5"}]
    chat = local.generate([msgs], max_new_tokens=5)[0]
    assert chat.prompt_tokens == 3  # "user w5 w40": the template's words
    plain = local.generate(["w5"], max_new_tokens=6)[0]
    first = plain.text.split()[1]
    stopped = local.generate(["w5"], max_new_tokens=6, stop=[first])[0]
    assert stopped.finish_reason == "stop" and first not in stopped.text
    assert plain.text.startswith(stopped.text.rstrip())


def test_local_bad_inputs(local):
    with pytest.raises(EdgekdValueError, match="empty"):
        local.generate(["  "])
    with pytest.raises(EdgekdValueError, match="single str"):
        local.generate("w1 w2")
    with pytest.raises(EdgekdValueError, match="messages"):
        local.generate([[{"content": "no role"}]])
    with pytest.raises(EdgekdValueError, match="max_new_tokens"):
        local.generate(["w1"], max_new_tokens=0)
    with pytest.raises(EdgekdValueError, match="temperature"):
        local.generate(["w1"], temperature=float("nan"))
    with pytest.raises(EdgekdValueError, match="top_p"):
        local.generate(["w1"], top_p=0.0)
    bare = LocalCausalLM(model=tiny_llama(), tokenizer=llama_word_tokenizer())
    with pytest.raises(EdgekdValueError, match="no chat template"):
        bare.generate([[{"role": "user", "content": "w1"}]])
    with pytest.raises(EdgekdValueError, match="does not exist"):
        LocalCausalLM("/nonexistent/dir/model")
    assert local.generate([]) == []


def test_local_from_directory(tmp_path):
    from edgekd.llm.models import save_causal_lm

    d = save_causal_lm(tiny_llama(), tmp_path / "m", llama_word_tokenizer())
    gen = make_generator(local=str(d))
    ref = LocalCausalLM(model=tiny_llama(), tokenizer=llama_word_tokenizer())
    assert gen.generate(PROMPTS[:2], max_new_tokens=5) == ref.generate(PROMPTS[:2], max_new_tokens=5)
    assert gen.fingerprint == ref.fingerprint


# ------------------------------------------------------------------------------ fake OpenAI server

@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def _client(server, **kw):
    kw = {"backoff": 0.01, "timeout": 5.0, **kw}
    return OpenAICompatible(server.url, "fake-model", **kw)


def test_chat_results_in_order_with_usage(server):
    g = _client(server, api="chat", api_key="sk-test")
    prompts = [f"prompt {i}" for i in range(7)] + [[{"role": "system", "content": "s"},
                                                     {"role": "user", "content": "msgs"}]]
    out = g.generate(prompts, max_new_tokens=5, stop=[" STOP"], seed=10)
    assert [c.text for c in out] == [f"echo: prompt {i}" for i in range(7)] + ["echo: msgs"]
    assert all(c.finish_reason == "stop" and c.completion_tokens == 5 for c in out)
    assert g.usage.requests == 8 and g.usage.completion_tokens == 40
    assert g.usage.prompt_tokens == sum(len((c.text + " STOP tail").split()) for c in out)
    req = {r["body"]["messages"][-1]["content"]: r for r in server.requests}
    assert req["prompt 3"]["path"] == "/v1/chat/completions" and req["prompt 3"]["body"]["seed"] == 13
    assert req["prompt 0"]["body"]["stop"] == [" STOP"] and req["prompt 0"]["auth"] == "Bearer sk-test"
    assert g.models() == ["fake-model"]


def test_completions_api(server):
    g = _client(server, api="completions")
    out = g.generate(["a", "b"], max_new_tokens=3)
    assert [c.text for c in out] == ["echo: a STOP tail", "echo: b STOP tail"]
    assert out[0].finish_reason == "length" and server.requests[0]["path"] == "/v1/completions"
    with pytest.raises(EdgekdValueError, match="text prompts"):
        g.generate([[{"role": "user", "content": "x"}]])


def test_concurrency_is_bounded():
    s = FakeServer(delay=0.15)
    try:
        g = _client(s, concurrency=3)
        out = g.generate([f"p{i}" for i in range(9)], max_new_tokens=2)
        assert [c.text for c in out] == [f"echo: p{i} STOP tail" for i in range(9)]
        assert s.max_in_flight == 3  # 3 requests in flight at once (each one takes 0.15 s), never more
    finally:
        s.close()


def test_retries_5xx_and_429(server):
    server.plan = [503, 500, 429, "ok"]
    g = _client(server, concurrency=1, max_retries=3)
    out = g.generate(["x"], max_new_tokens=2)
    assert out[0].text.startswith("echo: x") and len(server.requests) == 4 and g.usage.retries == 3


def test_backoff_is_exponential(server, monkeypatch):
    import edgekd.qa.generators as gens

    waits = []
    monkeypatch.setattr(gens.time, "sleep", lambda s: waits.append(s))
    server.plan = [503, 503, 503, "ok"]
    g = _client(server, concurrency=1, max_retries=3, backoff=0.5, max_backoff=1.5)
    g.generate(["x"])
    assert waits == [0.5, 1.0, 1.5]  # 0.5 * 2**k, capped


def test_gives_up_after_max_retries(server):
    server.plan = [503] * 3
    g = _client(server, concurrency=1, max_retries=2)
    with pytest.raises(GeneratorUnavailableError, match=r"127\.0\.0\.1.*HTTP 503.*3 attempt"):
        g.generate(["x"])


def test_timeout_is_retried_then_reported(server):
    server.plan = ["sleep", "ok"]
    g = _client(server, concurrency=1, timeout=0.3, max_retries=1)
    assert g.generate(["x"])[0].text.startswith("echo")
    server.plan = ["sleep", "sleep"]
    with pytest.raises(GeneratorUnavailableError, match="no answer within 0.3 s"):
        g.generate(["x"])


def test_server_down_names_the_url():
    with socket.socket() as s:  # a free port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    g = OpenAICompatible(f"http://127.0.0.1:{port}", "m", backoff=0.01, max_retries=1)
    assert g.base_url == f"http://127.0.0.1:{port}/v1"
    t0 = time.perf_counter()
    with pytest.raises(GeneratorUnavailableError, match=f"127.0.0.1:{port}/v1/chat/completions: cannot connect"):
        g.generate(["x", "y"])
    assert time.perf_counter() - t0 < 5
    with pytest.raises(GeneratorUnavailableError, match="cannot connect"):
        g.models()


def test_garbage_and_refusals(server):
    g = _client(server, concurrency=1)
    server.plan = ["garbage"]
    with pytest.raises(GeneratorUnavailableError, match="not JSON"):
        g.generate(["x"])
    server.plan = ["nochoices"]
    with pytest.raises(GeneratorUnavailableError, match="not an OpenAI chat completion"):
        g.generate(["x"])
    server.plan = [400]
    with pytest.raises(GeneratorRequestError, match="HTTP 400.*model not found"):
        g.generate(["x"])
    assert len(server.requests) == 3  # none of these is retried


def test_error_in_one_of_many_requests_raises(server):
    server.plan = ["ok", 400]
    g = _client(server, concurrency=2)
    with pytest.raises(GeneratorRequestError):
        g.generate([f"p{i}" for i in range(6)])


def test_missing_usage_is_counted(server):
    server.plan = ["nousage"]
    g = _client(server, concurrency=1)
    c = g.generate(["x"], max_new_tokens=4)[0]
    assert c.prompt_tokens == -1 and c.completion_tokens == -1
    assert g.usage.missing_usage == 1 and g.usage.completion_tokens == 0


def test_bad_client_settings():
    with pytest.raises(EdgekdValueError, match="http"):
        OpenAICompatible("localhost:8000", "m")
    with pytest.raises(EdgekdValueError, match="api"):
        OpenAICompatible("http://x", "m", api="embeddings")
    with pytest.raises(EdgekdValueError, match="model"):
        OpenAICompatible("http://x", " ")
    with pytest.raises(EdgekdValueError, match="concurrency"):
        OpenAICompatible("http://x", "m", concurrency=0)
    with pytest.raises(EdgekdValueError, match="exactly one"):
        make_generator()
    with pytest.raises(EdgekdValueError, match="--model"):
        make_generator(endpoint="http://x")
    assert OpenAICompatible("http://x/v1/", "m").fingerprint == OpenAICompatible("http://y:1", "m").fingerprint


def test_completion_json_roundtrip():
    c = Completion("t", 1, 2, "stop")
    assert Completion.from_json(json.loads(json.dumps(c.to_json()))) == c
