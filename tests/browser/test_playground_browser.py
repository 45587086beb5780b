"""Notebook 09 in a real browser: JupyterLab on loopback, headless Chromium, run all cells, click "sample".

    make browser-test
    # or: python -m pytest -q -m browser tests/browser   (EMPRL_PLAYGROUND_OUT=DIR reuses a smoke run of 02-04)
    # another profile's checkpoints: EMPRL_PLAYGROUND_PROFILE=offline EMPRL_PLAYGROUND_OUT=outputs/offline ...

Chromium comes from the operating system (Debian: ``apt-get install chromium``; or set ``EMPRL_CHROMIUM``
to its executable) and ``playwright`` drives it through ``executable_path``: nothing is downloaded at
run time. Without Chromium or playwright the test skips and says which is missing. It trains the smoke
profile's identifiers, generators and EmpRL policy (notebooks 02-04) into a temporary folder unless
``EMPRL_PLAYGROUND_OUT`` names a folder that holds them, and saves ``outputs/playground/screenshot.png``.
``EMPRL_PLAYGROUND_PROFILE`` (default smoke) sets the served notebook's ``profile`` parameter, for a run of
another profile named by ``EMPRL_PLAYGROUND_OUT`` (never trained here); its screenshot is
``screenshot_<profile>.png``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "09_playground.ipynb"
PROFILE = os.environ.get("EMPRL_PLAYGROUND_PROFILE", "smoke")
SCREENSHOT = ROOT / "outputs" / "playground" / ("screenshot.png" if PROFILE == "smoke" else f"screenshot_{PROFILE}.png")


def _chromium() -> str | None:
    explicit = os.environ.get("EMPRL_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM = _chromium()
if CHROMIUM is None:
    pytest.skip("no Chromium installed (Debian/Ubuntu: `apt-get install chromium`, or set EMPRL_CHROMIUM to the "
                "browser's executable): the playground's browser check is skipped", allow_module_level=True)
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (`pip install -e '.[browser]'`): browser check skipped")


def _env(out: Path) -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "EMPRL_OUTPUT_DIR": str(out), "EMPRL_THREADS": "1", "MPLBACKEND": "Agg"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A smoke run of notebooks 02-04: ``$EMPRL_PLAYGROUND_OUT`` when it holds one, else trained here."""
    reuse = os.environ.get("EMPRL_PLAYGROUND_OUT")
    if reuse and (Path(reuse) / "checkpoints" / "ppo" / "emprl" / "policy" / "generator.json").is_file():
        return Path(reuse)
    if PROFILE != "smoke":
        pytest.fail(f"EMPRL_PLAYGROUND_PROFILE={PROFILE}: EMPRL_PLAYGROUND_OUT must name a folder with that "
                    f"profile's notebooks 02-04 run (no checkpoints/ppo/emprl/policy in {reuse})")
    out = Path(reuse) if reuse else tmp_path_factory.mktemp("smoke_run")
    subprocess.run([sys.executable, "-m", "emprl.ops.pipeline", "--profile", "smoke", "--only", "02,03,04",
                    "--out", str(out)], cwd=ROOT, env=_env(out), check=True, timeout=1800)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(run_dir, tmp_path_factory):
    """JupyterLab on 127.0.0.1 with a random token, serving a copy of notebook 09 with ``PROFILE`` as its profile."""
    serve = tmp_path_factory.mktemp("lab")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert 'profile = "smoke"' in cell.source, "notebook 09's parameters cell no longer sets profile = \"smoke\""
    cell.source = cell.source.replace('profile = "smoke"', f'profile = "{PROFILE}"')
    nbformat.write(nb, serve / NOTEBOOK.name)
    port, token = _free_port(), secrets.token_hex(16)
    jupyter_dirs = {k: str(serve / k.lower()) for k in ("JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR")}
    log = open(serve / "jupyterlab.log", "w")
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={serve}",
               "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run all cells by command
               f"--LabApp.workspaces_dir={serve / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers
        command.append("--allow-root")
    proc = subprocess.Popen(
        command, cwd=serve, env={**_env(run_dir), **jupyter_dirs}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited: see {serve / 'jupyterlab.log'}")
                time.sleep(1)
        else:
            raise RuntimeError(f"JupyterLab did not answer on {url} within 120 s")
        yield f"{url}/lab/tree/{NOTEBOOK.name}?token={token}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_playground_samples_and_shows_levels_in_chromium(lab):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 3000})  # the whole playground in view
            page.goto(lab, timeout=120_000)
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            page.evaluate("window.jupyterapp.shell.collapseLeft(); window.jupyterapp.shell.collapseRight()")
            page.wait_for_function("window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel",
                                   timeout=120_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            playground = page.locator(".emprl-playground")
            playground.wait_for(timeout=600_000)  # loading the systems and the static example come first
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                  has_text="Traceback")
            assert errors.count() == 0, errors.first.inner_text()

            playground.get_by_role("button", name="sample").click()
            replies = playground.locator(".emprl-reply")
            replies.first.wait_for(timeout=300_000)
            cards = replies.count()
            assert cards == playground.locator(".emprl-system").count() + 1  # every system and the human reply
            bars = playground.locator(".emprl-level-bar")
            assert bars.count() == 9 * cards  # 3 mechanisms x 3 levels per reply
            assert all(replies.nth(k).inner_text().strip() for k in range(cards))
            assert playground.locator(".emprl-remp").count() == cards
            playground.locator("img").first.wait_for(timeout=120_000)  # the attention heatmap
            news = page.get_by_role("button", name="No", exact=True)  # JupyterLab's "get news?" toast
            if news.count():
                news.first.click()
            playground.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            playground.screenshot(path=str(SCREENSHOT))
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
