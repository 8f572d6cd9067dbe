"""tools/bench_vs_reference.py: interleaved timing, ratios, and the whole run against a stand-in checkout.

No RAE checkout is needed: ``standin`` writes a tiny package with the release's layout and API
(``DiTwDDTHead`` with ``forward_with_cfg`` / ``forward_with_autoguidance``, ``create_transport``,
``Sampler.sample_ode``, ``GeneralDecoder``, ``build_optimizer``), built on our own modules. With
``RAE_REFERENCE=/path/to/RAE`` set, one more test runs the tool against that real checkout.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rae.accelerator import make_accelerator
from rae.bench.cli import main as bench_main
from rae.bench.heap import keep_freed_memory
from rae.bench.interleave import interleave, ratios
from rae.bench.max_batch import largest_batch, train_batch_fits
from rae.bench.models import load_config
from rae.bench.pairs import Shapes, agreement, parse_dims
from rae.bench.reference import UnusableReference, load_reference
from rae.bench.summary import summary
from rae.bench.versus import JSON_PREFIX, ImageCounter, main, parse_sides

ROOT = Path(__file__).resolve().parent.parent
TINY_GIN = str(ROOT / "experiments" / "stage2_tiny.gin")

TINY = ["--size", "32:2:2", "--head", "48:1:3", "--guide_size", "16:1:1", "--channels", "8", "--grid", "4",
        "--num_classes", "10", "--decoder", "tiny", "--decoder_patch", "4", "--batch_size", "2",
        "--sample_batch_size", "2", "--decoder_batch_size", "2", "--sample_steps", "4", "--rounds", "2",
        "--device", "cpu"]

_DDT = '''
import torch
from rae.backbones.ditdh import DiTDH


class DiTwDDTHead(DiTDH):
    """Stand-in: our DiT-DH behind the release's constructor and guidance entry points."""

    def __init__(self, input_size, patch_size, in_channels, hidden_size, depth, num_heads, mlp_ratio,
                 class_dropout_prob, num_classes, use_qknorm, use_swiglu, use_rope, use_rmsnorm, wo_shift,
                 use_pos_embed):
        super().__init__(hidden_size=hidden_size[0], depth=depth[0], num_heads=num_heads[0],
                         head_hidden_size=hidden_size[1], head_depth=depth[1], head_num_heads=num_heads[1],
                         input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                         num_classes=num_classes, class_dropout_prob=class_dropout_prob, mlp_ratio=mlp_ratio,
                         use_swiglu=use_swiglu, use_rope=use_rope, use_rmsnorm=use_rmsnorm,
                         use_qknorm=use_qknorm, wo_shift=wo_shift, use_pos_embed=use_pos_embed)

    def _mix(self, guided, reference, t, scale, interval):
        inside = ((t >= interval[0]) & (t <= interval[1])).view(-1, 1, 1, 1)
        return torch.where(inside, reference + scale * (guided - reference), guided)

    def forward_with_cfg(self, x, t, y, cfg_scale, cfg_interval=(0.0, 1.0)):
        half = x[: len(x) // 2]
        cond, uncond = self.forward(torch.cat([half, half]), t, y).chunk(2)
        mixed = self._mix(cond, uncond, t[: len(t) // 2], cfg_scale, cfg_interval)
        return torch.cat([mixed, mixed])

    def forward_with_autoguidance(self, x, t, y, cfg_scale, additional_model_forward, cfg_interval=(0.0, 1.0)):
        return self._mix(self.forward(x, t, y), additional_model_forward(x, t, y), t, cfg_scale, cfg_interval)
'''

_TRANSPORT = '''
import torch
from rae.transport.transport import Transport


class Sampler:
    """Stand-in: fixed-grid Euler from t = 1 to 0 that returns every state, as torchdiffeq does."""

    def __init__(self, transport):
        self.transport = transport

    def sample_ode(self, sampling_method, num_steps, atol, rtol, reverse):
        assert sampling_method == "euler" and not reverse

        def sample(x, model, **kwargs):
            grid = torch.linspace(1.0, 0.0, num_steps).tolist()
            states = [x]
            for t, t_next in zip(grid[:-1], grid[1:]):
                x = x + (t_next - t) * model(x, torch.full((x.shape[0],), t), **kwargs)
                states.append(x)
            return torch.stack(states)

        return sample
'''

_TRANSPORT_INIT = '''
from rae.transport.transport import Transport
from .transport import Sampler


class _Losses:
    def __init__(self, shift):
        self.ours = Transport(time_shift=shift)

    def training_losses(self, model, x1, model_kwargs=None):
        point = self.ours.draw(x1)
        return {"loss": self.ours.loss(model(point.x_t, point.t, **(model_kwargs or {})), point)}


def create_transport(path_type="Linear", prediction="velocity", loss_weight=None, train_eps=None,
                     sample_eps=None, time_dist_type="uniform", time_dist_shift=1.0):
    return _Losses(time_dist_shift)
'''

_DECODER = '''
from types import SimpleNamespace

import torch
from rae.decoders.vit import VIT_SIZES, ViTDecoder
from rae.nn.patch import unpatchify as _unpatchify


class GeneralDecoder(ViTDecoder):
    """Stand-in: our ViT decoder taking tokens and returning patch logits, as the release's."""

    def __init__(self, config, num_patches):
        size = next(k for k, v in VIT_SIZES.items() if v.hidden == config.decoder_hidden_size
                    and v.depth == config.decoder_num_hidden_layers)
        side = int(num_patches ** 0.5)
        super().__init__(config.hidden_size, (side, side), size=size, patch_size=config.patch_size)

    def forward(self, tokens, drop_cls_token=False):
        x = self.embed(tokens)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return SimpleNamespace(logits=self.head(self.norm(x))[:, 1:])

    def unpatchify(self, logits):
        return _unpatchify(logits, self.patch_size, self.out_channels)
'''

_OPTIM = '''
import torch


def build_optimizer(parameters, training_cfg):
    opt = training_cfg["optimizer"]
    return torch.optim.AdamW(parameters, lr=opt["lr"], betas=tuple(opt["betas"]), fused=True), "AdamW"
'''


@pytest.fixture
def clean_imports(monkeypatch):
    """Restore sys.path and forget the stand-in's top-level packages after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [n for n in sys.modules if n.split(".")[0] in ("stage1", "stage2", "utils")]:
        del sys.modules[name]


@pytest.fixture
def standin(tmp_path, clean_imports) -> Path:
    """A checkout-shaped folder whose src/ holds the stand-in modules."""
    files = {
        "stage1/__init__.py": "", "stage1/decoders/__init__.py": "", "stage1/decoders/decoder.py": _DECODER,
        "stage2/__init__.py": "", "stage2/models/__init__.py": "", "stage2/models/DDT.py": _DDT,
        "stage2/transport/__init__.py": _TRANSPORT_INIT, "stage2/transport/transport.py": _TRANSPORT,
        "utils/__init__.py": "", "utils/optim_utils.py": _OPTIM,
    }
    for name, text in files.items():
        path = tmp_path / "RAE" / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path / "RAE"


def _record(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith(JSON_PREFIX)]
    assert len(lines) == 1
    return json.loads(lines[0][len(JSON_PREFIX):])


def test_rounds_alternate_their_order_and_ratios_are_per_round():
    order = []
    steps = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    timed = interleave(steps, rounds=3, calls=2, warmup=1, device=torch.device("cpu"))
    assert order == ["a", "b"] + ["a"] * 2 + ["b"] * 2 + ["b"] * 2 + ["a"] * 2 + ["a"] * 2 + ["b"] * 2
    for per_side in (timed.seconds, timed.cpu_seconds, timed.page_faults):
        assert {k: len(v) for k, v in per_side.items()} == {"a": 3, "b": 3}
    order.clear()
    interleave(steps, rounds=1, calls=1, warmup=2, device=torch.device("cpu"))
    assert order == ["a", "b", "b", "a", "a", "b"]  # the warm-up alternates as the rounds do
    stats = ratios({"ref": [2.0, 3.0, 4.0], "ours": [1.0, 1.0, 4.0]}, "ref")["ours"]
    assert (stats.median, stats.low, stats.high, stats.rounds) == (2.0, 1.0, 3.0, 3)
    with pytest.raises(ValueError, match="baseline"):
        ratios({"ours": [1.0]}, "ref")
    with pytest.raises(ValueError, match="rounds >= 1"):
        interleave(steps, rounds=0, calls=1, warmup=0, device=torch.device("cpu"))


def _faults_after_freeing(mib: int) -> int:
    """Minor page faults while ``mib`` MiB are allocated and written right after 64 MiB were freed."""
    torch.empty(64 << 18).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(mib << 18).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_kept_heap_reuses_freed_memory_without_page_faults():
    pages = (48 << 20) // 4096
    with keep_freed_memory() as kept:
        if not kept:
            pytest.skip("the C library is not glibc: mallopt is not there to ask")
        assert _faults_after_freeing(48) < pages // 20
    # glibc's settings again: 48 MiB (above its largest mmap threshold, 32 MiB) are mapped afresh, page by page
    assert _faults_after_freeing(48) > pages // 2


def test_sides_sizes_and_agreement_are_checked():
    assert [(s.base, s.compile) for s in parse_sides("reference,ours+compile")] == [
        ("reference", False), ("ours", True)]
    for bad in ("theirs", "reference+fused_adamw", "ours+fused_adamw", "ours,ours", ""):
        with pytest.raises(ValueError, match="--sides"):
            parse_sides(bad)
    assert parse_dims("xl", "size") == (1152, 28, 16) and parse_dims("64:2:4", "size") == (64, 2, 4)
    with pytest.raises(ValueError, match="--head '64:2:3'"):
        parse_dims("64:2:3", "head")  # head width 21: not divisible by 4 for 2-D RoPE
    assert Shapes(channels=8, grid=4).time_shift == 1.0 and Shapes().time_shift == pytest.approx(48**0.5)
    assert agreement(torch.tensor([2.0, -4.0]), torch.tensor([2.0, -3.0])) == 0.25
    with pytest.raises(RuntimeError, match="all zero"):
        agreement(torch.zeros(3), torch.zeros(3))


def test_image_counter_sums_batches_through_watched_modules():
    layer = torch.nn.Linear(3, 3)
    counter = ImageCounter([layer])
    layer(torch.zeros(4, 3)), layer(torch.zeros(2, 3))
    counter.close()
    layer(torch.zeros(5, 3))
    assert counter.images == 6


def test_side_by_side_against_a_stand_in_checkout(standin, capsys):
    assert main(["--reference", str(standin), *TINY]) == 0
    out = capsys.readouterr().out
    record = _record(out)
    results = record["results"]
    assert set(results) == {"train", "sample_cfg", "sample_cfg_interval", "sample_ag", "decoder", "decode"}
    for m in results.values():
        assert set(m["seconds"]) == {"reference", "ours"} and len(m["seconds"]["ours"]) == 2
        assert m["ratios"]["ours"]["low"] <= m["ratios"]["ours"]["median"] <= m["ratios"]["ours"]["high"]
        assert all(v > 0 for v in m["images_per_s"].values())
        assert m["agreement"] < 1e-5  # same weights, same function
        assert set(m["cpu_ratios"]) == {"ours"} and all(len(v) == 2 for v in m["cpu_seconds"].values())
        assert all(len(v) == 2 for v in m["page_faults"].values())
    assert record["malloc"] in ("keep", "default (not glibc)")
    evaluations = 4 - 1
    counts = {k: results[k]["network_images_per_sample"] for k in ("sample_cfg", "sample_cfg_interval", "sample_ag")}
    # CFG over [0, 1]: both run the doubled batch at every step
    assert counts["sample_cfg"] == {"reference": 2 * evaluations, "ours": 2 * evaluations}
    # t <= 0.7 only: the release still doubles every step, ours runs the single batch at the first (t = 1)
    assert counts["sample_cfg_interval"]["reference"] == 2 * evaluations
    assert counts["sample_cfg_interval"]["ours"] < 2 * evaluations
    # autoguidance: the release runs main and guide on the doubled batch, ours on the batch
    assert counts["sample_ag"] == {"reference": 4 * evaluations, "ours": 2 * evaluations}
    assert set(record["fid50k_hours"]) == {"reference", "ours"}
    assert "reference/side" in out and "outputs agree" in out
    log = standin / "versus.log"
    log.write_text(out)
    text = summary([log])
    assert "reference/ours: x" in text and "target x1.5: " in text and "target x2.0: " in text


def test_ours_alone_needs_no_checkout(capsys):
    args = [a for a in TINY]
    assert main([*args, "--sides", "ours", "--what", "train,decoder", "--profile", "5"]) == 0
    out = capsys.readouterr().out
    record = _record(out)
    assert record["results"]["train"]["ratios"] == {}
    assert record["results"]["train"]["agreement"] is None
    assert "--- profile: train, ours " in out and "clip+adamw" in out


@pytest.mark.parametrize("args, message", [
    (["--what", "train"], "needs --reference"),
    (["--sides", "ours", "--what", "everything"], "--what 'everything'"),
    (["--sides", "ours", "--precision", "fp8"], "--precision 'fp8'"),
    (["--sides", "ours", "--malloc", "jemalloc"], "--malloc 'jemalloc'"),
    (["--sides", "ours", "--rounds", "0"], "--rounds 0"),
    (["--sides", "ours", "--size", "huge"], "--size 'huge'"),
])
def test_bad_arguments_exit_2(capsys, args, message):
    assert main([*TINY, *args]) == 2
    assert message in capsys.readouterr().err


def test_unusable_checkouts_are_refused_by_name(tmp_path, standin, capsys):
    with pytest.raises(UnusableReference, match="no such folder"):
        load_reference(tmp_path / "nowhere")
    with pytest.raises(UnusableReference, match="missing src/stage2/models/DDT.py"):
        load_reference(tmp_path)
    assert main(["--reference", str(tmp_path), *TINY]) == 2
    assert "not a checkout of github.com/bytetriper/RAE" in capsys.readouterr().err
    ddt = standin / "src" / "stage2" / "models" / "DDT.py"
    ddt.write_text("import not_installed_dependency\n" + ddt.read_text())
    with pytest.raises(UnusableReference, match="'not_installed_dependency', which is not installed"):
        load_reference(standin)


@pytest.mark.slow
def test_compiled_side_runs(capsys):
    assert main([*TINY, "--sides", "ours,ours+compile", "--what", "decode"]) == 0
    assert "ours+compile" in _record(capsys.readouterr().out)["results"]["decode"]["ratios"]


@pytest.mark.skipif(not os.environ.get("RAE_REFERENCE"), reason="set RAE_REFERENCE to a checkout of bytetriper/RAE")
def test_against_the_real_release(clean_imports, capsys):
    assert main(["--reference", os.environ["RAE_REFERENCE"], *TINY]) == 0
    record = _record(capsys.readouterr().out)
    assert all(m["agreement"] < 1e-5 for m in record["results"].values())
    assert record["results"]["sample_ag"]["network_images_per_sample"] == {"reference": 12, "ours": 6}


# ---- tools/gpu_check.sh and its parts: the largest-batch search and the summary ----

def test_largest_batch_doubles_then_bisects():
    tried = []

    def fits(n):
        tried.append(n)
        return n <= 100

    assert largest_batch(fits, start=8, limit=4096) == 100
    assert tried[:6] == [8, 16, 32, 64, 128, 96]  # doubling to the first failure, then bisection
    assert largest_batch(lambda n: True, start=8, limit=20) == 20
    assert largest_batch(lambda n: False, start=8, limit=20) == 0
    with pytest.raises(ValueError, match="start <= limit"):
        largest_batch(fits, start=9, limit=8)


def test_a_batch_that_runs_out_of_memory_does_not_fit():
    models = load_config([TINY_GIN], [])
    acc = make_accelerator("cpu", "fp32")
    fits, release = train_batch_fits(models.backbone, models.transport, acc)
    assert fits(2)
    model = models.backbone

    def out_of_memory(*_):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    hook = model.final_layer.register_forward_hook(out_of_memory)
    assert not fits(2)
    hook.remove()
    release()
    assert next(model.parameters()).is_meta


def test_bench_max_batch_and_the_summary(tmp_path, capsys):
    assert bench_main(["--gin", TINY_GIN, "--device", "cpu", "--what", "train", "--batch_size", "2", "--steps", "1",
                       "--warmup", "0", "--max_batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "largest training batch per device: 4" in out and "not a measurement" in out
    assert main([*TINY, "--sides", "ours", "--what", "sample_ag,decode,train"]) == 0
    (tmp_path / "train.log").write_text(out)
    (tmp_path / "versus.log").write_text(capsys.readouterr().out)
    text = summary([tmp_path / "train.log", tmp_path / "versus.log", tmp_path / "missing.log"])
    assert "training " in text and "img/s, MFU" in text and "largest training batch per device: 4" in text
    assert "sample_ag (body 32x2x2" in text and "FID-50k sampling + decoding on one device, ours" in text
    assert summary([tmp_path / "missing.log"]).endswith("no benchmark finished (no BENCH_JSON / VERSUS_JSON lines "
                                                        "in the logs)")
    assert bench_main(["--gin", TINY_GIN, "--batch_size", "8", "--max_batch", "4", "--device", "cpu"]) == 2
    assert "--max_batch 4: must be 0 (off) or >= --batch_size 8" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_part(standin, tmp_path):
    out = tmp_path / "logs"
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--cpu-smoke", "--reference", str(standin),
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    text = (out / "summary.log").read_text()
    assert "largest training batch per device: 4" in text
    assert "reference/ours: x" in text and "target x1.5" in text and "target x2.0" in text
    assert "FID-50k sampling + decoding on one device, ours" in text
    for part in ("train", "sample_ag", "versus"):
        log = (out / f"{part}.log").read_text()
        assert "did not finish" not in log and "failed" not in log
