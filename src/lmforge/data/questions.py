"""Questions about every fact of the documents, written by rules: no teacher, no network.

A question file covers some facts of a domain's documents; a model tuned on it learns those and
little else (the demo's ``docs_only`` facts stayed at 0% closed-book). The data stage can therefore
turn every sentence of the ``documents`` split into questions, each answered by the sentence it came
from, so sft sees every stated fact in question form, several times, in several wordings.

What counts as a fact (:func:`lmforge.data.facts.sentence_facts`): dates (``1 April``, ``March 3, 2024``), quantities
(``8.15%``, ``seven years``, ``410 kestrels``, ``48 hours``), ordinals with their noun (``24th
birthday``), names of bodies, funds, acts and the like (runs of capitalised words), and definitions
(``"contribution year" means ...``). For each fact the sentence is cut into what precedes and what
follows it, and questions are formed without a parser:

* in place: ``Members of the Governing Board serve a term of how many years?``;
* fronted, when an auxiliary (``is``, ``shall``, ``may`` ...) or a present-tense verb (``pays`` ->
  ``does ... pay``) can be found before the fact: ``How many years do members ... serve a term of?``
  is not attempted for plural verbs (no ``-s``); ``For how many weeks is the benefit suspended?`` is;
* with the section named (``Under Article 12 ...``, ``According to the section on ...``) and with
  other question words (``how long`` for durations, ``what percentage`` / ``what share`` for rates,
  ``which fund`` / ``what is the name of the fund`` for names).

Each question's reply is the source sentence itself (paragraph numbers removed), so the answer is
quoted, never invented. Terms a document defines as a short name (``the Common Provident Fund,
hereinafter "the Fund"``; ``This Code is the Social Security Code of ...``) are spelled out in full
in the questions about that document, as readers ask about them.

Generation is deterministic (seeded) and generic: no word list of any one domain. A generated
question that equals, or nearly equals, a question of an evaluation split is dropped and counted
(:func:`drop_eval_overlap`), so evaluation never asks what training was shown.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lmforge.data.facts import (
    AUXILIARIES,
    FUNCTION_WORDS,
    SUBORDINATORS,
    Fact,
    proper_words,
    sentence_facts,
    short_names,
    split_sentences,
)
from lmforge.records import Record, chat_record


@dataclass(frozen=True)
class Clause:
    """A sentence cut around a fact: ``lead`` (a subordinate clause before the main one, or ''),
    ``before`` (main clause up to the fact, without a determiner just before it) and ``after`` (to the
    end of the fact's clause)."""

    lead: str
    before: str
    after: str


DETERMINERS = ("the", "a", "an")


def cut_around(sentence: str, fact: Fact, proper: frozenset[str] = frozenset()) -> Clause:
    """The parts of ``sentence`` around ``fact`` that a question keeps (``proper``: words the document
    capitalises inside sentences, which keep their capital at the start of a question too)."""
    before = sentence[: fact.start].strip()
    after = sentence[fact.end :].strip()
    after = re.split(r"[;:]|, (?!of\b)|(?:^|\s)(?:and|but|unless|which|whereas|provided)\b", after)[0].strip(" .,")
    lead = ""
    first = before.split(" ", 1)[0].lower() if before else ""
    if first in SUBORDINATORS and ", " in before:
        lead, before = before.split(", ", 1)
    elif ", " in before and len(before.split(", ")[0].split()) <= 6:
        lead_candidate, rest = before.split(", ", 1)
        if lead_candidate.split(" ", 1)[0].lower() in ("under", "in", "for", "during", "on", "from", "with", "by"):
            lead, before = lead_candidate, rest
    words = before.split()
    if words and words[-1].lower() in DETERMINERS:
        words = words[:-1]
    return Clause(lower_first(lead, proper), lower_first(" ".join(words), proper), after)


def lower_first(text: str, proper: frozenset[str] = frozenset()) -> str:
    """``The Fund`` -> ``the Fund``, ``Members of ...`` -> ``members of ...``; a word in ``proper`` (a name
    the document capitalises mid-sentence) or an acronym keeps its capital."""
    if not text:
        return text
    first = text.split(" ", 1)[0]
    if first in proper or (len(first) > 1 and first.isupper()):
        return text
    return text[0].lower() + text[1:]


_BODY_TEXT = (
    "agency assembly authority board bureau commission committee council court department directorate inspectorate "
    "institute ministry office parliament secretariat service tribunal"
)
BODIES = frozenset(_BODY_TEXT.split())
"""Heads of names that are bodies, which a wording may ask for as ``which body`` (not a fund, an act, a policy)."""


def question_word(fact: Fact, variant: int) -> str:
    """The question phrase standing in for ``fact`` (``how many years``, ``which fund`` ...)."""
    unit = fact.unit.lower()
    choices: list[str]
    if fact.kind == "date":
        choices = ["what date", "which date"]
    elif fact.kind == "percent":
        choices = ["what percentage", "what share", "what rate"]
    elif fact.kind in ("duration", "count"):
        choices = [f"how many {unit}", f"what number of {unit}"]
    elif fact.kind == "ordinal":
        choices = [f"which {unit}", f"what {unit}"]
    elif fact.kind == "name":
        head = unit if unit.isalpha() else "name"
        choices = [f"which {head}", f"what {head}"] + (["which body"] if head in BODIES else [])
    else:
        choices = ["what"]
    return choices[variant % len(choices)]


MOVABLE_PREPOSITIONS = ("on", "by", "from", "until", "for", "within", "in", "at", "after", "before", "into", "to")


def front(clause: Clause, wh: str) -> str | None:
    """``before`` turned into a fronted question with ``wh`` (auxiliary inversion or do-support), or None
    (no verb found, or a fact inside an ``of`` phrase that cannot move)."""
    words = clause.before.split()
    if not words or words[-1].lower() in ("of", "than", "as", "with", "and", "or") or ": " in clause.before:
        return None
    prep = ""
    if words[-1].lower() in MOVABLE_PREPOSITIONS:
        prep, words = words[-1].lower(), words[:-1]
    after = clause.after
    if after.startswith("of "):  # "16 years of age", "8.15% of their earnings": the phrase moves with the fact
        wh, after = f"{wh} {after}", ""
    if words and (words[-1].lower() in STRANDED or words[-1].endswith("'s")):
        return None  # "for the first 3 days", "until the child's 25th birthday": the phrase cannot move alone
    for index, word in enumerate(words[:10]):
        low = word.lower()
        if index == 0:
            continue
        if (low in AUXILIARIES or _is_verb_s(word, words[index - 1])) and _crosses_clause(words):
            return None  # a relative or subordinate clause: the verb found may not be the main one
        if low in AUXILIARIES:
            rest = " ".join(words[index + 1 :])
            return _join(prep, wh, low, " ".join(words[:index]), rest, after)
        following = words[index + 1].lower() if index + 1 < len(words) else ""
        if _is_verb_s(word, words[index - 1]) and following not in AUXILIARIES:  # "records are kept": a noun
            rest = " ".join([_base_form(low), *words[index + 1 :]])
            return _join(prep, wh, "does", " ".join(words[:index]), rest, after)
    return None


PLAIN_WH = {  # the everyday question word a reader uses for a date or a duration, with the prepositions it absorbs
    "date": (re.compile(r"^(?:On|From) (?:what|which) date\b(?! of\b)", re.IGNORECASE), "When"),
    "duration": (re.compile(r"^For (?:how many|what number of) \w+\b(?! of\b)", re.IGNORECASE), "How long"),
}


def plain_wh(question: str, fact: Fact) -> str:
    """``On what date does the contribution year begin`` -> ``When does ...``; ``For how many weeks is the
    benefit suspended`` -> ``How long is ...``; any other question unchanged."""
    rule = PLAIN_WH.get(fact.kind)
    return rule[0].sub(rule[1], question, count=1) if rule else question


STRANDED = frozenset(["first", "last", "best", "next", "up", "than", "per", "every", "each", "the", "a", "an"])
"""Words that cannot end a question once the fact after them has moved to its front."""
CLAUSE_WORDS = frozenset(["who", "whose", "whom", "which", "that", "where", "when", "if", "unless", "provided"])


def _crosses_clause(words: list[str]) -> bool:
    """The words up to the fact hold a relative or subordinate clause, or a second phrase after a comma: the
    main verb, which a question inverts, cannot be told from the clause's own."""
    return any(w.lower().strip(",") in CLAUSE_WORDS or w.endswith(",") for w in words)


def _join(prep: str, wh: str, aux: str, subject: str, rest: str, after: str) -> str:
    opening = f"{prep} {wh}" if prep else wh
    text = " ".join(part for part in (opening, aux, subject, rest, after) if part)
    return text[0].upper() + text[1:]


def _is_verb_s(word: str, previous: str) -> bool:
    """A present-tense third-person verb (``pays``, ``receives``), guessed from its ending and place."""
    low = word.lower()
    if not low.isalpha() or not low.endswith("s") or low.endswith(("ss", "us", "is", "ics", "ings", "ions", "ous")):
        return False
    if previous.lower() in FUNCTION_WORDS or previous.endswith(","):
        return False  # "the members", "of contributions": a noun after a determiner or preposition
    return len(low) > 3 and not word[:1].isupper()


def _base_form(verb: str) -> str:
    """``pays`` -> ``pay``, ``applies`` -> ``apply``, ``publishes`` -> ``publish``, ``receives`` -> ``receive``."""
    if verb.endswith("ies") and len(verb) > 4:
        return verb[:-3] + "y"
    if verb.endswith(("ches", "shes", "sses", "xes", "zes", "oes")):
        return verb[:-2]
    return verb[:-1]


def in_place(clause: Clause, wh: str) -> str:
    """The sentence with ``wh`` where the fact was: ``The Code organises social insurance in how many branches``."""
    text = " ".join(part for part in (clause.before, wh, clause.after) if part)
    return text[0].upper() + text[1:]


def with_lead(question: str, lead: str, fronted: bool) -> str:
    """A fronted question ends with its subordinate clause; one in place starts with it."""
    if not lead:
        return question
    if fronted:
        return f"{question}, {lead}"
    rest = question if _keeps_capital(question) else question[0].lower() + question[1:]
    return f"{lead[0].upper() + lead[1:]}, {rest}"


def _keeps_capital(text: str) -> bool:
    first = text.split(" ", 1)[0]
    return len(first) > 1 and (first.isupper() or first[1:].islower() is False)


def section_names(heading: str | None, path: str) -> list[str]:
    """Ways of naming the section a sentence comes from: ``Article 7`` and ``the article on contributions``."""
    if not heading:
        stem = re.sub(r"[-_]+", " ", re.sub(r"\.\w+$", "", path.rsplit("/", 1)[-1])).strip()
        return [f"the document {stem}"] if stem else []
    last = heading.split(" > ")[-1].strip().lstrip("#").strip()
    parts = re.split(r"\s+[—–-]\s+|:\s+", last, maxsplit=1)
    names = []
    if len(parts) == 2 and len(parts[0].split()) <= 3:
        names.append(parts[0])
        names.append(f"the {parts[0].split()[0].lower()} on {parts[1][0].lower() + parts[1][1:]}")
    else:
        names.append(f"the section {last}")
    return names


def spell_out(question: str, names: dict[str, str]) -> str:
    """Replace the first short name in ``question`` by its full name (case-insensitive on ``the``/``this``)."""
    for short, full in sorted(names.items(), key=lambda kv: -len(kv[0])):
        pattern = re.compile(r"\b" + re.escape(short) + r"\b", re.IGNORECASE if short[:1].islower() else 0)
        match = pattern.search(question)
        if match and full.lower() not in question.lower():
            replacement = full if match.start() > 0 else full[0].upper() + full[1:]
            return question[: match.start()] + replacement + question[match.end() :]
    return question


def fact_questions(
    sentence: str,
    fact: Fact,
    places: list[str],
    names: dict[str, str],
    wordings: int,
    proper: frozenset[str] = frozenset(),
    wheres: list[str] | None = None,
) -> list[str]:
    """Up to ``wordings`` distinct questions about ``fact``, most natural first. ``places`` name the
    document or section (``Under Article 5, ...``); ``wheres`` the place the documents govern (``... in
    Kestria?``)."""
    wheres = wheres or []
    clause = cut_around(sentence, fact, proper)
    candidates: list[str] = []
    if fact.kind == "definition":
        term = fact.unit.strip("\"“”' ")
        candidates = [f"What does “{term}” mean?", f"What is meant by {term}?", f"How is {term} defined?"]
        candidates += [f"According to {place}, what does “{term}” mean?" for place in places]
        candidates += [f"How does {place} define {term}?" for place in places]
    elif not clause.before and fact.kind == "name":  # the fact is the subject: "The Board publishes ..."
        predicate = re.split(r"[;:]|, (?!of\b)", sentence[fact.end :])[0].strip(" .,")
        if predicate:
            subject_clause = Clause(clause.lead, "", predicate)
            candidates = [
                with_lead(in_place(subject_clause, question_word(fact, v)), clause.lead, False) + "?" for v in range(3)
            ]
            candidates.insert(1, f"Who {predicate}?")
            candidates += [f"According to {place}, {question_word(fact, 0)} {predicate}?" for place in places]
    elif ": " not in clause.before:  # a fact inside a list after a colon has no question of its own
        fronted_family, in_place_family, under_family, where_family, according_family = [], [], [], [], []
        for variant in range(3):
            wh = question_word(fact, variant)
            fronted = front(clause, wh)
            if fronted:
                fronted = (plain_wh(fronted, fact) if variant == 0 else fronted).rstrip(" ,;:")
                fronted_family.append(with_lead(fronted, clause.lead, True) + "?")
                according_family += [f"{fronted} according to {place}?" for place in places[variant::3]]
                where_family += [f"{fronted} {where}?" for where in wheres[variant::3]]
            in_place_family.append(with_lead(in_place(clause, wh), clause.lead, False) + "?")
            tail = lower_first(in_place(clause, wh), proper)
            under_family += [f"Under {place}, {tail}?" for place in places[variant::3]]
            where_family += [f"{where[0].upper()}{where[1:]}, {tail}?" for where in wheres[variant::3] if not fronted]
        # one of each family in turn, so that a few wordings already differ in form, not only in one word
        families = [fronted_family, in_place_family, under_family, where_family, according_family]
        candidates = [family[i] for i in range(6) for family in families if i < len(family)]
    seen: set[str] = set()
    out = []
    for question in candidates:
        question = re.sub(r"\s+([,?])", r"\1", spell_out(question, names))
        question = re.sub(r"[.,;:]+\?$", "?", question)
        key = question.lower()
        named_twice = any(question.count(where.split()[-1]) > 1 for where in wheres)
        if key not in seen and fact.answer.lower() not in key and not named_twice:
            seen.add(key)
            out.append(question)
    return out[:wordings]


def document_questions(records: Iterable[Record], wordings: int = 5, seed: int = 0) -> list[Record]:
    """Chat records asking about every fact of the ``text`` records, ``wordings`` questions per fact.

    Each record's reply is the sentence the fact comes from; ``meta`` holds ``answer`` (the fact),
    ``source`` (the document's path, for RAFT's gold passage), ``section`` (path and heading, which the
    held-out split groups by), ``fact`` (an id shared by a fact's wordings) and ``generated: rules``.
    """
    out: list[Record] = []
    texts = [r for r in records if r.get("kind") == "text"]
    names: dict[str, str] = {}
    for record in texts:  # a short name defined once ("this Code", "the Fund") holds in every document
        names.update({k: v for k, v in short_names(record["text"]).items() if k not in names})
    proper = proper_words(r["text"] for r in texts)
    titles = sorted({full for short, full in names.items() if short.lower().startswith("this ")})
    wheres = governed_places(titles[:1])
    titles = [*titles[:1], *(title.split(" of ", 1)[0] for title in titles[:1] if " of " in title)]
    for record in texts:
        source = record["source"]
        path = source.get("path", "")
        heading = source.get("heading")
        places = [*titles, *section_names(heading, path)]
        rng = random.Random(f"{seed}:questions:{record['id']}")
        for number, sentence in enumerate(split_sentences(record["text"])):
            for fact, asked in _facts_to_ask(sentence):
                questions = fact_questions(asked, fact, places, names, wordings, proper, wheres)
                if not questions:
                    continue
                rng.shuffle(questions)
                reply = spell_out(sentence, names) if sentence.startswith("This ") else sentence
                fact_id = f"{record['id'][:12]}:{number}:{fact.start}"
                meta: dict[str, Any] = {
                    "answer": fact.answer,
                    "source": path,
                    "section": f"{path}#{heading or ''}",
                    "fact": fact_id,
                    "kind": fact.kind,
                    "generated": "rules",
                }
                for question in questions:
                    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
                    out.append(chat_record(messages, dict(source), record.get("domain"), meta))
    return out


GOVERNED = re.compile(r" of (?:the )?(?:(?:Republic|Kingdom|State|Commonwealth|Federation) of )?([A-Z][\w-]+)$")


def governed_places(titles: list[str]) -> list[str]:
    """``in Kestria`` for a collection titled ``the Social Security Code of the Republic of Kestria``: readers
    name the place a code or manual governs more often than its full title."""
    out = []
    for title in titles:
        match = GOVERNED.search(title)
        if match:
            out.append(f"in {match.group(1)}")
    return out


def _facts_to_ask(sentence: str) -> list[tuple[Fact, str]]:
    """Each fact of ``sentence`` with the sentence its questions are formed from: a fact inside a
    definition (``"contribution year" means the period ... beginning on 1 April``) is asked about in
    the definition restated (``the contribution year is the period ... beginning on what date``)."""
    facts = sentence_facts(sentence)
    definition = next((f for f in facts if f.kind == "definition"), None)
    if definition is None:
        return [(fact, sentence) for fact in facts]
    term = definition.unit.strip("\"“”' ")
    restated = f"The {term} is {sentence[definition.start :]}"
    inner = [f for f in sentence_facts(restated) if f.kind != "definition" and f.start >= len(f"The {term} is ")]
    return [(definition, sentence), *((fact, restated) for fact in inner)]


def normalise_question(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def word_jaccard(a: set[str], b: set[str]) -> float:
    """Shared words over all words of two word sets (0 for two empty sets)."""
    return len(a & b) / max(1, len(a | b))


def drop_eval_overlap(
    generated: list[Record], held_out: Iterable[Record], threshold: float = 0.8
) -> tuple[list[Record], int]:
    """``generated`` without the questions that equal or nearly equal (word Jaccard >= ``threshold``) a
    question of ``held_out``; returns the kept records and how many were dropped."""
    asked = []
    for record in held_out:
        if record.get("kind") != "chat":
            continue
        for message in record["messages"]:
            if message["role"] == "user":
                asked.append(set(normalise_question(message["content"]).split()))
    exact = {" ".join(sorted(words)) for words in asked}
    kept, dropped = [], 0
    for record in generated:
        words = set(normalise_question(record["messages"][-2]["content"]).split())
        if " ".join(sorted(words)) in exact or any(word_jaccard(words, other) >= threshold for other in asked):
            dropped += 1
            continue
        kept.append(record)
    return kept, dropped
