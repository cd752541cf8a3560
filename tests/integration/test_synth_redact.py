"""A synth teacher URL with credentials in it (``https://user:secret@host/v1``) never shows them.

The teacher points at a port on 127.0.0.1 where nothing listens, so the run fails fast (connection
refused, no retries); the synth stage's manifest, its stats and everything printed must still hold
the URL only in redacted form.
"""

from __future__ import annotations

import json

import pytest
from server_process import free_port

from lmforge.config import load_recipe
from lmforge.errors import StageError
from lmforge.pipeline import run_recipe

pytestmark = pytest.mark.integration

SECRET = "s3cret-pw-91"
API_KEY = "sk-test-key-7731"


def write_recipe(tmp, model_dir, base_url: str) -> object:
    (tmp / "prompts.txt").write_text("".join(f"Question {i}: what is the retirement age?\n" for i in range(3)))
    recipe = tmp / "recipe.yaml"
    recipe.write_text(
        f"""
name: synth-redact
run_dir: {tmp / "runs"}
stages: [data, synth]
model: {{ref: {model_dir}}}
data:
  sources:
    - {{path: prompts.txt, split: prompts, unit: line}}
synth:
  task: answer
  teacher: {{base_url: "{base_url}", model: tiny, max_retries: 0, timeout_s: 5, backoff_s: 0.01,
            api_key_env: LMFORGE_TEST_TEACHER_KEY}}
""",
        encoding="utf-8",
    )
    return load_recipe(recipe)


@pytest.mark.parametrize(
    ("userinfo", "shown"), [(f"alice:{SECRET}", "http://alice:***@127.0.0.1"), (SECRET, "http://***@127.0.0.1")]
)
def test_synth_manifest_and_output_never_hold_url_credentials(
    tiny_model_dir, tmp_path, capfd, monkeypatch, userinfo, shown
):
    monkeypatch.setenv("LMFORGE_TEST_TEACHER_KEY", API_KEY)  # the key itself is never written either
    base_url = f"http://{userinfo}@127.0.0.1:{free_port()}/v1"
    with pytest.raises(StageError) as failure:
        run_recipe(write_recipe(tmp_path, tiny_model_dir, base_url))
    assert SECRET not in str(failure.value)
    stage = tmp_path / "runs" / "synth-redact" / "synth"
    manifest = (stage / "manifest.json").read_text()
    assert SECRET not in manifest
    assert json.loads(manifest)["config"]["synth"]["teacher"]["base_url"].startswith(shown)
    assert SECRET not in (stage / "stats.json").read_text()
    run_files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert not [p for p in run_files if API_KEY.encode() in p.read_bytes() or SECRET.encode() in p.read_bytes()]
    printed = capfd.readouterr()
    assert SECRET not in printed.out + printed.err and API_KEY not in printed.out + printed.err
    assert shown in printed.out  # "synth: answer on 3 prompts records with teacher endpoint:http://alice:***@..."
