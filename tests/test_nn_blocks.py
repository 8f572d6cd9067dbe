"""Shared transformer blocks (rae.nn) against their formulas, computed independently here."""
import math

import pytest
import torch
from torch import nn

from rae.nn import (
    AdaLNBlock, AdaLNModulation, Attention, FinalLayer, FourierTimestepEmbedder, GeluMLP, LabelEmbedder,
    PatchEmbed, RMSNorm, RotaryEmbedding2D, SinusoidalTimestepEmbedder, SwiGLU, initialize, make_mlp, modulate,
    sincos_2d_position_embedding, unpatchify,
)
from rae.nn.rope import rotate_pairs


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_rmsnorm_matches_formula():
    norm = RMSNorm(6, eps=1e-6)
    norm.weight.data = torch.randn(6)
    x = torch.randn(3, 4, 6) * 5
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)
    assert norm(x.bfloat16()).dtype == torch.float32  # float32 weight promotes, as the released layer


def test_rotate_pairs_is_a_quarter_turn_of_each_pair():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(rotate_pairs(x), torch.tensor([-2.0, 1.0, -4.0, 3.0]))


def _explicit_rope(vec: torch.Tensor, row: int, col: int, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotate pair i of the first half by row * f_i and of the second half by col * f_i (EVA layout)."""
    half = head_dim // 2
    out = vec.clone()
    for offset, pos in ((0, row), (half, col)):
        for i in range(half // 2):
            angle = pos * theta ** (-(2 * i) / half)
            a, b = vec[offset + 2 * i], vec[offset + 2 * i + 1]
            out[offset + 2 * i] = a * math.cos(angle) - b * math.sin(angle)
            out[offset + 2 * i + 1] = a * math.sin(angle) + b * math.cos(angle)
    return out


def test_rope_matches_explicit_rotation_layout():
    head_dim, grid = 8, 3
    rope = RotaryEmbedding2D(head_dim, grid)
    q = torch.randn(1, 1, grid * grid, head_dim)
    rotated = rope(q)
    for token in range(grid * grid):
        row, col = divmod(token, grid)
        expected = _explicit_rope(q[0, 0, token], row, col, head_dim)
        assert torch.allclose(rotated[0, 0, token], expected, atol=1e-6), token


def test_rope_preserves_norms_and_is_relative():
    head_dim, grid = 16, 4
    rope = RotaryEmbedding2D(head_dim, grid)
    x = torch.randn(2, 3, grid * grid, head_dim)
    assert torch.allclose(rope(x).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    # The same q and k at every position: the score depends only on the 2-D offset between tokens.
    q = torch.randn(head_dim).expand(1, 1, grid * grid, head_dim)
    k = torch.randn(head_dim).expand(1, 1, grid * grid, head_dim)
    scores = (rope(q) @ rope(k).transpose(-1, -2))[0, 0]
    by_offset: dict[tuple[int, int], float] = {}
    for i in range(grid * grid):
        for j in range(grid * grid):
            offset = (i // grid - j // grid, i % grid - j % grid)
            ref = by_offset.setdefault(offset, scores[i, j].item())
            assert scores[i, j].item() == pytest.approx(ref, abs=1e-4)
    assert len(set(round(v, 3) for v in by_offset.values())) > 1  # positions do matter


def test_rope_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible by 4"):
        RotaryEmbedding2D(6, 4)
    with pytest.raises(ValueError, match="4x4 tokens"):
        RotaryEmbedding2D(8, 4)(torch.randn(1, 1, 9, 8))


@pytest.mark.parametrize("qk_norm", [None, "rms", "layer"])
@pytest.mark.parametrize("use_rope", [False, True])
def test_sdpa_attention_equals_explicit_softmax(qk_norm, use_rope):
    dim, heads, grid = 16, 2, 3
    attn = Attention(dim, heads, qk_norm=qk_norm)
    for p in attn.parameters():
        p.data.normal_()
    rope = RotaryEmbedding2D(dim // heads, grid) if use_rope else None
    x = torch.randn(2, grid * grid, dim)

    q, k, v = (attn.qkv(x).reshape(2, grid * grid, 3, heads, dim // heads).permute(2, 0, 3, 1, 4))
    if qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        q, k = rope(q), rope(k)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, grid * grid, dim))
    assert torch.allclose(attn(x, rope=rope), expected, atol=1e-5)


def test_mlps_match_formulas():
    x = torch.randn(2, 5, 12)
    swiglu = make_mlp("swiglu", 12, 4.0)
    assert isinstance(swiglu, SwiGLU) and swiglu.w3.in_features == int(2 / 3 * 48)
    w1, w2 = swiglu.w12.weight.chunk(2)
    b1, b2 = swiglu.w12.bias.chunk(2)
    hidden = torch.nn.functional.silu(x @ w1.T + b1) * (x @ w2.T + b2)
    assert torch.allclose(swiglu(x), hidden @ swiglu.w3.weight.T + swiglu.w3.bias, atol=1e-5)

    gelu = make_mlp("gelu", 12, 4.0)
    assert isinstance(gelu, GeluMLP) and gelu.fc1.out_features == 48
    h = gelu.fc1(x)
    tanh_gelu = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    assert torch.allclose(gelu(x), gelu.fc2(tanh_gelu), atol=1e-5)
    with pytest.raises(ValueError, match="swiglu, gelu"):
        make_mlp("relu", 12, 4.0)


def test_modulation_with_and_without_shift():
    x, shift, scale = torch.randn(3, 2, 4, 5).unbind(0)
    assert torch.allclose(modulate(x, shift, scale), x * (1 + scale) + shift)
    assert torch.allclose(modulate(x, None, scale), x * (1 + scale))
    mod = AdaLNModulation(7, 5, chunks=3)
    per_sample = mod(torch.randn(2, 7))
    per_token = mod(torch.randn(2, 4, 7))
    assert [tuple(m.shape) for m in per_sample] == [(2, 1, 5)] * 3
    assert [tuple(m.shape) for m in per_token] == [(2, 4, 5)] * 3


def test_adaln_block_starts_as_identity_and_final_layer_at_zero():
    block = AdaLNBlock(16, 2, shift=False, qk_norm=True)
    final = FinalLayer(16, 2, 3)
    holder = nn.ModuleList([block, final])
    assert initialize(holder)
    x, c = torch.randn(2, 9, 16), torch.randn(2, 16)
    assert torch.equal(block(x, c), x)
    assert torch.equal(final(x, c), torch.zeros(2, 9, 12))
    assert block.adaLN_modulation[1].out_features == 4 * 16  # no shift: scale, gate twice


def test_sinusoidal_timestep_features_match_dit():
    emb = SinusoidalTimestepEmbedder(8, frequency_size=6)
    t = torch.tensor([0.0, 0.25, 1.0])
    freqs = torch.tensor([10000 ** (-i / 3) for i in range(3)])
    expected = torch.cat((torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)), dim=1)
    assert torch.allclose(emb.features(t), expected, atol=1e-6)
    assert emb(t).shape == (3, 8)


def test_fourier_timestep_features_match_formula():
    emb = FourierTimestepEmbedder(8, embedding_size=4)
    initialize(emb)
    assert not emb.W.requires_grad
    t = torch.tensor([0.1, 0.7])
    args = 2 * math.pi * t[:, None] * emb.W[None]
    assert torch.allclose(emb.features(t), torch.cat((args.sin(), args.cos()), dim=1), atol=1e-6)


def test_label_embedder_null_row_and_dropout():
    emb = LabelEmbedder(10, 4, dropout_prob=0.1)
    assert emb.embedding_table.num_embeddings == 11 and emb.null_label == 10
    assert LabelEmbedder(10, 4, dropout_prob=0.0).embedding_table.num_embeddings == 10
    labels = torch.arange(10)
    always = LabelEmbedder(10, 4, dropout_prob=1.0).train()
    assert torch.equal(always(labels), always.embedding_table.weight[10].expand(10, 4))
    always.eval()
    assert torch.equal(always(labels), always.embedding_table.weight[:10])
    half = LabelEmbedder(10, 4, dropout_prob=0.5)
    dropped = (half.drop(torch.zeros(4000, dtype=torch.long)) == 10).float().mean().item()
    assert dropped == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="dropout_prob"):
        LabelEmbedder(10, 4, dropout_prob=1.5)


def test_sincos_position_embedding_matches_mae_layout():
    dim, grid = 8, 3
    pe = sincos_2d_position_embedding(dim, grid)
    omega = [1 / 10000 ** (i / 2) for i in range(2)]
    for token in range(grid * grid):
        row, col = divmod(token, grid)
        expected = []
        for pos in (col, row):  # MAE: the first half encodes the column
            expected += [math.sin(pos * w) for w in omega] + [math.cos(pos * w) for w in omega]
        assert torch.allclose(pe[token], torch.tensor(expected), atol=1e-6), token


def test_patch_embed_and_unpatchify_are_inverse_layouts():
    p, c, side = 2, 3, 4
    image = torch.randn(2, c, side * p, side * p)
    embed = PatchEmbed(c, p * p * c, p)
    # A convolution that copies every patch pixel into channel (row_in_patch, col_in_patch, channel).
    weight = torch.zeros(p * p * c, c, p, p)
    for i in range(p):
        for j in range(p):
            for ch in range(c):
                weight[(i * p + j) * c + ch, ch, i, j] = 1
    embed.proj.weight.data, embed.proj.bias.data = weight, torch.zeros(p * p * c)
    tokens = embed(image)
    assert tokens.shape == (2, side * side, p * p * c)
    assert torch.equal(unpatchify(tokens, p, c), image)


def test_initialize_skips_meta_and_restores_after_to_empty():
    with torch.device("meta"):
        holder = nn.ModuleList([RotaryEmbedding2D(8, 3), FourierTimestepEmbedder(8)])
    assert not initialize(holder)
    holder.to_empty(device="cpu")
    assert initialize(holder, linear_init="torch")
    fresh = RotaryEmbedding2D(8, 3)
    assert torch.equal(holder[0].freqs_cos, fresh.freqs_cos) and torch.equal(holder[0].freqs_sin, fresh.freqs_sin)
    assert holder[1].W.std().item() > 0.3
