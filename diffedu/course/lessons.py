"""Generate the student notebooks (lessons/) from the complete ones (solutions/), as nbgrader would.

In a solution notebook, every cell whose metadata marks it as an nbgrader solution cell may hold
regions between `### BEGIN SOLUTION` and `### END SOLUTION`. The student version replaces each region
with `# YOUR CODE HERE` and `raise NotImplementedError()` (in markdown: `YOUR ANSWER HERE`), at the
region's indentation; regions between `### BEGIN HIDDEN TESTS` and `### END HIDDEN TESTS` are removed.
Outputs and execution counts are dropped from both.

    python -m diffedu.course.lessons            # rewrite lessons/ from solutions/
    python -m diffedu.course.lessons --check    # exit 1 if lessons/ is out of date
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
MARKDOWN_STUB = ("YOUR ANSWER HERE",)


class LessonError(ValueError):
    """A solution notebook is malformed (unbalanced markers, markers outside a solution cell)."""


def is_solution_cell(cell: dict) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution", False))


def clear_regions(source: str, begin: str, end: str, stub: tuple[str, ...] | None, where: str) -> str:
    """Replace each begin/end region of `source` by `stub` (indented like the begin line), or drop it."""
    out: list[str] = []
    inside = False
    for line in source.splitlines():
        marker = line.strip()
        if marker == begin:
            if inside:
                raise LessonError(f"{where}: '{begin}' inside another region")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + s for s in (stub or ()))
        elif marker == end:
            if not inside:
                raise LessonError(f"{where}: '{end}' without '{begin}'")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise LessonError(f"{where}: '{begin}' is never closed by '{end}'")
    return "\n".join(out)


def strip_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook without outputs or execution counts."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def make_lesson(solution: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The student version of a solution notebook."""
    nb = strip_outputs(solution)
    for k, cell in enumerate(nb.cells):
        where = f"{name}, cell {k}"
        has_markers = BEGIN_SOLUTION in cell.source
        if has_markers and not is_solution_cell(cell):
            raise LessonError(f"{where} has '{BEGIN_SOLUTION}' but no nbgrader solution metadata")
        if has_markers:
            stub = CODE_STUB if cell.cell_type == "code" else MARKDOWN_STUB
            cell.source = clear_regions(cell.source, BEGIN_SOLUTION, END_SOLUTION, stub, where)
        if BEGIN_HIDDEN in cell.source:
            cell.source = clear_regions(cell.source, BEGIN_HIDDEN, END_HIDDEN, None, where)
        for marker, begin in ((END_SOLUTION, BEGIN_SOLUTION), (END_HIDDEN, BEGIN_HIDDEN)):
            if any(line.strip() == marker for line in cell.source.splitlines()):  # left over: no BEGIN before it
                raise LessonError(f"{where}: '{marker}' without '{begin}' (it would be copied into the student "
                                  f"notebook); remove it or add the '{begin}' line")
    return nb


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """A solution notebook, or one `LessonError` naming the file when it is not a readable notebook."""
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # not JSON, JSON but not a notebook, an invalid cell, an unreadable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LessonError(f"{path} is not a valid Jupyter notebook ({first[:200]}); restore it from git "
                          f"(git checkout -- {path}) or open and re-save it in JupyterLab") from None
    return nb


def notebook_text(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def generate(solutions: Path, lessons: Path, *, check: bool = False) -> list[str]:
    """Write (or with `check`, compare) lessons/ from solutions/; returns the names out of date."""
    stale = []
    sources = sorted(solutions.glob("*.ipynb"))
    if not sources:
        raise LessonError(f"no notebooks in {solutions}")
    expected_names = {p.name for p in sources}
    for path in sources:
        lesson = notebook_text(make_lesson(read_notebook(path), path.name))
        target = lessons / path.name
        if not target.exists() or target.read_text() != lesson:
            stale.append(path.name)
            if not check:
                lessons.mkdir(parents=True, exist_ok=True)
                target.write_text(lesson)
    for extra in sorted(lessons.glob("*.ipynb")):
        if extra.name not in expected_names:
            stale.append(extra.name)
            if not check:
                extra.unlink()
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--solutions", type=Path, default=Path("solutions"))
    parser.add_argument("--lessons", type=Path, default=Path("lessons"))
    parser.add_argument("--check", action="store_true", help="only report notebooks that are out of date")
    args = parser.parse_args(argv)
    try:
        stale = generate(args.solutions, args.lessons, check=args.check)
    except LessonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        for name in stale:
            print(f"lessons/{name} differs from what solutions/{name} generates.")
        if stale:
            print("If you typed answers into lessons/, keep them: work in my-lessons/ (python -m diffedu.course copies "
                  "the lessons there and never overwrites them) and move your answers over first, because "
                  "regenerating (python -m diffedu.course.lessons) overwrites lessons/. If you changed solutions/, "
                  "regenerate.")
        return 1 if stale else 0
    print(f"wrote {len(stale)} lesson(s)" + (f": {', '.join(stale)}" if stale else "; all were up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
