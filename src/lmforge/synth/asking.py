"""Asking a teacher: the request cache, the progress bar and the batching of a local teacher, for every user.

The synth stage asks its teacher through :class:`Asker`; so does the dpo stage's pair builder when a
judge ranks the candidate answers (:func:`judge_answers`, synth's ``judge`` template and parser). An
endpoint teacher is asked by the leader alone (it holds the cache) and the others receive its replies;
a local teacher answers on every process, each generating a share.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from lmforge.config import TeacherSpec
from lmforge.distributed import is_leader, leader_decides
from lmforge.errors import StageError
from lmforge.synth import tasks
from lmforge.synth.teacher import Counters, EndpointTeacher, LocalTeacher, Reply, RequestCache, Teacher


def open_teacher(spec: TeacherSpec, base_ref: str) -> Teacher:
    """The teacher ``spec`` describes; a local teacher's model ``base`` is ``base_ref`` (the recipe's model)."""
    if spec.kind == "local":
        return LocalTeacher(spec, spec.model if spec.model != "base" else base_ref)
    return EndpointTeacher(spec)


class Asker:
    """Sends requests through the cache to the teacher and keeps the progress bar current."""

    def __init__(self, spec: TeacherSpec, teacher: Teacher, cache: RequestCache | None, progress: Any):
        self.spec = spec
        self.teacher = teacher
        self.cache = cache
        self.progress = progress
        self.counters = Counters()
        self.started = time.monotonic()

    async def ask(self, messages: list[dict[str, str]], want_json: bool, task_id: Any) -> Reply:
        params = {"temperature": self.spec.temperature, "max_tokens": self.spec.max_tokens}
        key = RequestCache.key(self.teacher.identity, messages, params)
        assert self.cache is not None  # an endpoint teacher is asked by the leader alone, which has it
        reply = self.cache.get(key)
        if reply is not None:
            self.counters.cached += 1
        else:
            reply = await self.teacher.complete(messages, want_json, self.counters)
            if reply.text is not None:
                self.cache.put(key, reply)
                self.counters.sent += 1
                self.counters.prompt_tokens += reply.prompt_tokens
                self.counters.completion_tokens += reply.completion_tokens
            elif reply.retryable:
                self.counters.failed += 1
        self._show(task_id)
        return reply

    def _show(self, task_id: Any) -> None:
        c = self.counters
        rate = c.sent / max(time.monotonic() - self.started, 1e-9)
        self.progress.update(
            task_id, advance=1, rate=f"{rate:.1f}", failed=c.failed, retries=c.retries, cached=c.cached
        )

    async def phase(self, name: str, jobs: list[list[dict[str, str]]], want_json: bool) -> list[Reply]:
        task_id = self.progress.add_task(name, total=len(jobs), rate="0.0", failed=0, retries=0, cached=0)
        if isinstance(self.teacher, LocalTeacher):
            return await asyncio.to_thread(self._local_phase, jobs, task_id)
        return await asyncio.gather(*(self.ask(messages, want_json, task_id) for messages in jobs))

    def _local_phase(self, jobs: list[list[dict[str, str]]], task_id: Any) -> list[Reply]:
        """A local teacher answers a phase's uncached requests in one batched pass.

        Under a launcher every process runs this together: the leader (which alone holds the cache)
        says which requests are cached, each process generates a share of the others, and every
        process ends with every reply, so the next phase's requests are the same everywhere.
        """
        assert isinstance(self.teacher, LocalTeacher)
        params = {"temperature": self.spec.temperature, "max_tokens": self.spec.max_tokens}
        keys = [RequestCache.key(self.teacher.identity, messages, params) for messages in jobs]
        replies: list[Reply | None] = leader_decides(
            [self.cache.get(key) for key in keys] if self.cache is not None else None
        )
        todo = [i for i, reply in enumerate(replies) if reply is None]
        self.counters.cached += len(jobs) - len(todo)
        self.progress.update(task_id, advance=len(jobs) - len(todo), cached=self.counters.cached)
        started = time.monotonic()
        done = 0

        def on_batch(n: int) -> None:  # this process's batches (its share under a launcher)
            nonlocal done
            done += n
            rate = f"{done / max(time.monotonic() - started, 1e-9):.1f}"
            self.progress.update(task_id, advance=n, rate=rate)

        for index, reply in zip(todo, self.teacher.answer_all([jobs[i] for i in todo], on_batch), strict=True):
            replies[index] = reply
            if reply.text is None:
                self.counters.failed += 1
                continue
            if self.cache is not None:
                self.cache.put(keys[index], reply)
            self.counters.sent += 1
        self.progress.update(task_id, completed=len(jobs), cached=self.counters.cached, failed=self.counters.failed)
        return [reply for reply in replies if reply is not None]


def progress_bar() -> Any:
    """The requests' progress bar: done/total, requests per second, time left, cached/failed/retried."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} req/s"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[cached]} cached, {task.fields[failed]} failed, {task.fields[retries]} retries"),
    )


