"""The Aim tracker: readable names, tags and flat params, what it records, and how it fails.

Everything is read back through Aim's SDK query API (`Repo.query_runs`,
`Repo.query_metrics`), as `aim up` and `tools/compare.py` see it.
"""
import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import gin
import numpy as np
import pytest
import torch
from aim import Repo
from aim.storage.context import Context
from plugins_for_tests.toy import aim_dir, aim_runs, aim_template, run_toy  # noqa: F401 (fixtures)

from rae.run_params import config_dict, config_tags, flat_config, tracker_run_name
from rae.tracking.aim_tracker import AimTracker, TrackerUnavailable
from rae.tracking.values import flatten, nest, plain



@gin.configurable("toy_root")
def toy_root(backbone=None, guidance=None, ensemble=()):
    """A root configurable that builds what it is bound to, as the runner's `run` does."""
    return backbone, guidance, ensemble


def _series(run) -> dict:
    return {m.name: [value for _, (value, *_) in m.data.items()] for m in run.metrics()}


@pytest.fixture
def clean_gin():
    gin.clear_config(clear_constants=True)
    yield
    gin.clear_config(clear_constants=True)


# ---------------------------------------------------------------- flat config
def test_flat_config_puts_each_plugin_under_its_kind_and_a_guide_under_its_scope(clean_gin):
    gin.parse_config(textwrap.dedent("""
        HIDDEN = 16
        toy_root.backbone = @backbone.toy_mlp()
        toy_root.guidance = @guidance.toy_guidance()
        toy_root.ensemble = [@big/backbone.toy_mlp(), 'plain']
        toy_guidance.guide = @guide/backbone.toy_mlp()
        toy_guidance.scale = 1.5
        toy_mlp.hidden_size = %HIDDEN
        guide/toy_mlp.hidden_size = 4
        toy_loss.steps = 7
    """))
    backbone, guidance, (big, _) = toy_root()
    assert (backbone.hidden_size, guidance.guide.hidden_size, big.hidden_size) == (16, 4, 16)

    assert flat_config() == {
        "backbone.name": "toy_mlp",
        "backbone.hidden_size": 16,
        "guidance.name": "toy_guidance",
        "guidance.scale": 1.5,
        "guide.backbone.name": "toy_mlp",
        "guide.backbone.hidden_size": 4,
        "big.backbone.toy_mlp.hidden_size": 16,
        "toy_root.ensemble": ["@big/backbone.toy_mlp()", "plain"],
    }
    assert config_tags() == ["toy_mlp"]
    nested = config_dict()
    assert nested["toy_loss"] == {"steps": 7}  # bound but not part of the run: only in the nested config
    assert nested["guide/toy_mlp"] == {"hidden_size": 4}
    assert nested["toy_guidance"] == {"guide": "@guide/backbone.toy_mlp()", "scale": 1.5}


def test_nest_and_flatten_are_inverse_and_a_clashing_key_is_skipped(caplog):
    flat = {"backbone.name": "ditdh", "backbone.hidden_size": 768, "run.seed": 0}
    assert nest(flat) == {"backbone": {"name": "ditdh", "hidden_size": 768}, "run": {"seed": 0}}
    assert flatten(nest(flat)) == flat
    with caplog.at_level(logging.WARNING):
        assert nest({"a.b": 1, "a.b.c": 2, "a": 3}) == {"a": {"b": 1}}
    assert caplog.text.count("clashes") == 2


def test_plain_turns_tensors_and_non_finite_floats_into_storable_values():
    assert plain({"x": torch.tensor(2.5), "y": (1, torch.tensor([1, 2])), "z": float("nan")}) == {
        "x": 2.5, "y": [1, [1, 2]], "z": "nan"}
    assert plain(Path("/a")) == "/a"


