"""LLM-as-judge: an OpenAI-compatible endpoint compares a variant's answer with the base model's.

The judge sees the question, the reference answer and two candidate answers, and names the one
that agrees better with the reference. Judges prefer whichever answer comes first (or second)
more often than chance, so every pair is asked twice with the order swapped; a variant *wins*
only when both orders prefer it, *loses* only when both prefer the base model, and anything
else (disagreement, a tie, an unreadable verdict) is a *tie*. The score is
``(wins + ties / 2) / n``: 0.5 means no difference.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import JudgeSpec
from lmforge.errors import StageError
from lmforge.redact import redact_url, redact_urls

Vote = Literal["A", "B", "tie", "invalid"]
Verdict = Literal["win", "tie", "loss"]

SYSTEM_PROMPT = (
    "You grade answers to a question against a reference answer. Judge only whether each answer "
    "states the same facts as the reference; ignore style, length and politeness."
)
_VERDICT = re.compile(r"verdict\s*[:\-]?\s*\**\s*(A|B|tie)\b", re.IGNORECASE)
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class Comparison:
    """One question to judge: the base model's answer and a variant's answer."""

    question: str
    reference: str
    base: str
    variant: str


def judge_prompt(question: str, reference: str, first: str, second: str) -> str:
    """The user message for one ordering of two candidate answers."""
    return (
        f"Question: {question}\n"
        f"Reference answer: {reference}\n\n"
        f"Answer A: {first}\n\n"
        f"Answer B: {second}\n\n"
        "Which answer agrees better with the reference answer? Think briefly if you need to, then end "
        'with one line that is exactly "Verdict: A", "Verdict: B" or "Verdict: tie".'
    )


def parse_vote(text: str) -> Vote:
    """The verdict of a judgement: the last ``Verdict: X`` line, or a bare ``A`` / ``B`` / ``tie``."""
    found = _VERDICT.findall(text)
    value = found[-1] if found else text.strip().strip(".*\"'")
    if value.upper() in ("A", "B"):
        return value.upper()  # type: ignore[return-value]
    return "tie" if value.lower() == "tie" else "invalid"


def combine(base_first: Vote, variant_first: Vote) -> Verdict:
    """The variant's verdict from both orders: (base as A, variant as B) and (variant as A, base as B)."""
    first = {"B": "win", "A": "loss"}.get(base_first, "tie")
    second = {"A": "win", "B": "loss"}.get(variant_first, "tie")
    return first if first == second else "tie"  # type: ignore[return-value]


def judge_comparisons(spec: JudgeSpec, comparisons: list[Comparison]) -> list[dict[str, Any]]:
    """Judge every comparison in both orders; one ``{"verdict", "votes"}`` per comparison.

    Raises:
        StageError: the endpoint cannot be reached or refuses the request.
    """
    return asyncio.run(_judge_all(spec, comparisons))


async def _judge_all(spec: JudgeSpec, comparisons: list[Comparison]) -> list[dict[str, Any]]:
    import httpx

    headers = {}
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise StageError(f"eval.judge.api_key_env is {spec.api_key_env!r}, but that variable is not set")
        headers["Authorization"] = f"Bearer {key}"
    limit = asyncio.Semaphore(spec.concurrency)
    url = spec.endpoint.rstrip("/") + "/chat/completions"
    async with httpx.AsyncClient(timeout=spec.timeout_s, headers=headers) as client:

        async def ask(first: str, second: str, item: Comparison) -> Vote:
            async with limit:
                text = await _complete(client, url, spec, judge_prompt(item.question, item.reference, first, second))
            return parse_vote(text)

        async def judge(item: Comparison) -> dict[str, Any]:
            base_first, variant_first = await asyncio.gather(
                ask(item.base, item.variant, item), ask(item.variant, item.base, item)
            )
            return {"verdict": combine(base_first, variant_first), "votes": [base_first, variant_first]}

        return list(await asyncio.gather(*(judge(item) for item in comparisons)))


async def _complete(client: Any, url: str, spec: JudgeSpec, prompt: str) -> str:
    import httpx

    body = {
        "model": spec.model,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": spec.max_tokens,
    }
    problem = ""
    shown = redact_url(url)  # what messages say: never the credentials a URL may carry
    for attempt in range(3):
        if attempt:
            await asyncio.sleep(2**attempt / 2)
        try:
            response = await client.post(url, json=body)
        except httpx.TransportError as exc:
            problem = redact_urls(f"cannot reach the judge at {shown}: {exc!r}")
            continue
        if response.status_code in _RETRY_STATUS:
            problem = f"the judge at {shown} answered HTTP {response.status_code}: {response.text[:200]}"
            continue
        if response.status_code != 200:
            raise StageError(
                f"the judge at {shown} refused the request with HTTP {response.status_code}: {response.text[:300]}; "
                "check eval.judge.endpoint, model and api_key_env"
            )
        try:
            return str(response.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            raise StageError(
                f"the judge at {shown} answered something that is not a chat completion: {response.text[:300]}"
            ) from None
    raise StageError(
        f"{problem} (3 attempts); is the endpoint running? eval.judge.endpoint is {redact_url(spec.endpoint)!r}"
    )


def judge_rows(spec: JudgeSpec, rows: list[dict[str, Any]], variant_names: list[str], set_names: list[str]) -> None:
    """Judge every variant but base against base on the given sets; adds ``answers[variant]["judge"]``."""
    from rich.console import Console

    targets = [
        (row, name)
        for row in rows
        if row["set"] in set_names and "reply" in row["answers"]["base"]
        for name in variant_names
        if name != "base"
    ]
    if not targets:
        return
    where = f"{spec.model} at {redact_url(spec.endpoint)}"
    Console(stderr=True).print(f"eval: judging {len(targets)} answers in both orders with {where}")
    comparisons = [
        Comparison(row["question"], row["gold"], row["answers"]["base"]["reply"], row["answers"][name]["reply"])
        for row, name in targets
    ]
    for (row, name), judgement in zip(targets, judge_comparisons(spec, comparisons), strict=True):
        row["answers"][name]["judge"] = judgement
