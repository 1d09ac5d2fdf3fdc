"""Tests of the ADM UNet backbone (downscale.nets.unet) and its layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from downscale.nets.layers import Attention, FourierEmbedding, PositionalEmbedding, group_norm
from downscale.nets.unet import UNet
from downscale.utils.errors import UserError

CONF = Path(__file__).resolve().parents[2] / "conf" / "net"
TINY = dict(
    model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_levels=[], num_heads=1, dropout=0.0
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def perturb(net: torch.nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised layers random weights so that outputs depend on every input."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize(
    ("kwargs", "noisy", "size"),
    [
        (TINY, 1, (16, 24)),
        ({**TINY, "channel_mult": [1, 2, 2], "attn_levels": [2, 4], "num_heads": 2}, 2, (16, 32)),
        ({**TINY, "cascade": True, "channel_mult": [1, 2, 2]}, 1, (16, 16)),
        ({**TINY, "embedding_type": "positional"}, 1, (8, 8)),
        (TINY, 0, (8, 16)),
    ],
)
def test_output_shapes(kwargs, noisy, size):
    torch.manual_seed(0)
    net = UNet(out_channels=3, cond_channels=4, noisy_channels=noisy, **kwargs)
    perturb(net)
    B, (H, W) = 2, size
    x = torch.randn(B, noisy, H, W) if noisy else None
    labels = torch.randn(B) if noisy else None
    out = net(x, labels, torch.randn(B, 4, H, W))
    assert out.shape == (B, 3, H, W)
    assert torch.isfinite(out).all()


def test_regression_output_independent_of_batch_composition():
    # x=None and noise_labels=None: one learned constant embedding, so samples do not interact.
    torch.manual_seed(0)
    net = UNet(1, 3, 0, **TINY).eval()
    perturb(net)
    cond = torch.randn(3, 3, 8, 8)
    full = net(None, None, cond)
    single = net(None, None, cond[1:2])
    # float32 convolutions sum in a batch-size-dependent order (1.7e-6 apart on one Xeon); a sample
    # that saw its neighbours would be off by the order of the output itself
    torch.testing.assert_close(full[1:2], single, rtol=1e-4, atol=1e-5)


def test_location_map_with_and_without_anchor():
    torch.manual_seed(0)
    net = UNet(1, 2, 1, **TINY, location_channels=3, location_size=[16, 24]).eval()
    perturb(net)
    cond, x, lab = torch.randn(2, 2, 8, 8), torch.randn(2, 1, 8, 8), torch.zeros(2)
    anchor = torch.tensor([[0, 0], [8, 16]])
    out = net(x, lab, cond, anchor=anchor)
    assert out.shape == (2, 1, 8, 8)
    # The crop for each sample is the map at its anchor: check the map lookup itself.
    crop = net._location_map(2, 8, 8, anchor)
    torch.testing.assert_close(crop[1], net.location[:, 8:16, 16:24])
    # Patch at a different anchor gives a different output (the map carries location information).
    out2 = net(x, lab, cond, anchor=torch.tensor([[0, 0], [0, 0]]))
    torch.testing.assert_close(out[0], out2[0])
    assert not torch.allclose(out[1], out2[1])
    # Full-domain input without anchor uses the whole map; wrong size without anchor is a UserError.
    assert net(torch.randn(1, 1, 16, 24), torch.zeros(1), torch.randn(1, 2, 16, 24)).shape[-2:] == (
        16,
        24,
    )
    with pytest.raises(UserError, match="location"):
        net(x, lab, cond)


def test_location_patch_equals_the_net_fed_its_crop_of_the_map():
    """With its anchor, a patch sees exactly its crop of the map: the output equals that of the
    same net without a map whose conditioning carries the crop as extra channels."""
    torch.manual_seed(0)
    net = UNet(1, 2, 1, **TINY, location_channels=3, location_size=[16, 24]).eval()
    perturb(net)
    plain = UNet(1, 5, 1, **TINY).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if k != "location"})
    anchor = torch.tensor([[0, 0], [8, 16], [3, 7]])  # corners and an odd interior offset
    x, lab, cond = torch.randn(3, 1, 8, 8), torch.randn(3), torch.randn(3, 2, 8, 8)
    crops = torch.stack([net.location[:, r : r + 8, c : c + 8] for r, c in anchor.tolist()])
    torch.testing.assert_close(
        net(x, lab, cond, anchor=anchor), plain(x, lab, torch.cat([cond, crops], 1))
    )


def test_tiles_read_the_location_map_at_their_anchors():
    """A denoiser whose only input is the location map, tiled over a window of the domain,
    reproduces the map on that window exactly: every tile reads the map at base + its offset."""
    from downscale.sampling.tiling import TiledDenoiser

    net = UNet(1, 1, 1, **TINY, location_channels=2, location_size=[40, 48])

    def map_only(x, sigma, cond, anchor=None):
        return net._location_map(x.shape[0], *x.shape[-2:], anchor).detach()

    tiled = TiledDenoiser(map_only, tile=16, overlap=6, max_batch=5)
    x = torch.zeros(2, 2, 32, 40)
    base = torch.tensor([[0, 0], [8, 8]])
    out = tiled(x, torch.ones(2), None, anchor=base)
    for i, (r, c) in enumerate(base.tolist()):
        torch.testing.assert_close(out[i], net.location.detach()[:, r : r + 32, c : c + 40])
    # a tile as large as the domain passes the input through: the untiled evaluation
    whole = TiledDenoiser(map_only, tile=48, overlap=6)(x, torch.ones(2), None, anchor=base)
    torch.testing.assert_close(whole, map_only(x, None, None, anchor=base))


def test_location_anchor_outside_the_map_is_a_user_error():
    net = UNet(1, 2, 1, **TINY, location_channels=2, location_size=[16, 24])
    x, lab, cond = torch.randn(2, 1, 8, 8), torch.zeros(2), torch.randn(2, 2, 8, 8)
    for bad in ([[0, 0], [10, 0]], [[0, 17], [0, 0]], [[-1, 0], [0, 0]]):
        with pytest.raises(
            UserError, match=r"outside the learned location map of 16x24.*location_size"
        ):
            net(x, lab, cond, anchor=torch.tensor(bad))
    with pytest.raises(UserError, match="no patch anchor was given"):
        net(x, lab, cond)
    assert net(x, lab, cond, anchor=torch.tensor([[8, 16], [0, 0]])).shape == (2, 1, 8, 8)


def test_zero_init_output_is_exactly_zero():
    net = UNet(2, 3, 2, **{**TINY, "cascade": True})
    out = net(torch.randn(2, 2, 8, 8), torch.randn(2), torch.randn(2, 3, 8, 8))
    assert torch.equal(out, torch.zeros_like(out))


def test_gradients_reach_every_parameter():
    # Zero-initialised output/residual/attention convs block gradients at step 0; after a few
    # optimiser steps every parameter must receive a nonzero gradient.
    torch.manual_seed(0)
    net = UNet(
        1, 2, 1, **{**TINY, "attn_levels": [2], "cascade": True},
        location_channels=2, location_size=[8, 8],
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, lab, cond, y = (
        torch.randn(2, 1, 8, 8),
        torch.randn(2),
        torch.randn(2, 2, 8, 8),
        torch.randn(2, 1, 8, 8),
    )
    for _ in range(4):
        opt.zero_grad()
        loss = (net(x, lab, cond) - y).square().mean()
        loss.backward()
        opt.step()
    opt.zero_grad()
    (net(x, lab, cond) - y).square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_bad_spatial_size_is_user_error():
    net = UNet(1, 2, 1, **{**TINY, "channel_mult": [1, 2, 2]})
    with pytest.raises(UserError, match="divisible by 4"):
        net(torch.randn(1, 1, 8, 10), torch.zeros(1), torch.randn(1, 2, 8, 10))


def test_bad_attention_level_is_user_error():
    with pytest.raises(UserError, match="attn_levels"):
        UNet(1, 2, 1, **{**TINY, "attn_levels": [16]})
    with pytest.raises(UserError, match="embedding_type"):
        UNet(1, 2, 1, **{**TINY, "embedding_type": "nope"})


@pytest.mark.parametrize(("name", "low", "high"), [("tiny", 0.1e6, 0.3e6), ("small", 2e6, 8e6),
                                                   ("base", 30e6, 60e6), ("reference", 60e6, 75e6)])  # fmt: skip
def test_config_param_counts(name, low, high):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    net = instantiate(cfg)(out_channels=1, cond_channels=6, noisy_channels=1)
    assert isinstance(net, UNet)
    assert low <= n_params(net) <= high


def test_group_norm_groups_for_small_channels():
    assert group_norm(16).num_groups == 4
    assert group_norm(256).num_groups == 32
    assert group_norm(48).num_groups == 12
    assert group_norm(6).num_groups == 1


def test_embeddings_closed_form():
    pos = PositionalEmbedding(8, max_positions=10000)
    x = torch.tensor([0.0, 3.0])
    freqs = 10000.0 ** (-torch.arange(4) / 4)
    torch.testing.assert_close(
        pos(x), torch.cat([(x[:, None] * freqs).cos(), (x[:, None] * freqs).sin()], 1)
    )
    four = FourierEmbedding(8, scale=16.0)
    e = four(x)
    assert e.shape == (2, 8)
    torch.testing.assert_close(e[0], torch.cat([torch.ones(4), torch.zeros(4)]))
    # Frequencies are fixed (seeded), so two instances agree.
    torch.testing.assert_close(FourierEmbedding(8).freqs, FourierEmbedding(8).freqs)


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    net = UNet(1, 2, 1, **{**TINY, "attn_levels": [2]}).eval()
    perturb(net)
    x, lab, cond = torch.randn(2, 1, 8, 8), torch.randn(2), torch.randn(2, 2, 8, 8)
    ref = net(x, lab, cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, lab, cond)
    assert out.dtype == torch.bfloat16
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_compiles_without_graph_breaks():
    # fullgraph=True makes dynamo raise on any graph break; the eager backend keeps it fast on CPU.
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = UNet(1, 2, 1, **{**TINY, "attn_levels": [2], "cascade": True}).eval()
    perturb(net)
    x, lab, cond = torch.randn(2, 1, 8, 8), torch.randn(2), torch.randn(2, 2, 8, 8)
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, lab, cond), net(x, lab, cond))
    # the anchor's bounds check is eager-only, so a location map with anchors compiles too
    net = UNet(1, 2, 1, **TINY, location_channels=2, location_size=[16, 16]).eval()
    perturb(net)
    anchor = torch.tensor([[0, 8], [4, 2]])
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    torch.testing.assert_close(
        compiled(x, lab, cond, anchor=anchor), net(x, lab, cond, anchor=anchor)
    )


def test_attention_matches_softmax_formula_and_feeds_sdpa_unit_strides(monkeypatch):
    """Attention equals softmax(q k^T / sqrt(d)) v per head (Vaswani et al. 2017, eq. 1), and hands
    scaled_dot_product_attention q, k, v with a unit last stride: otherwise the fused GPU kernels
    are skipped and the HW x HW matrix is materialised (measured: 64 GiB for 1024 tiles of 128 x 128
    with net=tiny on an H100)."""
    torch.manual_seed(0)
    attn = Attention(8, num_heads=2)
    nn.init.normal_(attn.proj.weight)  # the zero-initialised projection would hide the attention
    x = torch.randn(2, 8, 4, 5)
    strides = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        strides.extend(t.stride(-1) for t in (q, k, v))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    out = attn(x)
    assert strides == [1, 1, 1]
    qkv = attn.qkv(attn.norm(x)).reshape(2, 3, 2, 4, 20)
    q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, d)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # sqrt(d) = 2
    expected = x + attn.proj((weights @ v).transpose(-1, -2).reshape(2, 8, 4, 5))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
