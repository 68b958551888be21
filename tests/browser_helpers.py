"""Helpers for the browser tests: a throw-away JupyterLab server and the headless Chromium that drives it.

The server runs from this Python environment (`python -m jupyterlab`, so its kernel is this environment's
ipykernel), on a free loopback port with a random token, with fresh Jupyter config, data, runtime,
settings and workspace folders so that no user setting leaks in, and `DIFFEDU_PROFILE=quick`. Stopping
it asks the server to shut down and then ends its whole process group.

Chromium is Debian's `chromium` package (Playwright's own browser downloads need a CDN), launched through
Playwright's `executable_path`. Set `DIFFEDU_CHROMIUM` to use another Chromium binary.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# JupyterLab settings for a clean, predictable session: no news or update toasts, no autosave, the
# notebook's own kernel started without asking, and every cell kept in the page (no windowing) so that
# the tests can read all prompts and outputs.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True, "windowingMode": "none"},
}
NBGRADER_SERVER_EXTENSIONS = [
    f"nbgrader.server_extensions.{name}" for name in ("formgrader", "validate_assignment", "assignment_list", "course_list")
]


def find_chromium() -> str | None:
    """The Chromium binary to drive: $DIFFEDU_CHROMIUM, else `chromium` (Debian) or `chromium-browser` on PATH."""
    explicit = os.environ.get("DIFFEDU_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def missing_browser_tools() -> str | None:
    """Why the browser tests cannot run here (None when Playwright and Chromium are both present)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e \".[dev]\")"
    if find_chromium() is None:
        return ("no Chromium found: install Debian's package (apt-get install chromium) or set DIFFEDU_CHROMIUM "
                "to a Chromium binary")
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc; an empty list elsewhere)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JupyterLab:
    """A JupyterLab server serving `root`, with all its state under `workdir`; use it as a context manager."""

    def __init__(self, root: Path, workdir: Path, *, env: dict[str, str] | None = None, start_timeout: float = 90) -> None:
        self.root = Path(root)
        self.workdir = Path(workdir)
        self.extra_env = env or {}
        self.start_timeout = start_timeout
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.log_path = self.workdir / "jupyterlab.log"
        self.process: subprocess.Popen | None = None
        self.stopped_children: list[int] = []
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """The address of `path` (e.g. 'lab/tree/x.ipynb') with the token, as a learner's browser opens it."""
        return f"{self.base_url}/{path.lstrip('/')}?token={self.token}"

    def api(self, path: str, method: str = "GET") -> object:
        """Call the server's REST API with the token; the decoded JSON answer (None for an empty one)."""
        request = urllib.request.Request(f"{self.base_url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_TOKEN", "DIFFEDU_GRADING"):
            env.pop(var, None)
        dirs = {
            "JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data", "JUPYTER_RUNTIME_DIR": "runtime",
            "JUPYTERLAB_SETTINGS_DIR": "settings", "JUPYTERLAB_WORKSPACES_DIR": "workspaces", "IPYTHONDIR": "ipython",
        }
        for var, sub in dirs.items():
            path = self.workdir / sub
            path.mkdir(parents=True, exist_ok=True)
            env[var] = str(path)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.update({"DIFFEDU_PROFILE": "quick", "DIFFEDU_OFFLINE": "1", "JUPYTER_PLATFORM_DIRS": "1"})
        env.update(self.extra_env)
        return env

    def _write_settings(self, env: dict[str, str]) -> None:
        config_dir = Path(env["JUPYTER_CONFIG_DIR"])
        # a learner's JupyterLab: no instructor tools (nbgrader), no news, no update check
        server = {
            "ServerApp": {"jpserver_extensions": {ext: False for ext in NBGRADER_SERVER_EXTENSIONS}},
            "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"},
        }
        (config_dir / "jupyter_server_config.json").write_text(json.dumps(server))
        (config_dir / "labconfig").mkdir(exist_ok=True)
        page = {"disabledExtensions": {"@jupyter/nbgrader": True}}
        (config_dir / "labconfig" / "page_config.json").write_text(json.dumps(page))
        for name, values in LAB_SETTINGS.items():
            path = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))

    def start(self) -> "JupyterLab":
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = self._environment()
        self._write_settings(env)
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
            "--ServerApp.allow_root=True",  # CI runs as root
        ]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with status {self.process.returncode} before it served:\n"
                                   f"{self.log_tail()}")
            try:
                self.api("status")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer on port {self.port} within {self.start_timeout:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.3)

    def stop(self, timeout: float = 15) -> None:
        """Shut the server down (REST call), then end its process group; safe to call more than once."""
        process, self.process = self.process, None
        kernels = child_pids(process.pid) if process is not None else []  # kernels run in sessions of their own
        if process is not None and process.poll() is None:
            try:
                self.api("shutdown", method="POST")
            except Exception:  # noqa: BLE001 (a dead or stuck server is ended below)
                pass
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(process.pid, sig)  # the server and any kernel it left behind
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    process.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for pid in kernels:  # normally gone already (the server shuts its kernels down)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if not pid_alive(pid):
                    break
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                for _ in range(20):
                    if not pid_alive(pid):
                        break
                    time.sleep(0.1)
        self.stopped_children = kernels
        if self._log is not None:
            self._log.close()
            self._log = None

    def shutdown_kernels(self) -> None:
        """End every session and its kernel (what closing and shutting down a notebook does)."""
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def __enter__(self) -> "JupyterLab":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# Driving a notebook in JupyterLab with Playwright (sync API); `page` is a playwright Page.
# ---------------------------------------------------------------------------------------------

