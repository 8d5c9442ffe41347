"""The OpenAI-compatible client against a real server: llama.cpp's (``llama_cpp.server`` of
llama-cpp-python, a dev dependency; started through :func:`factories.llama_server_command`, which
turns off the extra weight buffers whose AMX kernel faults on this VM) serving SmolLM2-135M-Instruct
(GGUF Q4_1, the ``smollm2`` asset) on one thread."""
import json
import socket
import subprocess
import time
import urllib.request

import pytest

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is a dev dependency: pip install -e '.[dev]'")

from edgekd.assets import asset_path  # noqa: E402
from edgekd.qa.generators import OpenAICompatible  # noqa: E402
from edgekd.qa.synth import SynthConfig, generate_triplets  # noqa: E402
from edgekd.qa.types import Paragraph  # noqa: E402
from factories import llama_server_command  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    gguf = asset_path("smollm2")
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(llama_server_command(gguf, port, threads=1, alias="smollm2"),
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as r:
                    if json.load(r)["data"]:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer /v1/models within 60 s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_chat_through_llama_server(llama_server):
    g = OpenAICompatible(llama_server, "smollm2", api="chat", concurrency=2, timeout=60)
    assert g.models() == ["smollm2"]
    prompts = ["What is a privacy policy? Answer in one sentence.",
               [{"role": "user", "content": "Name one kind of personal data."}],
               "Say hello."]
    out = g.generate(prompts, max_new_tokens=8)
    assert len(out) == 3 and all(c.text.strip() for c in out)
    assert all(c.prompt_tokens > 5 and 1 <= c.completion_tokens <= 8 for c in out)
    assert all(c.completion_tokens == 8 for c in out if c.finish_reason == "length")
    assert g.usage.requests == 3 and g.usage.missing_usage == 0
    assert g.usage.completion_tokens == sum(c.completion_tokens for c in out)
    assert g.usage.prompt_tokens == sum(c.prompt_tokens for c in out)
    again = g.generate(prompts[:1], max_new_tokens=8)  # greedy: the same answer again
    assert again[0].text == out[0].text


def test_completions_through_llama_server(llama_server):
    g = OpenAICompatible(llama_server, "smollm2", api="completions", concurrency=1, timeout=60)
    prompts = ["Question: What colour is the sky?\nAnswer:", "1, 2, 3, 4,"]
    out = g.generate(prompts, max_new_tokens=8, stop=["\n"])
    assert all("\n" not in c.text for c in out)
    # prompt tokens as llama.cpp's own tokenizer counts them; "length" means all 8 were generated
    from llama_cpp import Llama

    vocab = Llama(model_path=str(asset_path("smollm2")), vocab_only=True, verbose=False)
    assert [c.prompt_tokens for c in out] == [len(vocab.tokenize(p.encode(), add_bos=True, special=True))
                                              for p in prompts]
    assert all(1 <= c.completion_tokens <= 8 for c in out)
    assert all(c.completion_tokens == 8 for c in out if c.finish_reason == "length")
    assert g.usage.completion_tokens == sum(c.completion_tokens for c in out)


def test_synth_through_llama_server(llama_server, tmp_path):
    paras = [Paragraph("p1", "We collect your email address and phone number when you create an account, "
                             "and we keep them until you delete the account.", "x.com")]
    g = OpenAICompatible(llama_server, "smollm2", api="chat", timeout=60)
    trips, rep = generate_triplets(paras, g, SynthConfig(per_context=1, max_new_tokens=40), tmp_path,
                                   progress=False)
    f = rep["filters"]
    assert f["parse"]["in"] == 1 and rep["completions_generated"] == 1
    assert all(f[k]["in"] == f[k]["out"] + f[k]["dropped"] for k in f)
    assert rep["kept"] == len(trips) == f["round_trip"]["out"]
    assert 1 <= rep["generator"]["usage"]["completion_tokens"] <= 40
