"""The ``data`` stage: read every source, convert, clean, filter, deduplicate, split, mix, account.

Outputs in ``runs/<run>/data/``:

* ``splits/<split>.jsonl``: canonical records per split (the manifest's ``outputs.splits``);
* ``rejects.jsonl``: every rejected input with its file, line (or row, page) and reason;
* ``stats.json``: per source, ``read == kept + deduplicated + filtered + rejected``, always.

Order of work per source: read -> convert -> clean -> system prompt -> filters -> exact dedup ->
token-length filter -> near-dup. Then the ``train`` split is cut into train/val/test (grouped by a
key when asked), and only then do mixing weights repeat or sample training records, so a repeated
record can never sit on both sides of a split.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import DataSpec, Recipe, SourceSpec
from lmforge.data import clean, formats
from lmforge.data.inputs import display_path, expand_source, files_to_fingerprint, hub_id
from lmforge.data.sources import FileReport, RawItem, read_items
from lmforge.errors import DataError
from lmforge.records import Record
from lmforge.rundir import StageDir, atomic_write_json, atomic_write_jsonl, fingerprint_data, fingerprint_files

TokenCounter = Callable[[list[Record]], list[int]]


@dataclass
class SourceStats:
    """Counts for one source; ``read == kept + deduplicated + filtered + rejected`` always."""

    read: int = 0
    kept: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    filtered: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    emitted: int = 0
    """Records written to the splits, after the mixing weights (repeats or sampling) of the train split."""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped_files: list[str] = field(default_factory=list)

    @property
    def deduplicated(self) -> int:
        return self.exact_duplicates + self.near_duplicates

    def as_dict(self) -> dict[str, Any]:
        out = {
            "read": self.read,
            "kept": self.kept,
            "deduplicated": self.deduplicated,
            "filtered": dict(self.filtered),
            "rejected": dict(self.rejected),
            "emitted": self.emitted,
            "duplicates": {"exact": self.exact_duplicates, "near": self.near_duplicates},
            "files": self.files,
        }
        if self.skipped_files:
            out["skipped_files"] = self.skipped_files
        return out


@dataclass
class Prepared:
    """The result of :func:`prepare_records`: split name -> records, counts per source, rejects."""

    splits: dict[str, list[Record]]
    stats: dict[str, SourceStats]
    rejects: list[dict[str, Any]]
    generated: dict[str, Any] = field(default_factory=dict)
    """Counts of what was written beside the inputs (``questions``: lmforge.data.questions)."""


@dataclass
class DataResult:
    splits: dict[str, int]
    stats_path: Path
    skipped: bool
    totals: dict[str, int] = field(default_factory=dict)


def run(recipe: Recipe) -> DataResult:
    """Prepare the recipe's data; reuse the previous output when inputs and settings are unchanged."""
    data = recipe.data
    stage = StageDir.open(recipe.run_path(), "data")
    inputs = [expand_source(spec.path) for spec in data.sources]
    max_tokens = recipe.sft.max_length if data.filters.max_tokens == "sft" else data.filters.max_tokens
    config = {"data": data.model_dump(mode="json", exclude={"workers"}), "seed": recipe.seed}
    if max_tokens is not None:
        config["tokenizer"] = {"model": recipe.model.ref, "revision": recipe.model.revision, "max_tokens": max_tokens}
    fingerprints = {
        "files": fingerprint_files([f for found, _ in inputs for f in files_to_fingerprint(found)]),
        "hub": sorted(hub_id(f) for found, _ in inputs for f in found if hub_id(f)),
    }
    fingerprint = fingerprint_data([config, fingerprints])
    if stage.is_done(fingerprint):
        metrics = stage.manifest["metrics"]
        return DataResult(metrics["splits"], stage.path("stats.json"), skipped=True, totals=metrics.get("totals", {}))

    stage.start(fingerprint, config, fingerprints)
    counter = _token_counter(recipe) if max_tokens is not None else None
    prepared = prepare_records(data, recipe.seed, inputs, counter, max_tokens, show_progress=True)

    outputs = {}
    for split, records in prepared.splits.items():
        outputs[split] = str(stage.path("splits", f"{split}.jsonl"))
        atomic_write_jsonl(outputs[split], records)
    for stale in stage.path("splits").glob("*.jsonl"):
        if stale.stem not in prepared.splits:
            stale.unlink()
    atomic_write_jsonl(stage.path("rejects.jsonl"), prepared.rejects)
    stats_doc = stats_document(prepared)
    atomic_write_json(stage.path("stats.json"), stats_doc)
    stage.finish({"splits": stats_doc["splits"], "totals": stats_doc["totals"]}, outputs={"splits": outputs})
    return DataResult(stats_doc["splits"], stage.path("stats.json"), skipped=False, totals=stats_doc["totals"])


