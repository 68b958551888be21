"""The course as a learner sees it: JupyterLab in a real (headless) Chromium.

For every lesson that shows an explorer (a widget from diffedu.course.widgets, e.g. lesson 01's
ForwardNoisingExplorer), the test starts JupyterLab on a copy of lessons/, opens the lesson, runs all
cells from the Run menu, drags the explorer's first slider and checks that the picture changed.
Screenshots of the explorer before and after go to test-artifacts/ (and of the whole page when a step fails).

Needs Playwright for Python and Debian's `chromium` (see tests/browser_helpers.py). Without them the
tests skip, except in CI (CI set), where they fail. Deselect them with  pytest -m "not browser".
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import nbformat
import pytest
from browser_helpers import (
    JupyterLab,
    active_notebook,
    drag_slider,
    find_chromium,
    image_source,
    open_notebook,
    pid_alive,
    prompts,
    run_all_cells,
)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
EXPLORER_CALL = re.compile(r"\b(\w+Explorer)\(")


def lessons_with_explorers() -> list[tuple[str, str]]:
    """(lesson file name, explorer class) for the first explorer that each lesson builds, if any.

    An explorer is a class from diffedu.course.widgets named *Explorer: an ipywidgets VBox whose first slider
    redraws a picture shown in an ipywidgets Output (see diffedu/widgets.py).
    """
    import diffedu.course.widgets

    found = []
    for path in sorted((ROOT / "lessons").glob("*.ipynb")):
        code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        calls = [m.group(1) for source in code for m in EXPLORER_CALL.finditer(source)]
        calls = [name for name in calls if hasattr(diffedu.course.widgets, name)]
        if calls:
            found.append((path.name, calls[0]))
    return found


SKETCH_LESSON = "12_clip_editing.ipynb"  # its explorer has a test of its own, which also draws on its canvas
EXPLORERS = [(lesson, explorer) for lesson, explorer in lessons_with_explorers() if lesson != SKETCH_LESSON]


def test_lesson_01_has_the_forward_noising_explorer():
    assert ("01_forward_noising.ipynb", "ForwardNoisingExplorer") in EXPLORERS


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a copy of lessons/ (running cells must not write outputs into the repository)."""
    for stale in ARTIFACTS.glob("*_failure.png"):  # from an earlier run
        stale.unlink()
    course = tmp_path_factory.mktemp("course")
    shutil.copytree(ROOT / "lessons", course / "lessons")
    server = JupyterLab(course, tmp_path_factory.mktemp("jupyter"))
    try:
        with server:
            yield server
    finally:  # the server is down now, whatever happened; keep its log next to the screenshots
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "jupyterlab.log").write_text(server.log_tail(50_000))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=find_chromium(), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, lab, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        yield page
    finally:
        if getattr(request.node, "call_failed", True):  # set by tests/conftest.py
            ARTIFACTS.mkdir(exist_ok=True)
            name = re.sub(r"[^\w.-]", "_", request.node.name)
            page.screenshot(path=str(ARTIFACTS / f"{name}_failure.png"))
        context.close()
        lab.shutdown_kernels()  # free the lesson's memory before the next one


@pytest.mark.browser
def test_jupyterlab_uses_this_environment_and_serves_the_lessons(lab):
    spec = lab.api("kernelspecs")
    assert spec["default"] == "python3"
    argv0 = spec["kernelspecs"]["python3"]["spec"]["argv"][0]
    # "python" in a kernelspec means the Python that runs the server (jupyter_client's rule)
    assert argv0 in ("python", "python3", sys.executable), f"JupyterLab's python3 kernel runs {argv0}, not {sys.executable}"
    names = {item["name"] for item in lab.api("contents/lessons")["content"]}
    assert {p.name for p in (ROOT / "lessons").glob("*.ipynb")} <= names


