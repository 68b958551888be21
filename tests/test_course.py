"""The course as a whole: lessons generated from solutions, no stored outputs, consistent set-up files."""

import json
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

from diffedu.course.lessons import LessonError, generate, make_lesson

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
LESSONS = sorted((ROOT / "lessons").glob("*.ipynb"))


def test_lessons_are_generated_from_the_solutions(tmp_path):
    stale = generate(ROOT / "solutions", ROOT / "lessons", check=True)
    assert stale == [], f"lessons/ is out of date for {stale}: run  python -m diffedu.course.lessons"


def test_there_is_a_lesson_for_every_solution():
    assert [p.name for p in SOLUTIONS] == [p.name for p in LESSONS]
    assert len(SOLUTIONS) >= 3


@pytest.mark.parametrize("path", SOLUTIONS + LESSONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebooks_carry_no_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [k for k, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; strip them (python -m diffedu.course.lessons does, for lessons/)"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_notebooks_follow_the_course_rules(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "diffedu.start(" in code[0].source, "the first code cell must print the set-up with diffedu.start()"
    solution_cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    for cell in solution_cells:
        assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids)), "nbgrader grade_ids must be unique within a notebook"
    # every exercise is followed by a graded check
    for k, cell in enumerate(nb.cells):
        if cell in solution_cells:
            following = [c for c in nb.cells[k + 1:] if c.cell_type == "code"][0]
            assert following.metadata.get("nbgrader", {}).get("grade"), f"exercise in cell {k} has no graded check after it"
            assert re.search(r"\bchecks(_[a-z]+)?\.check_", following.source), (
                f"the check after the exercise in cell {k} must call diffedu.course.checks*.check_...")


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lessons_have_blanks_and_no_solutions(path):
    assert "### BEGIN SOLUTION" not in path.read_text()
    lesson = nbformat.read(path, as_version=4)
    solution = nbformat.read(ROOT / "solutions" / path.name, as_version=4)
    blanks = sum(c.source.count("raise NotImplementedError()") for c in lesson.cells if c.cell_type == "code")
    regions = sum(c.source.count("### BEGIN SOLUTION") for c in solution.cells)
    assert blanks == regions


def test_make_lesson_blanks_regions_at_their_indentation():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(
            "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n",
            metadata={"nbgrader": {"solution": True, "grade": False, "grade_id": "f"}}),
        nbformat.v4.new_code_cell("assert f(1) == 2\n### BEGIN HIDDEN TESTS\nassert f(2) == 3\n### END HIDDEN TESTS"),
    ])
    lesson = make_lesson(nb)
    assert lesson.cells[0].source == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    assert lesson.cells[1].source == "assert f(1) == 2"


def test_malformed_markers_are_refused():
    unclosed = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "### BEGIN SOLUTION\nx = 1", metadata={"nbgrader": {"solution": True}})])
    with pytest.raises(LessonError, match="never closed"):
        make_lesson(unclosed)
    unmarked = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")])
    with pytest.raises(LessonError, match="no nbgrader solution metadata"):
        make_lesson(unmarked)


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = set(), set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip |= {_name(r) for r in dep["pip"] if not r.startswith("-e")}
        else:
            conda.add(_name(dep))
    named = (conda | pip) - {"python", "pip"}
    assert named == wanted, f"only in environment.yml: {named - wanted}; only in pyproject.toml: {wanted - named}"
    versions = {_name(r): r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    for dep in [d for d in env["dependencies"] if isinstance(d, str)] + next(d["pip"] for d in env["dependencies"] if isinstance(d, dict)):
        if not dep.startswith("-e") and _name(dep) in versions:
            assert dep.replace(" ", "") == versions[_name(dep)], f"version bounds differ for {dep}"


def test_readme_names_every_lesson_and_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    for path in SOLUTIONS:
        assert path.stem in readme, f"README's course map does not link {path.name}"
    assert "jupyter lab" in readme and "pytest" in readme
