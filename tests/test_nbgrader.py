"""The instructor's round trip through nbgrader, as the README's "For instructors" describes it.

In a temporary course directory, with every notebook of solutions/ as one assignment:

- `nbgrader generate_assignment` gives student notebooks with the same cells as lessons/ (same blanks);
- `nbgrader autograde` in grading mode (DIFFEDU_GRADING=1) gives full marks to the solutions submitted
  as a student's work, and no marks to a submission of lessons/ with every blank left blank: each graded
  check fails with ExerciseSkipped instead of falling back to the library's reference.

The student "blank" hands in every lesson, so every notebook runs under nbgrader (every cell up to the first
exercise as it would for anyone; after it, the cells that use a blank exercise fail, as they would for a real
student). The student "solver" hands in three solutions, one per kind of check (functions, nn.Modules, a text
encoder and attention). That every solution passes its checks is nbval's job: pytest runs solutions/ in grading
mode too (conftest.py), so a solution that raises NotImplementedError fails there as it would here. What this
leaves out: the other eleven solutions are not run top to bottom in nbgrader's working folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

if not os.environ.get("CI"):  # CI never skips: nbgrader is in the [dev] extra
    pytest.importorskip("nbgrader", reason="nbgrader is not installed (pip install -e \".[dev]\")")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "nbgrader"
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
ASSIGNMENT = "diffedu"
STUDENTS = {"solver": ROOT / "solutions", "blank": ROOT / "lessons", "slipped": ROOT / "lessons"}
# What "solver" hands in (the rest it is scored zero for, as nbgrader does with a missing notebook).
SOLVED = ("01_forward_noising.ipynb", "03_unet.ipynb", "09_text_conditioning.ipynb")
# The student "slipped" hands in one notebook, with one exercise answered wrongly (and the others left blank).
SLIP = ("01_forward_noising.ipynb", "q_sample",
        "def q_sample(x0, t, eps, schedule):\n"
        "    abar = schedule.alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))\n"
        "    return abar.sqrt() * x0 + (1 - abar) * eps\n")

NBGRADER_CONFIG = """\
c = get_config()
c.CourseDirectory.course_id = "diffedu"
c.CourseDirectory.root = {root!r}
c.Execute.timeout = 120  # seconds per cell, as for nbval (nbgrader's default, 30, is short for training)
"""


def nbgrader(course: Path, *args: str, grading: bool = False) -> float:
    """Run `nbgrader ARGS` in `course` as an instructor's shell would; the seconds it took."""
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "DIFFEDU_GRADING")}
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime")):
        env[var] = str(course.parent / "jupyter" / sub)  # no user settings or kernels leak in
    # nbgrader runs the `alembic` command of its environment: put this environment's scripts first on PATH
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update({"DIFFEDU_PROFILE": "quick", "DIFFEDU_OFFLINE": "1"})
    if grading:
        env["DIFFEDU_GRADING"] = "1"
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
    # 1800 s: 33 notebooks in a row beside the other test workers, and nbgrader runs them with nbclient, whose
    # Output-widget stand-in sometimes loses a widget cell's reply, so that cell waits out c.Execute.timeout
    # (see benchmarks/lesson_times.py); one such wait took lesson 02 of a student from 38 s to 163 s.
    took = time.monotonic() - start
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{args[0]}.log").write_text(result.stdout)
    if result.returncode != 0 or "[ERROR]" in result.stdout or "| ERROR]" in result.stdout:
        raise AssertionError(f"nbgrader {' '.join(args)} failed (exit status {result.returncode}):\n{result.stdout[-6000:]}")
    return took


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """A course directory after generate_assignment and autograde of the three students."""
    course = tmp_path_factory.mktemp("nbgrader") / "course"
    (course / "source" / ASSIGNMENT).mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(NBGRADER_CONFIG.format(root=str(course)))
    for path in SOLUTIONS:
        shutil.copy(path, course / "source" / ASSIGNMENT / path.name)
    took = nbgrader(course, "generate_assignment", ASSIGNMENT)
    print(f"generate_assignment: {took:.1f} s")
    for student, folder in STUDENTS.items():
        submitted = course / "submitted" / student / ASSIGNMENT
        submitted.mkdir(parents=True)
        # "slipped" hands in only the notebook with the slip, "solver" three: nbgrader scores the missing ones
        # zero (and CI saves the minutes of executing notebooks that "blank" and nbval already cover)
        handed_in = {"blank": [p.name for p in SOLUTIONS], "solver": SOLVED, "slipped": [SLIP[0]]}[student]
        for name in handed_in:
            shutil.copy(folder / name, submitted / name)
        if student == "slipped":
            lesson, name, wrong = SLIP
            nb = nbformat.read(submitted / lesson, as_version=4)
            next(c for c in nb.cells if f"def {name}(" in c.source and "YOUR CODE HERE" in c.source).source = wrong
            nbformat.write(nb, submitted / lesson)
    took = nbgrader(course, "autograde", ASSIGNMENT, grading=True)
    print(f"autograde of {len(STUDENTS)} students ({len(SOLUTIONS) + len(SOLVED) + 1} notebooks): {took:.1f} s")
    timings = "\n".join(f"{path.relative_to(course / 'autograded')}: {seconds:.1f} s" for path, seconds
                        in execution_times(course / "autograded"))
    (ARTIFACTS / "autograde_times.txt").write_text(timings + "\n")
    print(timings)
    return course


