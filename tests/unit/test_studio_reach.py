"""What the studio's pages may read and write (lmforge.studio.reach)."""

from __future__ import annotations

import pytest

from lmforge.config import shipped_recipe
from lmforge.studio.reach import Reach, ReachError


@pytest.fixture
def reach(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "project").mkdir()
    (tmp_path / "extra").mkdir()
    return Reach.of(tmp_path / "runs", tmp_path / "project" / "r.yaml", [tmp_path / "extra"], remote_code=False)


def test_paths_inside_the_allowed_folders_only(reach, tmp_path):
    assert reach.check(tmp_path / "runs" / "a" / "b.yaml", write=True) == (tmp_path / "runs" / "a" / "b.yaml").resolve()
    assert reach.check(tmp_path / "project" / "other.yaml", write=True)
    assert reach.check(str(tmp_path / "extra" / "data.jsonl"))
    for outside in ["/etc/passwd", tmp_path / "elsewhere.yaml", tmp_path / "runs" / ".." / "x.yaml"]:
        with pytest.raises(ReachError, match="--allow-dir"):
            reach.check(outside)
    (tmp_path / "runs" / "escape").symlink_to("/etc")  # a link inside that points outside is outside
    with pytest.raises(ReachError):
        reach.check(tmp_path / "runs" / "escape" / "passwd")


def test_shipped_recipes_are_readable_not_writable(reach):
    demo = shipped_recipe("demo")
    assert reach.check(demo) == demo.resolve()
    with pytest.raises(ReachError, match="may write"):
        reach.check(demo, write=True)


def test_recipes_may_not_run_remote_code_or_read_outside(reach, tmp_path):
    project = tmp_path / "project"
    with pytest.raises(ReachError, match="--allow-remote-code"):
        reach.check_recipe({"model": {"ref": "x", "trust_remote_code": True}}, project)
    allowed = Reach.of(tmp_path / "runs", None, None, remote_code=True)
    allowed.check_recipe({"model": {"ref": "x", "trust_remote_code": True}}, project)
    reach.check_recipe({"data": {"sources": [{"path": "qa.jsonl"}, {"path": "lmforge://demo/articles"}]}}, project)
    with pytest.raises(ReachError, match="/etc/shadow"):
        reach.check_recipe({"data": {"sources": [{"path": "/etc/shadow"}]}}, project)
    with pytest.raises(ReachError):
        reach.check_recipe({"data": {"sources": [{"path": "../../secret.txt"}]}}, project)
