"""Shared by the tests in tests/: the `browser` marker's rule (skip without Chromium, but never in CI)."""

import os

import pytest
from browser_helpers import missing_browser_tools


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("browser") is None:
        return
    missing = missing_browser_tools()
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests must run in CI, but {missing}. .ci/run installs Debian's chromium "
                    "package when it is missing; check that step.", pytrace=False)
    pytest.skip(f"browser test skipped: {missing}. Install it to run JupyterLab in a real browser, or "
                "deselect these tests with  -m 'not browser'.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Record on the item whether its test body failed (the browser tests screenshot the page then)."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.call_failed = report.failed