def execution_times(folder: Path) -> list[tuple[Path, float]]:
    """Seconds from the first cell's start to the last cell's reply, for each executed notebook in `folder`."""
    from datetime import datetime

    times = []
    for path in sorted(folder.glob("*/*/*.ipynb")):
        stamps = [c.metadata.get("execution", {}) for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        stamps = [s for s in stamps if "iopub.execute_input" in s and "shell.execute_reply" in s]
        if stamps:
            first, last = (datetime.fromisoformat(x.replace("Z", "+00:00")) for x in
                           (stamps[0]["iopub.execute_input"], stamps[-1]["shell.execute_reply"]))
            times.append((path, (last - first).total_seconds()))
    return times


def scores(course: Path, student: str) -> dict[str, dict[str, tuple[float, float]]]:
    """{notebook: {grade_id: (score, max_score)}} from nbgrader's gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission(ASSIGNMENT, student)
        return {nb.name: {grade.name: (grade.score, grade.max_score) for grade in nb.grades}
                for nb in submission.notebooks}


def cells(path: Path) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in nbformat.read(path, as_version=4).cells]


def test_every_solution_is_an_exercise_notebook():
    graded = [p.name for p in SOLUTIONS if any(c.metadata.get("nbgrader", {}).get("grade")
                                               for c in nbformat.read(p, as_version=4).cells)]
    assert len(SOLUTIONS) >= 3 and len(graded) >= 2, f"graded notebooks: {graded}"


def test_generate_assignment_gives_the_lessons(course):
    released = sorted(p.name for p in (course / "release" / ASSIGNMENT).glob("*.ipynb"))
    assert released == [p.name for p in SOLUTIONS]
    for name in released:
        ours, theirs = cells(ROOT / "lessons" / name), cells(course / "release" / ASSIGNMENT / name)
        assert len(ours) == len(theirs), f"{name}: lessons/ has {len(ours)} cells, nbgrader's release {len(theirs)}"
        for k, (mine, nbgraders) in enumerate(zip(ours, theirs)):
            assert mine == nbgraders, (
                f"{name}, cell {k}: lessons/ and nbgrader's student version differ\n"
                f"--- lessons/ ---\n{mine[1]}\n--- nbgrader ---\n{nbgraders[1]}")


def test_autograde_gives_the_solutions_full_marks(course):
    graded = scores(course, "solver")
    assert sorted(graded) == sorted(p.stem for p in SOLUTIONS), "every notebook is in the gradebook"
    solved = {Path(name).stem for name in SOLVED}
    lost = {f"{nb}/{cell}": f"{score:g} of {top:g}" for nb, grades in graded.items() if nb in solved
            for cell, (score, top) in grades.items() if score != top}
    assert not lost, f"the solutions lost marks: {lost} (see {course}/autograded/solver)"
    kinds = {Path(name).stem: sum(top for _, top in graded[Path(name).stem].values()) for name in SOLVED}
    assert all(kinds.values()), f"each notebook handed in has graded cells: {kinds}"
    # ...and nothing failed on the way: no cell of a handed-in solution shows an error
    for name in SOLVED:
        nb = nbformat.read(course / "autograded" / "solver" / ASSIGNMENT / name, as_version=4)
        errors = [(k, out.ename) for k, cell in enumerate(nb.cells) if cell.cell_type == "code"
                  for out in cell.outputs if out.output_type == "error"]
        assert not errors, f"{name}: cells with errors under nbgrader: {errors}"


def test_autograde_gives_no_marks_for_blanks(course):
    graded = scores(course, "blank")
    assert sorted(graded) == sorted(p.stem for p in SOLUTIONS)
    earned = {f"{nb}/{cell}": score for nb, grades in graded.items() for cell, (score, _) in grades.items() if score}
    assert not earned, f"a submission with every blank left blank earned marks: {earned}"
    # ...and for the right reason: each graded check refused the skipped exercise
    for nb_name in graded:
        nb = nbformat.read(course / "autograded" / "blank" / ASSIGNMENT / f"{nb_name}.ipynb", as_version=4)
        for cell in nb.cells:
            if cell.metadata.get("nbgrader", {}).get("grade"):
                errors = [out.ename for out in cell.outputs if out.output_type == "error"]
                assert errors == ["ExerciseSkipped"], (
                    f"{nb_name}/{cell.metadata.nbgrader.grade_id}: expected ExerciseSkipped, got {errors}\n"
                    + textwrap.shorten(str(cell.outputs), 2000))
                # the grade report shows the check's message itself, as a short box without library frames
                shown = "\n".join(line for out in cell.outputs if out.output_type == "error" for line in out.traceback)
                assert "is not implemented yet" in shown and "File " not in shown and len(shown.splitlines()) <= 8, (
                    f"{nb_name}/{cell.metadata.nbgrader.grade_id}: the feedback shows\n{shown[:1000]}")


def test_autograde_feedback_shows_expected_against_got_for_a_wrong_answer(course):
    lesson, name, _ = SLIP
    graded = scores(course, "slipped")
    nb = nbformat.read(course / "autograded" / "slipped" / ASSIGNMENT / lesson, as_version=4)
    check = next(c for c in nb.cells if f"checks.check_{name}(" in c.source)
    assert graded[Path(lesson).stem][check.metadata.nbgrader.grade_id][0] == 0
    # the notebooks not handed in are in the gradebook, with no marks
    assert sorted(graded) == sorted(p.stem for p in SOLUTIONS)
    assert not any(score for nb, grades in graded.items() if nb != Path(lesson).stem for score, _ in grades.values())
    errors = [out for out in check.outputs if out.output_type == "error"]
    assert [out.ename for out in errors] == ["ExerciseError"]
    shown = "\n".join(line for out in errors for line in out.traceback)
    for part in ("gives the wrong answer on a small case", "expected [", "got      [",
                 "Likely mistake: the noise term lacks its square root"):
        assert part in shown, f"the grade report lacks {part!r}:\n{shown[:1500]}"
    assert "File " not in shown and "lambda" not in shown and len(shown.splitlines()) <= 8
