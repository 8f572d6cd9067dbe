"""Text-to-image: caption conditioning (rae.conditions), coco_features, preprocess_t2i, the t2i configs."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_latent_cache import ROOT, Recorder, build, run_experiment
from test_sd_vae import TINY as TINY_VAE
from test_sd_vae import needs_diffusers

from rae.accelerator import Accelerator
from rae.backbones.mmdit import MMDiT
from rae.backbones.sit import SiT
from rae.conditions import BatchContextDropout, Captions, ClassLabels, check_condition
from rae.data.coco_features import CocoFeatures, CocoImages
from rae.data.embedded_captions import EmbeddedCaptions
from rae.encoders.clip_text import CharacterTokenizer, CLIPTextEncoder
from rae.experiments.base import RunContext
from rae.experiments.preprocess_t2i import PreprocessT2I, uvit_center_crop
from rae.run_file import set_run_root
from rae.runner import main
from rae.sampling.cfg import ClassifierFreeGuidance
from rae.tracking.tracker import Tracker
from rae.weights import WeightsNotFound

LOG = logging.getLogger("test_t2i")
T2I_TINY = ROOT / "experiments" / "t2i_tiny.gin"
TINY_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                 max_position_embeddings=12)


def text_encoder() -> CLIPTextEncoder:
    return CLIPTextEncoder(weights=None, tokenizer="characters", max_length=12, config=TINY_TEXT)


# ---------------------------------------------------------------------------------------------
# The condition slots: dropout, guidance, sources, mismatches
# ---------------------------------------------------------------------------------------------
def test_context_dropout_replaces_whole_contexts_by_the_empty_one():
    empty = torch.full((3, 4), -1.0)
    contexts = torch.randn(5, 3, 4)
    dropped = BatchContextDropout(empty, 0.1)(contexts, torch.tensor([0.05, 0.5, 0.09, 0.1, 0.99]))
    assert torch.equal(dropped[[0, 2]], empty.expand(2, 3, 4)) and torch.equal(dropped[[1, 3, 4]], contexts[[1, 3, 4]])
    torch.manual_seed(0)
    many = BatchContextDropout(empty, 0.1)(torch.zeros(20000, 3, 4))
    assert (many[:, 0, 0] == -1).float().mean().item() == pytest.approx(0.1, abs=0.01)


def test_cfg_mixes_the_caption_and_the_empty_caption_predictions():
    torch.manual_seed(0)
    backbone = MMDiT(2, head_dim=8, input_size=4, patch_size=1, in_channels=3, context_dim=6).eval()
    x, t, y, empty = torch.randn(2, 3, 4, 4), torch.full((2,), 0.5), torch.randn(2, 5, 6), torch.randn(5, 6)
    guided = ClassifierFreeGuidance(3.0).velocity_fn(backbone, null_condition=empty)(x, t, y)
    cond, uncond = backbone(x, t, y), backbone(x, t, empty.expand(2, 5, 6))
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_condition_sources_give_labels_or_captions_from_the_sample_generator():
    noise, y, stored, captions = ClassLabels(4, "equal").draw(0, [5, 6], (2, 2, 2))
    assert y.tolist() == stored == [1, 2] and captions == ["class 1", "class 2"] and noise.shape == (2, 2, 2, 2)
    data = EmbeddedCaptions(text_encoder(), size=10)
    source = Captions(data, seed=0)
    _, y, stored, captions = source.draw(0, range(10), (2, 2, 2))
    assert sorted(stored) == list(range(10))  # ten samples caption ten distinct items
    assert all(data.caption(i, 0) in c for i, c in zip(stored, captions))
    k = [data.caption(stored[0], k) for k in range(2)].index(captions[0])
    assert torch.equal(y[0], data.context(stored[0], k))
    _, again, _, same = source.draw(0, [3, 1], (2, 2, 2))
    assert torch.equal(again, y[[3, 1]]) and same == [captions[3], captions[1]]  # a pure function of (seed, i)
    assert torch.equal(source.null_condition(), data.empty_context)


def test_a_backbone_refuses_the_other_kind_of_condition_naming_both():
    mmdit = MMDiT(1, head_dim=8, input_size=4, patch_size=1, in_channels=3, context_dim=16)
    sit = SiT(hidden_size=16, depth=1, num_heads=2, patch_size=1, input_size=4, in_channels=3, num_classes=10)
    with pytest.raises(ValueError, match=r"MMDiT is conditioned on caption contexts.*"
                                         r"stage2.dataset \(EmbeddedDataset\) gives class labels"):
        check_condition(mmdit, "label", "stage2.dataset (EmbeddedDataset)")
    with pytest.raises(ValueError, match=r"SiT is conditioned on class labels.*sample.captions \(CocoFeatures\) "
                                         r"gives caption contexts"):
        check_condition(sit, "context", "sample.captions (CocoFeatures)")


@pytest.mark.parametrize("bindings, message", [
    (["stage2.dataset = @dataset.embedded()"], r"MMDiT is conditioned on caption contexts.*stage2.dataset "
                                               r"\(EmbeddedDataset\) gives class labels"),
    (["stage2.sample_labels = [1]"], "sample_labels are classes, but MMDiT is conditioned on captions"),
])
def test_stage2_refuses_mismatched_conditions_when_built(bindings, message):
    with pytest.raises(Exception, match=message):  # a ConfigError naming the gin file, from the ValueError
        experiment = build(T2I_TINY, bindings)
        experiment.stages["stage2"].check(1)


def test_the_text_encoder_loads_a_save_pretrained_folder_and_refuses_missing_weights(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    CLIPTextModel(CLIPTextConfig(**TINY_TEXT)).save_pretrained(tmp_path / "clip")
    encoder = CLIPTextEncoder(weights=str(tmp_path / "clip"), tokenizer="characters", max_length=12)
    assert encoder.context_dim == 16
    encoder.load_pretrained(allow_random=False, log=LOG)
    saved = CLIPTextModel.from_pretrained(tmp_path / "clip").state_dict()
    assert all(torch.equal(value, saved[name]) for name, value in encoder.model.state_dict().items())
    with pytest.raises(WeightsNotFound, match="CLIP text encoder"):
        text_encoder().load_pretrained(allow_random=False, log=LOG)


def test_the_character_tokenizer_pads_and_truncates_as_clip():
    ids = CharacterTokenizer(vocab_size=10, max_length=5)(["ab", "abcdef"])
    assert ids[0].tolist() == [0, 2 + ord("a") % 8, 2 + ord("b") % 8, 1, 1]
    assert ids[1, 0] == 0 and ids[1, -1] == 1 and (ids[1, 1:4] >= 2).all()


# ---------------------------------------------------------------------------------------------
# The tiny text-to-image run: it learns, and its samples follow the caption
# ---------------------------------------------------------------------------------------------
def test_the_tiny_t2i_run_learns_and_samples_images_that_change_with_the_caption(
        tmp_path, tiny_dinov2_registers_dir, tiny_dinov2_dir):
    bindings = [f"dinov2.weights = '{tiny_dinov2_registers_dir}'", "mmdit.in_channels = 32",
                f"repa_target/dinov2.weights = '{tiny_dinov2_dir}'", "embedded_captions.resolution = 56",
                "stage2.log_every = 1", "stage2.total_steps = 24", "stage2.sample_every = 24",
                "sample.num_samples = 10", "sample.grid_size = 10"]
    experiment = build(T2I_TINY, bindings)
    tracker = Recorder()
    set_run_root(tmp_path)
    try:
        summary = run_experiment(experiment, tmp_path, tracker)
    finally:
        set_run_root(None)
    losses = [tracker.scalars["stage2/loss/diffusion"][s] for s in range(1, 25)]
    assert sum(losses[-6:]) < 0.85 * sum(losses[:6]), losses
    grids = {name: captions for name, _, _, captions in tracker.images}
    data = experiment.stages["sample"].captions
    every = {data.caption(i, k) for i in range(10) for k in range(2)}
    assert len(grids["stage2/samples"]) == 8 and set(grids["sample/samples"]) <= every
    assert Path(summary["sample.grid"]).is_file()

    sample = experiment.stages["sample"]
    velocity = sample.guidance.velocity_fn(sample.backbone.eval(), to_velocity=sample.transport.velocity,
                                           null_condition=data.empty_context)
    noise = torch.randn(1, *sample.backbone.latent_shape, generator=torch.Generator().manual_seed(0))
    noise = noise.expand(2, -1, -1, -1)
    contexts = torch.stack([data.context(0, 0), data.context(5, 0)])  # "a red disk", "a cyan star"
    with torch.no_grad():
        images = sample.autoencoder.decode(sample.sampler.sample(velocity, noise, contexts))
        again = sample.autoencoder.decode(sample.sampler.sample(velocity, noise, contexts[[0, 0]]))
    assert (images[0] - images[1]).abs().mean() > 1e-3
    torch.testing.assert_close(again[0], again[1])


# ---------------------------------------------------------------------------------------------
# preprocess_t2i -> U-ViT's layout -> coco_features
# ---------------------------------------------------------------------------------------------
CAPTIONS = {42: ["a cat on a mat", "a grey cat"], 7: ["two dogs"], 19: ["a red bus", "a bus", "bus in the city"],
            3: ["a plate of food", "lunch"], 100: ["a kite in the sky", "the sky"]}
SIZES = {42: (40, 30), 7: (30, 30), 19: (25, 47), 3: (64, 36), 100: (33, 41)}


def coco_folder(root: Path) -> tuple[Path, Path]:
    """Five images of odd sizes and a COCO captions json whose ids and annotations are out of order."""
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    entries, anns = [], []
    for key, (w, h) in SIZES.items():
        name = f"COCO_{key:012d}.{'png' if key % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / name)
        entries.append({"id": key, "file_name": name, "width": w, "height": h})
        anns += [{"id": 1000 * key + k, "image_id": key, "caption": c} for k, c in enumerate(CAPTIONS[key])]
    anns.sort(key=lambda ann: (ann["id"] % 1000, -ann["image_id"]))  # images interleaved, captions in order
    captions = root / "captions.json"
    captions.write_text(json.dumps({"images": entries[::-1], "annotations": anns}))
    return images, captions


def preprocess(images: Path, captions: Path, out: Path, vae_dir: Path, **kwargs) -> PreprocessT2I:
    from rae.vae.sd_vae import SDVAE

    experiment = PreprocessT2I(SDVAE(weights=str(vae_dir), image_size=16), text_encoder(), str(images), str(captions),
                               str(out), split="val", resolution=16, shard_size=2, batch_size=3, num_workers=0,
                               **kwargs)
    experiment.load_weights(allow_random=True, log=LOG)
    return experiment


def run(experiment: PreprocessT2I, folder: Path, rank: int = 0, world_size: int = 1) -> dict:
    acc = Accelerator(torch.device("cpu"), rank=rank, world_size=world_size)
    return experiment.run(RunContext(acc, Tracker(), folder, seed=0, log=LOG))


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("t2i_vae")
    AutoencoderKL(**TINY_VAE).save_pretrained(folder)
    return folder


@needs_diffusers
def test_preprocess_writes_the_uvit_layout_and_coco_features_reads_it_back(tmp_path, tiny_vae_dir):
    images, captions = coco_folder(tmp_path)
    out = tmp_path / "coco16_features"
    experiment = preprocess(images, captions, out, tiny_vae_dir)
    summary = run(experiment, tmp_path / "run")
    assert summary["finished"] and summary["images"] == 5
    split = out / "val"
    order = sorted(CAPTIONS)  # U-ViT: images by COCO id, captions in the file's order
    expected = [f"{i}.npy" for i in range(5)] + [f"{i}_{k}.npy" for i, key in enumerate(order)
                                                 for k in range(len(CAPTIONS[key]))]
    assert sorted(p.name for p in split.glob("*.npy")) == sorted(expected)

    data = CocoFeatures(str(out), split="val")
    assert len(data) == 5 and [data.num_captions(i) for i in range(5)] == [len(CAPTIONS[k]) for k in order]
    assert data.caption(2, 2) == "bus in the city" and data.latent_shape == (4, 8, 8)
    encoder = experiment.text_encoder
    torch.testing.assert_close(data.empty_context, encoder.encode([""])[0], rtol=0, atol=0)
    for i, key in enumerate(order):
        with Image.open(images / f"COCO_{key:012d}.{'png' if key % 2 else 'jpg'}") as image:
            crop = torch.from_numpy(np.asarray(uvit_center_crop(image.convert("RGB"), 16)).copy()).permute(2, 0, 1)
        assert torch.equal(data.image(i), crop.float() / 255)
        with torch.no_grad():
            moments = experiment.autoencoder.moments(crop[None].float() / 255)[0]
        torch.testing.assert_close(data.moments(i), moments, rtol=1e-4, atol=1e-5)  # encoded in a batch of 3
        torch.testing.assert_close(data.context(i, 0), encoder.encode([CAPTIONS[key][0]])[0], rtol=1e-4, atol=1e-5)
        assert torch.equal(data.moments(i), torch.from_numpy(np.load(split / f"{i}.npy")))
        assert np.load(split / f"{i}.npy").dtype == np.float32 and np.load(split / f"{i}_0.npy").shape == (12, 16)

    torch.manual_seed(3)
    latent, context, image = data[1]
    torch.manual_seed(3)
    eps = torch.randn(4, 8, 8)
    k = int(torch.randint(1, ()))
    mean, logvar = data.moments(1).chunk(2)
    torch.testing.assert_close(latent, (mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * eps) * 0.18215)
    assert torch.equal(context, data.context(1, k)) and torch.equal(image, data.image(1))
    reference = CocoImages(str(out), "val")
    assert len(reference) == 5 and torch.equal(reference[4][0], data.image(4)) and reference.resolution == 16


@needs_diffusers
def test_an_interrupted_preprocess_resumes_and_ends_with_the_files_of_an_uninterrupted_one(tmp_path, tiny_vae_dir):
    images, captions = coco_folder(tmp_path)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(preprocess(images, captions, whole, tiny_vae_dir), tmp_path / "a")

    first = run(preprocess(images, captions, parts, tiny_vae_dir, max_shards=1), tmp_path / "b")
    assert first["complete"] == 2 and not first["finished"]  # shard 0 only: images 0 and 1
    (parts / "val" / "1.npy").unlink()  # killed while writing image 1: its moments never landed
    (parts / "val" / ".1_0.npy.tmp-999").write_bytes(b"partial")
    with pytest.raises(ValueError, match=r"holds 1 of the 5 images its captions.json lists.*unfinished"):
        len(CocoFeatures(str(parts), "val"))
    rank1 = run(preprocess(images, captions, parts, tiny_vae_dir), tmp_path / "c", rank=1, world_size=2)
    assert rank1["written_here"] == 2  # shard 1 (images 2, 3) is rank 1's
    second = run(preprocess(images, captions, parts, tiny_vae_dir), tmp_path / "d", rank=0, world_size=2)
    assert second["written_here"] == 2 and second["finished"]  # image 1 again, and image 4 of shard 2
    assert not list((parts / "val").glob(".*tmp*"))
    names = sorted(p.relative_to(whole).as_posix() for p in whole.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(parts).as_posix() for p in parts.rglob("*") if p.is_file())
    for name in names:
        assert (whole / name).read_bytes() == (parts / name).read_bytes(), name

    with pytest.raises(ValueError, match="written with other settings"):
        other = preprocess(images, captions, parts, tiny_vae_dir)
        other.text_encoder = CLIPTextEncoder(weights=None, tokenizer="characters", max_length=12, config=TINY_TEXT,
                                             seed=1)
        run(other, tmp_path / "e")


# ---------------------------------------------------------------------------------------------
# The paper configs, offline
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, lines", [
    ("repa_mmdit_coco", ["backbone: MMDiT, 505.1M parameters (505,070,608)", "latent shape: (4, 32, 32)",
                         "alignment: REPALoss, 93.1M parameters (93,070,592)"]),
    ("sample_mmdit_coco", ["sample.backbone: MMDiT, 505.1M parameters (505,070,608)", "sample.num_samples = 30000"]),
    ("preprocess_coco", ["text_encoder: CLIPTextEncoder, 123.1M parameters (123,060,480)",
                         "autoencoder: SDVAE, 83.7M parameters (83,653,863)"]),
])
def test_paper_t2i_configs_dry_run_offline_with_repa_parameter_counts(config, lines, tmp_path, capsys):
    rc = main(["--gin", str(ROOT / "experiments" / f"{config}.gin"), "--dry_run",
               "--gin_param", f"run.run_root = '{tmp_path}'"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert all(line in out for line in lines), out
    assert not list(tmp_path.iterdir())


def test_repa_counts_its_mmdit_with_the_projector_heads():
    """REPA's train_t2i.py prints 512,415,504 "SiT Parameters": the MMDiT plus one 2048-wide projector to 768."""
    from rae.repa.t2i import from_repa_mmdit_config

    with torch.device("meta"):
        backbone, projectors, depth = from_repa_mmdit_config({"z_dims": [768]})
    assert depth == 8
    count = sum(p.numel() for p in backbone.parameters()) + sum(p.numel() for p in projectors.parameters())
    assert count == 512_415_504