# ---------------------------------------------------------------- through the runner
def test_a_runner_run_is_named_grouped_tagged_and_queryable_by_flat_params(aim_dir):
    assert run_toy(aim_dir, "toy_mlp.hidden_size = 12") == 0
    (run,) = aim_runs(aim_dir, 'run.experiment == "toy_tracking" and run.hparams.backbone.hidden_size == 12')
    folder = next((aim_dir / "toy_tracking").iterdir())
    assert run.name == tracker_run_name("toy", f"toy_tracking/{folder.name}") == f"toy/toy_tracking/{folder.name}"
    assert sorted(run.tags) == ["toy", "toy_mlp"]
    assert run["status"] == "finished"
    hparams = run["hparams"]
    assert hparams["backbone"] == {"name": "toy_mlp", "hidden_size": 12}
    assert hparams["experiment"] == {"name": "toy_loss", "steps": 4, "start": 1.0, "fail_at": None}
    assert hparams["run"]["seed"] == 0 and hparams["run"]["allow_random_weights"] is True
    assert run["config"]["toy_mlp"] == {"hidden_size": 12}
    assert _series(run) == {"loss": [1.0, 0.5, 0.25, 0.125]}

    (_, (images, *_)), = run.get_image_sequence("samples", Context({})).data.items()
    assert [image.caption for image in images] == ["class 1", "class 7"]
    grid = torch.linspace(0, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    expected = (grid[1].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert (np.asarray(images[1].to_pil_image()) == expected).all()
    texts = {name: run.get_text_sequence(name, Context({})) for name in ("config", "operative_config")}
    assert "toy_mlp.hidden_size = 12" in next(iter(texts["config"].data.items()))[1][0].data
    assert "toy_loss.steps = 4" in next(iter(texts["operative_config"].data.items()))[1][0].data


def test_a_crashed_run_is_closed_as_failed_with_its_error_and_stays_queryable(aim_dir, capsys):
    assert run_toy(aim_dir, "toy_loss.fail_at = 2") == 1
    assert "ToyFailure" in capsys.readouterr().err
    (run,) = aim_runs(aim_dir, 'run.status == "failed" and "failed" in run.tags')
    assert "ToyFailure: toy failure at step 2" in run["error"]
    assert run["hparams"]["experiment"]["fail_at"] == 2
    assert _series(run) == {"loss": [1.0, 0.5]}


# ---------------------------------------------------------------- the tracker itself
def test_eval_metrics_with_split_and_guidance_context_are_queryable(aim_dir):
    tracker = AimTracker(repo=str(aim_dir), experiment="eval_tiny", name="eval/eval_tiny/1")
    tracker.track_dict({"fid": 3.5, "is": float("nan")}, step=0, context={"split": "val", "guidance": 1.5})
    tracker.track("fid", 4.25, 0, {"split": "val", "guidance": None})
    tracker.close()
    repo = Repo(str(aim_dir))
    found = {
        query: [(m.context.to_dict(), [v for _, (v, *_) in m.data.items()]) for m in
                repo.query_metrics(query, report_mode=0).iter()]
        for query in ('metric.name == "fid" and metric.context.guidance == 1.5',
                      'metric.name == "fid" and metric.context.guidance == None', 'metric.name == "is"')
    }
    assert list(found.values()) == [
        [({"split": "val", "guidance": 1.5}, [3.5])], [({"split": "val", "guidance": None}, [4.25])], []]


def test_track_images_rejects_a_batch_that_is_not_bchw_or_miscaptioned(aim_dir):
    tracker = AimTracker(repo=str(aim_dir), experiment="x")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*got shape \(3, 4, 4\)"):
        tracker.track_images("grid", torch.zeros(3, 4, 4), 0)
    with pytest.raises(ValueError, match="1 captions for 2 images"):
        tracker.track_images("grid", torch.zeros(2, 3, 4, 4), 0, captions=["one"])
    tracker.track_images("grey", torch.full((1, 1, 2, 2), 0.5), 0, captions=["class 0"])
    tracker.close()
    (run,) = aim_runs(aim_dir)
    (_, (images, *_)), = run.get_image_sequence("grey", Context({})).data.items()
    assert images[0].to_pil_image().getpixel((0, 0)) == 128


def test_an_interrupted_run_is_marked_and_resuming_it_clears_the_mark(aim_dir):
    tracker = AimTracker(repo=str(aim_dir), experiment="x", name="toy/x/1")
    tracker.close(KeyboardInterrupt())
    (run,) = aim_runs(aim_dir, 'run.status == "interrupted"')
    assert run.tags == ["interrupted"] and "KeyboardInterrupt" in run["error"]

    resumed = AimTracker(repo=str(aim_dir), experiment="x", name="toy/x/1", run_hash=tracker.hash)
    assert resumed.hash == tracker.hash
    resumed.track("loss", 0.5, 1)
    resumed.close()
    (run,) = aim_runs(aim_dir)
    assert (run["status"], run.tags, run.get("error"), _series(run)) == ("finished", [], None, {"loss": [0.5]})


def test_resuming_a_run_the_repo_no_longer_has_starts_a_new_one(aim_dir, caplog):
    with caplog.at_level(logging.WARNING):
        tracker = AimTracker(repo=str(aim_dir), experiment="x", run_hash="0" * 24)
    tracker.close()
    assert tracker.hash != "0" * 24 and "not in" in caplog.text
    assert [run.hash for run in aim_runs(aim_dir)] == [tracker.hash]


@pytest.mark.parametrize("layout, reason", [
    ("file", "it is a file, not a folder"),
    ("inside_file", "is a file, so no folder can be made inside it"),
    ("aim_is_file", "its '.aim' is a file"),
])
def test_an_unusable_repo_path_raises_tracker_unavailable_naming_it(tmp_path, layout, reason):
    target = {"file": tmp_path / "runs", "inside_file": tmp_path / "runs" / "sub", "aim_is_file": tmp_path}[layout]
    (tmp_path / ("runs" if layout != "aim_is_file" else ".aim")).write_text("not a folder")
    with pytest.raises(TrackerUnavailable, match="cannot open the Aim repo") as info:
        AimTracker(repo=str(target))
    assert reason in str(info.value) and str(target) in str(info.value)


def test_aim_info_logging_is_quiet():
    assert logging.getLogger("aim").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("aim.sdk.lock_manager").getEffectiveLevel() == logging.WARNING


HOLDER = """
import sys, time
from aim import Repo, Run
repo = Repo.from_path(sys.argv[1])
run = Run(repo=repo, experiment="x", system_tracking_interval=None, capture_terminal_logs=False)
run.name = "killed"
run.track(1.0, name="loss", step=0)
repo._sdb_lock.acquire()  # and Aim's repo-wide database lock, as a writer killed mid-commit would
print(run.hash, flush=True)
time.sleep(120)
"""


def _fail_after(seconds: int):
    """Turn a hang (a later run waiting on a stale lock) into a quick failure."""
    def raise_timeout(*_):
        raise TimeoutError(f"blocked for {seconds}s")
    signal.signal(signal.SIGALRM, raise_timeout)
    signal.alarm(seconds)


def test_a_writer_killed_while_holding_locks_does_not_block_later_runs(aim_dir):
    # The holder is a bare Aim writer (the locks are Aim's; this spares the child a torch import).
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(aim_dir)], stdout=subprocess.PIPE, text=True)
    try:
        killed_hash = holder.stdout.readline().strip()
    finally:
        holder.kill()
        holder.wait()
    assert killed_hash and (aim_dir / ".aim" / "locks" / "structured_db_lock").exists()
    _fail_after(60)
    try:
        AimTracker(repo=str(aim_dir), experiment="x", name="later").close()
        resumed = AimTracker(repo=str(aim_dir), experiment="x", name="killed", run_hash=killed_hash)
        resumed.track("loss", 0.5, 1)
        resumed.close()
    finally:
        signal.alarm(0)
    runs = {run.name: run for run in aim_runs(aim_dir)}
    assert set(runs) == {"killed", "later"}
    assert runs["killed"]["status"] == "finished" and _series(runs["killed"]) == {"loss": [1.0, 0.5]}
