"""`tools/bench_vs_reference.py`: the RAE release's code and ours, timed side by side in one process.

Both sides are built with the same shapes and the same weights (`rae.bench.pairs`), run under the
same autocast on the same device with the same thread count, and are timed in alternating rounds
(`rae.bench.interleave`). A side is ``reference`` or ``ours``, optionally with ``+compile``
(torch.compile, as each side offers it). On the CPU the two sides share one C heap; glibc is told
to keep freed memory (`rae.bench.heap`), so neither side's timing depends on page faults that the
other side's allocations caused (``--malloc default`` leaves glibc's own settings).
Exit codes: 0 done, 2 bad arguments or an unusable reference checkout.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from rae.accelerator import make_accelerator
from rae.backbones.release import from_reference_config
from rae.bench.heap import keep_freed_memory, release_freed_memory
from rae.bench.interleave import interleave, ratios
from rae.bench.pairs import Dims, Shapes, unzero, backbone_pair, check_agreement, decoder_pair, parse_dims
from rae.bench.record import command_main, print_record
from rae.bench.reference import Reference, UnusableReference, load_reference
from rae.bench.steps import (
    Inputs, Recipe, Step, compile_network, our_decode, our_decoder_step, our_sample, our_train_step,
    reference_decode_step, reference_decoder_step, reference_sample, reference_train_step,
)
from rae.decoders.vit import ViTDecoder

JSON_PREFIX = "VERSUS_JSON "
BACKBONE = ("sample_cfg", "sample_cfg_interval", "sample_ag", "train")  # training last: it changes the weights
DECODER = ("decode", "decoder")
MEASUREMENTS = BACKBONE + DECODER
OPTIONS = {"reference": ("compile",), "ours": ("compile",)}
AGREEMENT_LIMIT = 0.05
FID_IMAGES = 50_000
MALLOC = ("keep", "default")


@dataclass(frozen=True)
class Side:
    """One implementation to time: ``base`` (reference | ours) plus options."""

    name: str
    base: str
    compile: bool = False


class VersusError(ValueError):
    """A bad argument; exits 2 with its message."""


def parse_sides(text: str) -> list[Side]:
    """``reference,ours,ours+compile``: comma-separated bases with ``+option`` suffixes."""
    sides = []
    for name in (s.strip() for s in text.split(",") if s.strip()):
        base, *options = name.split("+")
        if base not in OPTIONS:
            raise VersusError(f"--sides {name!r}: a side is reference or ours, optionally +option")
        unknown = [o for o in options if o not in OPTIONS[base]]
        if unknown:
            raise VersusError(f"--sides {name!r}: unknown option {unknown[0]!r} for {base} "
                              f"(options: {', '.join(OPTIONS[base])})")
        sides.append(Side(name, base, "compile" in options))
    if not sides or len({s.name for s in sides}) != len(sides):
        raise VersusError(f"--sides {text!r}: give distinct sides, e.g. reference,ours")
    return sides


@dataclass
class Measurement:
    """One measurement's timings: seconds per round and side, ratios to the baseline, images per call.

    ``cpu_seconds`` / ``cpu_ratios`` are the same for the process's CPU time (user + system), and
    ``page_faults`` the minor page faults per round (None where they cannot be counted).
    """

    what: str
    batch_size: int
    seconds: dict[str, list[float]]
    ratios: dict[str, dict[str, float]]
    images_per_s: dict[str, float]
    network_images_per_sample: dict[str, float] = field(default_factory=dict)
    agreement: float | None = None
    cpu_seconds: dict[str, list[float]] = field(default_factory=dict)
    cpu_ratios: dict[str, dict[str, float]] = field(default_factory=dict)
    page_faults: dict[str, list[int | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """Everything a run needs besides the models: sides, shapes, batches, timing and precision."""

    sides: list[Side]
    shapes: Shapes
    recipe: Recipe
    batch_size: int
    sample_batch_size: int
    decoder_batch_size: int
    rounds: int
    calls: int
    warmup: int


class ImageCounter:
    """Counts the images that pass through modules (forward pre-hooks on their first argument)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.images = 0
        self._handles = [m.register_forward_pre_hook(self._count) for m in modules]

    def _count(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self.images += int(args[0].shape[0])

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _counting_first_call(step: Step, modules: Sequence[nn.Module], result: dict[str, int], key: str) -> Step:
    """``step`` whose first call also counts the images through ``modules`` into ``result[key]``."""
    def wrapped() -> object:
        if key in result:
            return step()
        counter = ImageCounter(modules)
        try:
            return step()
        finally:
            counter.close()
            result[key] = counter.images

    return wrapped


# ---- networks of a group, one copy per side ----

def _our_backbone(shapes: Shapes, body: Dims, device: torch.device) -> nn.Module:
    with torch.device(device):
        net = from_reference_config("ditdh", shapes.reference_kwargs(body))
    unzero(net, 0)
    return net


def _our_decoder(shapes: Shapes, device: torch.device) -> nn.Module:
    with torch.device(device):
        net = ViTDecoder(shapes.channels, (shapes.grid, shapes.grid), size=shapes.decoder,
                         patch_size=shapes.decoder_patch)
    unzero(net, 0)
    return net


def _bases(plan: Plan, ref: Reference | None, kind: str, device: torch.device,
           body: Dims | None = None) -> tuple[dict[str, nn.Module], float | None]:
    """One network per base (same weights when both are present) and their agreement."""
    wanted = {s.base for s in plan.sides}
    if "reference" in wanted:
        pair = (decoder_pair(ref, plan.shapes, device) if kind == "decoder"
                else backbone_pair(ref, plan.shapes, body, device))
        agree = check_agreement(*pair, plan.shapes, device, decoder=kind == "decoder")
        nets = dict(zip(("reference", "ours"), pair))
        return {b: n for b, n in nets.items() if b in wanted}, agree
    net = _our_decoder(plan.shapes, device) if kind == "decoder" else _our_backbone(plan.shapes, body, device)
    return {"ours": net}, None


def _per_side(bases: dict[str, nn.Module], sides: list[Side], train: bool, last: bool) -> dict[str, nn.Module]:
    """A private copy of its base network for every side (compiling patches a network in place).

    In a group's ``last`` measurement the last side of each base takes the base itself, so that
    a training step (the largest memory: gradients and AdamW state per side) holds one copy less.
    """
    nets = {}
    for i, side in enumerate(sides):
        reuse = last and all(s.base != side.base for s in sides[i + 1:])
        nets[side.name] = (bases.pop(side.base) if reuse else copy.deepcopy(bases[side.base])).train(train)
    return nets


def _free(device: torch.device) -> None:
    """Return the memory of networks dropped between measurements (to the OS too: glibc keeps it otherwise)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    release_freed_memory()


def _params(net: nn.Module) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


def _compiled(net: nn.Module, side: Side) -> nn.Module:
    return compile_network(net, side.base == "reference") if side.compile else net


# ---- the measurements ----

def _sample_steps(what: str, plan: Plan, ref: Reference | None, nets: dict[str, nn.Module],
                  guides: dict[str, nn.Module], inputs: Inputs, acc: Any,
                  counts: dict[str, int]) -> dict[str, Step]:
    recipe = plan.recipe
    if what == "sample_cfg_interval":
        recipe = Recipe(**{**asdict(recipe), "cfg_interval": (0.0, 0.7)})
    steps = {}
    for side in plan.sides:
        net = nets[side.name]
        guide = guides.get(side.name) if what == "sample_ag" else None
        run_net, run_guide = _compiled(net, side), (None if guide is None else _compiled(guide, side))
        if side.base == "reference":
            step = reference_sample(run_net, ref, plan.shapes, inputs, acc, recipe, run_guide)
        else:
            step = our_sample(run_net, plan.shapes, inputs, acc, recipe, run_guide)
        if not side.compile:
            watched = [net.x_embedder] + ([] if guide is None else [guide.x_embedder])
            step = _counting_first_call(step, watched, counts, side.name)
        steps[side.name] = step
    return steps


def _train_steps(plan: Plan, ref: Reference | None, nets: dict[str, nn.Module], inputs: Inputs,
                 acc: Any, decoder: bool) -> dict[str, Step]:
    steps = {}
    for side in plan.sides:
        net = nets[side.name]
        run_net, params = _compiled(net, side), _params(net)
        if side.base == "reference":
            steps[side.name] = (reference_decoder_step(run_net, params, ref, inputs, acc, plan.recipe) if decoder
                                else reference_train_step(run_net, params, ref, plan.shapes, inputs, acc, plan.recipe))
        else:
            steps[side.name] = (
                our_decoder_step(run_net, params, inputs, acc, plan.recipe) if decoder
                else our_train_step(run_net, params, plan.shapes, inputs, acc, plan.recipe))
    return steps


def _decode_steps(plan: Plan, nets: dict[str, nn.Module], inputs: Inputs, acc: Any) -> dict[str, Step]:
    return {side.name: (reference_decode_step if side.base == "reference" else our_decode)(
        _compiled(nets[side.name], side), inputs, acc) for side in plan.sides}


def _measure(what: str, steps: dict[str, Step], plan: Plan, batch: int, device: torch.device,
             counts: dict[str, int] | None = None, agree: float | None = None,
             profile: Callable[[str, dict[str, Step]], None] | None = None) -> Measurement:
    print(f"versus: timing {what} ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
    timed = interleave(steps, plan.rounds, plan.calls, plan.warmup, device)
    baseline = plan.sides[0].name
    stats, cpu_stats = ratios(timed.seconds, baseline), ratios(timed.cpu_seconds, baseline)
    ips = {name: batch * plan.calls / _median(times) for name, times in timed.seconds.items()}
    per_sample = {name: n / batch for name, n in (counts or {}).items()}
    if profile is not None:
        profile(what, steps)
    return Measurement(what, batch, timed.seconds, {k: asdict(v) for k, v in stats.items()}, ips, per_sample, agree,
                       timed.cpu_seconds, {k: asdict(v) for k, v in cpu_stats.items()}, timed.page_faults)


def _one(what: str, plan: Plan, ref: Reference | None, acc: Any, bases: dict[str, nn.Module],
         guide_bases: dict[str, nn.Module], agree: float | None, last: bool,
         profile: Callable[[str, dict[str, Step]], None] | None) -> Measurement:
    """One measurement on its own copies of the group's networks (dropped when it returns)."""
    device, shapes = acc.device, plan.shapes
    training = what in ("train", "decoder")
    nets = _per_side(bases, plan.sides, train=training, last=last)
    if what in DECODER:
        inputs = Inputs.make(shapes, plan.decoder_batch_size, device, pixels=True)
        steps = (_train_steps(plan, ref, nets, inputs, acc, decoder=True) if training
                 else _decode_steps(plan, nets, inputs, acc))
        return _measure(what, steps, plan, plan.decoder_batch_size, device, agree=agree, profile=profile)
    if training:
        inputs = Inputs.make(shapes, plan.batch_size, device)
        steps = _train_steps(plan, ref, nets, inputs, acc, decoder=False)
        return _measure(what, steps, plan, plan.batch_size, device, agree=agree, profile=profile)
    inputs = Inputs.make(shapes, plan.sample_batch_size, device)
    guides = _per_side(guide_bases, plan.sides, train=False, last=False) if what == "sample_ag" else {}
    counts: dict[str, int] = {}
    steps = _sample_steps(what, plan, ref, nets, guides, inputs, acc, counts)
    return _measure(what, steps, plan, plan.sample_batch_size, device, counts, agree, profile)


def run_measurements(plan: Plan, wanted: Sequence[str], ref: Reference | None, acc: Any,
                     profile: Callable[[str, dict[str, Step]], None] | None = None) -> list[Measurement]:
    """Build each group's networks once, then time every wanted measurement of it, freeing as it goes."""
    out: list[Measurement] = []
    for group, kind in ((BACKBONE, "backbone"), (DECODER, "decoder")):
        whats = [w for w in group if w in wanted]
        if not whats:
            continue
        bases, agree = _bases(plan, ref, kind, acc.device, plan.shapes.body)
        guide_bases = _bases(plan, ref, kind, acc.device, plan.shapes.guide)[0] if "sample_ag" in whats else {}
        for i, what in enumerate(whats):
            out.append(_one(what, plan, ref, acc, bases, guide_bases, agree, i == len(whats) - 1, profile))
            _free(acc.device)
        del bases, guide_bases
        _free(acc.device)
    return out


def fid_hours(results: list[Measurement]) -> dict[str, dict[str, float]]:
    """Hours one device needs for 50k guided samples plus their decoding, per side and guidance."""
    by = {m.what: m for m in results}
    if "decode" not in by:
        return {}
    hours: dict[str, dict[str, float]] = {}
    for what in ("sample_cfg", "sample_cfg_interval", "sample_ag"):
        if what not in by:
            continue
        for side, ips in by[what].images_per_s.items():
            decode = by["decode"].images_per_s.get(side)
            if decode:
                hours.setdefault(side, {})[what] = FID_IMAGES * (1 / ips + 1 / decode) / 3600
    return hours


# ---- output ----

def _median(values: Sequence[float]) -> float:
    return sorted(values)[len(values) // 2]


def _ratio_text(r: dict[str, float] | None) -> str:
    return f"x{r['median']:.2f} [{r['low']:.2f}, {r['high']:.2f}]" if r else "(baseline)"


def table(results: list[Measurement], baseline: str) -> str:
    """One row per measurement and side: images/s, median wall and CPU seconds per round, their ratios to the
    baseline, median page faults per round, network images per sample."""
    lines = [f"{'what':<20} {'side':<22} {'batch':>5} {'images/s':>10} {'s/round':>9}  "
             f"{baseline + '/side wall (median [min, max])':<34} {'cpu s':>7}  {'cpu time ratio':<22} "
             f"{'faults':>8} {'net img/sample':>14}"]
    for m in results:
        for side, times in m.seconds.items():
            count = m.network_images_per_sample.get(side)
            cpu = m.cpu_seconds.get(side)
            faults = [f for f in m.page_faults.get(side, []) if f is not None]
            lines.append(f"{m.what:<20} {side:<22} {m.batch_size:>5} {m.images_per_s[side]:>10.3f} "
                         f"{_median(times):>9.3f}  {_ratio_text(m.ratios.get(side)):<34} "
                         f"{'' if not cpu else f'{_median(cpu):.3f}':>7}  {_ratio_text(m.cpu_ratios.get(side)):<22} "
                         f"{'' if not faults else _median(faults):>8} {'' if count is None else f'{count:.0f}':>14}")
    return "\n".join(lines)


def profiler(device: torch.device, rows: int) -> Callable[[str, dict[str, Step]], None]:
    """Prints, per side, the ops that took the most self time during one call (phases labelled)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"

    def run(what: str, steps: dict[str, Step]) -> None:
        for name, step in steps.items():
            with torch.profiler.profile(activities=activities) as prof:
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            print(f"\n--- profile: {what}, {name} (one call; phases: forward+loss, backward, clip+adamw) ---")
            print(prof.key_averages().table(sort_by=sort, row_limit=rows))

    return run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/bench_vs_reference.py", description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=None,
                   help="checkout of github.com/bytetriper/RAE (needed for the reference side)")
    p.add_argument("--sides", default="reference,ours", help="comma list; first is the baseline of the ratios")
    p.add_argument("--what", default="all", help=f"comma list of {', '.join(MEASUREMENTS)}, or all")
    p.add_argument("--size", default="S", help="DiT-DH body: S, B, L, XL or hidden:depth:heads")
    p.add_argument("--head", default="2048:2:16", help="DDT head hidden:depth:heads (paper: 2048:2:16)")
    p.add_argument("--guide_size", default="S", help="autoguidance guide body (paper: S)")
    p.add_argument("--channels", type=int, default=768)
    p.add_argument("--grid", type=int, default=16, help="latent side (16 at 256 px)")
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--decoder", default="XL", help="ViT decoder size: tiny, B, L, XL")
    p.add_argument("--decoder_patch", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=8, help="stage-2 training batch")
    p.add_argument("--sample_batch_size", type=int, default=4, help="images sampled per call (CFG doubles it)")
    p.add_argument("--decoder_batch_size", type=int, default=4)
    p.add_argument("--sample_steps", type=int, default=50, help="Euler grid points (sample_steps - 1 evaluations)")
    p.add_argument("--cfg_scale", type=float, default=1.5)
    p.add_argument("--rounds", type=int, default=5, help="alternating timed rounds")
    p.add_argument("--calls", type=int, default=1, help="calls per side per round")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed rounds first, alternating as the timed ones (compilation and the heap settle there)")
    p.add_argument("--precision", default="fp32", help="fp32 or bf16 (autocast, both sides)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS", help="after timing, profile one call per side")
    p.add_argument("--malloc", default="keep", help="on the CPU: keep (glibc keeps freed memory, no page faults "
                   "caused by the other side) or default (glibc's own trimming and mmap thresholds)")
    return p.parse_args(argv)


def make_plan(args: argparse.Namespace) -> tuple[Plan, list[str]]:
    """Every argument checked before anything is built."""
    sides = parse_sides(args.sides)
    wanted = list(MEASUREMENTS) if args.what == "all" else [w.strip() for w in args.what.split(",") if w.strip()]
    bad = [w for w in wanted if w not in MEASUREMENTS]
    if bad or not wanted:
        raise VersusError(f"--what {args.what!r}: expected all or a comma list of {', '.join(MEASUREMENTS)}")
    if any(s.base == "reference" for s in sides) and not args.reference:
        raise VersusError("the reference side needs --reference /path/to/RAE (a checkout of "
                          "github.com/bytetriper/RAE), or leave it out of --sides")
    if args.precision not in ("fp32", "bf16"):
        raise VersusError(f"--precision {args.precision!r}: must be fp32 or bf16")
    if args.malloc not in MALLOC:
        raise VersusError(f"--malloc {args.malloc!r}: must be one of {', '.join(MALLOC)}")
    for name, least in (("batch_size", 1), ("sample_batch_size", 1), ("decoder_batch_size", 1), ("rounds", 1),
                        ("calls", 1), ("sample_steps", 2), ("warmup", 0), ("profile", 0)):
        if getattr(args, name) < least:
            raise VersusError(f"--{name} {getattr(args, name)}: must be >= {least}")
    if args.threads is not None and args.threads < 1:
        raise VersusError(f"--threads {args.threads}: must be >= 1")
    if args.device not in (None, "cpu") and not args.device.startswith("cuda"):
        raise VersusError(f"--device {args.device!r}: must be cpu or cuda[:N]")
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise VersusError(f"--device {args.device}: no CUDA device is available")
    try:
        shapes = Shapes(parse_dims(args.size, "size"), parse_dims(args.head, "head"),
                        parse_dims(args.guide_size, "guide_size"), args.channels, args.grid, args.num_classes,
                        args.decoder, args.decoder_patch)
    except ValueError as exc:
        raise VersusError(str(exc)) from exc
    recipe = Recipe(sample_steps=args.sample_steps, cfg_scale=args.cfg_scale)
    plan = Plan(sides, shapes, recipe, args.batch_size, args.sample_batch_size, args.decoder_batch_size,
                args.rounds, args.calls, args.warmup)
    return plan, wanted


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Check, build, time, print; returns the JSON record."""
    plan, wanted = make_plan(args)
    ref = load_reference(args.reference) if any(s.base == "reference" for s in plan.sides) else None
    if args.threads:
        torch.set_num_threads(args.threads)
    acc = make_accelerator(args.device, args.precision)
    if acc.device.type == "cuda":  # both release scripts turn TF32 on; so does our runner
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    prof = profiler(acc.device, args.profile) if args.profile else None
    keep = acc.device.type == "cpu" and args.malloc == "keep"
    with keep_freed_memory() if keep else contextlib.nullcontext(False) as kept:
        results = run_measurements(plan, wanted, ref, acc, prof)
    malloc = "keep" if kept else "default (not glibc)" if keep else "default"
    for m in results:
        if m.agreement is not None and m.agreement > AGREEMENT_LIMIT:
            raise RuntimeError(f"{m.what}: the two sides' outputs differ by {m.agreement:.3g} (relative): "
                               "they do not compute the same function, so their times are not comparable")
    header = {"device": str(acc.device), "precision": args.precision, "threads": torch.get_num_threads(),
              "shapes": asdict(plan.shapes), "sample_steps": plan.recipe.sample_steps, "rounds": plan.rounds,
              "calls": plan.calls, "warmup": plan.warmup, "malloc": malloc}
    print(" ".join(f"{k}={v}" for k, v in header.items() if k != "shapes"))
    print("shapes: " + ", ".join(f"{k}={v}" for k, v in asdict(plan.shapes).items()))
    agreements = {m.what: m.agreement for m in results if m.agreement is not None}
    if agreements:
        print("outputs agree (max |ref - ours| / max |ref|, fp32 eval): "
              + ", ".join(f"{k} {v:.1e}" for k, v in agreements.items()))
    print(table(results, plan.sides[0].name))
    hours = fid_hours(results)
    for side, per in hours.items():
        print(f"FID-50k on one device ({side}, sampling + decoding): "
              + ", ".join(f"{k} {v:.2f} h" for k, v in per.items()))
    return print_record(JSON_PREFIX, header, sides=[s.name for s in plan.sides], reference=args.reference,
                        results={m.what: asdict(m) for m in results}, fid50k_hours=hours)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; 0 done, 2 bad arguments or reference checkout."""
    return command_main("bench_vs_reference", parse_args, run, (VersusError, UnusableReference), argv)
