"""Your own copy of the lessons, and the command that opens the course: ``python -m diffedu.course``.

The notebooks in ``lessons/`` are tracked by git and regenerated from ``solutions/``; answers typed into
them would show up in ``git status``, conflict on ``git pull`` and be lost to a regeneration. So the course
is worked in ``my-lessons/``, a folder git ignores: ``python -m diffedu.course`` copies each lesson there the
first time (it never overwrites a copy, so your answers stay), then starts JupyterLab at the top of the
repository with lesson 00 open, where ``my-lessons/``, ``lessons/`` and ``solutions/`` can all be reached.

    python -m diffedu.course              # copy what is missing into my-lessons/, open JupyterLab
    python -m diffedu.course --no-lab     # only the copies
    python -m diffedu.course -- --port 9999   # anything after -- goes to jupyter lab
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

WORKSPACE = "my-lessons"
FIRST = "00_welcome.ipynb"


def course_root(start: Path | None = None) -> Path:
    """The repository: the folder (this one or above) that holds both lessons/ and solutions/."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "lessons").is_dir() and (folder / "solutions").is_dir():
            return folder
    raise FileNotFoundError(f"no lessons/ and solutions/ in {here} or above it: run this from the course's clone "
                            f"(the folder with README.md, lessons/ and solutions/)")


def make_workspace(root: Path) -> tuple[list[str], list[str]]:
    """Copy each lesson that ``my-lessons/`` lacks; returns (copied, kept) file names. Never overwrites."""
    lessons, mine = root / "lessons", root / WORKSPACE
    mine.mkdir(exist_ok=True)
    copied, kept = [], []
    for lesson in sorted(lessons.glob("*.ipynb")):
        target = mine / lesson.name
        if target.exists():
            kept.append(lesson.name)
            continue
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(lesson, tmp)
        os.replace(tmp, target)  # all or nothing: a half-copied notebook would not open
        copied.append(lesson.name)
    return copied, kept


def changed_upstream(root: Path, names: list[str]) -> list[str]:
    """Of the kept copies, those whose lesson in lessons/ is newer than the copy and differs from it."""
    out = []
    for name in names:
        lesson, copy = root / "lessons" / name, root / WORKSPACE / name
        if lesson.stat().st_mtime > copy.stat().st_mtime and not filecmp.cmp(lesson, copy, shallow=False):
            out.append(name)
    return out


def lab_command(root: Path, extra: list[str]) -> list[str]:
    """``jupyter lab`` serving the whole repository (so solutions/ is reachable) with lesson 00 open."""
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}", f"{WORKSPACE}/{FIRST}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in extra:
        command.append("--allow-root")  # JupyterLab refuses root without it (containers often run as root)
    return command + extra


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m diffedu.course", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-lab", action="store_true", help="make the copies in my-lessons/ and stop")
    args = parser.parse_args(own)
    try:
        root = course_root()
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    copied, kept = make_workspace(root)
    print(f"{WORKSPACE}/: your copies of the lessons (git ignores this folder; answer the exercises here). "
          + (f"Copied {len(copied)} new lesson(s)" if copied else "Nothing new to copy")
          + (f"; kept your {len(kept)} existing copies" if kept else "") + ".")
    for name in changed_upstream(root, kept):
        print(f"  lessons/{name} has changed since you copied it; your copy is kept. To start that lesson afresh, "
              f"rename {WORKSPACE}/{name} and run this command again.")
    if args.no_lab:
        return 0
    command = lab_command(root, extra)
    if "--allow-root" in command and "--allow-root" not in extra:
        print("running as root (a container?): starting JupyterLab with --allow-root")
    print(" ".join(command[1:]).replace("-m jupyterlab", "jupyter lab", 1))
    if os.name == "posix":  # become JupyterLab: Ctrl-C reaches it alone, and it asks before shutting down
        os.chdir(root)
        os.execv(sys.executable, command)
    return subprocess.call(command, cwd=root)
