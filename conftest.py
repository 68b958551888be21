"""Test-wide settings: notebooks and tests run in the `quick` profile, offline, without grading mode."""

import os

os.environ["DIFFEDU_PROFILE"] = "quick"
os.environ["DIFFEDU_OFFLINE"] = "1"
os.environ.pop("DIFFEDU_GRADING", None)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(session, config, items):
    """The nbgrader round trip (one long fixture, about 11 minutes on 2 cores) goes first: with ``--dist loadfile``
    one worker runs it while the other runs everything else, instead of finishing alone at the end."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/test_nbgrader.py") else 1)
