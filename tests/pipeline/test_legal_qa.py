"""`edgekd demo --task legal-qa`: the config (profiles, overrides, bad values) and the staged run end to end on
tiny models and a fake PolicyQA (stage files, resume, --restart, the synthetic row skipped or trained)."""
from __future__ import annotations

import json
import os
import re
import tomllib

import pytest
from factories import FakeOpenAIServer, save_tiny_bert, save_tiny_causal_lm

from edgekd.cli import main
from edgekd.errors import EdgekdValueError
from edgekd.pipeline.legal_qa import STAGES, LegalQAConfig, legal_qa_config, run_legal_qa, stage_path
from edgekd.pipeline.profiles import profile_path, profiles

# ------------------------------------------------------------------------------ a fake PolicyQA
COMPANIES = ["acme", "globex", "initech", "umbrella", "hooli", "vandelay"]
THINGS = ["email address", "phone number", "postal code", "birth date", "device model", "payment card",
          "browser history", "gps location", "voice recording", "photo album", "shoe size", "car plate",
          "blood type", "school grade", "pet name", "tax number", "music taste", "travel plan"]
PARTNERS = ["advertisers", "auditors", "couriers", "banks", "insurers", "lawyers", "printers", "brokers", "hosts"]
ACTIONS = ["register", "order", "call", "travel", "pay", "browse"]


def _policyqa(split: str) -> tuple[dict, dict]:
    """A SQuAD-format split: 6 policies x 3 paragraphs; each paragraph gets a specific question
    (its own words), a span question and a template question asked of every paragraph."""
    off = 0 if split == "dev" else 9
    data, answers = [], {}
    for c, company in enumerate(COMPANIES):
        paras = []
        for j in range(3):
            thing = THINGS[(c * 3 + j) % len(THINGS)]
            partner = PARTNERS[(c + j + off) % len(PARTNERS)]
            action = ACTIONS[(c + j) % len(ACTIONS)]
            ctx = (f"{company.title()} collects your {thing} when you {action}. We share the {thing} with "
                   f"{partner} for billing. You can ask {company} to delete it.")
            qas = [{"id": f"{split}-{c}-{j}-a", "question": f"Who receives the {thing} from {company}?",
                    "answers": [{"text": partner, "answer_start": ctx.index(partner)}]},
                   {"id": f"{split}-{c}-{j}-b", "question": f"What does {company} collect when you {action}?",
                    "answers": [{"text": f"your {thing}", "answer_start": ctx.index(f"your {thing}")}]},
                   {"id": f"{split}-{c}-{j}-c", "question": "Does the company share my data?",
                    "answers": [{"text": f"with {partner}", "answer_start": ctx.index(f"with {partner}")}]}]
            paras.append({"context": ctx, "qas": qas})
            answers[ctx] = {q["question"]: q["answers"][0]["text"] for q in qas}
        data.append({"title": f"{company}-{split}", "paragraphs": paras})
    return {"version": "1.1", "data": data}, answers


