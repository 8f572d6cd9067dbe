"""``hf://ORG/REPO/path[@revision]`` paths read from the hub cache offline, and refuse clearly when absent."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from rae.hub import HubFile, HubFileUnavailable, parse, resolve
from rae.runner import main
from test_autoencoder import GOLDEN, tiny_rae

COMMIT = "0123456789abcdef0123456789abcdef01234567"
STATS = "stats/dinov2/wReg_base/imagenet1k/stat.pt"
ROOT = Path(__file__).resolve().parent.parent


def cache_file(cache: Path, repo_id: str, filename: str, payload: bytes, commit: str = COMMIT,
               ref: str | None = "main") -> Path:
    """Lay a file out as huggingface_hub caches it: models--ORG--REPO/snapshots/<commit>/<filename>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    target = repo / "snapshots" / commit / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(payload)
    if ref is not None:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return target


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.mark.parametrize("path, expected", [
    ("hf://nyu-visionx/RAE-collections/" + STATS, HubFile("nyu-visionx/RAE-collections", STATS, "main")),
    ("hf://org/repo/model.pt@v1.0", HubFile("org/repo", "model.pt", "v1.0")),
    (f"hf://org/repo/a/b/ema.pt@{COMMIT}", HubFile("org/repo", "a/b/ema.pt", COMMIT)),
])
def test_parse(path, expected):
    assert parse(path) == expected


@pytest.mark.parametrize("path", ["hf://org/repo", "hf://org//file.pt", "hf://org/repo/file.pt@", "org/repo/f.pt"])
def test_malformed_hub_paths_name_the_form(path):
    with pytest.raises(ValueError, match=r"hf://ORG/REPO/path/in/repo\[@revision\]"):
        parse(path)


def test_local_paths_pass_through():
    assert resolve("runs/x/stat.pt") == Path("runs/x/stat.pt")


def test_cached_files_resolve_offline_by_branch_and_by_commit(offline_cache):
    cached = cache_file(offline_cache, "nyu-visionx/RAE-collections", STATS, b"x")
    assert resolve(f"hf://nyu-visionx/RAE-collections/{STATS}") == cached
    assert resolve(f"hf://nyu-visionx/RAE-collections/{STATS}@{COMMIT}") == cached


def test_stats_by_hub_path_normalise_like_the_local_file(offline_cache):
    payload = (GOLDEN / "tiny_stats_position.pt").read_bytes()
    cache_file(offline_cache, "nyu-visionx/RAE-collections", STATS, payload)
    local = tiny_rae(stats_path=str(GOLDEN / "tiny_stats_position.pt"))
    hub = tiny_rae(stats_path=f"hf://nyu-visionx/RAE-collections/{STATS}")
    for model in (local, hub):
        model.load_pretrained(allow_random=False, log=logging.getLogger("test"))
    assert torch.equal(local.latent_var, hub.latent_var)


def test_an_uncached_file_offline_names_the_download_command(offline_cache):
    with pytest.raises(HubFileUnavailable) as info:
        resolve("hf://nyu-visionx/RAE-collections/decoders/dinov2/wReg_base/ViTXL_n08/model.pt@v2", "the decoder")
    message = str(info.value)
    assert "the decoder hf://nyu-visionx/RAE-collections/decoders" in message
    assert "`hf download nyu-visionx/RAE-collections decoders/dinov2/wReg_base/ViTXL_n08/model.pt --revision v2`" \
        in message
    assert str(offline_cache) in message and "HF_HUB_OFFLINE" in message


def test_the_runner_refuses_an_uncached_hub_file_with_exit_2(offline_cache, tmp_path, capsys):
    rc = main(["--gin", str(ROOT / "experiments" / "reconstruct_tiny.gin"),
               "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'",
               "--gin_param", f"rae.stats_path = 'hf://nyu-visionx/RAE-collections/{STATS}'"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"hf download nyu-visionx/RAE-collections {STATS}" in err
