import pytest

from lmforge.evaluate.metrics import contains_answer, normalize_answer, token_f1


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
