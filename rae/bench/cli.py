"""`tools/bench.py`: speed of a named config's models as a table and one ``BENCH_JSON`` line.

Exit codes as the runner: 0 done, 2 configuration or argument error (one line, no traceback).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Sequence

import torch

from rae.accelerator import Accelerator, make_accelerator
from rae.bench.flops import measure_peak_flops
from rae.bench.max_batch import largest_batch, train_batch_fits
from rae.bench.measure import Options, Result, bench_decoder, bench_sample, bench_train
from rae.bench.models import BenchModels, load_config
from rae.bench.record import command_main, print_record
from rae.config_errors import ConfigError

WHATS = ("train", "sample", "decoder", "all")
JSON_PREFIX = "BENCH_JSON "


class BenchError(Exception):
    """An argument or config that cannot be benchmarked; exits 2 with its message."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--gin", action="append", default=[], metavar="FILE", help="gin file (repeatable)")
    p.add_argument("--gin_param", action="append", default=[], metavar="BINDING", help="extra binding (repeatable)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--what", default="all", help=f"one of {', '.join(WHATS)}")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup untimed ones)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", default="fp32", help="fp32 or bf16 (autocast)")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone / decoder")
    p.add_argument("--sample_steps", type=int, default=50, help="Euler grid points (sample_steps - 1 evaluations)")
    p.add_argument("--guidance_scale", type=float, default=1.0, help="CFG scale; != 1 doubles the forward batch")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--max_batch", type=int, default=0, metavar="LIMIT",
                   help="also find the largest training batch <= LIMIT that fits (from --batch_size, doubling)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Every argument error before anything is built."""
    if not args.gin:
        raise BenchError("no config given: pass --gin experiments/<name>.gin")
    if args.what not in WHATS:
        raise BenchError(f"--what {args.what!r}: must be one of {', '.join(WHATS)}")
    if args.precision not in ("fp32", "bf16"):
        raise BenchError(f"--precision {args.precision!r}: must be fp32 or bf16")
    for name, least in (("batch_size", 1), ("steps", 1), ("sample_steps", 2)):
        if getattr(args, name) < least:
            raise BenchError(f"--{name} {getattr(args, name)}: must be >= {least}")
    if args.warmup < 0:
        raise BenchError(f"--warmup {args.warmup}: must be >= 0")
    if args.max_batch and args.max_batch < args.batch_size:
        raise BenchError(f"--max_batch {args.max_batch}: must be 0 (off) or >= --batch_size {args.batch_size}")
    if args.device not in (None, "cpu") and not args.device.startswith("cuda"):
        raise BenchError(f"--device {args.device!r}: must be cpu or cuda[:N]")
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {args.device}: no CUDA device is available")


def planned(what: str, models: BenchModels) -> list[str]:
    """The measurements to run; a config lacking the model a measurement needs is an error."""
    wanted = ["train", "sample", "decoder"] if what == "all" else [what]
    has = {"train": models.backbone is not None and models.transport is not None,
           "sample": models.backbone is not None and models.transport is not None,
           "decoder": models.decoder is not None}
    if what == "all":
        wanted = [w for w in wanted if has[w]]
        if not wanted:
            raise BenchError("the config has neither a diffusion backbone with a transport nor a decoder")
    for w in wanted:
        if not has[w]:
            need = "a decoder (e.g. an autoencoder with one)" if w == "decoder" else "a backbone and a transport"
            raise BenchError(f"--what {w}: the config has no {need} to measure")
    return wanted


def table(results: list[Result], peak_flops: float, header: dict[str, Any]) -> str:
    """A fixed-width table, one row per measurement."""
    lines = [" ".join(f"{k}={v}" for k, v in header.items()),
             f"measured peak matmul rate: {peak_flops / 1e12:.4f} TFLOP/s",
             (f"{'what':<8} {'batch':>5} {'steps':>5} {'seconds':>9} {'images/s':>10} {'GFLOP/img':>11} "
              f"{'TFLOP/s':>9} {'MFU':>7} {'peak MiB':>9}  memory measured as")]
    for r in results:
        lines.append(f"{r.what:<8} {r.batch_size:>5} {r.steps:>5} {r.seconds:>9.3f} {r.images_per_s:>10.3f} "
                     f"{r.flops_per_image / 1e9:>11.2f} {r.achieved_flops / 1e12:>9.4f} {r.mfu:>7.1%} "
                     f"{r.peak_memory_mib:>9.0f}  {r.memory_kind}")
    return "\n".join(lines)


def max_train_batch(models: BenchModels, acc: Accelerator, start: int, limit: int) -> dict[str, Any]:
    """The largest training batch that fits on the device, between ``start`` and ``limit``."""
    print(f"bench: searching the largest training batch ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
    fits, release = train_batch_fits(models.backbone, models.transport, acc)
    try:
        batch = largest_batch(fits, start, limit)
    finally:
        release()
    if acc.device.type != "cuda":
        note = "on the CPU nothing runs out of memory: the limit is not a measurement"
    elif batch == limit:
        note = "every batch up to the limit fitted: raise --max_batch to find the real one"
    else:
        note = "the next batch ran out of memory"
    return {"batch": batch, "start": start, "limit": limit, "note": note}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, measure, print; returns the JSON record."""
    check_args(args)
    models = load_config(args.gin, args.gin_param)
    wanted = planned(args.what, models)
    acc = make_accelerator(args.device, args.precision)
    opt = Options(args.batch_size, args.steps, args.warmup, args.compile, args.sample_steps, args.guidance_scale)
    peak = measure_peak_flops(acc.device, acc.autocast_dtype)
    print(f"bench: peak matmul {peak / 1e12:.4f} TFLOP/s in {args.precision}", file=sys.stderr, flush=True)
    results = []
    for what in wanted:
        print(f"bench: measuring {what} ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
        if what == "train":
            results.append(bench_train(models.backbone, models.transport, acc, opt, peak))
        elif what == "sample":
            results.append(bench_sample(models.backbone, models.transport, acc, opt, peak))
        else:
            results.append(bench_decoder(models.decoder, acc, opt, peak))
    header = {"config": "+".join(args.gin), "device": str(acc.device), "precision": args.precision,
              "compile": args.compile, "latent_shape": list(models.latent_shape or [])}
    print(table(results, peak, header))
    largest = None
    if args.max_batch:
        if models.backbone is None or models.transport is None:
            raise BenchError("--max_batch: the config has no backbone and transport to train")
        largest = max_train_batch(models, acc, args.batch_size, args.max_batch)
        print(f"largest training batch per device: {largest['batch']} (searched {args.batch_size}..{args.max_batch}, "
              f"eager, {args.precision}; {largest['note']})")
    if models.unset:
        print("placeholders (not needed for speed): " + ", ".join(models.unset))
    return print_record(JSON_PREFIX, header, gin_params=args.gin_param, peak_flops=peak,
                        results={r.what: r.as_dict() for r in results}, max_train_batch=largest)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; 0 done, 2 argument or configuration error."""
    return command_main("bench", parse_args, run, (BenchError, ConfigError), argv)
