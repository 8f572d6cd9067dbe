"""`tools/compare.py`: a terminal table of Aim runs, read through Aim's query API."""
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from plugins_for_tests.toy import aim_dir, aim_template  # noqa: F401 (fixtures)

from rae.tracking.aim_tracker import AimTracker
from rae.tracking.compare import CompareError, compare, parse_metric_specs

ROOT = Path(__file__).resolve().parent.parent
RUNS = {  # name: (backbone, seed, loss curve, fid at guidance 1.5 or None, error)
    "stage2/a/1": ("ditdh", 0, [0.9, 0.3, 0.5], [7.0, 6.5], None),
    "stage2/b/2": ("lightningdit", 1, [0.8, 0.6, 0.4], None, None),
    "stage2/c/3": ("ditdh", 2, [2.0], None, RuntimeError("out of memory")),
}


@pytest.fixture
def repo(aim_dir) -> Path:
    for name, (backbone, seed, loss, fid, error) in RUNS.items():
        tracker = AimTracker(repo=str(aim_dir), experiment=name.split("/")[1], name=name)
        tracker.log_params({"hparams": {"backbone": {"name": backbone, "hidden_size": 64 * (seed + 1)},
                                        "run": {"seed": seed}}})
        for step, value in enumerate(loss):
            tracker.track("loss", value, step)
        for step, value in enumerate(fid or []):
            tracker.track("fid", value, step, {"split": "val", "guidance": 1.5})
        tracker.close(error)
    return aim_dir


def _rows(table: str) -> list[list[str]]:
    lines = table.splitlines()
    assert set(lines[1].replace(" ", "")) == {"-"}
    return [line.split() for line in [lines[0], *lines[2:]]]


def test_default_table_shows_status_set_params_and_final_loss_and_fid(repo):
    expected = [["name", "status", "backbone.name", "run.seed", "loss:last", "fid{guidance=1.5,split=val}:last"]]
    for name, (backbone, seed, loss, fid, error) in RUNS.items():
        status = "failed" if error else "finished"
        expected.append([name, status, backbone, str(seed), f"{loss[-1]:.6g}", f"{fid[-1]:.6g}" if fid else "-"])
    assert _rows(compare(str(repo))) == expected


def test_query_chosen_columns_and_sort(repo):
    table = compare(str(repo), 'run.hparams.backbone.name == "ditdh"', params=["backbone.hidden_size", "status"],
                    metrics="loss:mean,fid:min", sort="loss:mean")
    a, c = RUNS["stage2/a/1"], RUNS["stage2/c/3"]
    assert _rows(table) == [  # status is a column of every table: asked for again, it is shown once
        ["name", "status", "backbone.hidden_size", "loss:mean", "fid{guidance=1.5,split=val}:min"],
        ["stage2/a/1", "finished", "64", f"{sum(a[2]) / 3:.6g}", f"{min(a[3]):.6g}"],
        ["stage2/c/3", "failed", "192", f"{c[2][0]:.6g}", "-"],
    ]
    by_spec = compare(str(repo), 'run.hparams.backbone.name == "ditdh"', metrics="fid:min", sort="fid:min")
    assert [row[0] for row in _rows(by_spec)[1:]] == ["stage2/a/1", "stage2/c/3"]  # a metric spec sorts too


def test_no_match_bad_specs_and_a_missing_repo_say_what_was_expected(repo, tmp_path):
    assert compare(str(repo), "run.hparams.run.seed == 9") == f"no runs in '{repo}' match 'run.hparams.run.seed == 9'"
    with pytest.raises(CompareError, match="unknown aggregate 'best'; expected one of last, first, min, max, mean"):
        parse_metric_specs("loss:best")
    with pytest.raises(CompareError, match="--sort 'fid:min': not a column"):
        compare(str(repo), sort="fid:min")
    with pytest.raises(CompareError, match="bad query"):
        compare(str(repo), "run.hparams. ==")
    with pytest.raises(CompareError, match="no Aim repo at .*expected a folder with '.aim' inside"):
        compare(str(tmp_path / "nowhere"))


def test_command_line_prints_the_table_of_the_runs_a_query_matches(repo):
    def cli(*args):
        return subprocess.run([sys.executable, str(ROOT / "tools" / "compare.py"), "--repo", str(repo), *args],
                              capture_output=True, text=True, timeout=120)

    ok = cli("run.hparams.run.seed == 1", "--params", "backbone.name", "--metrics", "loss:min")
    assert ok.returncode == 0, ok.stderr
    assert _rows(ok.stdout) == [["name", "status", "backbone.name", "loss:min"],
                                ["stage2/b/2", "finished", "lightningdit", "0.4"]]


def test_command_line_exits_2_with_the_reason_on_bad_input(repo, capsys):
    main = runpy.run_path(str(ROOT / "tools" / "compare.py"))["main"]
    assert main(["--repo", str(repo), "--metrics", "loss:best"]) == 2
    assert capsys.readouterr().err.startswith("error: --metrics 'loss:best': unknown aggregate")
