import pytest

from lmforge.evaluate.fields import field_matches, reply_object, score_reply, summarize
from lmforge.evaluate.fields import find_object as parse_json_object
from lmforge.evaluate.metrics import (
    contains_answer,
    corpus_bleu,
    exact_match,
    normalize_answer,
    rouge_l,
    sentence_bleu,
    token_f1,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Capital is PARIS.", "capital is paris"),
        ("7.35%", "7.35 %"),
        ("7.35 %", "7.35 %"),
        ("a fine of 2,400 kestrels", "fine of 2400 kestrels"),
        ("1,5", "1 5"),  # not a thousands separator: two numbers
        ("ＡＢＣ　１２", "abc 12"),  # full-width letters, digits and space (NFKC)
        ("Café—Straße", "café straße"),
        ("  many   spaces\tand\nlines ", "many spaces and lines"),
        ("end of sentence 64.", "end of sentence 64"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_contains_answer_matches_whole_tokens_only():
    assert contains_answer("The retirement age is 64 years.", "64 years")
    assert not contains_answer("It is 164 years.", "64 years")
    assert not contains_answer("The answer is 14.", "4")
    assert contains_answer("The answer is 4.", "4")


def test_contains_answer_normalises_numbers_and_percentages():
    assert contains_answer("Employees pay 7.35 % of wages", "7.35%")
    assert contains_answer("a fine of 2400 kestrels", "2,400 kestrels")
    assert not contains_answer("Employees pay 7.3% of wages", "7.35%")


def test_contains_answer_accepts_aliases():
    assert contains_answer("sixty-four years", "64 years", aliases=["sixty four years"])
    assert not contains_answer("sixty years", "64 years", aliases=["sixty four years"])


def test_token_f1_hand_computed():
    # reply tokens: retirement age is 64 years (5); gold: 64 years (2); overlap 2
    # precision 2/5, recall 1 -> F1 = 2 * 0.4 * 1 / 1.4 = 0.5714...
    assert token_f1("The retirement age is 64 years.", "64 years") == pytest.approx(0.8 / 1.4)
    assert token_f1("64 years", "64 years") == 1.0
    assert token_f1("no overlap", "64 years") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "x") == 0.0


# ---------------------------------------------------------------- numbers and unicode in every script


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("٦٤ years", "64 years"),  # Arabic-Indic digits
        ("६४", "64"),  # Devanagari digits
        ("７.５０％", "7.5 %"),  # full-width digits, point and percent sign, trailing zero
        ("64.0", "64"),
        ("7.50%", "7.5 %"),
        ("3.0%", "3 %"),
        ("100.05", "100.05"),  # an inner zero is not a trailing zero
        ("10.10", "10.1"),
        ("1,234,567 kestrels", "1234567 kestrels"),
        ("ﬁne", "fine"),  # ligature (NFKC)
        ("Ärztekammer’s", "ärztekammer s"),  # curly apostrophe is punctuation
    ],
)
def test_normalize_answer_numbers_and_unicode(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_is_whole_answer_equality():
    assert exact_match("The Ministry of Labour.", "ministry of labour")
    assert exact_match("64.0", "64")
    assert not exact_match("It is the Ministry of Labour.", "Ministry of Labour")
    assert exact_match("sixteen years", "16 years", aliases=["sixteen years"])


def test_contains_answer_across_scripts_and_zeros():
    assert contains_answer("Das Alter ist ٦٤ Jahre", "64")
    assert contains_answer("a rate of 7.50 %", "7.5%")
    assert not contains_answer("a rate of 7.05 %", "7.5%")


def test_rouge_l_hand_computed():
    # normalised: [cat, sat, on, mat] vs [cat, is, on, mat]; LCS = cat on mat = 3 -> P = R = F = 3/4
    assert rouge_l("The cat sat on the mat", "the cat is on the mat") == pytest.approx(0.75)
    # reply [64, years] vs reference [retirement, age, is, 64, years]: LCS 2, P = 1, R = 0.4, F = 0.8 / 1.4
    assert rouge_l("64 years", "The retirement age is 64 years.") == pytest.approx(0.8 / 1.4)
    assert rouge_l("Straße", "STRASSE") == 0.0  # NFKC does not fold ß to ss; the tokens differ
    assert rouge_l("Straße", "straße") == 1.0  # rouge-score's own tokenizer would have dropped the ß
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "x") == 0.0


def test_bleu_from_sacrebleu():
    assert sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    assert sentence_bleu("completely different words here", "the cat sat on the mat") < 10
    # Corpus BLEU pools n-gram counts over the set: one perfect and one empty reply is not 50.
    assert corpus_bleu(["the cat sat on the mat", ""], ["the cat sat on the mat", "a dog ran"]) < 100
    assert corpus_bleu([], []) == 0.0


def test_parse_json_object_finds_the_object():
    assert parse_json_object('{"a": 1}') == {"a": 1}
    assert parse_json_object('Here it is: {"a": {"b": 2}} done') == {"a": {"b": 2}}
    assert parse_json_object('```json\n{"x": [1, 2]}\n```') == {"x": [1, 2]}
    assert parse_json_object('{broken {"ok": true}') == {"ok": True}
    assert parse_json_object("[1, 2]") is None
    assert parse_json_object("no object {") is None


def test_field_matches_normalises_values():
    gold = {"age": 64, "rate": "7.5%", "name": "Ministry of Labour", "tags": ["a", "b"], "flag": True, "ok": False}
    predicted = {"age": "64", "rate": "7.50 %", "name": "the ministry of labour", "tags": ["a", "c"], "flag": "true"}
    predicted["ok"] = "no"  # a boolean matches its JSON spelling only
    expected = {"age": True, "rate": True, "name": True, "tags": False, "flag": True, "ok": False}
    assert field_matches(predicted, gold) == expected
    assert field_matches(None, {"a": 1}) == {"a": False}
    assert field_matches({}, {"a": 1}) == {"a": False}
    got = field_matches({"n": 415.0, "s": "Orlesk  Branch"}, {"n": 415, "s": "orlesk branch"})
    assert got == {"n": True, "s": True}


def test_valid_json_means_the_reply_is_one_object_wherever_it_is_scored():
    assert reply_object('  {"a": 1}\n') == ({"a": 1}, True)
    assert reply_object('```json\n{"a": 1}\n```') == ({"a": 1}, True)
    assert reply_object('Here: {"a": 1}') == ({"a": 1}, False)  # fields readable, format not valid
    assert reply_object("[1, 2]") == (None, False) and reply_object("{broken") == (None, False)
    scores = [score_reply('{"a": 1, "b": 2}', {"a": 1, "b": 2}), score_reply('So: {"a": 1}', {"a": 1, "b": 2})]
    scores.append(score_reply("no object", {"a": 1, "b": 2}))
    assert [s.valid_json for s in scores] == [True, False, False]
    assert [s.all_fields for s in scores] == [True, False, False]
    summary = summarize(scores)
    assert summary["valid_json"] == pytest.approx(1 / 3, abs=1e-4)
    assert summary["all_fields"] == pytest.approx(1 / 3, abs=1e-4)
    assert summary["field_accuracy"] == pytest.approx(0.5, abs=1e-4)  # (1 + 0.5 + 0) / 3
    assert summary["fields"] == {"a": pytest.approx(2 / 3, abs=1e-4), "b": pytest.approx(1 / 3, abs=1e-4)}