def judge_messages(templates: dict[str, str], reference: str, question: str, answer: str) -> list[dict[str, str]]:
    """The request that asks a judge how faithful ``answer`` is to ``reference`` (synth's ``judge`` template)."""
    content = tasks.render(templates, "judge", chunk=reference, question=question, answer=answer)
    return [{"role": "user", "content": content}]


def judge_answers(
    spec: TeacherSpec,
    base_ref: str,
    cache_path: Path,
    cases: list[tuple[str, str, str]],
    templates: dict[str, str] | None = None,
) -> list[tuple[int | None, str]]:
    """Scores from 1 to 5 for ``(reference, question, answer)`` cases, by the judge teacher ``spec``.

    Replies are kept in the cache at ``cache_path`` (a rerun asks nothing twice). Under a launcher every
    process calls this and receives every score.

    Returns:
        Per case, ``(score, reason)``, or ``(None, why)`` when the judge gave no usable reply.

    Raises:
        StageError: requests still failing after their retries (rerun to carry on from the cache).
    """
    jobs = [judge_messages(templates or {}, *case) for case in cases]
    local = spec.kind == "local"
    outcome: list[tuple[int | None, str]] | str | None = None
    if local or is_leader():
        outcome = _judge_here(spec, base_ref, cache_path, jobs)
    if not local:
        outcome = leader_decides(outcome)
    if isinstance(outcome, str):
        raise StageError(outcome)
    assert outcome is not None
    return outcome


def _judge_here(
    spec: TeacherSpec, base_ref: str, cache_path: Path, jobs: list[list[dict[str, str]]]
) -> list[tuple[int | None, str]] | str:
    """The judge's scores, or why the requests failed."""
    teacher = open_teacher(spec, base_ref)
    cache = RequestCache(cache_path) if is_leader() else None

    async def ask_all() -> tuple[list[Reply], Counters]:
        with progress_bar() as progress:
            asker = Asker(spec, teacher, cache, progress)
            try:
                return await asker.phase(f"judge ({teacher.identity})", jobs, want_json=True), asker.counters
            finally:
                await teacher.close()

    try:
        replies, counters = asyncio.run(ask_all())
    finally:
        if cache is not None:
            cache.close()
    if counters.failed:
        return (
            f"the judge {teacher.identity}: {counters.failed} request(s) failed after {spec.max_retries} retries "
            f"({dict(counters.errors)}); the replies so far are cached in {cache_path}: rerun to carry on"
        )
    scores: list[tuple[int | None, str]] = []
    for reply in replies:
        if reply.text is None:
            scores.append((None, reply.error or "no reply"))
            continue
        try:
            scores.append(tasks.parse_judge(reply.text))
        except ValueError as exc:
            scores.append((None, f"unusable judge reply: {exc}"))
    return scores
