"""torchrun on CPU (gloo): two ranks train as one process with the same global batch; a dead rank
ends the job; FSDP2 steps as DDP; an out-of-memory step says what to lower."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from aim import Repo
from test_stage1_training import assert_same_training

from rae.accelerator import Accelerator
from rae.train.checkpoint import Checkpointer
from rae.train.distributed import transformer_blocks, wrap_for_training
from rae.train.step import StepOutOfMemory, accumulate_gradients, split_batch

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}",
            "RAE_DIST_TIMEOUT_S": "60"}


def launch(command: list[str], config: str, bindings: list[str], extra_env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess:
    args = ["--gin", config]
    for binding in bindings:
        args += ["--gin_param", binding]
    return subprocess.run(command + args, check=False, cwd=ROOT, env={**env(), **(extra_env or {})},
                          capture_output=True, text=True, timeout=170)


def run(command: list[str], run_root: Path, extra_env: dict[str, str] | None = None,
        *bindings: str) -> subprocess.CompletedProcess:
    """stage2_tiny for 4 steps, logging every step, checkpoints at 2 and 4, no grids (unless rebound)."""
    return launch(command, "experiments/stage2_tiny.gin",
                  [f"run.run_root = '{run_root}'", "stage2.total_steps = 4", "stage2.log_every = 1",
                   "optim.checkpoint_every = 2", "stage2.sample_every = 0", "embedded.size = 16", *bindings],
                  extra_env)


def torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "tools/run.py"]


def single() -> list[str]:
    return [sys.executable, "tools/run.py"]


def losses(run_root: Path) -> list[list[float]]:
    """Every Aim run's per-step loss series."""
    repo = Repo(str(run_root))
    found = []
    for run in repo.iter_runs():
        for metric in run.metrics():
            if metric.name == "loss":
                found.append([value for _, (value, *_) in metric.data.items()])
    return found


def run_folders(run_root: Path) -> list[Path]:
    return [p.parent for p in run_root.rglob("ema.pt")]


