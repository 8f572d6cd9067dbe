"""A real browser against `aim up`: two runs made through the runner, seen in the saved runs view.

Needs Debian's ``chromium`` and the ``playwright`` package (``.ci/install_browser.sh``).
Without them the test is skipped locally and fails under CI (``CI`` set), so CI cannot
skip it silently. Screenshots go to ``tests/artifacts/aim_ui/``; the README's images come
from real runs instead (``tools/aim_view.py --screenshots``, see docs/compare_runs.md).
"""
import os
from pathlib import Path

import pytest
from plugins_for_tests.toy import aim_dir, aim_runs, aim_template, run_toy  # noqa: F401 (fixtures)

from rae.tracking import aim_browser
from rae.tracking.aim_view import free_port, runs_view, save_view, start_aim_up, stop_aim_up, view_url

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "aim_ui"

pytestmark = pytest.mark.browser


def _need_browser() -> None:
    """A skip (locally) or a failure (CI) where playwright or chromium is missing."""
    lacking = aim_browser.missing()
    if lacking:
        reason = f"needs {' and '.join(lacking)}; run .ci/install_browser.sh"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but this browser test {reason}")
        pytest.skip(reason)


def _search(page, query: str) -> None:
    """Type an Aim QL query into the explorer's search box and run it."""
    page.locator(".monaco-editor").first.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(query)
    page.get_by_role("button", name="Search").click()


def test_the_saved_view_opens_on_the_compare_columns_and_the_metrics_explorer_plots_both_losses(aim_dir):
    _need_browser()
    assert run_toy(aim_dir, "run.seed = 0", "toy_loss.start = 1.0") == 0
    assert run_toy(aim_dir, "run.seed = 1", "toy_loss.start = 2.0") == 0
    runs = {run.name: run for run in aim_runs(aim_dir)}
    seeds = {name: run["hparams"]["run"]["seed"] for name, run in runs.items()}

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_aim_up(str(aim_dir), "127.0.0.1", port, aim_dir / "aim_up.log")
    try:
        view = runs_view(str(aim_dir))
        link = view_url(url, save_view(url, view))
        with aim_browser.browser_page() as page:
            columns = [c for c in aim_browser.open_view(page, link, list(runs)) if c[1]]  # [1]: no header, no column
            headers = [(group, header) for group, header, _ in columns]
            assert headers == [("Run", "Name"), ("Experiment", "Name"), ("Run Params", "status"),
                               ("", "hparams.experiment.name"), ("", "hparams.backbone.name"),
                               ("", "hparams.run.seed"), ("loss", "Empty context")]
            table = {cells[0]: list(cells[1:]) for cells in zip(*(cells for *_, cells in columns))}
            assert table == {name: ["toy_tracking", '"finished"', '"toy_loss"', '"toy_mlp"',
                                    str(seed), str((1.0 + seed) / 8)] for name, seed in seeds.items()}
            aim_browser.screenshot(page, ARTIFACTS / "aim_runs.png")

            _search(page, "run.hparams.run.seed == 1")  # the view's query box filters on a flat param
            aim_browser.wait_until_listed(page, [name for name, seed in seeds.items() if seed == 1])

            lines = aim_browser.plot_metric(page, url, "loss", len(runs))
            assert sorted((k["runHash"], k["metricName"]) for k in lines) == sorted(
                (run.hash, "loss") for run in runs.values())
            aim_browser.screenshot(page, ARTIFACTS / "aim_metrics.png")
    finally:
        stop_aim_up(server)
