import json

import pytest

from edgekd.errors import EdgekdValueError
from edgekd.qa.generators import Completion, Generator
from edgekd.qa.synth import (TEMPLATES, PromptTemplate, SynthConfig, bm25_retriever, generate_triplets,
                             generator_reader, ground_answer, normalize_text, parse_pairs, save_dataset, token_f1)
from edgekd.qa.types import Paragraph, read_jsonl

PARAS = [
    Paragraph("p1", "We collect your email address and phone number when you register for an account.", "a.com"),
    Paragraph("p2", "Cookies are used by advertising partners to show you relevant ads on other websites.", "a.com"),
    Paragraph("p3", "You may delete your account at any time from the settings page.", "b.com"),
]


class ScriptedGenerator(Generator):
    """Answers each prompt by looking up the paragraph it contains; counts prompts generated."""

    name = "scripted"

    def __init__(self, answers: dict[str, list[str]], fail_after: int | None = None):
        super().__init__()
        self.answers, self.calls, self.prompts, self.fail_after = answers, 0, 0, fail_after

    @property
    def fingerprint(self):
        return "scripted-v1"

    def _generate(self, prompts, *, max_new_tokens, temperature, top_p, stop, seed):
        if self.fail_after is not None and self.prompts >= self.fail_after:
            raise KeyboardInterrupt  # a run killed part-way
        self.calls += 1
        out = []
        for i, p in enumerate(prompts):
            text = p if isinstance(p, str) else p[-1]["content"]
            pid = next(x.id for x in PARAS if x.text in text)
            options = self.answers[pid]
            out.append(Completion(options[(seed + i) % len(options)] if temperature > 0 else options[0],
                                  len(text.split()), 7, "stop"))
            self.prompts += 1
        return out


GOOD = {
    "p1": ["Question: What is collected when you register?\nAnswer: your email address and phone number\n"
           "Question: When is the phone number collected?\nAnswer: when you register for an account"],
    "p2": ["Question: Who uses cookies?\nAnswer: advertising partners.\n"
           "Question: who uses cookies?\nAnswer: Advertising partners\n"          # duplicate question
           "Question: Why?\nAnswer: ads"],                                           # too short a question
    "p3": ["I cannot help with that."],                                              # no pair
}


def test_parse_pairs_formats():
    assert parse_pairs(" What is kept?\nAnswer: logs\n\nParagraph: x", "Question:") == [("What is kept?", "logs")]
    assert parse_pairs("1. **Question:** Who gets data? **Answer:** partners\nQ2: When?\nA2: \"now\"") == [
        ("Who gets data?", "partners"), ("When?", "now")]
    assert parse_pairs("Question: Who?\n\nAnswer: we") == [("Who?", "we")]   # a blank line between
    assert parse_pairs("Question: no answer here") == []
    assert parse_pairs("Question: \nAnswer: x") == []  # empty question


def test_normalize_and_f1():
    assert normalize_text("The  Email, address!") == "email address"
    assert token_f1("the email address", "email address") == 1.0
    assert token_f1("email", "email address") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("cats", "dogs") == 0.0


def test_ground_answer_span_and_overlap():
    ctx = "We share Personal Data with service providers."
    assert ground_answer("personal data.", ctx, 0.8) == ("Personal Data", 9, 1.0)
    text, start, ov = ground_answer("data with providers", ctx, 0.8)   # not a span, all tokens present
    assert start == -1 and ov == 1.0 and text == "data with providers"
    assert ground_answer("personal data of children", ctx, 0.8) is None  # 2 of 4 tokens
    assert ground_answer("no", "We do not sell it.", 0.8) is None           # a word, not a piece of "not"
    assert ground_answer("no", "No, we do not sell it.", 0.8) == ("No", 0, 1.0)
    assert ground_answer("data (personal)", "We share data (personal) only.", 0.8)[1] == 9
    assert ground_answer("personal data of children", ctx, 0.5)[1] == -1


