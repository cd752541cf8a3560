"""What a document sentence states, found by rules: dates, quantities, ordinals, names, definitions.

The facts :mod:`lmforge.data.questions` asks about. A fact is a span of a sentence (:class:`Fact`)
with its kind; the word lists and patterns are generic English, no domain's vocabulary. Also here:
the sentences of a document section, the short names a document defines (``hereinafter "the Fund"``)
and the words it capitalises inside sentences (names, not sentence starts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
NUMBER_WORDS = (
    "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
    "seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred"
)
AUXILIARIES = frozenset(
    [
        "is",
        "are",
        "was",
        "were",
        "shall",
        "may",
        "must",
        "can",
        "will",
        "would",
        "should",
        "could",
        "has",
        "have",
        "had",
        "does",
        "do",
        "did",
        "cannot",
    ]
)
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "and",
        "or",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "from",
        "with",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "which",
        "who",
        "whom",
        "whose",
        "than",
        "then",
        "per",
        "each",
        "every",
        "any",
        "all",
        "no",
        "not",
        "shall",
        "may",
        "must",
        "can",
        "will",
    ]
)
"""Words that are never the counted noun of a number (``13 of the``) nor part of a name (rag.cloze uses them too)."""
FUNCTION_WORDS = (
    AUXILIARIES
    | STOPWORDS
    | frozenset(
        [
            "about",
            "above",
            "after",
            "against",
            "among",
            "before",
            "being",
            "below",
            "between",
            "during",
            "he",
            "her",
            "his",
            "i",
            "into",
            "onto",
            "our",
            "over",
            "she",
            "since",
            "such",
            "their",
            "they",
            "under",
            "until",
            "upon",
            "we",
            "within",
            "without",
            "you",
            "your",
        ]
    )
)
TIME_UNITS = frozenset(
    [
        "second",
        "seconds",
        "minute",
        "minutes",
        "hour",
        "hours",
        "day",
        "days",
        "week",
        "weeks",
        "month",
        "months",
        "year",
        "years",
        "decade",
        "decades",
    ]
)
SUBORDINATORS = frozenset(
    ["where", "if", "when", "unless", "once", "after", "before", "while", "whereas", "although", "provided"]
)
DATE = re.compile(rf"\b(?:\d{{1,2}}(?:st|nd|rd|th)? (?:{MONTHS})(?: \d{{4}})?|(?:{MONTHS}) \d{{1,2}}(?:, \d{{4}})?)\b")
QUANTITY = re.compile(
    rf"(?<![\w.(/-])(?P<number>\d+(?:[.,]\d+)*|(?:{NUMBER_WORDS})\b(?:[- ](?:{NUMBER_WORDS})\b)?)"
    r"(?P<percent>\s?(?:%|percent\b|per cent\b))?"
    r"(?:\s+(?P<unit>(?:[a-z]+(?:ly|al|ive|ic|ous|ful)\s+(?=[a-z]))?[a-z]+))?",  # "14 daily snapshots"
    re.IGNORECASE,
)
ORDINAL = re.compile(r"\b(?P<number>\d+(?:st|nd|rd|th))\s+(?P<unit>[a-z]+)\b")
NAME = re.compile(r"\b[A-Z][\w'-]*(?:\s+(?:of|and|for|the|on|de|du)\s+[A-Z][\w'-]*|\s+[A-Z][\w'-]*)+\b")
DEFINITION = re.compile(
    r"^(?:the\s+)?[\"“']?(?P<term>[^\"”']{2,60}?)[\"”']?\s+"
    r"(?:means|refers to|is defined as|denotes)\s+(?P<meaning>.+)$",
    re.IGNORECASE,
)
SHORT_NAME = re.compile(
    r"(?P<full>(?:the\s+)?[A-Z][\w'-]*(?:\s+(?:of|and|for|the)?\s*[A-Z][\w'-]*)+)\s*,?\s*\(?\s*"
    r"(?:hereinafter|hereafter)(?:\s+(?:referred to|called))?(?:\s+as)?\s+[\"“](?P<short>[^\"”]{2,40})[\"”]"
)
THIS_IS = re.compile(r"\bThis (?P<noun>[A-Z][a-z]+|[a-z]+) is (?P<full>the [A-Z][\w'-]*(?:\s+[\w'-]+){1,10}?)[.;]")
ENUMERATOR = re.compile(r"^(?:\(?(?:\d{1,3}|[a-z]|[ivxlc]{1,5})[).]|[-*•])\s+")
CODE = re.compile(r"\\[nt\"']|-{3,}|\+-{2,}|\||\$[({]|\bfi\b|;\s*then\b")
"""Signs of a line of code, a shell script or a table, not prose: escapes, table rules, pipes, ``$(``."""
OPENERS, CLOSERS = "(\"“'‘[", ")\"”'’]"
PRONOUNS = frozenset(["this", "that", "it", "these", "those", "which", "what", "there"])
SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=[\"“(]?[A-Z0-9])")
MIN_WORDS, MAX_WORDS = 5, 60


@dataclass(frozen=True)
class Fact:
    """One answerable span of a sentence."""

    answer: str
    start: int
    end: int
    kind: str
    """``date``, ``percent``, ``duration``, ``count``, ``ordinal``, ``name`` or ``definition``."""
    unit: str = ""
    """The counted noun (``years``, ``kestrels``), the ordinal's noun, or a name's last word."""


def sentence_facts(sentence: str) -> list[Fact]:
    """The facts of one sentence, in order of appearance, never overlapping."""
    facts: list[Fact] = []

    def free(start: int, end: int) -> bool:  # a definition's meaning may hold other facts
        return all(end <= f.start or start >= f.end for f in facts if f.kind != "definition")

    definition = DEFINITION.match(sentence)
    if definition and definition.group("term").strip().lower() in PRONOUNS:
        definition = None  # "This means that ...": no term to ask about
    if definition and len(definition.group("term").split()) <= 6:
        meaning = re.split(r"[;:]|, (?:which|who|where)\b", definition.group("meaning"))[0].rstrip(" .")
        if len(meaning.split()) >= 2:
            start = definition.start("meaning")
            facts.append(Fact(meaning, start, start + len(meaning), "definition", definition.group("term").strip()))
    for match in DATE.finditer(sentence):
        if free(match.start(), match.end()):
            facts.append(Fact(match.group(0), match.start(), match.end(), "date"))
    for match in ORDINAL.finditer(sentence):
        if free(match.start(), match.end()) and match.group("unit").lower() not in FUNCTION_WORDS:
            facts.append(Fact(match.group(0), match.start(), match.end(), "ordinal", match.group("unit")))
    for match in QUANTITY.finditer(sentence):
        fact = _quantity(match)
        if fact is not None and free(fact.start, fact.end):
            facts.append(fact)
    for match in NAME.finditer(sentence):
        words = match.group(0).split()
        start = match.start()
        while words and (words[0].lower() in FUNCTION_WORDS or words[0] in ("This", "These", "That")):
            start += len(words[0]) + 1
            words = words[1:]
        while words and words[-1].lower() in FUNCTION_WORDS:
            words = words[:-1]
        text = " ".join(words)
        if len(words) < 2 or start == 0 or not free(start, start + len(text)):
            continue  # one word, or a sentence's first words (capitalised anyway)
        head = words[words.index("of") - 1] if "of" in words[1:] else words[-1]
        facts.append(Fact(text, start, start + len(text), "name", head))
    return sorted((f for f in facts if not _enclosed(sentence, f)), key=lambda f: f.start)


def _enclosed(sentence: str, fact: Fact) -> bool:
    """A fact a quote holds exactly (``use the "Gain Root API"``) or one inside brackets (``GDM (GNOME Display
    Manager)``): cut out, it leaves ``" "`` or a question asked inside brackets."""
    quoted = sentence[fact.start - 1 : fact.start] in OPENERS and sentence[fact.end : fact.end + 1] in CLOSERS
    before = sentence[: fact.start]
    return quoted or before.count("(") > before.count(")")


def _quantity(match: re.Match[str]) -> Fact | None:
    number, unit = match.group("number"), match.group("unit") or ""
    start = match.start()
    if match.group("percent"):
        end = match.end("percent")
        return Fact(match.group(0)[: end - start].strip(), start, end, "percent")
    if not unit or unit.split()[-1].lower() in FUNCTION_WORDS:
        return None  # a bare number ("Article 12", "13 of the") says too little to ask about
    if unit[:1].isupper():
        return None  # a number before a name ("51 Franklin Street", "3 Debian releases") counts no unit
    if number.count(".") >= 2 or re.search(r"\b[A-Z]{2,}\s*$", match.string[:start]):
        return None  # a version ("dpkg 1.19.1", "LSB 1.3"), not an amount
    if number[:1].isalpha() and number.lower() == "one":
        return None  # "one year" is usually an article, not a fact
    end = match.end("unit")
    kind = "duration" if unit.split()[-1].lower() in TIME_UNITS else "count"
    return Fact(match.group(0)[: end - start], start, end, kind, unit)


def proper_words(texts: Iterable[str]) -> frozenset[str]:
    """Words written with a capital inside sentences (not after a sentence end): names, not sentence starts."""
    found = set()
    for text in texts:
        for match in re.finditer(r"(?<=[a-z,;] )([A-Z][\w'-]+)", text):
            found.add(match.group(1))
    return frozenset(found)


def short_names(text: str) -> dict[str, str]:
    """Short names a document defines, with their full names: ``{"the Fund": "the Common Provident Fund"}``."""
    found: dict[str, str] = {}
    for match in SHORT_NAME.finditer(text):
        full = match.group("full")
        full = full if full.lower().startswith("the ") else "the " + full
        found[match.group("short")] = full
    for match in THIS_IS.finditer(text):
        noun = match.group("noun")
        found[f"this {noun}"] = found[f"the {noun}"] = match.group("full")
    return found


def split_sentences(text: str) -> list[str]:
    """The sentences of a section, headings and paragraph numbers removed, whitespace collapsed."""
    sentences = []
    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        if not block or block.startswith("#"):
            continue
        for sentence in SENTENCE_END.split(" ".join(block.split())):
            sentence = ENUMERATOR.sub("", sentence.strip())
            if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS and _prose(sentence):
                sentences.append(sentence)
    return sentences


def _prose(sentence: str) -> bool:
    """Whether ``sentence`` reads as prose: mostly letters, no sign of code or a table."""
    visible = [c for c in sentence if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    return letters >= 0.6 * len(visible) and not CODE.search(sentence)