@pytest.fixture(scope="module")
def policyqa(tmp_path_factory):
    d = tmp_path_factory.mktemp("policyqa")
    answers = {}
    for split in ("dev", "test"):
        doc, a = _policyqa(split)
        (d / f"{split}.json").write_text(json.dumps(doc))
        answers.update(a)
    return d, answers


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, policyqa):
    d = tmp_path_factory.mktemp("models")
    teacher = save_tiny_causal_lm(d / "teacher", layers=2, max_positions=1024)
    texts = [p["context"] for s in ("dev", "test") for a in _policyqa(s)[0]["data"] for p in a["paragraphs"]]
    texts += [q["question"] for a in _policyqa("dev")[0]["data"] for p in a["paragraphs"] for q in p["qas"]]
    reader = save_tiny_bert(d / "reader", texts, classifier=False, hf_tokenizer=True, hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return teacher, reader


def _profile(tmp_path, policyqa, tiny_models, **extra):
    teacher, reader = tiny_models
    text = f"""# a tiny legal-qa profile for the tests
[data]
policyqa = "{policyqa[0]}"
train_n = 12
test_n = 6
max_context_words = 60

[teacher]
model = "{teacher}"
max_new_tokens = 4
batch_size = 4

[synth]
paragraphs = 4
max_new_tokens = 12
min_kept = 50

[student]
keep_layers = 1
epochs = 1.0
max_length = 512

[reader]
model = "{reader}"
epochs = 1.0
max_length = 96
doc_stride = 32

[sgp]
questions = 4
k = 3

[run]
out = "{tmp_path / 'run'}"
cache_dir = "{tmp_path / 'cache'}"
threads = 1
budget_minutes = 45
progress = false
"""
    for k, v in extra.items():
        text = text.replace(k, v)
    p = tmp_path / "tiny.toml"
    p.write_text(text)
    return p


def _statuses(res) -> dict:
    return {t["stage"]: t["status"] for t in res["stages"]}


# ------------------------------------------------------------------------------ config
def test_profiles_load_validate_and_round_trip():
    assert profiles("legal-qa") == ["default", "quick"]
    assert {"default", "quick", "paper", "full"} <= set(profiles())  # the TFNS profiles are unchanged
    assert profile_path("quick", task="legal-qa").parent.name == "legal-qa"
    for name in profiles("legal-qa"):
        cfg = legal_qa_config(name)
        assert cfg.run.profile == name and cfg.run.stages == list(STAGES)
        assert LegalQAConfig.from_dict(tomllib.loads(cfg.to_toml())) == cfg  # --print-config round trip
    q = legal_qa_config("quick")
    assert q.run.budget_minutes == 45 and q.run.threads == 2 and q.teacher.model == "smollm2"
    assert q.data.train_n < legal_qa_config("default").data.train_n


def test_overrides_apply_and_bad_values_raise_naming_the_setting(tmp_path):
    cfg = legal_qa_config("quick", {"student.epochs": 1, "sgp.terms": "question", "run.stages": "data,teacher"})
    assert cfg.student.epochs == 1.0 and cfg.sgp.terms == ["question"] and cfg.run.stages == ["data", "teacher"]
    bad = [({"student.epoch": 1}, r"unknown setting 'student.epoch'.*legal-qa settings: tables \[data\]"),
           ({"train.epochs": 1}, r"unknown setting 'train.epochs'"),
           ({"data.train_n": 1}, r"\[data\] train_n must be an int >= 2"),
           ({"data.test_n": "ten"}, r"test_n must be int"),
           ({"sgp.weight": 2.0}, r"\[sgp\] weight"),
           ({"sgp.terms": "question,context"}, r"\[sgp\] terms"),
           ({"run.stages": "data,nope"}, r"\[run\] stages: unknown stage\(s\) \['nope'\]"),
           ({"synth.endpoint": "http://127.0.0.1:1/v1"}, r"endpoint needs endpoint_model"),
           ({"synth.endpoint": "localhost:8000", "synth.endpoint_model": "m"}, r"endpoint must be an http"),
           ({"synth.min_kept": 1}, r"\[synth\] min_kept must be an int >= 2"),
           ({"synth.endpoint": "http://h/v1", "synth.endpoint_model": "m", "synth.api": "completions",
             "synth.template": "chat"}, r"template 'chat' writes chat messages, which api = 'completions' cannot"),
           ({"synth.template": "poem"}, r"\[synth\] template must be one of"),
           ({"synth.student_loss": "l2"}, r"\[synth\] student_loss must be ce or a KD loss"),
           ({"student.kd_loss": "sft"}, r"kd_loss must be a KD loss"),
           ({"reader.doc_stride": 384}, r"doc_stride \(384\) must be smaller"),
           ({"data.policyqa": str(tmp_path / "none")}, r"\[data\] policyqa: .* is not a folder")]
    for override, msg in bad:
        with pytest.raises(EdgekdValueError, match=msg):
            legal_qa_config("quick", override)
    with pytest.raises(EdgekdValueError, match=r"unknown legal-qa profile 'fast'; choose from \['default', 'quick'\]"):
        legal_qa_config("fast")
    with pytest.raises(EdgekdValueError, match="unknown task"):
        profiles("imdb")


def test_cli_prints_the_config_and_refuses_flags_of_the_other_task(capsys):
    assert main(["demo", "--task", "legal-qa", "--profile", "quick", "--print-config", "sgp.k=4", "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "[sgp]\n" in text and "k = 4" in text and "seed = 3" in text and 'profile = "quick"' in text
    bad = [(["--task", "legal-qa", "--epochs", "3"], "unknown setting 'train.epochs'"),
           (["--task", "legal-qa", "--no-compile"], "--no-compile is a TFNS flag"),
           (["--task", "legal-qa", "--profile", "fast"], "unknown legal-qa profile 'fast'"),
           (["--profile", "quick", "--restart"], "--restart is for --task legal-qa")]
    for argv, msg in bad:
        assert main(["demo", *argv, "--print-config"]) == 2
        assert "edgekd: error: " in (err := capsys.readouterr().err) and msg in err, err


# ------------------------------------------------------------------------------ the run
def test_run_end_to_end_then_resume_and_restart(tmp_path, policyqa, tiny_models, capsys):
    prof = _profile(tmp_path, policyqa, tiny_models)
    assert main(["demo", "--task", "legal-qa", "--profile", str(prof), "reader.lr=2e-4"]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "run"
    cfg = legal_qa_config(prof, {"reader.lr": 2e-4})
    for i, stage in enumerate(STAGES, 1):
        assert f"[legal-qa {i}/{len(STAGES)}] {stage}: running ..." in printed
        rec = json.loads(stage_path(cfg, stage).read_text())
        assert rec["stage"] == stage and rec["settings"]["seed"] == 0
        assert rec["seconds"] > 0 or stage == "student-synthetic"  # the skipped row: nothing to time
    res = json.loads((out / "results.json").read_text())
    assert res["profile"] == "tiny" and res["config"]["reader"]["lr"] == 2e-4
    rows = {r["stage"]: r for r in res["rows"]}
    assert set(rows) == {"teacher", "student-sft", "student-kd", "student-synthetic", "reader"}
    for stage in ("teacher", "student-sft", "student-kd", "reader"):
        r = rows[stage]
        assert 0 <= r["f1"] <= 100 and 0 <= r["exact_match"] <= r["f1"] + 1e-9 and r["params"] > 0
    assert rows["teacher"]["n_train"] == 0 and rows["student-sft"]["n_train"] == 12
    # the random tiny generator writes no parsable pair: the synthetic row is skipped, and says so
    syn = json.loads(stage_path(cfg, "synth").read_text())["result"]
    assert syn["kept"] == 0 and syn["row"] == "0 kept (fewer than synth.min_kept = 50), row skipped"
    assert syn["report"]["filters"]["parse"]["in"] == 4 and syn["report"]["filters"]["round_trip"]["out"] == 0
    assert rows["student-synthetic"]["skipped"] == syn["row"]
    # student: 1 of the teacher's 2 blocks; KD and SFT start from the same blocks
    prune = json.loads(stage_path(cfg, "prune").read_text())["result"]
    kd = json.loads(stage_path(cfg, "student-kd").read_text())["result"]
    assert prune["teacher_layers"] == 2 and len(prune["kept_layers"]) == 1 and kd["kept_layers"] == prune["kept_layers"]
    assert kd["loss"] == "forward_kl" and kd["train"]["n_dev"] >= 1
    # SGP: the template question (asked of every paragraph) is never selected; each mode answers the same questions
    sgp = {s: json.loads(stage_path(cfg, s).read_text())["result"] for s in ("sgp-top1", "sgp-oracle", "sgp")}
    assert len({tuple(r["questions"]) for r in sgp.values()}) == 1 and sgp["sgp"]["n"] == 4
    assert "Does the company share my data?" not in sgp["sgp"]["questions"]
    assert sgp["sgp"]["selection"]["dropped_template"] == 18
    assert sgp["sgp"]["retrieval"]["top10"] == 100.0 and sgp["sgp"]["sgp"] == {"k": 3, "weight": 0.3, "terms": ["answer"]}
    assert sgp["sgp-oracle"]["paragraphs"] == sgp["sgp-oracle"]["gold_paragraphs"]
    assert all(len(c) == 3 for c in sgp["sgp"]["candidates"])
    md = (out / "results.md").read_text()
    assert "| model | training data | n train | EM | F1 | ROUGE-L | params | s / question |" in md
    assert "| synthetic: 0 kept (fewer than synth.min_kept = 50), row skipped | 0 | - |" in md and "## Paragraph selection" in md and "## Stage times" in md
    assert "| grounded |" in md and re.search(r"this profile's budget: 45 min \(within\)", md)
    assert "results.md" in printed and "wall time:" in printed

    # a rerun skips every stage and leaves the stage files alone
    mtimes = {s: os.stat(stage_path(cfg, s)).st_mtime_ns for s in STAGES}
    again = run_legal_qa(cfg, log=None)
    assert set(_statuses(again).values()) == {"done earlier"}
    assert {s: os.stat(stage_path(cfg, s)).st_mtime_ns for s in STAGES} == mtimes
    assert "some stages were done by an earlier invocation" in again["markdown"]
    # a cut run (the last stage's file missing) resumes with that stage only
    stage_path(cfg, "sgp").unlink()
    cut = run_legal_qa(cfg, log=None)
    assert [s for s, v in _statuses(cut).items() if v == "ran"] == ["sgp"]
    # changed settings rerun the stages that depend on them, and only those
    changed = run_legal_qa(cfg.override({"reader.epochs": 2.0}), log=None)
    assert [s for s, v in _statuses(changed).items() if v == "ran"] == ["reader"]
    # run.stages: one stage and the stages it needs (from disk)
    some = run_legal_qa(cfg.override({"run.stages": ["student-kd"]}), log=None)
    assert list(_statuses(some)) == ["data", "prune", "student-kd"]
    # --restart deletes the earlier results first
    (out / "mine.txt").write_text("not ours")
    fresh = run_legal_qa(cfg.override({"run.stages": ["data"]}), restart=True, log=None)
    assert _statuses(fresh) == {"data": "ran"}
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["data.json"]
    assert not (out / "index").exists() and not (out / "synth").exists() and (out / "mine.txt").exists()


def test_synthetic_row_trains_when_enough_triplets_survive(tmp_path, policyqa, tiny_models):
    """An OpenAI-compatible endpoint writes grounded, specific pairs; the round trip asks it again."""
    _, answers = policyqa
    by_q = {q: a for qa in answers.values() for q, a in qa.items()}

    def respond(text: str) -> str:
        m = re.search(r"Question: (.*)\nAnswer:$", text)
        if text.startswith("Answer the question") and m:  # the round-trip reader
            return by_q.get(m.group(1).strip(), "nothing")
        ctx = re.search(r"Paragraph: (.*?)\n\n", text, re.S).group(1)
        qa = [(q, a) for q, a in answers[ctx].items() if "company" not in q]  # the specific ones
        return "\n".join(f"Question: {q}\nAnswer: {a}" for q, a in qa)

    srv = FakeOpenAIServer(respond=respond)
    try:
        prof = _profile(tmp_path, policyqa, tiny_models, **{"min_kept = 50": "min_kept = 4"})
        cfg = legal_qa_config(prof, {"synth.endpoint": srv.url, "synth.endpoint_model": "fake-model",
                                     "synth.paragraphs": 6, "run.stages": ["student-synthetic"]})
        res = run_legal_qa(cfg, log=None)
    finally:
        srv.close()
    assert list(_statuses(res)) == ["data", "synth", "student-synthetic"]
    syn = res["results"]["synth"]
    f = syn["report"]["filters"]
    assert syn["kept"] == 12 and syn["row"] == "trained" and f["parse"]["out"] == 12
    assert f["specificity"]["dropped"] == 0 and f["round_trip"]["dropped"] == 0 and "skipped" not in f["round_trip"]
    assert syn["report"]["generator"]["name"].startswith("fake-model @ ")
    row = res["results"]["student-synthetic"]
    assert row["training"] == "synthetic" and row["n_train"] == 12 and row["loss"] == "ce"
    assert 0 <= row["metrics"]["f1"] <= 100
    lines = [ln for ln in res["markdown"].splitlines() if "synthetic triplets" in ln and ln.startswith("| student")]
    assert len(lines) == 1 and "| 12 |" in lines[0]
    assert (tmp_path / "run" / "synth" / "triplets.jsonl").read_text().count("\n") == 12
