"""A real browser against `aim up`: two runs made through the runner, compared in the Aim UI.

Needs Debian's ``chromium`` and the ``playwright`` package (``.ci/install_browser.sh``).
Without them the test is skipped locally and fails under CI (``CI`` set), so CI cannot
skip it silently. Screenshots go to ``tests/artifacts/aim_ui/``; with
``RAE_UPDATE_SCREENSHOTS=1`` they also replace the ones in ``docs/images/``.
"""
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote

import pytest
from plugins_for_tests.toy import aim_dir, aim_runs, aim_template, run_toy  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("RAE_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "tests" / "artifacts" / "aim_ui"
DOCS_IMAGES = ROOT / "docs" / "images"
PARAM_COLUMN = "hparams.experiment.start"
STARTUP_S = 60

pytestmark = pytest.mark.browser


def _playwright():
    """Playwright's sync API and the system chromium; a skip (locally) or a failure (CI) when absent."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright, missing = None, ["the playwright package"]
    if not CHROMIUM.exists():
        missing.append(f"chromium at {CHROMIUM}")
    if missing:
        reason = f"needs {' and '.join(missing)}; run .ci/install_browser.sh"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but this browser test {reason}")
        pytest.skip(reason)
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _aim_command() -> str:
    beside_python = Path(sys.executable).with_name("aim")
    return str(beside_python) if beside_python.exists() else shutil.which("aim") or "aim"


def _wait_until_serving(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"`aim up` exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/api/projects/", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"`aim up` did not answer within {STARTUP_S}s:\n{log.read_text()}")


def _decode(key: str) -> dict:
    """Aim UI keys (``O-<base64 of URI-encoded JSON>``) of table columns and chart lines."""
    encoded = key.removeprefix("O-")
    return json.loads(unquote(base64.b64decode(encoded + "=" * (-len(encoded) % 4)).decode()))


def _show_only(page, columns: list[str], metrics: list[str]) -> None:
    """What a person does to line runs up: in Manage Columns, show the chosen columns and hide the rest."""
    page.get_by_text("Manage Columns").click()
    page.get_by_text("Hide All").click()
    hidden = dict(page.eval_on_selector_all(".ColumnItem", """items => items.map(i => [
        i.dataset.rbdDraggableId, i.querySelector('.ColumnItem__toggle').classList.contains('isHidden')])"""))
    for key, is_hidden in hidden.items():
        wanted = key in columns or (key.startswith("O-") and _decode(key).get("metricName") in metrics)
        if key != "run" and is_hidden == wanted:  # "run" (the name) stays pinned
            page.locator(f".ColumnItem[data-rbd-draggable-id={json.dumps(key)}] .ColumnItem__toggle").click()
    backdrop = page.locator(".MuiPopover-root")  # a click beside the popover closes it
    box = backdrop.bounding_box()
    backdrop.click(position={"x": box["width"] - 10, "y": box["height"] - 10})
    page.get_by_text("Manage table columns").wait_for(state="hidden")


def _search(page, query: str) -> None:
    """Type an Aim QL query into the runs explorer's search box and run it."""
    page.locator(".monaco-editor").first.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(query)
    page.get_by_role("button", name="Search").click()


def _wait_until_listed(page, names: list[str]) -> None:
    """Wait until the runs table, done loading, lists exactly ``names`` in one column."""
    page.wait_for_function("""names => !document.body.innerText.includes('Processing...') &&
        [...document.querySelectorAll('.Table__column')].some(col => JSON.stringify(
            [...col.querySelectorAll('.Table__cell:not(.Table__cell--header)')].map(c => c.innerText.trim()).sort())
            === JSON.stringify(names))""", arg=sorted(names))


def _table_columns(page) -> list[tuple[str, str, list[str]]]:
    """Each column of the Aim runs table: (group header, header, cell texts row by row)."""
    return [tuple(col) for col in page.evaluate("""() => [...document.querySelectorAll('.Table__column')].map(col => {
        const text = sel => [...col.querySelectorAll(sel)].map(e => e.innerText.trim()).join(' ');
        return [text('.Table__cell--topHeader'), text('.Table__cell--header:not(.Table__cell--topHeader)'),
                [...col.querySelectorAll('.Table__cell:not(.Table__cell--header)')].map(c => c.innerText.trim())];
    })""")]


def _save(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))
    if os.environ.get("RAE_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / name, DOCS_IMAGES / name)


def test_aim_ui_lists_both_runs_with_a_param_column_and_plots_their_loss(aim_dir):
    sync_playwright = _playwright()
    assert run_toy(aim_dir, "run.seed = 0", "toy_loss.start = 1.0") == 0
    assert run_toy(aim_dir, "run.seed = 1", "toy_loss.start = 2.0") == 0
    runs = {run.name: run for run in aim_runs(aim_dir)}
    expected = {name: (run["hparams"]["experiment"]["start"], run.hash) for name, run in runs.items()}
    assert sorted(v[0] for v in expected.values()) == [1.0, 2.0]

    port, log = _free_port(), aim_dir / "aim_up.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        server = subprocess.Popen(
            [_aim_command(), "up", "--repo", str(aim_dir), "--host", "127.0.0.1", "--port", str(port), "--yes"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_until_serving(url, server, log)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1520, "height": 400})
            page.set_default_timeout(30_000)

            page.goto(f"{url}/runs")
            _wait_until_listed(page, list(expected))
            skip_popup = page.get_by_role("button", name="Skip")  # Aim's "join the community" box
            if skip_popup.is_visible():
                skip_popup.click()
            _show_only(page, ["experiment", "tags", "status", "hparams.backbone.name", PARAM_COLUMN], ["loss"])
            page.locator(".Table__cell--header", has_text=PARAM_COLUMN).wait_for()
            columns = _table_columns(page)
            names = next(cells for *_, cells in columns if sorted(cells) == sorted(expected))
            param = next(cells for _, header, cells in columns if header == PARAM_COLUMN)
            loss = next(cells for group, _, cells in columns if group == "loss")
            assert {n: (float(p), float(v)) for n, p, v in zip(names, param, loss)} == {
                name: (start, start / 8) for name, (start, _) in expected.items()}

            (_, high) = sorted(expected, key=lambda name: expected[name][0])
            _search(page, f"run.{PARAM_COLUMN} == 2")  # the query box filters on a flat param
            _wait_until_listed(page, [high])
            _search(page, 'run.hparams.backbone.name == "toy_mlp"')
            _wait_until_listed(page, list(expected))
            _save(page, "aim_runs.png")

            page.goto(f"{url}/metrics")
            page.get_by_role("button", name="Metrics").click()
            page.get_by_role("option", name="loss", exact=True).click()
            page.keyboard.press("Escape")
            page.get_by_role("button", name="Search").click()
            page.wait_for_function("document.querySelectorAll('path.Line').length >= 2")
            page.get_by_text("Processing...").wait_for(state="hidden")
            line_ids = page.eval_on_selector_all("path.Line", "paths => paths.map(p => p.id)")
            lines = [_decode(line_id.removeprefix("Line-")) for line_id in line_ids]
            assert sorted((k["runHash"], k["metricName"]) for k in lines) == sorted(
                (run_hash, "loss") for _, run_hash in expected.values())
            _save(page, "aim_metrics.png")
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
