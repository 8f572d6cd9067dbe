"""The saved runs view of `aim up` (`tools/aim_view.py`): its columns, the UI's keys for them, its storage."""
import json
import runpy
import shutil
import urllib.request
from pathlib import Path

import pytest
from plugins_for_tests.toy import aim_dir, aim_template  # noqa: F401 (fixtures)

from rae.tracking.aim_browser import decode_key
from rae.tracking.aim_tracker import AimTracker
from rae.tracking.aim_view import (
    RunsView,
    format_value,
    free_port,
    metric_key,
    param_paths,
    runs_view,
    save_view,
    served_repo,
    start_aim_up,
    stop_aim_up,
    view_url,
)

ROOT = Path(__file__).resolve().parent.parent
# Keys the Aim UI computes (its getMetricHash, run under node: encodeURI, btoa, JSON.stringify) for these metrics
UI_KEYS = {
    ("loss", ()): "O-JTdCJTIybWV0cmljTmFtZSUyMjolMjJsb3NzJTIyLCUyMmNvbnRleHROYW1lJTIyOiUyMiUyMiU3RA",
    ("eval/fid", (("guidance", "cfg-2.0"), ("split", "train"))):
        "O-JTdCJTIybWV0cmljTmFtZSUyMjolMjJldmFsL2ZpZCUyMiwlMjJjb250ZXh0TmFtZSUyMjolMjIlMjBndWlkYW5jZT0lNUMlMjJjZm"
        "ctMi4wJTVDJTIyLCUyMHNwbGl0PSU1QyUyMnRyYWluJTVDJTIyJTIyJTdE",
    ("x é", (("a", 1.5), ("b", True), ("c", None), ("d", 2.0), ("e", 1e-8), ("f", 123456789.123456789),
             ("g", 'q"uote'))):
        "O-JTdCJTIybWV0cmljTmFtZSUyMjolMjJ4JTIwJUMzJUE5JTIyLCUyMmNvbnRleHROYW1lJTIyOiUyMiUyMGE9MS41LCUyMGI9VHJ1ZSwl"
        "MjBjPU5vbmUsJTIwZD0yLCUyMGU9MWUtOCwlMjBmPTEyMzQ1Njc4OS4xMjM0NTY3OSwlMjBnPSU1QyUyMnElNUMlNUMlNUMlMjJ1b3RlJTVD"
        "JTIyJTIyJTdE",
}
PIPELINE_PARAMS = {  # what a quickstart run holds, in short
    "experiment": {"name": "pipeline", "stages": {"stage1": {"name": "stage1"}, "stage2": {"name": "stage2"},
                                                  "eval": {"name": "eval"}}},
    "encoder": {"name": "dinov2", "variant": "small"},
    "backbone": {"name": "ditdh", "hidden_size": 96},
    "guidance": {"name": "cfg", "scale": 2.0},
}


def test_metric_keys_are_the_ones_the_aim_ui_computes():
    for (name, context), key in UI_KEYS.items():
        assert metric_key(name, dict(context)) == key
        label = f" {', '.join(f'{k}={format_value(v)}' for k, v in context)}" if context else ""
        assert decode_key(key) == {"metricName": name, "contextName": label}
    assert metric_key("__system__cpu", {}) == "__system__cpu"  # system metrics keep their name
    assert format_value([1, "a", {"k": False}]) == '[1, "a", {"k": False}]'


def test_param_paths_are_the_ui_columns_dotted_and_bracketed_for_odd_keys():
    params = {"status": "finished", "odd key": 1, "hparams": {"run": {"seed": 0}, "a.b": {"c": [1, 2]}, "empty": {}},
              "config": {"stage2.lr": 0.001}}
    assert sorted(param_paths(params)) == sorted(
        ["status", "odd key", "hparams.run.seed", 'hparams["a.b"].c', 'config["stage2.lr"]'])


def _pipeline_repo(repo: Path) -> Path:
    for seed, fid in ((0, [30.0, 20.0]), (1, [25.0, 22.0])):
        tracker = AimTracker(repo=str(repo), experiment="quickstart", name=f"pipeline/quickstart/{seed}")
        tracker.log_params({"hparams": {**PIPELINE_PARAMS, "run": {"seed": seed}}, "git_commit": "abc"})
        tracker.add_tags(["pipeline", "ditdh", "dinov2"])
        for step, value in enumerate([0.9, 0.5]):
            tracker.track("stage1/loss", value, step, {"subset": "train"})
            tracker.track("stage2/loss", value / 2, step, {"subset": "train"})
            tracker.track("stage2/lr", 1e-3, step)
        for step, value in enumerate(fid):
            tracker.track("eval/fid", value, step, {"guidance": "cfg-2.0", "split": "train"})
        tracker.track("eval/sfid", 5.0, 0, {"guidance": "cfg-2.0", "split": "train"})
        tracker.close()
    return repo


