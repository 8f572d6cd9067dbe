"""tools/bench.py: exact FLOP counts, memory and timing helpers, the end-to-end run on the tiny config."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from rae.bench.cli import JSON_PREFIX, main
from rae.bench.flops import count_flops, measure_peak_flops
from rae.bench import memory as memory_module
from rae.bench.memory import PeakMemory
from rae.bench.models import load_config, materialize
from rae.bench.timing import time_steps

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "experiments" / "stage2_tiny.gin")
FAST = ["--device", "cpu", "--batch_size", "2", "--steps", "1", "--warmup", "1", "--sample_steps", "3"]


def test_flops_of_a_linear_layer_are_exact_forward_and_backward():
    layer = nn.Linear(32, 16)
    x = torch.randn(4, 32)
    assert count_flops(lambda: layer(x)) == 2 * 4 * 32 * 16
    # backward of a leaf input without grad: only the weight gradient, one more matmul
    assert count_flops(lambda: layer(x).sum().backward()) == 2 * (2 * 4 * 32 * 16)
    x.requires_grad_(True)
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * (2 * 4 * 32 * 16)


@pytest.mark.parametrize("mark_resets", [True, False], ids=["peak-mark", "sampled"])
def test_peak_memory_on_cpu_sees_a_64_mib_allocation(mark_resets, monkeypatch):
    # Where /proc/self/clear_refs is refused or ignored (gVisor, restricted containers) the peak is sampled.
    if memory_module._status_kib("VmRSS") is None:
        pytest.skip("no /proc/self/status: only the process-lifetime ru_maxrss is there, which cannot see a phase")
    if not mark_resets:
        monkeypatch.setattr(memory_module, "_reset_peak_rss", lambda: False)
    elif not memory_module._reset_peak_rss():
        pytest.skip("this kernel's peak-RSS mark cannot be reset here; the sampled case covers it")
    with PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(16 * 2**20)  # 64 MiB of float32, touched
        time.sleep(0.02)  # held for 20 sampling periods: a sampler sees what lives longer than its period
        del block
    assert 60 <= memory.peak_mib < 200, (memory.peak_mib, memory.kind)
    assert ("sampled" in memory.kind) != mark_resets


def test_a_peak_mark_that_does_not_move_counts_as_not_reset(monkeypatch):
    marks = {"VmHWM": 900_000, "VmRSS": 100_000}  # KiB: the write was accepted and the mark kept
    monkeypatch.setattr(memory_module, "_CLEAR_REFS", Path("/dev/null"))
    monkeypatch.setattr(memory_module, "_status_kib", marks.get)
    assert not memory_module._reset_peak_rss()
    marks["VmHWM"] = 100_500
    assert memory_module._reset_peak_rss()


def test_timing_counts_only_the_timed_steps_and_checks_its_arguments():
    calls = []
    seconds = time_steps(lambda: calls.append(1), steps=3, warmup=2, device=torch.device("cpu"))
    assert len(calls) == 5 and seconds >= 0
    with pytest.raises(ValueError, match="steps >= 1"):
        time_steps(lambda: None, steps=0, warmup=0, device=torch.device("cpu"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_measured_peak_matmul_rate_is_plausible(dtype):
    rate = measure_peak_flops(torch.device("cpu"), dtype, size=128, min_seconds=0.01)
    assert 1e7 < rate < 1e14


def test_materialized_models_of_the_tiny_config_are_finite():
    models = load_config([TINY], [])
    assert models.latent_shape == (384, 4, 4)
    decoder = materialize(models.decoder, torch.device("cpu"))
    out = decoder(torch.randn(1, *models.latent_shape))
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
    backbone = materialize(models.backbone, torch.device("cpu")).eval()
    v = backbone(torch.randn(2, *models.latent_shape), torch.rand(2), torch.tensor([0, 1]))
    assert torch.isfinite(v).all()  # zero here: DiT's final layer starts at zero (adaLN-zero), as released
    assert all(torch.isfinite(p).all() for p in backbone.parameters())
    assert backbone.pos_embed is None or backbone.pos_embed.abs().sum() > 0


def test_bench_on_the_tiny_config_prints_a_table_and_a_json_line(capsys):
    assert main(["--gin", TINY, *FAST, "--guidance_scale", "2.0"]) == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "MFU" in out
    lines = [line for line in out.splitlines() if line.startswith(JSON_PREFIX)]
    assert len(lines) == 1
    record = json.loads(lines[0][len(JSON_PREFIX):])
    assert {"config", "device", "precision", "compile", "peak_flops", "machine", "results"} <= set(record)
    assert set(record["results"]) == {"train", "sample", "decoder"}
    assert record["peak_flops"] > 0
    for result in record["results"].values():
        for key in ("images_per_s", "flops_per_image", "achieved_flops", "mfu", "seconds"):
            assert result[key] > 0, (result["what"], key)
        assert "peak_memory_mib" in result and "memory_kind" in result
    sample = record["results"]["sample"]
    assert sample["extra"] == {"model_evaluations": 2, "guidance_scale": 2.0, "cfg_batch": 4}
    # 2 evaluations of a doubled (CFG) batch = 4 forwards vs ~3 forwards of a training step
    assert 1.2 < sample["flops_per_image"] / record["results"]["train"]["flops_per_image"] < 1.5


@pytest.mark.parametrize("args, message", [
    (["--what", "everything"], "--what 'everything': must be one of"),
    (["--precision", "fp8"], "--precision 'fp8'"),
    (["--batch_size", "0"], "--batch_size 0"),
    (["--device", "tpu"], "--device 'tpu'"),
])
def test_bad_arguments_exit_2_with_a_clear_message(capsys, args, message):
    assert main(["--gin", TINY, *args]) == 2
    assert message in capsys.readouterr().err


def test_bad_configs_exit_2(capsys, tmp_path):
    assert main(["--gin", str(tmp_path / "missing.gin")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["--gin", TINY, "--gin_param", "ditdh.no_such_arg = 1"]) == 2
    assert "no_such_arg" in capsys.readouterr().err
    assert main([]) == 2
    assert "no config given" in capsys.readouterr().err
