"""Streaming float64 moments equal a direct computation, however the data is split."""
import torch

from rae.moments import RunningMoments


def test_streaming_moments_equal_direct_float64():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(1000, 7, generator=g, dtype=torch.float64) * 3 + 1e3  # large offset: naive sums lose digits
    acc = RunningMoments(7)
    for chunk in torch.split(data.float(), [1, 99, 400, 500]):
        acc.update(chunk)
    ref = data.float().double()
    torch.testing.assert_close(acc.mean, ref.mean(0), atol=1e-9, rtol=1e-12)
    torch.testing.assert_close(acc.var, ref.var(0, unbiased=False), atol=1e-7, rtol=1e-9)
    assert acc.count == 1000


def test_merging_partial_moments_is_exact():
    data = torch.randn(300, 4, dtype=torch.float64)
    a, b, whole = RunningMoments(4), RunningMoments(4), RunningMoments(4)
    a.update(data[:100])
    b.update(data[100:])
    whole.update(data)
    a.merge(b.count, b.mean, b.m2)
    torch.testing.assert_close(a.mean, whole.mean)
    torch.testing.assert_close(a.var, whole.var)
