"""Every config of a released file dry-runs offline with the release's parameter counts and latent shapes."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from rae.runner import main

ROOT = Path(__file__).resolve().parent.parent
HUB = "hf://nyu-visionx/RAE-collections"


def dry_run(name: str, capsys) -> str:
    """The dry run's printout, with gin's wrapped long bindings joined onto one line."""
    assert main(["--gin", str(ROOT / "experiments" / f"{name}.gin"), "--dry_run"]) == 0
    return re.sub(r" \\\n\s+", " ", capsys.readouterr().out)


@pytest.mark.parametrize("name, expected", [
    ("sample_ditdh_xl_512_ag", [
        "latent shape: (768, 32, 32)", "backbone: DiTDH, 839.6M parameters (839,560,532)",
        "guidance: Autoguidance, 196.8M parameters (196,750,676)", "autoguidance.scale = 1.5",
        "dinov2.input_size = 448", "ditdh.input_size = 32",
        f"GUIDANCE/autoguidance.checkpoint = '{HUB}/DiTs/Dinov2/wReg_base/ImageNet512/DiTDH-S_ep20/stage2_model.pt'",
        f"rae.decoder_path = '{HUB}/decoders/dinov2/wReg_base/ViTXL_n08_i512/model.pt'"]),
    ("reconstruct_mae_b", ["latent shape: (768, 16, 16)", "mae.input_size = 256",
                           f"rae.decoder_path = '{HUB}/decoders/mae/base_p16/ViTXL_n08/model.pt'"]),
    ("reconstruct_siglip2_b", ["latent shape: (768, 16, 16)", "siglip2.input_size = 256",
                               f"rae.stats_path = '{HUB}/stats/siglip2/base_p16_i256/ImageNet1k/stat.pt'"]),
    ("repa_sit_xl_512", ["latent shape: (4, 64, 64)", "backbone: SiT, 676.0M parameters (675,995,920)",
                         "repa_target/dinov2.input_size = 448", "sd_vae.image_size = 512"]),
])
def test_released_file_configs_dry_run(name, expected, capsys):
    out = dry_run(name, capsys)
    for line in expected:
        assert line in out, line


# ---------------------------------------------------------------------------------------------
# The released facts, one row each: (release file, key, released value, our experiment, the line
# its operative config must hold). A config that drifts from the release fails with its row.
# docs/paper_configs.md gives the same facts in words.
# ---------------------------------------------------------------------------------------------
RAE_XL = "RAE configs/stage2/training/ImageNet256/DiTDH-XL_DINOv2-B.yaml"
RAE_S = "RAE configs/stage2/training/ImageNet256/DiTDH-S_DINOv2-B.yaml"
RAE_CFG = "RAE configs/stage2/sampling/ImageNet256/DiTDHXL-DINOv2-B.yaml"
RAE_AG = "RAE configs/stage2/sampling/ImageNet256/DiTDHXL-DINOv2-B_AG.yaml"
RAE_AG512 = "RAE configs/stage2/sampling/ImageNet512/DiTDH-XL_DINOv2-B_decXL_AG.yaml"
RAE_S1 = "RAE configs/stage1/training/DINOv2-B_decXL.yaml"
RAE_XL512 = "RAE configs/stage2/training/ImageNet512/DiTDH-XL_DINOv2-B.yaml (input_size corrected to 32)"
REPA_TRAIN = "REPA README train command + train.py defaults"
REPA_GEN = "REPA README generate command + generate.py defaults"
REPA_T2I = "REPA README train_t2i command + train_t2i.py / dataset.py defaults"
REPA_T2I_GEN = "REPA generate_t2i.py + samplers_t2i.py defaults"
RELEASED_FACTS = [
    (RAE_XL, "training.global_batch_size", "1024", "ditdh_xl", "stage2.batch_size = 1024"),
    (RAE_XL, "training.epochs", "1400", "ditdh_xl", "stage2.total_epochs = 1400"),
    (RAE_XL, "training.ema_decay", "0.9995", "ditdh_xl", "optim.ema_decay = 0.9995"),
    (RAE_XL, "training.clip_grad", "1.0", "ditdh_xl", "optim.grad_clip = 1.0"),
    (RAE_XL, "training.global_seed", "42", "ditdh_xl", "run.seed = 42"),
    (RAE_XL, "training.checkpoint_interval", "10 (epochs)", "ditdh_xl", "optim.checkpoint_every_epochs = 10"),
    (RAE_XL, "training.optimizer.lr", "2.0e-4", "ditdh_xl", "optim.lr = 0.0002"),
    (RAE_XL, "training.optimizer.betas", "[0.9, 0.95]", "ditdh_xl", "optim.betas = (0.9, 0.95)"),
    (RAE_XL, "training.optimizer.weight_decay", "0.0", "ditdh_xl", "optim.weight_decay = 0.0"),
    (RAE_XL, "training.scheduler.type", "linear", "ditdh_xl", "optim.lr_schedule = 'linear'"),
    (RAE_XL, "training.scheduler.warmup_epochs", "40", "ditdh_xl", "optim.warmup_epochs = 40"),
    (RAE_XL, "training.scheduler.warmup_from_zero", "false", "ditdh_xl", "optim.warmup_mode = 'constant'"),
    (RAE_XL, "training.scheduler.decay_end_epoch", "800", "ditdh_xl", "optim.decay_end_epoch = 800"),
    (RAE_XL, "training.scheduler.final_lr", "2.0e-5", "ditdh_xl", "optim.final_lr = 2e-05"),
    (RAE_XL, "README: --precision fp32", "fp32", "ditdh_xl", "run.precision = 'fp32'"),
    (RAE_XL, "train.py encodes every step in fp32", "fp32 latents", "cache_latents_dinov2_b",
     "cache_latents.dtype = 'float32'"),
    (RAE_XL, "train.py encodes every step in fp32", "fp32", "cache_latents_dinov2_b", "run.precision = 'fp32'"),
    (RAE_XL, "stage_2.params.hidden_size", "[1152, 2048]", "ditdh_xl", "ditdh.head_hidden_size = 2048"),
    (RAE_XL, "stage_2.params.depth", "[28, 2]", "ditdh_xl", "ditdh.head_depth = 2"),
    (RAE_XL, "stage_2.params.num_heads", "[16, 16]", "ditdh_xl", "ditdh.head_num_heads = 16"),
    (RAE_XL, "stage_2 parameter count", "838,675,796", "ditdh_xl", "DiTDH, 838.7M parameters (838,675,796)"),
    (RAE_XL, "stage_2.params.use_swiglu", "true", "ditdh_xl", "ditdh.use_swiglu = True"),
    (RAE_XL, "stage_2.params.use_rope", "true", "ditdh_xl", "ditdh.use_rope = True"),
    (RAE_XL, "stage_2.params.use_rmsnorm", "true", "ditdh_xl", "ditdh.use_rmsnorm = True"),
    (RAE_XL, "stage_2.params.use_qknorm", "false", "ditdh_xl", "ditdh.use_qknorm = False"),
    (RAE_XL, "stage_2.params.class_dropout_prob", "0.1", "ditdh_xl", "ditdh.class_dropout_prob = 0.1"),
    (RAE_XL, "transport.params.time_dist_type", "logit-normal_0_1", "ditdh_xl",
     "transport.time_schedule = @time_schedule.logit_normal()"),
    (RAE_XL, "transport.params.time_dist_type", "logit-normal_0_1", "ditdh_xl", "logit_normal.std = 1.0"),
    (RAE_XL, "misc.time_dist_shift_base", "4096", "ditdh_xl", "transport.shift_base_dim = 4096"),
    (RAE_XL, "transport check_interval (train_eps 0, sample_eps 1e-3)", "t <= 0.999", "ditdh_xl",
     "transport.truncate_at = 0.999"),
    (RAE_S, "stage_2.params.hidden_size", "[384, 2048]", "ditdh_s", "DiTDH, 196.5M parameters (196,455,764)"),
    (RAE_S, "training.global_seed", "42", "ditdh_s", "run.seed = 42"),
    (RAE_S, "training.scheduler.warmup_from_zero", "false", "ditdh_s", "optim.warmup_mode = 'constant'"),
    (RAE_CFG, "sampler.params.sampling_method", "euler", "sample_ditdh_xl", "SAMPLER/ode.method = 'euler'"),
    (RAE_CFG, "sampler.params.num_steps", "50", "sample_ditdh_xl", "SAMPLER/ode.num_steps = 50"),
    (RAE_CFG, "guidance.scale", "1.0", "sample_ditdh_xl", "GUIDANCE/cfg.scale = 1.0"),
    (RAE_CFG, "sample_ddp.py: 50 per class", "equal", "sample_ditdh_xl", "sample.labels = 'equal'"),
    (RAE_CFG, "sample_ddp.py: x.clamp(0,1)*255 -> uint8", "truncate", "sample_ditdh_xl", "sample.quantize = 'truncate'"),
    (RAE_CFG, "sample_ddp.py --precision default", "fp32", "sample_ditdh_xl", "run.precision = 'fp32'"),
    (RAE_AG, "guidance.method / scale", "autoguidance 1.42", "sample_ditdh_xl_ag", "GUIDANCE/autoguidance.scale = 1.42"),
    (RAE_AG, "guidance.t-max", "1.0", "sample_ditdh_xl_ag", "GUIDANCE/autoguidance.t_max = 1.0"),
    (RAE_AG, "guidance.guidance_model.ckpt", "DiTDH-S_ep14", "sample_ditdh_xl_ag",
     f"GUIDANCE/autoguidance.checkpoint = '{HUB}/DiTs/Dinov2/wReg_base/ImageNet256/DiTDH-S_ep14/stage2_model.pt'"),
    (RAE_XL512, "training.global_seed", "0", "ditdh_xl_512", "run.seed = 0"),
    (RAE_XL512, "stage_1.params.encoder_input_size", "448", "ditdh_xl_512", "dinov2.input_size = 448"),
    (RAE_XL512, "stage_2.params.input_size (corrected)", "32", "ditdh_xl_512", "latent shape: (768, 32, 32)"),
    (RAE_XL512, "decay_start_epoch / decay_end_epoch", "40 / 800", "ditdh_xl_512", "optim.warmup_mode = 'constant'"),
    (RAE_XL512, "training.global_batch_size", "1024", "ditdh_xl_512", "stage2.batch_size = 1024"),
    (RAE_AG512, "guidance.scale", "1.5", "sample_ditdh_xl_512_ag", "GUIDANCE/autoguidance.scale = 1.5"),
    (RAE_AG512, "stage_2.params.input_size", "32", "sample_ditdh_xl_512_ag", "ditdh.input_size = 32"),
    (RAE_AG512, "stage_1.params.encoder_input_size", "448", "sample_ditdh_xl_512_ag", "dinov2.input_size = 448"),
    (RAE_S1, "training.epochs", "16", "rae_dinov2_b_decxl", "stage1.total_epochs = 16"),
    (RAE_S1, "training.global_batch_size", "512", "rae_dinov2_b_decxl", "stage1.batch_size = 512"),
    (RAE_S1, "training.ema_decay", "0.9978", "rae_dinov2_b_decxl", "optim.ema_decay = 0.9978"),
    (RAE_S1, "training.clip_grad", "0.0 (off)", "rae_dinov2_b_decxl", "optim.grad_clip = None"),
    (RAE_S1, "training.optimizer.lr", "2.0e-4", "rae_dinov2_b_decxl", "optim.lr = 0.0002"),
    (RAE_S1, "training.scheduler.type", "cosine", "rae_dinov2_b_decxl", "optim.lr_schedule = 'cosine'"),
    (RAE_S1, "training.scheduler.warmup_epochs", "1", "rae_dinov2_b_decxl", "optim.warmup_epochs = 1"),
    (RAE_S1, "training.scheduler.final_lr", "2.0e-5", "rae_dinov2_b_decxl", "optim.final_lr = 2e-05"),
    (RAE_S1, "stage_1.params.noise_tau", "0.8", "rae_dinov2_b_decxl", "rae.noise_tau = 0.8"),
    (RAE_S1, "gan.loss.disc_weight", "0.75", "rae_dinov2_b_decxl", "stage1.disc_weight = 0.75"),
    (RAE_S1, "gan.loss.perceptual_weight", "1.0", "rae_dinov2_b_decxl", "stage1.lpips_weight = 1.0"),
    (RAE_S1, "gan.loss.disc_upd_start", "6", "rae_dinov2_b_decxl", "stage1.disc_start_epoch = 6"),
    (RAE_S1, "gan.loss.disc_start", "8", "rae_dinov2_b_decxl", "stage1.gan_start_epoch = 8"),
    (RAE_S1, "gan.loss.max_d_weight", "10000.0", "rae_dinov2_b_decxl", "stage1.adaptive_weight_cap = 10000.0"),
    (RAE_S1, "gan.disc.arch.ks", "9", "rae_dinov2_b_decxl", "dino_disc.kernel_size = 9"),
    (RAE_S1, "gan.disc.augment.prob", "1.0", "rae_dinov2_b_decxl", "diffaug.prob = 1.0"),
    (RAE_S1, "gan.disc.augment.cutout", "0.0", "rae_dinov2_b_decxl", "diffaug.cutout = 0.0"),
    (REPA_TRAIN, "--model", "SiT-XL/2", "repa_sit_xl", "sit.size = 'XL/2'"),
    (REPA_TRAIN, "--encoder-depth", "8", "repa_sit_xl", "repa.encoder_depth = 8"),
    (REPA_TRAIN, "--proj-coeff", "0.5", "repa_sit_xl", "repa.proj_coeff = 0.5"),
    (REPA_TRAIN, "models/sit.py SiT(projector_dim)", "2048", "repa_sit_xl", "repa.projector_dim = 2048"),
    (REPA_TRAIN, "--enc-type", "dinov2-vit-b (torch.hub, no registers)", "repa_sit_xl",
     "repa_target/dinov2.registers = False"),
    (REPA_TRAIN, "--weighting", "uniform", "repa_sit_xl", "transport.time_schedule = @time_schedule.uniform()"),
    (REPA_TRAIN, "--batch-size", "256", "repa_sit_xl", "stage2.batch_size = 256"),
    (REPA_TRAIN, "--learning-rate", "1e-4", "repa_sit_xl", "optim.lr = 0.0001"),
    (REPA_TRAIN, "--adam-beta2", "0.999", "repa_sit_xl", "optim.betas = (0.9, 0.999)"),
    (REPA_TRAIN, "--max-train-steps", "400000", "repa_sit_xl", "stage2.total_steps = 400000"),
    (REPA_TRAIN, "--mixed-precision", "fp16", "repa_sit_xl", "run.precision = 'fp16'"),
    (REPA_TRAIN, "train.py: posterior sample every step", "sample_posterior", "repa_sit_xl",
     "stage2.stochastic_encode = True"),
    (REPA_TRAIN, "latents_scale", "0.18215", "repa_sit_xl", "sd_vae.scaling_factor = 0.18215"),
    (REPA_TRAIN, "train.py update_ema(decay)", "0.9999", "repa_sit_xl", "optim.ema_decay = 0.9999"),
    (REPA_GEN, "--mode / --num-steps", "sde 250", "sample_repa_sit_xl", "SAMPLER/sde.num_steps = 250"),
    (REPA_GEN, "--cfg-scale", "1.8", "sample_repa_sit_xl", "GUIDANCE/cfg.scale = 1.8"),
    (REPA_GEN, "--guidance-high", "0.7", "sample_repa_sit_xl", "GUIDANCE/cfg.t_max = 0.7"),
    (REPA_GEN, "labels torch.randint", "random", "sample_repa_sit_xl", "sample.labels = 'random'"),
    (REPA_GEN, "--vae", "ema", "sample_repa_sit_xl", "sd_vae.weights = 'stabilityai/sd-vae-ft-ema'"),
    (REPA_T2I, "models/mmdit.py MMDiT(depth)", "24", "repa_mmdit_coco", "mmdit.depth = 24"),
    (REPA_T2I, "--encoder-depth", "8", "repa_mmdit_coco", "repa.encoder_depth = 8"),
    (REPA_T2I, "--enc-type", "dinov2-vit-b (torch.hub, no registers)", "repa_mmdit_coco",
     "repa_target/dinov2.registers = False"),
    (REPA_T2I, "--proj-coeff", "0.5", "repa_mmdit_coco", "repa.proj_coeff = 0.5"),
    (REPA_T2I, "--batch-size", "256", "repa_mmdit_coco", "stage2.batch_size = 256"),
    (REPA_T2I, "--learning-rate", "1e-4", "repa_mmdit_coco", "optim.lr = 0.0001"),
    (REPA_T2I, "--adam-beta2", "0.999", "repa_mmdit_coco", "optim.betas = (0.9, 0.999)"),
    (REPA_T2I, "--max-grad-norm", "1.0", "repa_mmdit_coco", "optim.grad_clip = 1.0"),
    (REPA_T2I, "--max-train-steps", "400000", "repa_mmdit_coco", "stage2.total_steps = 400000"),
    (REPA_T2I, "--checkpointing-steps", "50000", "repa_mmdit_coco", "optim.checkpoint_every = 50000"),
    (REPA_T2I, "--mixed-precision", "fp16", "repa_mmdit_coco", "run.precision = 'fp16'"),
    (REPA_T2I, "update_ema(decay)", "0.9999", "repa_mmdit_coco", "optim.ema_decay = 0.9999"),
    (REPA_T2I, "--weighting", "uniform", "repa_mmdit_coco", "transport.time_schedule = @time_schedule.uniform()"),
    (REPA_T2I, "dataset.py MSCOCO256Features(p_uncond)", "0.1", "repa_mmdit_coco", "coco_features.p_uncond = 0.1"),
    (REPA_T2I, "latents_scale", "0.18215", "repa_mmdit_coco", "coco_features.scaling_factor = 0.18215"),
    (REPA_T2I_GEN, "--mode / --num-steps", "ode 50 (51 grid points)", "sample_mmdit_coco",
     "SAMPLER/euler.num_steps = 51"),
    (REPA_T2I_GEN, "--heun", "False", "sample_mmdit_coco", "SAMPLER = @sampler.euler()"),
    (REPA_T2I_GEN, "--cfg-scale", "1.5", "sample_mmdit_coco", "GUIDANCE/cfg.scale = 1.5"),
    (REPA_T2I_GEN, "--guidance-low", "0.0", "sample_mmdit_coco", "GUIDANCE/cfg.t_min = 0.0"),
    (REPA_T2I_GEN, "--guidance-high", "1.0", "sample_mmdit_coco", "GUIDANCE/cfg.t_max = 1.0"),
    (REPA_T2I_GEN, "--vae", "ema", "sample_mmdit_coco", "sd_vae.weights = 'stabilityai/sd-vae-ft-ema'"),
    (REPA_T2I_GEN, "Accelerator(mixed_precision=None)", "fp32", "sample_mmdit_coco", "run.precision = 'fp32'"),
    (REPA_T2I_GEN, "torch.load(ckpt)['model']", "model", "sample_mmdit_coco", "sample.prefer = 'model'"),
    (REPA_T2I_GEN, "MSCOCO256Features(mode='val')", "val captions", "sample_mmdit_coco",
     "coco_features.split = 'val'"),
]


@pytest.fixture(scope="module")
def operative_configs() -> dict[str, str]:
    """Each experiment's dry-run printout, made once (gin state is global: one run at a time)."""
    found = {}
    for name in sorted({row[3] for row in RELEASED_FACTS}):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["--gin", str(ROOT / "experiments" / f"{name}.gin"), "--dry_run"]) == 0, name
        found[name] = re.sub(r" \\\n\s+", " ", out.getvalue())
    return found


@pytest.mark.parametrize("source, key, released, experiment, line", RELEASED_FACTS,
                         ids=[f"{row[3]}:{row[1]}" for row in RELEASED_FACTS])
def test_released_fact(operative_configs, source, key, released, experiment, line):
    assert line in operative_configs[experiment], (
        f"experiments/{experiment}.gin drifted from the release: {source} has {key} = {released}, "
        f"so its operative config must hold `{line}`")
