"""Headless Chromium on `aim up`: open the saved runs view, read its table, plot a metric, take screenshots.

Used by ``tools/aim_view.py --screenshots`` (the README's images) and by ``tests/test_aim_ui.py``.
Needs the ``playwright`` package (``pip install -e ".[test]"``) and a Chromium (Debian's ``chromium``;
``RAE_CHROMIUM`` names another).
"""
from __future__ import annotations

import base64
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote

CHROMIUM = Path(os.environ.get("RAE_CHROMIUM", "/usr/bin/chromium"))
VIEWPORT = {"width": 1600, "height": 760}
POPUP_SEEN = "localStorage.setItem('communityPopupSeen', 'true')"  # Aim's "join the community" box stays shut
TIMEOUT_MS = 60_000


def missing() -> list[str]:
    """What a browser session lacks here: the playwright package, the Chromium binary; empty when neither."""
    lacking = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        lacking.append("the playwright package")
    if not CHROMIUM.exists():
        lacking.append(f"chromium at {CHROMIUM}")
    return lacking


@contextmanager
def browser_page(viewport: dict[str, int] | None = None) -> Iterator[Any]:
    """A page of a fresh headless Chromium, closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=viewport or VIEWPORT)
            page.add_init_script(POPUP_SEEN)
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def decode_key(key: str) -> dict[str, Any]:
    """An Aim UI ``O-`` key (URL-safe base64 of URI-encoded JSON) of a table column or chart line."""
    encoded = key.removeprefix("O-").replace("-", "+").replace("_", "/")
    return json.loads(unquote(base64.b64decode(encoded + "=" * (-len(encoded) % 4)).decode()))


def wait_until_listed(page: Any, names: list[str]) -> None:
    """Wait until the table, done loading, lists exactly ``names`` in one column."""
    page.wait_for_function("""names => !document.body.innerText.includes('Processing...') &&
        [...document.querySelectorAll('.Table__column')].some(col => JSON.stringify(
            [...col.querySelectorAll('.Table__cell:not(.Table__cell--header)')].map(c => c.innerText.trim()).sort())
            === JSON.stringify(names))""", arg=sorted(names))


def table_columns(page: Any) -> list[tuple[str, str, list[str]]]:
    """Each shown column of the table: (group header, header, cell texts row by row)."""
    return [tuple(col) for col in page.evaluate("""() => [...document.querySelectorAll('.Table__column')].map(col => {
        const text = sel => [...col.querySelectorAll(sel)].map(e => e.innerText.trim()).join(' ');
        return [text('.Table__cell--topHeader'), text('.Table__cell--header:not(.Table__cell--topHeader)'),
                [...col.querySelectorAll('.Table__cell:not(.Table__cell--header)')].map(c => c.innerText.trim())];
    })""")]


def open_view(page: Any, url: str, names: list[str]) -> list[tuple[str, str, list[str]]]:
    """Open a saved view's URL and wait until its table lists the runs ``names``; the table's columns."""
    page.goto(url)
    wait_until_listed(page, names)
    return table_columns(page)


def plot_metric(page: Any, url: str, metric: str, lines: int) -> list[dict[str, Any]]:
    """In the Metrics explorer, plot ``metric`` of every run; the chart's lines' keys once ``lines`` are drawn."""
    page.goto(f"{url}/metrics")
    page.get_by_role("button", name="Metrics").click()
    page.get_by_role("option", name=metric, exact=True).click()
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Search").click()
    page.wait_for_function(f"document.querySelectorAll('path.Line').length >= {int(lines)}")
    page.get_by_text("Processing...").wait_for(state="hidden")
    line_ids = page.eval_on_selector_all("path.Line", "paths => paths.map(p => p.id)")
    return [decode_key(line_id.removeprefix("Line-")) for line_id in line_ids]


def screenshot(page: Any, path: Path) -> None:
    """A PNG of the page as shown, in 256 colours (a UI has few; the file is a third of the size)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    with Image.open(path) as shot:
        small = shot.convert("RGB").quantize(256)
    small.save(path, optimize=True)
