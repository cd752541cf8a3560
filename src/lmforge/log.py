"""Stage messages through :mod:`logging`: ``stage_log("sft").info("...")`` prints ``sft: ...`` on stdout.

Every stage says what it does in a few lines (what it starts from, what it trains on, warnings such as
truncated examples). They go to the logger ``lmforge.stage.<stage>``, whose handler writes them as
``<stage>: <message>`` (``<stage>: warning: <message>`` from WARNING up) to the standard output of the
moment, so a launched job's followers, whose stdout the pipeline silences, print nothing. A program
that runs lmforge can quiet the stages (``logging.getLogger("lmforge.stage").setLevel(logging.WARNING)``)
or add its own handlers (a file, a log service) to that logger.
"""

from __future__ import annotations

import logging
import sys

STAGES_LOGGER = "lmforge.stage"


class _StageLines(logging.Handler):
    """``<stage>: <message>`` on the current ``sys.stdout`` (looked up per message, not at import)."""

    def emit(self, record: logging.LogRecord) -> None:
        stage = record.name.rsplit(".", 1)[-1]
        kind = "warning: " if record.levelno >= logging.WARNING else ""
        try:
            sys.stdout.write(f"{stage}: {kind}{record.getMessage()}\n")
            sys.stdout.flush()
        except Exception:  # a closed stream must not stop training
            self.handleError(record)


_stages = logging.getLogger(STAGES_LOGGER)
if not any(isinstance(handler, _StageLines) for handler in _stages.handlers):
    _stages.addHandler(_StageLines())
    _stages.setLevel(logging.INFO)
    _stages.propagate = False


def stage_log(stage: str) -> logging.Logger:
    """The logger of one stage (``cpt``, ``sft``, ``dpo``, ``eval``, ...)."""
    return logging.getLogger(f"{STAGES_LOGGER}.{stage}")
