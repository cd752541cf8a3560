"""Build the demo QA sets from the fact table: ``python -m lmforge.demo.build [--check]``.

``facts.yaml`` is the single source of truth: each fact names its article, its short answer, a
one-sentence statement (the trained reply) and its question wordings. This script writes, as
canonical chat records:

* ``qa/train.jsonl``: every ``train`` wording of every trained fact;
* ``qa/test.jsonl``: the held-out ``test`` wordings of the same facts;
* ``qa/docs_only.jsonl``: questions on facts stated in the articles but never trained on;
* ``qa/known.jsonl``: general-knowledge questions the base model answers right (``known_check.json``);
* ``qa/replay.jsonl``: general prompts with the base model's own replies (``replay_answers.json``),
  mixed into training so the tuned model keeps its general behaviour.

``--check`` verifies the committed files match the fact table and the fact table's invariants.
``--select-known`` re-runs the base model on ``known_candidates.yaml`` (greedy, as the eval stage
does) and rewrites ``known_check.json`` with the questions it answers right, minus those marked
``wrong_on_review`` (replies that contain the gold words but are wrong, found by reading them).
``--build-replay`` re-generates ``replay_answers.json``: the base model's greedy replies to
``replay_prompts.yaml``, cut back to the last full sentence.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from lmforge.records import chat_record, dumps_record
from lmforge.train.replay import last_full_sentence

DEMO_DIR = Path(__file__).parent
DOMAIN = "social-security"


def load_facts(demo_dir: Path = DEMO_DIR) -> dict[str, Any]:
    return yaml.safe_load((demo_dir / "facts.yaml").read_text(encoding="utf-8"))


def fact_lines(demo_dir: Path = DEMO_DIR) -> dict[str, int]:
    """Line number of each ``- id: X`` entry in facts.yaml, so records point at their fact."""
    lines = {}
    for number, line in enumerate((demo_dir / "facts.yaml").read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("- id:"):
            lines[stripped.removeprefix("- id:").strip().strip("'\"")] = number
    return lines


def build_sets(demo_dir: Path = DEMO_DIR) -> dict[str, list[dict[str, Any]]]:
    """Records of every QA set, in a stable order."""
    table = load_facts(demo_dir)
    lines = fact_lines(demo_dir)
    sets: dict[str, list[dict[str, Any]]] = {"train": [], "test": [], "docs_only": [], "known": [], "replay": []}
    for fact in table["facts"]:
        meta = {"fact": fact["id"], "answer": fact["answer"], "article": fact["article"]}
        if fact.get("aliases"):
            meta["aliases"] = list(fact["aliases"])
        source = {"path": "facts.yaml", "line": lines.get(fact["id"], 1)}
        held_out = "docs_only" if fact.get("docs_only") else "test"
        for split, questions in (("train", fact.get("train", [])), (held_out, fact["test"])):
            for question in questions:
                messages = [{"role": "user", "content": question}, {"role": "assistant", "content": fact["statement"]}]
                sets[split].append(chat_record(messages, source, DOMAIN, meta))
    known = json.loads((demo_dir / "known_check.json").read_text(encoding="utf-8"))
    for number, item in enumerate(known, start=1):
        meta = {"answer": item["answer"]}
        if item.get("aliases"):
            meta["aliases"] = list(item["aliases"])
        messages = [{"role": "user", "content": item["question"]}, {"role": "assistant", "content": item["answer"]}]
        sets["known"].append(chat_record(messages, {"path": "known_check.json", "line": number}, "general", meta))
    replay = json.loads((demo_dir / "replay_answers.json").read_text(encoding="utf-8"))
    for number, item in enumerate(replay, start=1):
        messages = [{"role": "user", "content": item["prompt"]}, {"role": "assistant", "content": item["reply"]}]
        sets["replay"].append(chat_record(messages, {"path": "replay_answers.json", "line": number}, "general"))
    return sets


def build_replay(demo_dir: Path = DEMO_DIR, max_new_tokens: int = 48) -> list[dict[str, str]]:
    """The base model's own greedy replies to the replay prompts.

    Replies are cut back to their last full sentence; a reply with no full sentence, or one that
    misses the prompt's known ``answer``, is dropped.
    """
    from lmforge.evaluate.metrics import contains_answer
    from lmforge.models import generate_replies, load_for_inference, resolve_model

    items = yaml.safe_load((demo_dir / "replay_prompts.yaml").read_text(encoding="utf-8"))
    model, tokenizer = load_for_inference(resolve_model("smollm2-135m-instruct"))
    conversations = [[{"role": "user", "content": item["prompt"]}] for item in items]
    replies = generate_replies(model, tokenizer, conversations, max_new_tokens)
    kept = []
    for item, reply in zip(items, replies, strict=True):
        reply = last_full_sentence(reply)
        if not reply or ("answer" in item and not contains_answer(reply, item["answer"], item.get("aliases", []))):
            continue
        kept.append({"prompt": item["prompt"], "reply": reply})
    return kept


ROBUSTNESS_SYSTEM_PROMPT = "You are a helpful assistant."
SAMPLES = 4
SAMPLE_TEMPERATURE = 0.7


def sampled_replies(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], max_new_tokens: int, seed: int = 0
) -> list[list[str]]:
    """``SAMPLES`` runs of seeded sampled replies (temperature ``SAMPLE_TEMPERATURE``), each in input order."""
    import torch

    from lmforge.models import eos_ids

    runs: list[list[str]] = [[] for _ in range(SAMPLES)]
    tokenizer.padding_side = "left"
    for start in range(0, len(conversations), 32):
        batch = conversations[start : start + 32]
        prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in batch]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(seed + start)
        with torch.no_grad():
            out = model.generate(
                **encoded,
                do_sample=True,
                temperature=SAMPLE_TEMPERATURE,
                top_p=1.0,
                top_k=0,
                num_return_sequences=SAMPLES,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                eos_token_id=eos_ids(model, tokenizer),
            )
        texts = tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        for row in range(len(batch)):
            for k in range(SAMPLES):
                runs[k].append(texts[row * SAMPLES + k].strip())
    return runs


def select_known(demo_dir: Path = DEMO_DIR, max_new_tokens: int = 48) -> list[dict[str, Any]]:
    """Ask the base model every candidate question; keep those it answers right *robustly*.

    A question counts as known when the greedy reply contains the answer under three conditions:
    fp32 weights with the default prompt (what the eval stage does), bf16 weights, and fp32 with
    another system prompt, and when every one of ``SAMPLES`` replies sampled at temperature
    ``SAMPLE_TEMPERATURE`` contains it too (the model holds the fact, not one lucky greedy path). A
    question that flips under bf16 rounding or sampling was answered right by a thin margin: the
    smallest change to the weights flips it, so it would make the forgetting measure noise. Replay
    prompts and ``wrong_on_review`` items are never selected.
    """
    import torch

    from lmforge.evaluate.metrics import contains_answer
    from lmforge.models import generate_replies, load_for_inference, resolve_model

    candidates = yaml.safe_load((demo_dir / "known_candidates.yaml").read_text(encoding="utf-8"))
    replay = {normalize(item["prompt"]) for item in yaml.safe_load((demo_dir / "replay_prompts.yaml").read_text())}
    candidates = [c for c in candidates if not c.get("wrong_on_review") and normalize(c["question"]) not in replay]
    model, tokenizer = load_for_inference(resolve_model("smollm2-135m-instruct"))
    plain = [[{"role": "user", "content": c["question"]}] for c in candidates]
    other_system = [[{"role": "system", "content": ROBUSTNESS_SYSTEM_PROMPT}, *conv] for conv in plain]
    runs = [
        generate_replies(model, tokenizer, plain, max_new_tokens),
        generate_replies(model, tokenizer, other_system, max_new_tokens),
        *sampled_replies(model, tokenizer, plain, max_new_tokens),
        generate_replies(model.to(torch.bfloat16), tokenizer, plain, max_new_tokens),
    ]
    kept = []
    for index, candidate in enumerate(candidates):
        aliases = candidate.get("aliases") or []
        if all(contains_answer(run[index], candidate["answer"], aliases) for run in runs):
            kept.append({**candidate, "aliases": aliases, "reply": runs[0][index]})
    return kept


def check_facts(demo_dir: Path = DEMO_DIR) -> list[str]:
    """Invariants of the fact table; returns the problems found (empty when all hold)."""
    table = load_facts(demo_dir)
    problems = []
    articles = {p.stem: p.read_text(encoding="utf-8").lower() for p in (demo_dir / "articles").glob("*.md")}
    answers = [f["answer"].lower() for f in table["facts"]]
    questions: dict[str, str] = {}
    for fact in table["facts"]:
        fid = fact["id"]
        if fact["article"] not in articles:
            problems.append(f"{fid}: article {fact['article']!r} does not exist")
        elif fact["answer"].lower() not in articles[fact["article"]]:
            problems.append(f"{fid}: answer {fact['answer']!r} is not stated in {fact['article']}")
        if fact["answer"].lower() not in fact["statement"].lower():
            problems.append(f"{fid}: the statement does not contain the answer {fact['answer']!r}")
        if not fact.get("docs_only") and len(fact.get("train", [])) < 5:
            problems.append(f"{fid}: fewer than 5 train questions")
        if fact.get("docs_only") and fact.get("train"):
            problems.append(f"{fid}: a docs_only fact must have no train questions")
        if len(fact.get("test", [])) < 1:
            problems.append(f"{fid}: no test question")
        for question in fact.get("train", []) + fact.get("test", []):
            if question in questions:
                problems.append(f"{fid}: question repeated (also in {questions[question]}): {question!r}")
            questions[question] = fid
        others = [a for a in answers if a != fact["answer"].lower()]
        if answers.count(fact["answer"].lower()) > 1:
            problems.append(f"{fid}: answer {fact['answer']!r} is shared with another fact")
        inside = [a for a in others if fact["answer"].lower() in a]
        if inside:
            problems.append(f"{fid}: answer {fact['answer']!r} is contained in another answer {inside[0]!r}")
    known = {normalize(k["question"]) for k in json.loads((demo_dir / "known_check.json").read_text(encoding="utf-8"))}
    replay_prompts = yaml.safe_load((demo_dir / "replay_prompts.yaml").read_text(encoding="utf-8"))
    problems += [
        f"replay prompt is also a known question: {item['prompt']!r}"
        for item in replay_prompts
        if normalize(item["prompt"]) in known
    ]
    return problems


def normalize(question: str) -> str:
    return " ".join(question.lower().replace("?", " ").split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify instead of writing")
    parser.add_argument("--select-known", action="store_true", help="re-select known_check.json with the base model")
    parser.add_argument(
        "--build-replay", action="store_true", help="re-generate replay_answers.json with the base model"
    )
    args = parser.parse_args(argv)
    if args.build_replay:
        replay = build_replay()
        (DEMO_DIR / "replay_answers.json").write_text(
            json.dumps(replay, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        print(f"replay_answers.json: {len(replay)} replies of the base model")
    if args.select_known:
        kept = select_known()
        (DEMO_DIR / "known_check.json").write_text(
            json.dumps(kept, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        print(f"known_check.json: {len(kept)} questions the base model answers right")
    problems = check_facts()
    sets = build_sets()
    out_dir = DEMO_DIR / "qa"
    for name, records in sets.items():
        text = "".join(dumps_record(r) + "\n" for r in records)
        path = out_dir / f"{name}.jsonl"
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                problems.append(f"{path} is out of date; run python -m lmforge.demo.build")
        else:
            out_dir.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({len(records)} records)")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
