"""``edgekd qa generate`` end to end against a local OpenAI-compatible test server and a tiny local model."""
import json
import re
import socket
import sys
import types

import pytest

from edgekd.cli import main
from edgekd.qa.types import read_jsonl
from factories import FakeOpenAIServer


def qa_responder(prompt: str) -> str:
    """An 'instruct model' that asks about the paragraph's first words and answers with a span."""
    para = re.search(r"Paragraph: (.*?)\n", prompt, re.S).group(1)
    words = para.split()
    return (f"Question: What does the policy say about {' '.join(words[3:7])}?\nAnswer: {' '.join(words[3:7])}\n"
            f"Question: Why?\nAnswer: {words[0]}")


@pytest.fixture
def qa_server():
    s = FakeOpenAIServer(respond=qa_responder)
    yield s
    s.close()


@pytest.fixture
def paragraphs_file(tmp_path):
    p = tmp_path / "paras.jsonl"
    rows = [{"id": f"d{i // 3}#{i}", "group": f"d{i // 3}",
             "text": f"Paragraph {i} says that we keep record kind {i} for {i + 1} years and share it with "
                     f"partner {i}."}
            for i in range(9)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_generate_with_endpoint_and_resume(qa_server, paragraphs_file, tmp_path, capsys):
    out = tmp_path / "synth"
    argv = ["qa", "generate", "--paragraphs", str(paragraphs_file), "--endpoint", qa_server.url, "--model", "m",
            "--out", str(out), "--sample", "4", "--seed", "1", "--quiet", "--concurrency", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\d+ triplets from 4 paragraphs", printed) and "specificity" in printed
    rep = json.loads((out / "report.json").read_text())
    assert rep["filters"]["parse"]["out"] == 8 and rep["filters"]["length"]["dropped"] == 4  # "Why?"
    trips = list(read_jsonl(out / "triplets.jsonl"))
    assert len(trips) == rep["kept"] >= 1 and all(t.answer_start >= 0 for t in trips)
    assert len({t.context_id.split("#")[0] for t in trips}) >= 2     # --sample spreads over documents
    assert rep["generator"]["usage"]["requests"] == 4 and rep["template"]["name"] == "chat-v1"
    assert (out / "dataset" / "dataset_info.json").is_file() and "| grounded |" in (out / "README.md").read_text()
    posts = len(qa_server.requests)
    assert main(argv) == 0                                         # second run: every completion from the cache
    assert len(qa_server.requests) == posts
    assert json.loads((out / "report.json").read_text())["completions_from_cache"] == 4


def test_generate_policyqa_default_round_trip(qa_server, tmp_path):
    out = tmp_path / "s"
    assert main(["qa", "generate", "--endpoint", qa_server.url, "--model", "m", "--out", str(out), "--limit", "2",
                 "--round-trip", "--specificity-k", "0", "--quiet"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["source"] == "PolicyQA dev" and rep["paragraphs"] == 2
    assert rep["filters"]["specificity"].get("skipped") and not rep["filters"]["round_trip"].get("skipped")


def test_generate_local_model_fewshot(tmp_path, paragraphs_file):
    from edgekd.llm.models import save_causal_lm
    from factories import llama_word_tokenizer, tiny_llama

    model_dir = save_causal_lm(tiny_llama(), tmp_path / "m", llama_word_tokenizer())
    out = tmp_path / "o"
    assert main(["qa", "generate", "--paragraphs", str(paragraphs_file), "--generator", str(model_dir),
                 "--out", str(out), "--limit", "2", "--per-context", "2", "--max-new-tokens", "4", "--quiet"]) == 0
    rep = json.loads((out / "report.json").read_text())
    # no chat template: the few-shot template, 2 sampled completions per paragraph
    assert rep["template"]["name"] == "fewshot-v1" and rep["completions"] == 4
    assert rep["settings"]["temperature"] == 0.7 and rep["generator"]["usage"]["completion_tokens"] > 0


def test_generate_errors(tmp_path, paragraphs_file, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = ["qa", "generate", "--paragraphs", str(paragraphs_file), "--out", str(tmp_path / "o")]
    assert main(base + ["--endpoint", f"http://127.0.0.1:{port}", "--model", "m", "--max-retries", "0"]) == 2
    assert f"127.0.0.1:{port}/v1/models: cannot connect" in capsys.readouterr().err
    assert main(base) == 2
    assert "give a generator" in capsys.readouterr().err
    assert main(base + ["--endpoint", "http://127.0.0.1:1", "--model", "m", "--limit", "2", "--sample", "2"]) == 2
    assert "not both" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    assert main(["qa", "generate", "--paragraphs", str(bad), "--endpoint", "http://127.0.0.1:1", "--model", "m",
                 "--out", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert main(["qa", "generate", "--paragraphs", str(tmp_path / "none.json"), "--endpoint", "http://x",
                 "--model", "m", "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_other_qa_commands_plug_in(monkeypatch, capsys):
    calls = []
    mod = types.ModuleType("edgekd.qa.cli_eval")

    def register_qa(qsub):
        p = qsub.add_parser("eval", help="plugged in")
        p.set_defaults(func=lambda a: calls.append("eval") or 0)

    mod.register_qa = register_qa
    monkeypatch.setitem(sys.modules, "edgekd.qa.cli_eval", mod)
    assert main(["qa", "eval"]) == 0 and calls == ["eval"]
    assert main(["qa"]) == 2
