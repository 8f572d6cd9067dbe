"""Stage-2 backbones: released-checkpoint parity, paper parameter counts, labels, REPA tokens, gin fragments."""
import re
from pathlib import Path

import gin
import pytest
import torch

from rae.backbones import DiTDH, LightningDiT, from_reference_config, load_release_state
from rae.backbones.sizes import resolve_size
from rae.nn import sincos_2d_position_embedding
from rae.registry import BACKBONES

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "fixtures" / "golden"
TINY = dict(input_size=4, patch_size=1, in_channels=8, num_classes=10, class_dropout_prob=0.1)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small(kind: str, **overrides) -> torch.nn.Module:
    """A small freshly initialised model."""
    kwargs = dict(TINY, hidden_size=32, depth=2, num_heads=2, **overrides)
    if kind == "ditdh":
        kwargs.update(head_hidden_size=48, head_depth=1, head_num_heads=3)
    return BACKBONES.get(kind)(**kwargs)


def tiny(kind: str, **overrides) -> torch.nn.Module:
    """A small model with every parameter perturbed, so outputs depend on every input."""
    model = small(kind, **overrides)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def inputs(batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 8, 4, 4, generator=gen), torch.rand(batch, generator=gen),
            torch.randint(0, 10, (batch,), generator=gen))


# ---- released checkpoints ----

@pytest.mark.parametrize("name", ["ditdh", "lightningdit"])
def test_golden_release_parity(name):
    golden = torch.load(GOLDEN / f"{name}.pt", weights_only=True)
    model = from_reference_config(golden["kind"], golden["config"])
    load_release_state(model, golden["state_dict"]).eval()
    with torch.no_grad():
        out = model(**golden["inputs"])
    assert torch.allclose(out, golden["output"], atol=1e-5, rtol=1e-4)


def test_release_checkpoint_prefers_ema_and_strips_wrappers(tmp_path):
    golden = torch.load(GOLDEN / "ditdh.pt", weights_only=True)
    ema = {f"module.{k}": v for k, v in golden["state_dict"].items()}
    online = {k: v if "rope" in k else torch.zeros_like(v) for k, v in golden["state_dict"].items()}
    torch.save({"model": online, "ema": ema, "steps": 7}, tmp_path / "ckpt.pt")

    model = from_reference_config("ditdh", golden["config"]).eval()
    load_release_state(model, tmp_path / "ckpt.pt")
    assert torch.allclose(model(**golden["inputs"]), golden["output"], atol=1e-5, rtol=1e-4)
    load_release_state(model, tmp_path / "ckpt.pt", prefer="model")
    assert torch.equal(model.final_layer.linear.weight, torch.zeros_like(model.final_layer.linear.weight))


def test_release_errors_list_missing_unexpected_and_shapes():
    golden = torch.load(GOLDEN / "lightningdit.pt", weights_only=True)
    model = from_reference_config("lightningdit", golden["config"])
    state = dict(golden["state_dict"])
    del state["blocks.1.attn.proj.bias"]
    state["blocks.9.extra"] = torch.zeros(1)
    state["y_embedder.embedding_table.weight"] = torch.zeros(3, 48)
    with pytest.raises(ValueError) as err:
        load_release_state(model, state)
    message = str(err.value)
    assert "missing: blocks.1.attn.proj.bias" in message
    assert "unexpected: blocks.9.extra" in message
    assert "y_embedder.embedding_table.weight (3, 48) (expected (11, 48))" in message


def test_release_rope_tables_must_match_the_config():
    golden = torch.load(GOLDEN / "lightningdit.pt", weights_only=True)
    other_heads = from_reference_config("lightningdit", {**golden["config"], "num_heads": 6})
    with pytest.raises(ValueError, match="feat_rope|rope.freqs"):
        load_release_state(other_heads, golden["state_dict"])


def test_reference_config_translation_and_errors():
    with pytest.raises(ValueError, match="unknown keys \\['bogus'\\]"):
        from_reference_config("ditdh", {"bogus": 1})
    with pytest.raises(ValueError, match="unknown released backbone"):
        from_reference_config("sit", {})
    with pytest.raises(ValueError, match="patch_size 1"):
        from_reference_config("ditdh", {"patch_size": 2, "input_size": 4})
    with torch.device("meta"):
        model = from_reference_config("LightningDiT", {"hidden_size": 64, "depth": 1, "num_heads": 4})
    assert model.learn_sigma and model.final_layer.linear.out_features == 2 * 768  # reference default


# ---- sizes and parameter counts (meta device: nothing is allocated) ----

@pytest.mark.parametrize("size, expected", [("XL", 838_675_796), ("S", 196_455_764)])
def test_ditdh_paper_parameter_counts(size, expected):
    with torch.device("meta"):
        model = DiTDH(size)
    assert n_params(model) == expected


def test_meta_build_forwards_shapes_and_tokens():
    with torch.device("meta"):
        model = DiTDH("XL")
        x = torch.empty(2, 768, 16, 16)
        out, tokens = model(x, torch.empty(2), torch.zeros(2, dtype=torch.long), return_tokens_at=8)
    assert out.shape == x.shape and out.is_meta
    assert tokens.shape == (2, 256, 1152) and model.token_width(8) == 1152 and model.token_width(30) == 2048


