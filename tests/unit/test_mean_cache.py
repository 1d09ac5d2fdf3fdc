"""The residual stage's cache of regression means (downscale.models.mean_cache)."""

from __future__ import annotations

import torch

from downscale.models.mean_cache import MeanCache


def _means(cond: torch.Tensor):
    """A stand-in regression over a batch (doubling), recording the rows it is asked for."""
    calls = []

    def compute(rows):
        calls.append(None if rows is None else rows.tolist())
        return 2 * (cond if rows is None else cond[rows])

    return compute, calls


def test_looks_up_cached_samples_and_computes_only_new_ones():
    cache = MeanCache(max_bytes=10**6)
    cond = torch.arange(12.0).view(3, 1, 2, 2)
    anchor = torch.zeros(3, 2, dtype=torch.long)
    compute, calls = _means(cond)
    first = cache.mean(compute, torch.tensor([0, 1, 2]), anchor)
    torch.testing.assert_close(first, 2 * cond)
    # days 2 and 0 are known, day 5 is new; a shuffled batch in a new order
    cond2 = torch.stack([cond[2], cond[0], cond[1] + 100])
    compute2, calls2 = _means(cond2)
    second = cache.mean(compute2, torch.tensor([2, 0, 5]), anchor)
    torch.testing.assert_close(second, torch.stack([2 * cond[2], 2 * cond[0], 2 * cond[1] + 200]))
    assert calls == [None] and calls2 == [[2]]
    assert (cache.hits, cache.misses, len(cache)) == (2, 4, 4)


def test_anchor_is_part_of_the_key():
    cache = MeanCache(max_bytes=10**6)
    cond = torch.ones(2, 1, 2, 2)
    compute, _ = _means(cond)
    cache.mean(compute, torch.tensor([0, 0]), torch.tensor([[0, 0], [0, 8]]))
    assert len(cache) == 2


def test_a_full_cache_still_returns_every_mean():
    """Beyond ``max_bytes`` samples are computed each time, not dropped or mixed up."""
    cond = torch.arange(12.0).view(3, 1, 2, 2)
    cache = MeanCache(max_bytes=2 * 4 * 4)  # room for two 1 x 2 x 2 float32 means
    anchor = torch.zeros(3, 2, dtype=torch.long)
    times = torch.tensor([0, 1, 2])
    for _ in range(2):
        compute, calls = _means(cond)
        torch.testing.assert_close(cache.mean(compute, times, anchor), 2 * cond)
    assert len(cache) == 2 and cache.bytes == 32 and calls == [[2]]
