from tokenizers import Tokenizer

from edgekd.data import PAD_ID, UNK_ID, WordTokenizer

TEXTS = [
    "$AAPL up 3.5% to 1,000 shares https://t.co/abc",
    "$AAPL and $BRK.B fall -2.1% today",
    "don't sell $TSLA, analysts say",
    "Shares up 3.5% again",
]


def test_special_ids_and_word_rules():
    tok = WordTokenizer.train(TEXTS, max_length=16)
    v = tok.get_vocab()
    assert v["[PAD]"] == PAD_ID == 0 and v["[UNK]"] == UNK_ID == 1
    assert tok.tokenize(TEXTS[0]) == ["$aapl", "up", "3.5%", "to", "1,000", "shares", "httpurl"]
    assert tok.tokenize(TEXTS[1]) == ["$aapl", "and", "$brk.b", "fall", "-2.1%", "today"]
    assert tok.tokenize(TEXTS[2]) == ["don't", "sell", "$tsla", ",", "analysts", "say"]
    # one id per word, no special tokens added
    assert len(tok.encode(TEXTS[0])) == 7
    assert PAD_ID not in tok.encode(TEXTS[0])


def test_oov_min_frequency_and_max_vocab():
    tok = WordTokenizer.train(TEXTS, min_frequency=2)
    # words seen twice: $aapl, up, 3.5%, shares
    assert set(tok.get_vocab()) == {"[PAD]", "[UNK]", "$aapl", "up", "3.5%", "shares"}
    assert tok.encode("$AAPL zzz up") == [tok.get_vocab()["$aapl"], UNK_ID, tok.get_vocab()["up"]]
    assert tok.oov_rate(["zzz qqq up"]) == 2 / 3
    small = WordTokenizer.train(TEXTS, max_vocab=5)
    assert small.vocab_size == 5
    assert tok.encode("   ") == [UNK_ID]  # empty text still gives one word


def test_offsets_point_into_original_text():
    tok = WordTokenizer.train(TEXTS)
    text = "Big  $AAPL drop https://t.co/xyz!  ok"
    ids, words, offs = tok.encode_with_offsets(text)
    assert [text[a:b] for a, b in offs] == ["Big", "$AAPL", "drop", "https://t.co/xyz!", "ok"]
    assert words[3] == "httpurl"


def test_save_load_and_raw_tokenizers_file_agree(tmp_path):
    tok = WordTokenizer.train(TEXTS, max_length=4)
    path = tok.save(tmp_path / "student")
    assert path.name == "tokenizer.json"
    again = WordTokenizer.from_file(path)
    raw = Tokenizer.from_file(str(path))  # what the torch-free device runtime does
    for t in TEXTS + ["unseen words entirely"]:
        assert again.encode(t) == tok.encode(t)
        assert raw.encode(t).ids == tok.encode(t)[: len(raw.encode(t).ids)]
        assert len(raw.encode(t).ids) <= 4  # truncation is stored in the file
    assert again.max_length == 4


def test_bad_arguments(tmp_path):
    import pytest

    from edgekd.errors import EdgekdValueError

    with pytest.raises(EdgekdValueError, match="min_frequency"):
        WordTokenizer.train(TEXTS, min_frequency=0)
    with pytest.raises(EdgekdValueError, match="no texts"):
        WordTokenizer.train([])
    with pytest.raises(EdgekdValueError, match="does not exist"):
        WordTokenizer.from_file(tmp_path / "missing.json")