def test_filters_count_what_they_drop(tmp_path):
    gen = ScriptedGenerator(GOOD)
    trips, rep = generate_triplets(PARAS, gen, SynthConfig(per_context=2), tmp_path / "cache", progress=False)
    f = rep["filters"]
    assert f["parse"] == {"in": 3, "dropped": 1, "out": 5, "unit": "completions in, pairs out"}
    assert f["length"]["dropped"] == 1          # "Why?"
    assert f["grounded"]["dropped"] == 0
    assert f["dedup"]["dropped"] == 1           # "who uses cookies?" again
    assert f["specificity"]["skipped"] and f["round_trip"]["skipped"]
    assert rep["kept"] == len(trips) == 3
    t = {x.question: x for x in trips}
    w = t["Who uses cookies?"]
    assert w.answer == "advertising partners" and w.context[w.answer_start:].startswith("advertising partners")
    assert all(x.source == "synthetic" and x.context_id in {"p1", "p2"} for x in trips)
    assert rep["generator"]["usage"]["completion_tokens"] == 21 and rep["generator"]["fingerprint"] == "scripted-v1"
    assert rep["template"]["name"] == "chat-v1"


def test_grounded_filter_drops_invented_answers(tmp_path):
    answers = {**GOOD, "p1": ["Question: What is collected at signup?\nAnswer: your credit card and passport"]}
    trips, rep = generate_triplets(PARAS[:1], ScriptedGenerator(answers), SynthConfig(), None, progress=False)
    assert trips == [] and rep["filters"]["grounded"]["dropped"] == 1


def test_specificity_filter_with_bm25(tmp_path):
    answers = {"p1": ["Question: What is collected when you register for an account?\nAnswer: your email address\n"
                      "Question: What do you do with it?\nAnswer: We collect"],
               "p2": GOOD["p2"], "p3": GOOD["p3"]}
    retrieve = bm25_retriever(PARAS)
    trips, rep = generate_triplets(PARAS, ScriptedGenerator(answers), SynthConfig(specificity_k=1), None,
                                   progress=False, retrieve=retrieve)
    # "What do you do with it?" is all stop words: the retriever finds nothing, so it is not specific
    assert rep["filters"]["specificity"]["dropped"] == 1
    assert {t.question for t in trips} == {"What is collected when you register for an account?", "Who uses cookies?"}
    assert all(t.meta["retrieval_rank"] == 1 for t in trips)


def test_round_trip_filter(tmp_path):
    def read(questions, contexts):  # a reader that answers one question well and one badly
        return ["email address and phone number" if "register" in q else "the settings page" for q in questions]

    trips, rep = generate_triplets(PARAS, ScriptedGenerator(GOOD), SynthConfig(round_trip_f1=0.5), None,
                                   progress=False, read=read)
    f = rep["filters"]["round_trip"]
    # "Who uses cookies?" and "When is the phone number collected?" -> "the settings page": F1 0
    assert f["in"] == 3 and f["dropped"] == 2
    kept = {t.question: t.meta["round_trip_f1"] for t in trips}
    assert list(kept) == ["What is collected when you register?"]
    assert kept["What is collected when you register?"] == pytest.approx(token_f1(
        "email address and phone number", "your email address and phone number"), abs=1e-4)


def test_generator_reader_uses_first_line():
    class Echo(ScriptedGenerator):
        def _generate(self, prompts, **kw):
            return [Completion(" Answer: partners\nmore", 1, 2, "stop") for _ in prompts]

    read = generator_reader(Echo({}))
    assert read(["Who?"], ["ctx"]) == ["partners"]


