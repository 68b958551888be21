"""How long each lesson takes top to bottom in a profile, after a fresh kernel, as a learner runs it.

Runs solutions/NN_*.ipynb (the filled-in lessons: a learner who has done the exercises) in a new kernel with
DIFFEDU_PROFILE set, in an empty temporary working directory (so no checkpoint of an earlier run in runs/ is
resumed: a lesson that trains, trains), and records the seconds to results/lesson_times.jsonl (metric
`lesson_seconds`, settings: lesson, profile, threads policy, whether DIFFEDU_DATA was set, whether the CPU has
bf16). The executed copy goes to --out-dir, so its pictures can be looked at.

    DIFFEDU_DATA=../shared/data python benchmarks/lesson_times.py --profile cpu 02 05

nbclient normally stands in for the browser's Output widgets: it echoes every picture a widget draws back
to the kernel as a comm message on the shell channel while it waits for the cell's reply, and on this
machine that sometimes loses the reply, so a widget cell waits out the whole timeout with the kernel idle.
A browser does not do this, so the stand-in is switched off here (widget outputs still reach the cell).
Tests never time anything; this script does, and never fails on a number.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import record  # noqa: E402

from diffedu.devices import cpu_has_bf16  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_lesson(path: Path, profile: str, timeout: int, out_dir: Path | None) -> float:
    """Seconds to execute the notebook at `path` top to bottom in a fresh kernel, with DIFFEDU_PROFILE=profile."""
    nb = nbformat.read(path, as_version=4)
    os.environ["DIFFEDU_PROFILE"] = profile
    with tempfile.TemporaryDirectory(prefix="lesson_times_") as workdir:  # a learner's first run: no runs/ checkpoints
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": workdir}})
        client.widget_registry = {}  # no Output-widget stand-in (see the module docstring)
        started = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - started
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / f"{path.stem}_{profile}.ipynb")
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("lessons", nargs="*", help="lesson numbers (02 05 ...); default: all")
    p.add_argument("--profile", default="cpu", choices=("quick", "cpu", "gpu"))
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell before giving up")
    p.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "lesson_times", help="executed copies go here")
    p.add_argument("--no-record", action="store_true", help="print the times without appending them to results/")
    args = p.parse_args(argv)
    paths = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
    if args.lessons:
        wanted = {n.zfill(2) for n in args.lessons}
        paths = [q for q in paths if q.name[:2] in wanted]
        if len(paths) != len(wanted):
            p.error(f"no solution notebook for lesson(s) {sorted(wanted - {q.name[:2] for q in paths})}")
    for path in paths:
        seconds = run_lesson(path, args.profile, args.timeout, args.out_dir)
        settings = {"lesson": path.stem, "threads": os.environ.get("DIFFEDU_THREADS", "policy"),
                    "real_data": bool(os.environ.get("DIFFEDU_DATA")), "notebook": "solutions",
                    "cpu_bf16": cpu_has_bf16()}  # lessons 04 and 06 train in bf16 where the CPU has it
        if args.no_record:
            print(f"{path.stem}: {seconds:.0f} s in {args.profile}")
        else:
            record("lesson_times", "lesson_seconds", seconds, "s", profile=args.profile,
                   device=torch.device("cuda" if args.profile == "gpu" else "cpu"),
                   settings=settings)


if __name__ == "__main__":
    main()
