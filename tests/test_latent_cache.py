"""Latent caches: what cache_latents stores, resume without redoing shards, refusal of other encodings.

The helpers here (`Recorder`, `build`, `run_experiment`) also drive tests/test_stage2.py: an
experiment is built from its gin file plus bindings, exactly as the runner builds it, then run
with a `RunContext` on the CPU.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import gin
import pytest
import torch

import rae.experiments.cache_latents  # noqa: F401  (registers @experiment.cache_latents)
from rae.accelerator import Accelerator
from rae.data.latent_cache import CacheMismatch, LatentCache, read_index, shard_path
from rae.experiments.base import Experiment, RunContext, seed_everything
from rae.runner import build_spec, import_plugins, parse_gin
from rae.tracking.tracker import Tracker

ROOT = Path(__file__).resolve().parent.parent
CACHE_GIN = ROOT / "experiments" / "cache_latents_tiny.gin"
log = logging.getLogger("test")


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------
class Recorder(Tracker):
    """Keeps every scalar as {name: {step: value}} and every image batch with its captions."""

    def __init__(self) -> None:
        self.scalars: dict[str, dict[int, float]] = {}
        self.images: list[tuple[str, torch.Tensor, int, list[str]]] = []

    def track(self, name, value, step, context=None):
        self.scalars.setdefault(name, {})[step] = float(value)

    def track_images(self, name, images, step, captions=None, context=None):
        self.images.append((name, images.detach().clone(), step, list(captions or [])))


def build(gin_file: Path, bindings: Sequence[str]) -> Experiment:
    """The experiment the runner would build from ``gin_file`` and ``bindings`` (seeded construction)."""
    import_plugins([])
    parse_gin([str(gin_file)], list(bindings))
    try:
        torch.manual_seed(0)
        return build_spec(str(gin_file)).experiment
    finally:
        gin.clear_config()


def run_experiment(experiment: Experiment, run_dir: Path, tracker: Tracker | None = None,
                   accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Load weights (random allowed) and run, as the runner does, on the CPU."""
    ctx = RunContext(accelerator or Accelerator(torch.device("cpu")), tracker or Recorder(), run_dir,
                     seed=0, allow_random_weights=True, log=log)
    seed_everything(ctx.seed, ctx.accelerator.rank)
    experiment.load_weights(True, log)
    return experiment.run(ctx)


def cache_bindings(cache: Path, encoder_dir: Path, *extra: str) -> list[str]:
    """cache_latents_tiny.gin on the tiny DINOv2 fixture: 40 images of 56 px -> 3 shards (16, 16, 8)."""
    return [f"cache_latents.path = '{cache}'", f"dinov2.weights = '{encoder_dir}'", "embedded.size = 40",
            "embedded.resolution = 56", "cache_latents.batch_size = 12", *extra]


def make_cache(tmp_path: Path, cache: Path, encoder_dir: Path, *extra: str, **kw: Any) -> dict[str, Any]:
    experiment = build(CACHE_GIN, cache_bindings(cache, encoder_dir, *extra))
    return run_experiment(experiment, tmp_path / "run", **kw)


def shard_contents(cache: Path) -> list[dict[str, torch.Tensor]]:
    index = read_index(cache)
    return [torch.load(shard_path(cache, k), weights_only=True) for k in range(index.num_shards)]


def assert_same_cache(a: Path, b: Path) -> None:
    assert json.loads((a / "index.json").read_text()) == json.loads((b / "index.json").read_text())
    for left, right in zip(shard_contents(a), shard_contents(b), strict=True):
        assert left.keys() == right.keys()
        for key in left:
            assert torch.equal(left[key], right[key]), key


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
def test_cache_holds_the_autoencoders_latents_of_each_image_and_its_mirror(tmp_path, tiny_dinov2_registers_dir):
    cache = tmp_path / "cache"
    summary = make_cache(tmp_path, cache, tiny_dinov2_registers_dir, "cache_latents.dtype = 'float32'")
    assert summary["complete"] and summary["shards_written"] == 3

    experiment = build(CACHE_GIN, cache_bindings(cache, tiny_dinov2_registers_dir))
    experiment.load_weights(True, log)
    autoencoder = experiment.autoencoder.eval()
    images = torch.stack([experiment.dataset[i][0] for i in range(40)])
    with torch.no_grad():
        expected, expected_flipped = autoencoder.encode(images), autoencoder.encode(images.flip(-1))
    shards = shard_contents(cache)
    assert [len(s["labels"]) for s in shards] == [16, 16, 8]
    torch.testing.assert_close(torch.cat([s["latents"] for s in shards]), expected)
    torch.testing.assert_close(torch.cat([s["flipped"] for s in shards]), expected_flipped)
    assert torch.cat([s["labels"] for s in shards]).tolist() == [i % 10 for i in range(40)]

    index = read_index(cache)
    assert (index.latent_shape, index.dtype, index.num_items, index.flip) == ([32, 4, 4], "float32", 40, True)
    assert index.identity["resolution"] == 56 and index.shards_done == [0, 1, 2]
    data = LatentCache(str(cache), random_flip=False)
    latent, label = data[21]
    assert label == 1 and torch.equal(latent, expected[21])