def test_cache_resumes_without_regenerating(tmp_path):
    cfg = SynthConfig(template="fewshot", per_context=2, temperature=0.7, batch_size=2)
    answers = {p.id: [" What is in it?\nAnswer: " + " ".join(p.text.split()[1:4]),
                      " Which part matters?\nAnswer: " + " ".join(p.text.split()[2:5])] for p in PARAS}
    killed = ScriptedGenerator(answers, fail_after=4)   # 6 prompts (3 paragraphs x 2 samples); dies after 2 batches
    with pytest.raises(KeyboardInterrupt):
        generate_triplets(PARAS, killed, cfg, tmp_path, progress=False)
    cache_file = next(tmp_path.glob("*.jsonl"))
    assert len(cache_file.read_text().splitlines()) == 4
    with open(cache_file, "a") as f:
        f.write('{"key": "torn li')                      # a write cut off by the kill
    again = ScriptedGenerator(answers)
    trips, rep = generate_triplets(PARAS, again, cfg, tmp_path, progress=False)
    assert again.prompts == 2 and rep["completions_from_cache"] == 4 and rep["completions_generated"] == 2
    third = ScriptedGenerator(answers)
    trips2, rep2 = generate_triplets(PARAS, third, cfg, tmp_path, progress=False)
    assert third.calls == 0 and [t.to_json() for t in trips2] == [t.to_json() for t in trips]
    # other decoding settings are another cache file
    other = ScriptedGenerator(answers)
    generate_triplets(PARAS, other, SynthConfig(template="fewshot", per_context=2, temperature=0.9), tmp_path,
                      progress=False)
    assert other.prompts == 6 and len(list(tmp_path.glob("*.jsonl"))) == 2


def test_corrupt_cache_line_raises(tmp_path):
    generate_triplets(PARAS, ScriptedGenerator(GOOD), SynthConfig(), tmp_path, progress=False)
    f = next(tmp_path.glob("*.jsonl"))
    f.write_text("not json\n")
    with pytest.raises(EdgekdValueError, match="corrupt cache"):
        generate_triplets(PARAS, ScriptedGenerator(GOOD), SynthConfig(), tmp_path, progress=False)


def test_bad_config_and_inputs():
    with pytest.raises(EdgekdValueError, match="needs sampling"):
        SynthConfig(template="fewshot", per_context=3).check()
    with pytest.raises(EdgekdValueError, match="template"):
        SynthConfig(template="nope").check()
    with pytest.raises(EdgekdValueError, match="min_overlap"):
        SynthConfig(min_overlap=1.5).check()
    with pytest.raises(EdgekdValueError, match="no paragraphs"):
        generate_triplets([], ScriptedGenerator(GOOD), SynthConfig(), None, progress=False)
    with pytest.raises(EdgekdValueError, match="not unique"):
        generate_triplets([PARAS[0], PARAS[0]], ScriptedGenerator(GOOD), SynthConfig(), None, progress=False)
    with pytest.raises(EdgekdValueError, match="empty"):
        generate_triplets([Paragraph("e", "  ")], ScriptedGenerator(GOOD), SynthConfig(), None, progress=False)
    with pytest.raises(EdgekdValueError, match="context"):
        PromptTemplate("x", "chat", "no placeholder")


def test_templates_render():
    chat = TEMPLATES["chat"].render("Some text.", 3)
    assert chat[-1]["role"] == "user" and "write 3 different questions" in chat[-1]["content"]
    few = TEMPLATES["fewshot"].render("Some text.")
    assert isinstance(few, str) and few.endswith("Paragraph: Some text.\nQuestion:")


def test_save_dataset(tmp_path):
    import datasets

    trips, rep = generate_triplets(PARAS, ScriptedGenerator(GOOD), SynthConfig(), None, progress=False)
    out = save_dataset(trips, rep, tmp_path / "out")
    assert [t.to_json() for t in read_jsonl(out / "triplets.jsonl")] == [t.to_json() for t in trips]
    ds = datasets.load_from_disk(str(out / "dataset"))
    assert len(ds) == 3 and ds[0]["question"] == trips[0].question
    assert json.loads(ds[0]["meta"]) == trips[0].meta
    card = (out / "README.md").read_text()
    assert "| dedup | 4 | 1 | 3 |" in card and "chat-v1" in card and "scripted" in card
    assert json.loads((out / "report.json").read_text())["kept"] == 3
    save_dataset([], rep, tmp_path / "empty")   # an empty run still writes a dataset
    assert len(datasets.load_from_disk(str(tmp_path / "empty" / "dataset"))) == 0