@pytest.mark.browser
@pytest.mark.parametrize("lesson, explorer", EXPLORERS, ids=[name.split("_")[0] for name, _ in EXPLORERS])
def test_explorer_redraws_when_its_slider_moves(lab, page, lesson, explorer):
    number = lesson.split("_")[0]
    open_notebook(lab, page, f"lessons/{lesson}")
    took = run_all_cells(page, timeout=240)
    print(f"{lesson}: Run All Cells took {took:.1f} s in the browser")

    cell = active_notebook(page).locator(".jp-CodeCell").filter(has_text=f"{explorer}(").first
    widget = cell.locator(".jp-OutputArea-output .widget-vbox").first
    widget.wait_for(timeout=30_000)
    widget.scroll_into_view_if_needed()
    slider = widget.locator(".widget-slider").first
    readout = slider.locator(".widget-readout").first
    image = widget.locator(".widget-output").first
    before_src, before_value = image_source(image), readout.inner_text().strip()
    ARTIFACTS.mkdir(exist_ok=True)
    widget.screenshot(path=str(ARTIFACTS / f"lesson{number}_explorer_before.png"))

    drag_slider(page, slider, 0.3)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and image_source(image) == before_src:
        time.sleep(0.25)
    after_value = readout.inner_text().strip()
    widget.screenshot(path=str(ARTIFACTS / f"lesson{number}_explorer_after.png"))

    assert after_value != before_value, f"the slider did not move: its readout still says {before_value}"
    assert image_source(image) != before_src, (
        f"the explorer's image did not change after the slider moved from {before_value} to {after_value}")
    assert all(re.fullmatch(r"\[\d+\]:", p) for p in prompts(page))


@pytest.mark.browser
def test_drawing_on_the_canvas_remakes_the_sketch(lab, page):
    """Lesson 12's SketchExplorer (left out of the test above, which would run the lesson a second time): its
    strength slider redraws, and a stroke drawn with the mouse on the canvas reaches the kernel, so the SDEdit
    results are remade from the new sketch."""
    assert (ROOT / "lessons" / SKETCH_LESSON).is_file()
    open_notebook(lab, page, f"lessons/{SKETCH_LESSON}")
    run_all_cells(page, timeout=240)
    cell = active_notebook(page).locator(".jp-CodeCell").filter(has_text="SketchExplorer(").first
    widget = cell.locator(".jp-OutputArea-output .widget-vbox").first
    widget.wait_for(timeout=30_000)
    widget.scroll_into_view_if_needed()
    canvas = widget.locator("canvas").first
    canvas.wait_for(timeout=30_000)
    image = widget.locator(".widget-output").first
    ARTIFACTS.mkdir(exist_ok=True)
    widget.screenshot(path=str(ARTIFACTS / "lesson12_explorer_before.png"))
    before = image_source(image)
    drag_slider(page, widget.locator(".widget-slider").first, 0.3)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and image_source(image) == before:
        time.sleep(0.25)
    assert image_source(image) != before, "moving the strength slider did not redraw the SDEdit results"
    before = image_source(image)
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.5 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.8 * box["width"], box["y"] + 0.55 * box["height"], steps=15)
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.9 * box["height"], steps=15)
    page.mouse.up()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and image_source(image) == before:
        time.sleep(0.25)
    widget.screenshot(path=str(ARTIFACTS / "lesson12_drawing_after.png"))
    assert image_source(image) != before, "drawing on the canvas did not redraw the SDEdit results"


def test_jupyterlab_is_shut_down_when_a_step_fails(tmp_path):
    """The server and its kernels go away even when the test body raises (no Chromium needed)."""
    (tmp_path / "course").mkdir()
    lab = JupyterLab(tmp_path / "course", tmp_path / "jupyter")
    with pytest.raises(RuntimeError, match="a step failed"):
        with lab:
            lab.api("kernels", method="POST")  # a kernel, as a notebook would start
            group = lab.process.pid
            raise RuntimeError("a step failed")
    assert lab.process is None
    if Path("/proc").is_dir():  # Linux: the helper finds the server's kernels through /proc
        assert lab.stopped_children, "the kernel should have been a child of the server"
    assert not [pid for pid in lab.stopped_children if pid_alive(pid)], "a kernel outlived the server"
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)  # nothing of the server's process group is left
    with socket.create_server(("127.0.0.1", lab.port)):  # and its port is free again
        pass


# ---------------------------------------------------------------------------------------------- exercise feedback

