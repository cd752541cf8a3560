"""Prompt formats for sft, installed as the tuned tokenizer's chat template.

``chat`` is the tokenizer's own template. ``alpaca`` and ``domain_tag`` are for base models that have
none; they are written as Jinja chat templates and saved with the tuned tokenizer, so ``chat``,
``serve``, ``export`` and ``eval`` (which all call ``tokenizer.apply_chat_template``) prompt the model
exactly as it was trained. Each renders a conversation's prefixes consistently (the text up to an
assistant turn never changes when later turns are added), which is what locating the assistant
tokens for the loss needs (see ``lmforge.engine.tokenize``).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from lmforge.errors import StageError

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ALPACA_PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)

# The data layer writes an alpaca row's input after its instruction, separated by a blank line; the
# template splits a user turn at its first blank line back into ### Instruction and ### Input.
ALPACA_TEMPLATE = (
    "{%- set turns = messages -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- messages[0]['content'] + '\\n\\n' -}}"
    "{%- set turns = messages[1:] -%}"
    "{%- elif messages and '\\n\\n' in messages[0]['content'] -%}"
    "{{- " + json.dumps(ALPACA_PREAMBLE_WITH_INPUT + "\n\n") + " -}}"
    "{%- else -%}"
    "{{- " + json.dumps(ALPACA_PREAMBLE + "\n\n") + " -}}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- set parts = message['content'].split('\\n\\n', 1) -%}"
    "{{- '### Instruction:\\n' + parts[0] + '\\n\\n' -}}"
    "{%- if parts | length > 1 -%}{{- '### Input:\\n' + parts[1] + '\\n\\n' -}}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '### Response:\\n' + message['content'] + eos_token + '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Response:\\n' -}}{%- endif -%}"
)

# One line per prompt: "[DOMAIN: pensions] What is the retirement age?", then the answer and EOS.
# ``domain`` is passed per record in training; at inference, without it, the default baked in below
# (the most common domain of the training records) is used.
DOMAIN_TAG_TEMPLATE = (
    "{%- set tag = domain if domain is defined and domain else __DEFAULT_DOMAIN__ -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{- message['content'] | replace('\\n', ' ') + '\\n' -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '[DOMAIN: ' + tag + '] ' + message['content'] | replace('\\n', ' ') + '\\n' -}}"
    "{%- else -%}"
    "{{- message['content'] + eos_token + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def install_template(tokenizer: Any, template: str, records: list[dict[str, Any]], model_ref: str) -> str | None:
    """Set ``tokenizer.chat_template`` for the chosen prompt format; returns the default domain (domain_tag).

    Raises:
        StageError: ``chat`` with a tokenizer that has no chat template, or a tokenizer without an EOS token.
    """
    if template == "chat":
        if not tokenizer.chat_template:
            raise StageError(
                f"the tokenizer of {model_ref!r} has no chat template, and sft.template is 'chat'; "
                "set sft.template: alpaca or sft.template: domain_tag (formats for base models)"
            )
        return None
    if tokenizer.eos_token is None:
        raise StageError(
            f"the tokenizer of {model_ref!r} has no EOS token; sft.template {template!r} ends each turn with one"
        )
    if template == "alpaca":
        tokenizer.chat_template = ALPACA_TEMPLATE
        return None
    default = default_domain(records)
    tokenizer.chat_template = DOMAIN_TAG_TEMPLATE.replace("__DEFAULT_DOMAIN__", json.dumps(default))
    return default


def default_domain(records: list[dict[str, Any]]) -> str:
    """The most common domain of the records (``general`` when none has one)."""
    counts = Counter(record.get("domain") for record in records if record.get("domain"))
    return counts.most_common(1)[0][0] if counts else "general"


def template_kwargs(template: str, record: dict[str, Any]) -> dict[str, Any]:
    """Extra variables the template renders a record with (its domain, for domain_tag)."""
    if template == "domain_tag" and record.get("domain"):
        return {"domain": record["domain"]}
    return {}