def stats_document(prepared: Prepared) -> dict[str, Any]:
    """``stats.json``: counts per source, per split (and per domain in each split), and totals."""
    sources = {name: s.as_dict() for name, s in prepared.stats.items()}
    totals = {key: sum(s[key] for s in sources.values()) for key in ("read", "kept", "deduplicated", "emitted")}
    totals["filtered"] = sum(sum(s["filtered"].values()) for s in sources.values())
    totals["rejected"] = sum(sum(s["rejected"].values()) for s in sources.values())
    domains = {
        split: dict(sorted(Counter(r.get("domain") or "(none)" for r in records).items()))
        for split, records in sorted(prepared.splits.items())
    }
    splits = {split: len(records) for split, records in sorted(prepared.splits.items())}
    document = {"totals": totals, "splits": splits, "domains": domains, "sources": sources}
    if prepared.generated:
        document["generated"] = prepared.generated
    return document


def prepare_records(
    data: DataSpec,
    seed: int,
    inputs: list[tuple[list[Path], list[str]]] | None = None,
    count_tokens: TokenCounter | None = None,
    max_tokens: int | None = None,
    show_progress: bool = False,
) -> Prepared:
    """Everything the stage does short of writing files; usable on its own (tests, notebooks).

    Raises:
        DataError: a source names nothing; in strict mode, at the first rejected record (with its file
            and line). (An ``encoding`` that is not a text codec is refused when the spec is validated.)
    """
    inputs = inputs if inputs is not None else [expand_source(spec.path) for spec in data.sources]
    stats: dict[str, SourceStats] = {}
    rejects: list[dict[str, Any]] = []
    pools: dict[str, list[tuple[int, Record]]] = {}
    near = clean.NearDuplicates(data.dedup) if data.dedup.near_threshold is not None else None
    seen: set[str] = set()
    total_bytes = sum(f.stat().st_size for found, _ in inputs for f in files_to_fingerprint(found))
    with _progress(show_progress, total_bytes) as advance, _file_pool(data) as pool:
        for index, (spec, (found, skipped)) in enumerate(zip(data.sources, inputs, strict=True)):
            counts = stats.setdefault(_unique_name(spec.path, stats), SourceStats(skipped_files=skipped))
            candidates: list[Record] = []
            for outcome in _read_files(found, spec, data, pool, advance):
                counts.read += outcome.counts.read
                counts.filtered.update(outcome.counts.filtered)
                counts.rejected.update(outcome.counts.rejected)
                rejects.extend(outcome.rejects)
                for record in outcome.records:  # exact dedup in file order, whoever read the file
                    if data.dedup.exact and record["id"] in seen:
                        counts.exact_duplicates += 1
                        continue
                    seen.add(record["id"])
                    candidates.append(record)
                counts.files[outcome.shown] = outcome.report
            candidates = _drop_long(candidates, counts, count_tokens, max_tokens)
            if near is not None:
                flags = near.find(candidates)
                counts.near_duplicates += sum(flags)
                candidates = [r for r, dup in zip(candidates, flags, strict=True) if not dup]
            counts.kept = len(candidates)
            pools.setdefault(spec.split or "train", []).extend((index, r) for r in candidates)

    splits = _split_and_mix(pools, data, seed)
    names = list(stats)
    for records in splits.values():
        for index, _ in records:
            stats[names[index]].emitted += 1
    prepared = Prepared({name: [r for _, r in records] for name, records in splits.items()}, stats, rejects)
    if data.writes_questions():
        prepared.generated["questions"] = add_document_questions(prepared.splits, data, seed)
    return prepared


def add_document_questions(splits: dict[str, list[Record]], data: DataSpec, seed: int) -> dict[str, Any]:
    """Write ``data.questions.split`` (and its held-out part) into ``splits``; returns the counts.

    Questions that (nearly) repeat a question of an evaluation split -- any split but ``train``, the
    document splits and the generated ones -- are dropped and counted, so no evaluation question is
    ever trained on.
    """
    from lmforge.data.questions import document_questions, drop_eval_overlap

    spec = data.questions
    documents = [r for name in spec.from_splits for r in splits.get(name, [])]
    generated = [
        clean.with_system_prompt(r, data.system_prompts) for r in document_questions(documents, spec.wordings, seed)
    ]
    held_name = f"{spec.split}_test"
    evaluation = [
        r
        for name, records in splits.items()
        if name not in ("train", spec.split, held_name, *spec.from_splits)
        for r in records
    ]
    kept, dropped = drop_eval_overlap(generated, evaluation, spec.overlap_threshold)
    counts: dict[str, Any] = {
        "facts": len({r["meta"]["fact"] for r in generated}),
        "questions": len(generated),
        "dropped_as_evaluation_questions": dropped,
    }
    if spec.held_out > 0:
        sections = sorted({r["meta"]["section"] for r in kept})
        random.Random(f"{seed}:questions:held-out").shuffle(sections)
        held = set(sections[: max(1, round(len(sections) * spec.held_out))]) if len(sections) > 1 else set()
        splits[held_name] = [r for r in kept if r["meta"]["section"] in held]
        kept = [r for r in kept if r["meta"]["section"] not in held]
        counts["held_out"] = {"sections": len(held), "questions": len(splits[held_name]), "split": held_name}
    splits[spec.split] = kept
    counts["split"], counts["written"] = spec.split, len(kept)
    return counts


