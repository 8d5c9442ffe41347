"""``edgekd generate``, ``edgekd bench`` on a generative bundle, ``edgekd compile-lm`` errors."""
from __future__ import annotations

import json

from edgekd.cli import main
from edgekd.runtime.generative import GenerativeBundle


def test_generate_stream_and_json(lm_bundle, capsys):
    lm = GenerativeBundle.load(lm_bundle, precision="fp32")
    want = lm.generate("The quick brown fox", max_new_tokens=12).text
    assert main(["generate", str(lm_bundle), "The quick brown fox", "--precision", "fp32", "--max-new-tokens", "12",
                 "--stream"]) == 0
    assert capsys.readouterr().out == want + "\n"
    assert main(["generate", str(lm_bundle), "The quick brown fox", "Stocks rose", "--precision", "fp32",
                 "--max-new-tokens", "12", "--json", "--threads", "1"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["The quick brown fox", "Stocks rose"] and rows[0]["text"] == want
    assert main(["generate", str(lm_bundle), "Hello", "--chat", "--system", "Be brief.", "--max-new-tokens", "4",
                 "--temperature", "0.7", "--seed", "1"]) == 0


def test_generate_errors_exit_2(lm_bundle, student_bundle, capsys):
    long = " ".join(["fox"] * 200)
    assert main(["generate", str(lm_bundle), long, "--max-new-tokens", "8"]) == 2
    assert "context of" in capsys.readouterr().err
    assert main(["generate", str(lm_bundle), "a", "b", "--stream"]) == 2
    assert "one prompt" in capsys.readouterr().err
    assert main(["generate", str(student_bundle), "hello"]) == 2
    assert "not a generative bundle" in capsys.readouterr().err
    assert main(["generate", str(lm_bundle), "a", "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_bench_generative(lm_bundle, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", str(lm_bundle), "--precision", "int4", "--threads", "1", "--prompt-tokens", "16",
                 "--new-tokens", "8", "--repeats", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["precision"] == "int4" and r["new_tokens"] == 8 and r["prompt_tokens"] == 16
    assert r["decode_tokens_per_s"] > 0 and r["ttft_ms"] > 0 and r["prefill_tokens_per_s"] > 0
    assert r["peak_rss_mb"] > 0 and r["size_bytes"] > 0
    assert "decode tok/s" in capsys.readouterr().out
    assert main(["bench", str(lm_bundle), "--prompt-tokens", "60", "--new-tokens", "60"]) == 2
    assert "exceed" in capsys.readouterr().err


def test_compile_lm_errors_exit_2(tiny_lm_dir, tmp_path, capsys):
    data = tmp_path / "held.txt"
    data.write_text("one text\n")
    assert main(["compile-lm", str(tmp_path / "missing"), "--out", str(tmp_path / "b"), "--eval-data", str(data)]) == 2
    assert "neither" in capsys.readouterr().err
    assert main(["compile-lm", str(tiny_lm_dir), "--out", str(tmp_path / "b"), "--eval-data", str(data),
                 "--precisions", "int2"]) == 2
    assert "precisions" in capsys.readouterr().err
    for flags, msg in ((["--int8-matmuls", "lm_head"], "int8_matmuls"), (["--quant-method", "gptq"], "quant_method"),
                       (["--asymmetric", "--quant-method", "default"], "'rtn' or 'k_quant'"),
                       (["--accuracy-level", "7"], "accuracy_level")):
        assert main(["compile-lm", str(tiny_lm_dir), "--out", str(tmp_path / "b"), "--eval-data", str(data),
                     *flags]) == 2
        assert msg in capsys.readouterr().err
