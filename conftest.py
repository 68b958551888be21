"""Test-wide settings: notebooks and tests run in the `quick` profile, offline, without grading mode, except the
notebooks of solutions/, which nbval runs in grading mode (see pytest_runtest_setup)."""

import os
from pathlib import Path

import pytest

os.environ["DIFFEDU_PROFILE"] = "quick"
os.environ["DIFFEDU_OFFLINE"] = "1"
os.environ.pop("DIFFEDU_GRADING", None)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Grading mode on for the notebooks of solutions/ (before nbval starts their kernel), off for everything else.

    Without it, a solution whose exercise raises NotImplementedError (a `raise` left in, or a torch operation
    without a kernel on this machine) would pass as a skipped exercise that falls back to the library's reference;
    in grading mode its check fails. lessons/ still runs with the fallback, as a learner's blank notebook does.
    """
    if Path(str(item.fspath)).parent.name == "solutions" and Path(str(item.fspath)).suffix == ".ipynb":
        os.environ["DIFFEDU_GRADING"] = "1"
    else:
        os.environ.pop("DIFFEDU_GRADING", None)


# The slowest test modules, started first: pytest-xdist hands out whole files (--dist loadfile) in collection order
# (--no-loadscope-reorder), and a long module handed out last would run alone while the other worker sits idle.
FIRST = ("tests/test_nbgrader.py", "tests/test_browser.py")
ROOT = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = Path(str(item.fspath)).resolve()
        name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
        return FIRST.index(name) if name in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: everything else keeps its order
