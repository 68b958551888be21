"""python -m diffedu.course: the learner's own copies in my-lessons/ (ignored by git), and how JupyterLab starts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffedu.course import workspace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clone(tmp_path):
    for folder in ("lessons", "solutions"):
        (tmp_path / folder).mkdir()
    for name in ("00_welcome.ipynb", "01_forward_noising.ipynb"):
        (tmp_path / "lessons" / name).write_text(f'{{"lesson": "{name}"}}')
    return tmp_path


def test_the_copies_are_made_once_and_never_overwritten(clone):
    copied, kept = workspace.make_workspace(clone)
    assert copied == ["00_welcome.ipynb", "01_forward_noising.ipynb"] and kept == []
    mine = clone / "my-lessons" / "01_forward_noising.ipynb"
    mine.write_text("my answers")
    (clone / "lessons" / "02_ddpm_loss.ipynb").write_text("{}")  # a new lesson arrives with git pull
    copied, kept = workspace.make_workspace(clone)
    assert copied == ["02_ddpm_loss.ipynb"] and "01_forward_noising.ipynb" in kept
    assert mine.read_text() == "my answers"
    assert not list((clone / "my-lessons").glob(".*.tmp"))


def test_a_lesson_changed_upstream_is_reported_not_copied(clone, capsys, monkeypatch):
    workspace.make_workspace(clone)
    lesson = clone / "lessons" / "00_welcome.ipynb"
    lesson.write_text('{"lesson": "improved"}')
    os.utime(lesson, (lesson.stat().st_mtime + 10,) * 2)
    monkeypatch.chdir(clone)
    assert workspace.main(["--no-lab"]) == 0
    out = capsys.readouterr().out
    assert "lessons/00_welcome.ipynb has changed since you copied it; your copy is kept" in out
    assert (clone / "my-lessons" / "00_welcome.ipynb").read_text() == '{"lesson": "00_welcome.ipynb"}'


def test_jupyterlab_serves_the_whole_clone_and_opens_lesson_00(clone, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    command = workspace.lab_command(clone, ["--port", "9999"])
    assert command[:3] == [sys.executable, "-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={clone}" in command and "my-lessons/00_welcome.ipynb" in command
    assert command[-2:] == ["--port", "9999"] and "--allow-root" not in command
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # a container running as root
    assert "--allow-root" in workspace.lab_command(clone, [])


def test_outside_a_clone_it_says_where_to_run_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert workspace.main(["--no-lab"]) == 2
    assert "run this from the course's clone" in capsys.readouterr().err


def test_git_ignores_the_copies():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git clone")
    done = subprocess.run(["git", "check-ignore", "-q", "my-lessons/00_welcome.ipynb"], cwd=ROOT)
    assert done.returncode == 0, "my-lessons/ is not ignored by git"
