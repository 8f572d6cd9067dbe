"""Open the runs in `aim up` on the columns that compare them: `python tools/aim_view.py --repo runs [QUERY]`.

Saves a view of the runs (the bookmark "rae: runs" of Aim's Params explorer: name, status, experiment,
encoder, backbone, seed, guidance, final loss, FID and class accuracy; every other column hidden) in the `aim up` at
--host/--port, starting one on the repo when none answers there (it then serves until Ctrl-C), and
prints the view's URL. Run it again after new runs: it updates the same bookmark.
    --dry_run               print the view's columns; no `aim up`
    --screenshots FOLDER    also save aim_runs.png (the view) and aim_metrics.png (--metric of every run)
                            from headless Chromium, then stop the `aim up` it started
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rae.tracking.aim_view import (AimServerError, RunsView, metric_label, runs_view, save_view,  # noqa: E402
                                   served_repo, start_aim_up, stop_aim_up, view_url)
from rae.tracking.compare import CompareError  # noqa: E402

NAME_COLUMNS_PX = 560  # the sidebar, the run's name, its Aim experiment and the table's margins


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/aim_view.py", description="Save and open the runs view in `aim up`.")
    p.add_argument("query", nargs="?", default="", help='Aim QL, e.g. \'run.hparams.backbone.name == "ditdh"\'')
    p.add_argument("--repo", default="runs", help="folder holding the Aim repo (default: runs)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=43800)
    p.add_argument("--dry_run", action="store_true", help="print the view's columns; start and change nothing")
    p.add_argument("--screenshots", type=Path, default=None, help="save aim_runs.png and aim_metrics.png here")
    p.add_argument("--metric", default="stage2/loss", help="the metric aim_metrics.png plots (default: stage2/loss)")
    args = p.parse_args(argv)
    try:
        view = runs_view(args.repo, args.query)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not view.metrics and not view.params:
        print(f"no runs in '{args.repo}' match {args.query!r}: nothing to show" if args.query else
              f"no runs in '{args.repo}' yet: nothing to show")
        return 0
    print("the view shows: " + ", ".join([*view.params, *(metric_label(name, ctx) for name, ctx in view.metrics)]))
    print(f"and hides {len(view.hidden)} other columns")
    if args.dry_run:
        return 0
    url = f"http://{args.host}:{args.port}"
    repo = Path(args.repo).resolve()
    serving = served_repo(url)
    if serving is not None and serving != repo:
        print(f"error: the `aim up` at {url} serves {serving}, not {repo}; give another --port", file=sys.stderr)
        return 2
    server = None if serving else start_aim_up(args.repo, args.host, args.port, repo / "aim_up.log")
    try:
        link = view_url(url, save_view(url, view))
        print(f"runs view (also under Bookmarks as 'rae: runs'): {link}")
        if args.screenshots is not None:
            take_screenshots(url, link, view, args.repo, args.metric, args.screenshots)
        elif server is not None:
            print(f"`aim up --repo {args.repo}` serves at {url}; Ctrl-C stops it")
            server.wait()
    except AimServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            stop_aim_up(server)
    return 0


def take_screenshots(url: str, link: str, view: RunsView, repo: str, metric: str, folder: Path) -> None:
    """aim_runs.png: the view, in a window as wide as its table; aim_metrics.png: ``metric`` of its runs."""
    from rae.tracking import aim_browser
    from rae.tracking.compare import query_runs

    lacking = aim_browser.missing()
    if lacking:
        raise AimServerError(f"--screenshots needs {' and '.join(lacking)} (pip install -e '.[test]')")
    names = [run.name for run in query_runs(repo, view.query)]
    width = NAME_COLUMNS_PX + sum(view.state()["table"]["columnsWidths"].values())
    with aim_browser.browser_page({"width": max(width, 1280), "height": 760}) as page:
        aim_browser.open_view(page, link, names)
        aim_browser.screenshot(page, folder / "aim_runs.png")
        page.set_viewport_size(aim_browser.VIEWPORT)
        aim_browser.plot_metric(page, url, metric, len(names))
        aim_browser.screenshot(page, folder / "aim_metrics.png")
    print(f"saved {folder / 'aim_runs.png'} and {folder / 'aim_metrics.png'}")


if __name__ == "__main__":
    sys.exit(main())