@pytest.mark.slow
def test_two_gloo_ranks_train_exactly_as_one_process_with_the_same_global_batch(tmp_path):
    one = run(single(), tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(torchrun(2), tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    (loss_one,), (loss_two,) = losses(tmp_path / "one"), losses(tmp_path / "two")  # one Aim run each
    assert len(loss_one) == 4 and loss_two == pytest.approx(loss_one, rel=1e-5)
    (folder_one,), (folder_two,) = run_folders(tmp_path / "one"), run_folders(tmp_path / "two")
    ema_one = torch.load(folder_one / "ema.pt", weights_only=True)
    ema_two = torch.load(folder_two / "ema.pt", weights_only=True)
    for key, value in ema_one.items():
        torch.testing.assert_close(ema_two[key], value, rtol=1e-4, atol=1e-6)
    state_one = Checkpointer(folder_one / "checkpoints").load_latest()
    state_two = Checkpointer(folder_two / "checkpoints").load_latest()
    assert state_one["step"] == state_two["step"] == 4
    for key, value in state_one["state"]["backbone"].items():
        torch.testing.assert_close(state_two["state"]["backbone"][key], value, rtol=1e-4, atol=1e-6)
    assert len(set(loss_one)) == 4  # the weights moved: no step repeats the loss of another


def one_and_two_ranks(tmp_path: Path, config: str, bindings: list[str]) -> tuple[dict, dict]:
    """Run ``config`` in one process and on two gloo ranks; assert equal per-step losses (to 1e-5);
    return both latest checkpoints' state."""
    for name, command in (("one", single()), ("two", torchrun(2))):
        result = launch(command, f"experiments/{config}.gin", [f"run.run_root = '{tmp_path / name}'", *bindings])
        assert result.returncode == 0, result.stderr[-3000:]
    (loss_one,), (loss_two,) = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(loss_one) >= 2 and loss_two == pytest.approx(loss_one, rel=1e-5)
    one, two = (checkpoint_state(next(tmp_path.glob(f"{name}/{config}/*")))["state"] for name in ("one", "two"))
    return one, two


@pytest.mark.slow
def test_two_gloo_ranks_train_the_stage1_decoder_and_discriminator_as_one_process(tmp_path):
    # L1, LPIPS, the GAN generator loss with its adaptive weight and the discriminator, from step 1
    bindings = ["stage1.disc_start_epoch = 0", "stage1.gan_start_epoch = 0", "embedded.size = 16",
                "stage1.total_steps = 2", "stage1.log_every = 1", "optim.checkpoint_every = 2",
                "stage1.grid_every = 0"]
    state_one, state_two = one_and_two_ranks(tmp_path, "stage1_tiny", bindings)
    assert state_one["data"] == state_two["data"]
    assert_same_training(state_two, state_one)


def checkpoint_state(folder: Path) -> dict:
    return Checkpointer(folder / "checkpoints").load_latest()


@pytest.mark.slow
def test_fsdp2_stage2_trains_as_one_process_and_resumes_from_its_whole_state_checkpoints(tmp_path):
    fsdp = ("stage2.parallel = 'fsdp'", "stage2.sample_every = 2")  # grids: the sharded EMA samples on all ranks
    one = run(single(), tmp_path / "one", None, *fsdp)  # one process: "fsdp" shards nothing
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(torchrun(2), tmp_path / "two", None, *fsdp)
    assert two.returncode == 0, two.stderr[-3000:]
    (loss_one,), (loss_two,) = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(loss_one) == 4 and loss_two == pytest.approx(loss_one, rel=1e-5)
    (folder_one,), (folder_two,) = run_folders(tmp_path / "one"), run_folders(tmp_path / "two")
    state_one, state_two = checkpoint_state(folder_one), checkpoint_state(folder_two)
    assert state_two["state"]["parallel"] == state_one["state"]["parallel"] == {"value": "fsdp"}
    assert state_two["state"]["optimizer"]["state"].keys() == state_one["state"]["optimizer"]["state"].keys()
    for name in ("backbone", "ema"):  # whole tensors, under the unsharded names
        assert state_two["state"][name].keys() == state_one["state"][name].keys()
        for key, value in state_one["state"][name].items():
            torch.testing.assert_close(state_two["state"][name][key], value, rtol=1e-4, atol=1e-6)
    ema_two = torch.load(folder_two / "ema.pt", weights_only=True)
    for key, value in torch.load(folder_one / "ema.pt", weights_only=True).items():
        torch.testing.assert_close(ema_two[key], value, rtol=1e-4, atol=1e-6)

    # Lose the last checkpoint and the outputs: the same command resumes every rank from step 2's
    # whole-state checkpoint (weights, EMA, optimiser moments) and ends with the same weights, on
    # two ranks or on one.
    for command in (torchrun(2), single()):
        Checkpointer(folder_two / "checkpoints").path(4).unlink()
        for name in ("ema.pt", "DONE"):
            (folder_two / name).unlink()
        again = run(command, tmp_path / "two", None, *fsdp)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "resumed from step 2" in again.stderr
        resumed = checkpoint_state(folder_two)
        assert resumed["step"] == 4
        for name in ("backbone", "ema"):
            for key, value in state_two["state"][name].items():
                torch.testing.assert_close(resumed["state"][name][key], value, rtol=1e-5, atol=1e-7)
        for key, value in ema_two.items():
            torch.testing.assert_close(torch.load(folder_two / "ema.pt", weights_only=True)[key], value,
                                       rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_fsdp2_repa_shards_nested_encoder_layers_and_trains_as_one_process(tmp_path):
    # REPA's target encoders are a list of encoders, each with its list of layers: nested shard units
    bindings = ["stage2.total_steps = 2", "stage2.log_every = 1", "optim.checkpoint_every = 2",
                "stage2.sample_every = 0", "embedded.size = 16", "stage2.parallel = 'fsdp'"]
    state_one, state_two = one_and_two_ranks(tmp_path, "repa_tiny", bindings)
    for name in ("backbone", "alignment", "ema"):  # the alignment: the projectors only, whole
        assert state_two[name].keys() == state_one[name].keys() and state_one[name]
        for key, value in state_one[name].items():
            torch.testing.assert_close(state_two[name][key], value, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_whole_job_with_an_error_in_bounded_time(tmp_path):
    start = time.monotonic()
    result = run(torchrun(2) + ["--import", "plugins_for_tests.dying_rank"], tmp_path,
                 {"RAE_TEST_DIE_RANK": "1", "RAE_TEST_DIE_AT": "2"})
    elapsed = time.monotonic() - start
    assert result.returncode != 0 and elapsed < 120
    assert "exitcode  : 17" in result.stderr  # torchrun names the dead rank's exit


FSDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from torch import nn
from rae.accelerator import make_accelerator
from rae.train.distributed import wrap_for_training
from rae.train.step import accumulate_gradients, optimizer_step, split_batch

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(6, 16), nn.Linear(16, 3)
        self.blocks = nn.ModuleList([nn.Linear(16, 16), nn.Linear(16, 16)])
    def forward(self, x):
        x = torch.tanh(self.inp(x))
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.out(x)

torch.set_num_threads(1)
acc = make_accelerator("cpu")
torch.manual_seed(acc.rank)  # other weights on every rank: the wrapper must start all from rank 0's
model = Net()
module, sync = wrap_for_training(model, acc, sys.argv[1])
opt = torch.optim.AdamW(module.parameters(), lr=1e-2)
gen = torch.Generator().manual_seed(1)
for _ in range(3):
    x, y = torch.randn(8, 6, generator=gen).chunk(2)[acc.rank], torch.randn(8, 3, generator=gen).chunk(2)[acc.rank]
    loss = lambda mb: (((module(mb[0]) - mb[1]) ** 2).mean(), {})
    accumulate_gradients(loss, split_batch((x, y), 2), acc, ddp_module=sync)
    optimizer_step(opt, module.parameters(), 1.0)
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if acc.rank == 0:
    torch.save(state, sys.argv[2])
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_fsdp2_on_gloo_trains_as_ddp_with_gradient_accumulation(tmp_path):
    script = tmp_path / "fsdp_vs_ddp.py"
    script.write_text(FSDP_SCRIPT)
    states = {}
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / f"{strategy}.pt"
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 str(script), strategy, str(out)], check=False, cwd=ROOT, env=env(), capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        states[strategy] = torch.load(out, weights_only=True)
    assert states["fsdp"].keys() == states["ddp"].keys()
    for key, value in states["ddp"].items():
        torch.testing.assert_close(states["fsdp"][key], value, rtol=1e-5, atol=1e-6)


def test_one_process_wrapping_is_a_no_op_and_blocks_are_the_shard_units():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ModuleList([torch.nn.Linear(2, 2)] * 2))
    assert wrap_for_training(model, Accelerator(torch.device("cpu")), "fsdp") == (model, None)
    assert len(transformer_blocks(model)) == 2
    with pytest.raises(ValueError, match="one of"):
        wrap_for_training(model, Accelerator(torch.device("cpu")), "zero3")


def test_out_of_memory_in_a_step_names_the_step_sizes_precision_and_what_to_lower():
    acc = Accelerator(torch.device("cpu"), precision="bf16", rank=1, world_size=4)
    batch = (torch.zeros(16, 3), torch.zeros(16))

    def loss_fn(mb):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(StepOutOfMemory) as raised:
        accumulate_gradients(loss_fn, split_batch(batch, 8), acc, step=7)
    message = str(raised.value)
    for part in ("step 7", "per-rank batch 16", "micro-batches of 8", "precision bf16", "rank 1 of 4",
                 "micro_batch_size", "'bf16'", "'fsdp'", "Tried to allocate 2.00 GiB"):
        assert part in message
    assert isinstance(raised.value, torch.OutOfMemoryError)