def test_a_pipeline_view_shows_the_compare_columns_and_hides_every_other_one(aim_dir):
    view = runs_view(str(_pipeline_repo(aim_dir)))
    assert view.params == ["status", "hparams.experiment.name", "hparams.encoder.name", "hparams.backbone.name",
                           "hparams.run.seed", "hparams.guidance.name", "hparams.guidance.scale"]
    assert view.metrics == [("stage1/loss", {"subset": "train"}), ("stage2/loss", {"subset": "train"}),
                            ("eval/fid", {"guidance": "cfg-2.0", "split": "train"})]
    hidden = set(view.hidden)
    assert not hidden & set(view.columns)
    assert {"hash", "date", "git_commit", "hparams.backbone.hidden_size", "hparams.encoder.variant",
            "hparams.experiment.stages.stage2.name", metric_key("stage2/lr", {}),
            metric_key("eval/sfid", {"guidance": "cfg-2.0", "split": "train"})} <= hidden
    assert len(view.hidden) == len(hidden)

    state = view.state()
    assert state["table"]["columnsOrder"] == {"left": ["run"], "middle": view.columns[1:], "right": []}
    options = state["select"]["options"]
    assert [o["key"] for o in options] == view.columns[3:]  # the chart's axes: the shown params but status, metrics
    assert view.columns[:3] == ["run", "experiment", "status"]
    widths = state["table"]["columnsWidths"]
    assert widths["hparams.experiment.name"] > widths["hparams.run.seed"] >= 100
    assert options[-1]["value"] == {"option_name": "eval/fid", "context": {"guidance": "cfg-2.0", "split": "train"}}

    only_seed_1 = runs_view(str(aim_dir), "run.hparams.run.seed == 1")
    assert only_seed_1.query == "run.hparams.run.seed == 1" and only_seed_1.state()["select"]["query"] == \
        only_seed_1.query


def test_dry_run_prints_the_columns_and_a_bad_repo_exits_2(aim_dir, capsys, tmp_path_factory):
    main = runpy.run_path(str(ROOT / "tools" / "aim_view.py"))["main"]
    assert main(["--repo", str(_pipeline_repo(aim_dir)), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the view shows: status, hparams.experiment.name, hparams.encoder.name") and \
        out.splitlines()[0].endswith('eval/fid guidance="cfg-2.0", split="train"')
    assert main(["--repo", str(tmp_path_factory.mktemp("x") / "nowhere"), "--dry_run"]) == 2
    assert "no Aim repo at" in capsys.readouterr().err


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.loads(reply.read())


@pytest.mark.slow
def test_the_view_is_stored_in_aim_up_as_one_bookmark_that_saving_again_updates(aim_dir, aim_template, tmp_path_factory,
                                                                                 capsys):
    repo = _pipeline_repo(aim_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    assert served_repo(url) is None
    other = tmp_path_factory.mktemp("other")
    shutil.copytree(aim_template / ".aim", other / ".aim")
    _pipeline_repo(other)
    server = start_aim_up(str(repo), "127.0.0.1", port, other / "aim_up.log")
    try:
        assert served_repo(url) == repo.resolve()
        view = runs_view(str(repo))
        app_id = save_view(url, view)
        stored = _get(f"{url}/api/apps/{app_id}/")
        assert stored["type"] == "params" and stored["state"] == json.loads(json.dumps(view.state()))
        assert view_url(url, app_id) == f"{url}/params/{app_id}"

        narrower = RunsView(view.params[:2], view.metrics[-1:], view.hidden, "run.hparams.run.seed == 1")
        assert save_view(url, narrower) == app_id  # the same bookmark, its state replaced
        assert _get(f"{url}/api/apps/{app_id}/")["state"]["select"]["query"] == "run.hparams.run.seed == 1"
        bookmarks = _get(f"{url}/api/dashboards/")
        assert [(b["name"], b["app_id"], b["app_type"]) for b in bookmarks] == [("rae: runs", app_id, "params")]

        main = runpy.run_path(str(ROOT / "tools" / "aim_view.py"))["main"]
        assert main(["--repo", str(repo), "--port", str(port)]) == 0  # aim up is there: saved, not started again
        assert f"runs view (also under Bookmarks as 'rae: runs'): {url}/params/{app_id}" in capsys.readouterr().out
        assert main(["--repo", str(other), "--port", str(port)]) == 2
        assert f"error: the `aim up` at {url} serves {repo.resolve()}, not {other.resolve()}" in capsys.readouterr().err
    finally:
        stop_aim_up(server)
    assert served_repo(url) is None