def test_interrupted_caching_resumes_without_redoing_finished_shards(tmp_path, tiny_dinov2_registers_dir):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    make_cache(tmp_path, full, tiny_dinov2_registers_dir)
    first = make_cache(tmp_path, resumed, tiny_dinov2_registers_dir, "cache_latents.max_shards = 1")
    assert (first["shards_written"], first["complete"]) == (1, False)
    assert read_index(resumed).shards_done == [0]
    with pytest.raises(ValueError, match="unfinished: 1 of 3 shards"):
        len(LatentCache(str(resumed)))

    stamp = shard_path(resumed, 0).stat().st_mtime_ns
    (resumed / ".shard-00001.pt.tmp-999").write_bytes(b"half a shard from a killed writer")
    second = make_cache(tmp_path, resumed, tiny_dinov2_registers_dir)
    assert (second["shards_written"], second["complete"]) == (2, True)
    assert shard_path(resumed, 0).stat().st_mtime_ns == stamp
    assert not list(resumed.glob(".shard-*"))
    assert_same_cache(full, resumed)
    assert read_index(resumed).dtype == "bfloat16"
    assert shard_contents(resumed)[0]["latents"].dtype == torch.bfloat16


def test_ranks_write_disjoint_shards(tmp_path, tiny_dinov2_registers_dir):
    single, split = tmp_path / "single", tmp_path / "split"
    make_cache(tmp_path, single, tiny_dinov2_registers_dir)
    rank = [Accelerator(torch.device("cpu"), rank=r, world_size=2) for r in (0, 1)]
    assert make_cache(tmp_path, split, tiny_dinov2_registers_dir, accelerator=rank[0])["shards_written"] == 2
    assert sorted(p.name for p in split.glob("shard-*")) == ["shard-00000.pt", "shard-00002.pt"]
    assert make_cache(tmp_path, split, tiny_dinov2_registers_dir, accelerator=rank[1])["shards_written"] == 1
    final = make_cache(tmp_path, split, tiny_dinov2_registers_dir, accelerator=rank[0])  # finishes the index
    assert (final["shards_written"], final["complete"]) == (0, True)
    assert_same_cache(single, split)


def test_a_cache_made_another_way_is_refused_naming_both(tmp_path, tiny_dinov2_registers_dir, tiny_dinov2_dir):
    cache = tmp_path / "cache"
    make_cache(tmp_path, cache, tiny_dinov2_registers_dir, "cache_latents.max_shards = 1")

    with pytest.raises(CacheMismatch, match=r"resolution 56\].*resolution 64\]; they differ in resolution\."):
        make_cache(tmp_path, cache, tiny_dinov2_registers_dir, "embedded.resolution = 64")

    stats = tmp_path / "stat.pt"
    torch.save({"mean": torch.randn(1, 32, 1, 1), "var": torch.rand(1, 32, 1, 1) + 0.5}, stats)
    with pytest.raises(CacheMismatch, match=r"stats none .*stats sha256:.*they differ in stats\."):
        make_cache(tmp_path, cache, tiny_dinov2_registers_dir, f"rae.stats_path = '{stats}'")

    with pytest.raises(CacheMismatch) as refused:
        make_cache(tmp_path, cache, tiny_dinov2_dir, "dinov2.registers = False")
    message = str(refused.value)
    assert "dinov2-with-registers-small" in message and "hub_id=facebook/dinov2-small" in message
    assert "they differ in encoder, encoder_weights" in message

    with pytest.raises(CacheMismatch, match="shard_size=16.*shard_size=8"):
        make_cache(tmp_path, cache, tiny_dinov2_registers_dir, "cache_latents.shard_size = 8")
    assert sorted(p.name for p in cache.glob("shard-*")) == ["shard-00000.pt"]


def test_the_dataset_is_lazy_and_flips_at_random(tmp_path, tiny_dinov2_registers_dir):
    missing = LatentCache(str(tmp_path / "nowhere"))  # building touches nothing
    with pytest.raises(FileNotFoundError, match="not a latent cache"):
        len(missing)

    cache = tmp_path / "cache"
    make_cache(tmp_path, cache, tiny_dinov2_registers_dir)
    shard = shard_contents(cache)[0]
    data = LatentCache(str(cache), random_flip=True)
    torch.manual_seed(0)
    picks = [torch.equal(data[3][0], shard["flipped"][3]) for _ in range(40)]
    assert 5 < sum(picks) < 35  # both copies, about half each
    torch.manual_seed(0)
    assert [torch.equal(data[3][0], shard["flipped"][3]) for _ in range(40)] == picks