WRONG = {  # a likely slip in each exercise: the check should name it, and show nothing of its own code
    "q_sample": ("def q_sample(x0, t, eps, schedule):\n"
                 "    abar = schedule.alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))\n"
                 "    return abar.sqrt() * x0 + (1 - abar) * eps\n"),
    "ddpm_step": ("def ddpm_step(x_t, t, eps, schedule, noise):\n"
                  "    beta, alpha, abar = schedule.betas[t], schedule.alphas[t], schedule.alphas_cumprod[t]\n"
                  "    x_prev = (x_t + beta / (1 - abar).sqrt() * eps) / alpha.sqrt()\n"
                  "    return x_prev + beta.sqrt() * noise if t > 0 else x_prev\n"),
}
FEEDBACK = [("01_forward_noising.ipynb", "q_sample", "the noise term lacks its square root"),
            ("02_ddpm_loss.ipynb", "ddpm_step", "a sign: the predicted noise is subtracted")]


def solution_source(lesson: str, name: str) -> str:
    """The exercise cell of the solution, without the nbgrader markers: a right answer."""
    cells = nbformat.read(ROOT / "solutions" / lesson, as_version=4).cells
    source = next(c.source for c in cells if f"def {name}(" in c.source and "### BEGIN SOLUTION" in c.source)
    return "\n".join(line for line in source.splitlines() if "### " not in line)


def check_output(page, name: str, marker: str, timeout: float = 240) -> str:
    """Run all cells and return the text under the exercise's check cell once it shows `marker`."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    cell = active_notebook(page).locator(".jp-CodeCell").filter(has_text=f"checks.check_{name}(").first
    output = cell.locator(".jp-OutputArea").first
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = output.inner_text() if output.count() else ""
        if marker in text:
            cell.scroll_into_view_if_needed()
            return text
        time.sleep(0.5)
    raise AssertionError(f"the check of {name} never showed {marker!r}; its output: {text[-2000:]!r}")


@pytest.mark.browser
@pytest.mark.parametrize("lesson, name, mistake", FEEDBACK, ids=[f[0].split("_")[0] for f in FEEDBACK])
def test_exercise_feedback_as_a_learner_sees_it(lab, page, lesson, name, mistake):
    """Skipped, wrong (typed into the cell, as a learner does), then right: each answer's check output, with a
    screenshot; the wrong one is a short box that names the mistake and shows no line of the check's code."""
    number = lesson.split("_")[0]
    check_source = (ROOT / "diffedu" / "course" / "checks" / f"lesson{number}.py").read_text()
    code_lines = {line.strip() for line in check_source.splitlines() if len(line.strip()) > 25}
    ARTIFACTS.mkdir(exist_ok=True)
    for variant in ("skipped", "wrong", "right"):
        nb = nbformat.read(ROOT / "lessons" / lesson, as_version=4)
        exercise = next(c for c in nb.cells if f"def {name}(" in c.source and "YOUR CODE HERE" in c.source)
        if variant == "right":
            exercise.source = solution_source(lesson, name)
        path = lab.root / "feedback" / f"{variant}_{lesson}"
        path.parent.mkdir(exist_ok=True)
        nbformat.write(nb, path)
        open_notebook(lab, page, f"feedback/{path.name}")
        if variant == "wrong":  # typed into the exercise cell, replacing the blank
            editor = active_notebook(page).locator(".jp-CodeCell").filter(has_text=f"def {name}(").first
            editor.locator(".cm-content").first.click()
            page.keyboard.press("Control+A")
            page.keyboard.insert_text(WRONG[name])
        marker = {"skipped": "you skipped this exercise", "wrong": "ExerciseError", "right": "is correct"}[variant]
        text = check_output(page, name, marker)
        cell = active_notebook(page).locator(".jp-CodeCell").filter(has_text=f"checks.check_{name}(").first
        cell.screenshot(path=str(ARTIFACTS / f"lesson{number}_check_{variant}.png"))
        if variant == "wrong":
            assert f"Likely mistake: {mistake}" in text and "expected" in text and "got" in text
            assert "Traceback" not in text and "File " not in text
            shown = [line for line in code_lines if line in text]
            assert not shown, f"the feedback shows the check's code: {shown[:3]}"
            assert len(text.splitlines()) <= 8, f"the feedback is not short:\n{text}"
        elif variant == "right":
            assert f"✓ {name} is correct" in text and "ExerciseError" not in text
        else:
            assert f"⏭ {name} still raises NotImplementedError" in text and "ExerciseError" not in text
        lab.shutdown_kernels()