TRACEBACK = "Traceback (most recent call last)"


ACTIVE_NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook in the current tab


def active_notebook(page):
    """The notebook panel of the current tab (others may be open, hidden, from the saved workspace)."""
    return page.locator(ACTIVE_NOTEBOOK).first


def open_notebook(lab: JupyterLab, page, path: str, timeout: float = 90) -> None:
    """Open `path` (relative to the server's root) alone, and wait until its kernel is up and idle."""
    page.goto(lab.url(f"lab/tree/{path}") + "&reset")  # reset: no tabs restored from an earlier page
    page.locator(f"{ACTIVE_NOTEBOOK} .jp-Notebook").first.wait_for(timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog")
        if dialog.count() and "Select Kernel" in dialog.first.inner_text():
            dialog.locator(".jp-mod-accept").first.click()  # what a learner does: keep Python 3 (ipykernel)
        sessions = [s for s in lab.api("sessions") if s.get("path") == path]
        if sessions and sessions[0]["kernel"]["execution_state"] == "idle" and kernel_status(page) == "idle":
            return
        time.sleep(0.5)
    raise AssertionError(f"the kernel of {path} did not start within {timeout:.0f} s")


def kernel_status(page) -> str | None:
    return active_notebook(page).locator(".jp-Notebook-ExecutionIndicator").first.get_attribute("data-status")


def prompts(page) -> list[str]:
    """The input prompts of all code cells, e.g. ['[1]:', '[*]:', '[ ]:']."""
    return [p.strip() for p in active_notebook(page).locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]


def outputs_with_errors(page) -> list[str]:
    """The text of every output that shows a Python traceback."""
    texts = active_notebook(page).locator(".jp-OutputArea-output").all_inner_texts()
    return [t for t in texts if TRACEBACK in t]


def run_all_cells(page, timeout: float = 300) -> float:
    """Run > Run All Cells from the menu, wait until every code cell has run; the seconds it took.

    Fails with the traceback as soon as a cell raises, or when the notebook stops with cells left unrun.
    """
    start = time.monotonic()
    for _ in range(3):  # the menu click can land while the kernel is still settling: retry it
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        wait_until = time.monotonic() + 15
        while time.monotonic() < wait_until and all(p in ("[ ]:", "") for p in prompts(page)):
            time.sleep(0.25)
        if not all(p in ("[ ]:", "") for p in prompts(page)):
            break
    else:
        raise AssertionError("Run > Run All Cells did not start any cell (three tries)")
    deadline = start + timeout
    idle_with_unrun_since = None
    while True:
        errors = outputs_with_errors(page)
        if errors:
            raise AssertionError(f"a cell failed in the browser:\n{errors[0][-3000:]}")
        current = prompts(page)
        if current and all(re.fullmatch(r"\[\d+\]:", p) for p in current):
            return time.monotonic() - start
        if "[*]:" not in current and kernel_status(page) == "idle":
            idle_with_unrun_since = idle_with_unrun_since or time.monotonic()
            if time.monotonic() - idle_with_unrun_since > 10:
                raise AssertionError(f"the kernel is idle but some cells never ran: prompts {current}")
        else:
            idle_with_unrun_since = None
        if time.monotonic() > deadline:
            raise AssertionError(f"Run All Cells did not finish within {timeout:.0f} s: prompts {current}")
        time.sleep(0.5)


def image_source(locator) -> str:
    """The `src` of the image inside `locator` (for matplotlib output: a data: URL of the PNG)."""
    image = locator.locator("img").first
    image.wait_for(timeout=30_000)
    return image.get_attribute("src") or ""


def drag_slider(page, slider, fraction: float) -> None:
    """Drag the handle of an ipywidgets slider (noUiSlider) to `fraction` of its track, as a mouse would."""
    handle = slider.locator(".noUi-handle").first
    track = slider.locator(".noUi-base").first
    handle.scroll_into_view_if_needed()
    h, t = handle.bounding_box(), track.bounding_box()
    page.mouse.move(h["x"] + h["width"] / 2, h["y"] + h["height"] / 2)
    page.mouse.down()
    target_x, y = t["x"] + fraction * t["width"], h["y"] + h["height"] / 2
    page.mouse.move(target_x, y, steps=12)
    page.mouse.up()
