"""Stage messages go through logging: `<stage>: ...` on stdout by default, quiet or redirected at will."""

from __future__ import annotations

import contextlib
import io
import logging

from lmforge.log import STAGES_LOGGER, stage_log


def test_stage_messages_print_as_before_and_can_be_quieted_or_captured():
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):  # what the pipeline does to a launched job's followers
        stage_log("sft").info("lora, 6.5M weights trainable")
        stage_log("sft").warning("3 example(s) truncated to 512 tokens")
    assert shown.getvalue() == "sft: lora, 6.5M weights trainable\nsft: warning: 3 example(s) truncated to 512 tokens\n"

    stages, kept = logging.getLogger(STAGES_LOGGER), io.StringIO()
    handler = logging.StreamHandler(kept)
    stages.addHandler(handler)
    stages.setLevel(logging.WARNING)
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):
            stage_log("dpo").info("starts from sft's adapter")
            stage_log("dpo").warning("no pairs left")
    finally:
        stages.removeHandler(handler)
        stages.setLevel(logging.INFO)
    assert quiet.getvalue() == "dpo: warning: no pairs left\n" and kept.getvalue() == "no pairs left\n"
