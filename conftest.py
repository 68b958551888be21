"""Test-wide settings: notebooks and tests run in the `quick` profile, offline, without grading mode."""

import os

os.environ["DIFFEDU_PROFILE"] = "quick"
os.environ["DIFFEDU_OFFLINE"] = "1"
os.environ.pop("DIFFEDU_GRADING", None)
os.environ.setdefault("OMP_NUM_THREADS", "1")