@dataclass
class FileOutcome:
    """One file read, converted, cleaned and filtered (no dedup: that needs every file, in order)."""

    shown: str
    records: list[Record]
    counts: SourceStats
    """Only ``read``, ``filtered`` and ``rejected`` are counted per file."""
    rejects: list[dict[str, Any]]
    report: dict[str, Any]


def read_file(
    file: Path, shown: str, spec: SourceSpec, data: DataSpec, progress: Callable[[int], None] | None = None
) -> FileOutcome:
    """Everything the data stage does to one file on its own; runs in a worker process with ``data.workers``."""
    counts, rejects, records = SourceStats(), [], []
    report = FileReport(kind="dataset")
    for item in _with_format(read_items(file, shown, spec, data.chunk_chars, report, progress), spec, report):
        report.items += 1
        record = _accept(item, spec, data, counts, rejects, report.format)
        if record is not None:
            records.append(record)
    return FileOutcome(shown, records, counts, rejects, report.as_dict())


@contextlib.contextmanager
def _file_pool(data: DataSpec) -> Iterator[Any]:
    """A pool of ``data.workers`` processes (spawned: the parent may hold torch's threads), or None."""
    if data.workers <= 1 or data.strict:
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(data.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _read_files(
    found: list[Path], spec: SourceSpec, data: DataSpec, pool: Any, advance: Callable[[int], None]
) -> Iterator[FileOutcome]:
    """Each file's :class:`FileOutcome`, in file order (read by ``pool`` when there is one)."""
    shown = [display_path(file, spec.path) for file in found]
    if pool is None:
        for file, name in zip(found, shown, strict=True):
            yield read_file(file, name, spec, data, advance)
        return
    futures = [pool.submit(read_file, file, name, spec, data) for file, name in zip(found, shown, strict=True)]
    for file, future in zip(found, futures, strict=True):
        yield future.result()
        advance(sum(f.stat().st_size for f in files_to_fingerprint([file])))


def _accept(
    item: RawItem, spec: SourceSpec, data: DataSpec, counts: SourceStats, rejects: list[dict[str, Any]], fmt: str | None
) -> Record | None:
    """Convert, clean and filter one item; count it as rejected or filtered, or return the record."""
    counts.read += 1
    try:
        if item.reason:
            raise formats.Rejected(item.reason, item.detail)
        if isinstance(item.value, str) and spec.format not in ("auto", "text"):
            raise formats.Rejected("format mismatch", f"a document section cannot be read as format {spec.format!r}")
        if fmt is None and not isinstance(item.value, str):
            raise formats.unrecognised(item.value)
        record = formats.to_record(item.value, fmt or "text", spec.columns, item.source, spec.domain)
    except formats.Rejected as exc:
        counts.rejected[exc.reason] += 1
        if data.strict:
            where = item.source
            raise DataError(
                f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason,
                path=where.get("path"),
                line=where.get("line") or where.get("row"),
                hint="fix this record, or set data.strict: false to collect rejects in rejects.jsonl",
            ) from None
        rejects.append({"source": item.source, "reason": exc.reason, "detail": exc.detail})
        return None
    record = clean.with_system_prompt(clean.clean_record(record, data.clean), data.system_prompts)
    reason = clean.filter_reason(record, data.filters)
    if reason:
        counts.filtered[reason] += 1
        return None
    return record


def _with_format(items: Any, spec: SourceSpec, report: FileReport) -> Any:
    """The items of one file, after deciding its format (``auto``: detected from its first readable rows)."""
    head: list[RawItem] = []
    values: list[Any] = []
    for item in items:
        head.append(item)
        if item.reason is None:
            values.append(item.value)
        if len(values) >= formats.DETECT_ROWS or len(head) >= 20 * formats.DETECT_ROWS:
            break
    if values and all(isinstance(v, str) for v in values):
        report.format = "text"
    elif spec.columns is not None:
        report.format = "columns"
    elif spec.format != "auto":
        report.format = spec.format
    else:
        report.format = formats.detect_format(values)
    return itertools.chain(head, items)


def _drop_long(
    records: list[Record], counts: SourceStats, count_tokens: TokenCounter | None, max_tokens: int | None
) -> list[Record]:
    if count_tokens is None or max_tokens is None or not records:
        return records
    lengths = count_tokens(records)
    kept = [r for r, n in zip(records, lengths, strict=True) if n <= max_tokens]
    if len(kept) < len(records):
        counts.filtered["too long for the context"] += len(records) - len(kept)
    return kept


def _split_and_mix(pools: dict[str, list[tuple[int, Record]]], data: DataSpec, seed: int) -> dict[str, list[Any]]:
    """Carve val/test from ``train`` (grouped), then apply the mixing weights to ``train`` only."""
    splits = dict(pools)
    if (data.val_fraction or data.test_fraction) and splits.get("train"):
        train, val, test = carve_splits(splits["train"], data.val_fraction, data.test_fraction, data.group_by, seed)
        splits["train"] = train
        for name, part in (("val", val), ("test", test)):
            if part:
                splits.setdefault(name, []).extend(part)
    if "train" in splits:
        groups: dict[tuple[int, str], list[tuple[int, Record]]] = defaultdict(list)
        for index, record in splits["train"]:
            groups[(index, record.get("domain") or "")].append((index, record))
        mixed: list[tuple[int, Record]] = []
        for (index, domain), members in groups.items():
            weight = data.sources[index].weight * data.domain_weights.get(domain, 1.0)
            mixed.extend(apply_weight(members, weight, f"{seed}/{index}/{domain}"))
        splits["train"] = mixed
    return splits


def apply_weight(records: list[Any], weight: float, seed: int | str) -> list[Any]:
    """Repeat records ``int(weight)`` times and add a seeded sample for the fractional part."""
    whole = int(weight)
    extra = round(len(records) * (weight - whole))
    sample = random.Random(seed).sample(records, extra) if extra else []
    return records * whole + sample


def group_key(record: Record, key: str | None) -> str:
    """The value of a dotted key (``meta.fact``) as a string; the record's own id when it has none."""
    if key is None:
        return record["id"]
    value: Any = record
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return "id:" + record["id"]
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def carve_splits(
    items: list[tuple[int, Record]], val_fraction: float, test_fraction: float, group_by: str | None, seed: int
) -> tuple[list[Any], list[Any], list[Any]]:
    """Seeded split into (train, val, test) by whole groups; order inside each part is kept.

    Groups are shuffled and taken until a part reaches its share (at least one group when the share
    is above zero); at least one group always stays in train.
    """
    groups: dict[str, list[int]] = {}
    for position, (_, record) in enumerate(items):
        groups.setdefault(group_key(record, group_by), []).append(position)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    side: dict[int, str] = {}
    next_group = 0
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        if fraction <= 0:
            continue
        target = max(1, round(len(items) * fraction))
        taken = 0
        while taken < target and next_group < len(keys) - 1:
            size = len(groups[keys[next_group]])
            if taken and taken + size - target > target - taken:
                break  # this group would overshoot more than stopping here falls short
            for position in groups[keys[next_group]]:
                side[position] = name
            taken += size
            next_group += 1
    parts: dict[str, list[Any]] = {"train": [], "val": [], "test": []}
    for position, item in enumerate(items):
        parts[side.get(position, "train")].append(item)
    return parts["train"], parts["val"], parts["test"]


def _unique_name(path: str, taken: dict[str, Any]) -> str:
    name, n = path, 1
    while name in taken:
        n += 1
        name = f"{path} ({n})"
    return name


def _token_counter(recipe: Recipe) -> TokenCounter:
    from lmforge.models import load_tokenizer, resolve_model

    folder = resolve_model(recipe.model.ref, recipe.model.revision, recipe.model.trust_remote_code)
    tokenizer = load_tokenizer(folder, trust_remote_code=recipe.model.trust_remote_code)
    return lambda records: clean.token_lengths(tokenizer, records)


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar over the bytes of all inputs; yields the function that advances it."""
    if not enabled or total <= 0:
        yield lambda _: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress("[bold]data[/bold] reading", *columns, transient=True) as bar:
        task = bar.add_task("read", total=total)
        yield lambda count: bar.advance(task, count)


def summary(result: DataResult, seconds: float) -> str:
    """The line the pipeline prints after the stage."""
    splits = ", ".join(f"{name} {count}" for name, count in result.splits.items())
    t = result.totals or {}
    counts = (
        f"read {t['read']}: kept {t['kept']}, duplicates {t['deduplicated']}, filtered {t['filtered']}, "
        f"rejected {t['rejected']}; "
        if t
        else ""
    )
    return f"[green]✔ data[/green]  {counts}splits: {splits}  ({seconds:.0f}s; details in {result.stats_path})"