def test_size_presets_and_errors():
    assert resolve_size("m", "xl", None, None, None) == (1152, 28, 16)
    assert resolve_size("m", "B", None, 4, None) == (768, 4, 12)
    assert resolve_size("m", None, 64, 2, 4) == (64, 2, 4)
    with pytest.raises(ValueError, match="unknown size 'XXL'"):
        resolve_size("m", "XXL", None, None, None)
    with pytest.raises(ValueError, match="missing depth, num_heads"):
        resolve_size("m", None, 64, None, None)


FRAGMENTS = sorted((ROOT / "gin" / "backbones").glob("*_[sblx]*.gin"))


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: p.stem)
def test_gin_fragments_build_the_documented_model(fragment, clean_gin):
    documented = re.search(r"# parameters: ([\d,]+)", fragment.read_text())
    assert documented, f"{fragment.name} documents no parameter count"
    gin.parse_config_file(str(fragment))
    kind = fragment.stem.split("_")[0]
    with torch.device("meta"):
        model = gin.get_configurable(f"backbone.{kind}")()
    assert n_params(model) == int(documented.group(1).replace(",", ""))
    assert model.patch_size == 1 and model.y_embedder.dropout_prob == 0.1


def test_fragments_cover_every_size():
    assert {p.stem for p in FRAGMENTS} == {f"{k}_{s}" for k in ("ditdh", "lightningdit") for s in ("s", "b", "l", "xl")}


# ---- behaviour ----

@pytest.mark.parametrize("kind", ["ditdh", "lightningdit"])
def test_label_dropout_uses_the_null_label_in_training_only(kind):
    model = tiny(kind, class_dropout_prob=1.0)
    x, t, y = inputs()
    null = torch.full_like(y, model.null_label)
    assert model.null_label == 10
    model.eval()
    with torch.no_grad():
        unconditional, conditional = model(x, t, null), model(x, t, y)
        model.train()
        trained = model(x, t, y)
    assert torch.allclose(trained, unconditional, atol=1e-6)
    assert not torch.allclose(conditional, unconditional, atol=1e-3)


@pytest.mark.parametrize("kind", ["ditdh", "lightningdit"])
def test_return_tokens_at_matches_the_block_output(kind):
    model = tiny(kind).eval()
    x, t, y = inputs()
    blocks = list(model.body) + list(model.head) if kind == "ditdh" else list(model.blocks)
    assert model.num_blocks == len(blocks)
    for k in range(1, model.num_blocks + 1):
        seen = {}
        handle = blocks[k - 1].register_forward_hook(lambda _m, _i, out: seen.setdefault("x", out))
        with torch.no_grad():
            out, tokens = model(x, t, y, return_tokens_at=k)
        handle.remove()
        assert torch.equal(tokens, seen["x"]) and tokens.shape[-1] == model.token_width(k)
        assert torch.equal(out, model(x, t, y))
    with pytest.raises(ValueError, match="outside its blocks"):
        model(x, t, y, return_tokens_at=model.num_blocks + 1)


@pytest.mark.parametrize("kind", ["ditdh", "lightningdit"])
def test_forward_checks_inputs_and_broadcasts_scalar_time(kind):
    model = tiny(kind).eval()
    x, t, y = inputs()
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 8, 4, 4\)"):
        model(torch.randn(3, 8, 5, 5), t, y)
    with pytest.raises(ValueError, match="labels y"):
        model(x, t, y[:2])
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor(0.3), y), model(x, torch.full((3,), 0.3), y))


@pytest.mark.parametrize("kind", ["ditdh", "lightningdit"])
def test_fresh_model_is_initialised_and_meta_build_materialises(kind):
    fresh = small(kind)
    x, t, y = inputs()
    assert torch.equal(fresh(x, t, y), torch.zeros_like(x))  # adaLN-Zero output layer
    assert torch.allclose(fresh.pos_embed[0], sincos_2d_position_embedding(32, 4))
    with torch.device("meta"):
        late = small(kind)
    late.to_empty(device="cpu")
    late.initialize_weights()
    assert torch.equal(late.pos_embed, fresh.pos_embed)
    for name, buffer in fresh.named_buffers():
        assert torch.equal(late.get_buffer(name), buffer), name
    assert torch.equal(late(x, t, y), torch.zeros_like(x))


def test_lightningdit_options():
    model = tiny("lightningdit", wo_shift=True, use_qknorm=True, use_swiglu=False, use_rmsnorm=False,
                 use_rope=False, learn_sigma=True).eval()
    x, t, y = inputs()
    assert model(x, t, y).shape == x.shape
    assert model.blocks[0].adaLN_modulation[1].out_features == 4 * 32
    assert model.rope is None and hasattr(model.blocks[0].mlp, "fc1")
    patched = LightningDiT(hidden_size=32, depth=1, num_heads=2, input_size=8, patch_size=2, in_channels=4)
    assert patched(torch.randn(2, 4, 8, 8), torch.rand(2), torch.zeros(2, dtype=torch.long)).shape == (2, 4, 8, 8)
