"""Packing: several samples in one `max_length` row, each attending only to itself.

Samples are placed best-fit decreasing (each, longest first, into the fullest block it still
fits). A packed row of three samples a, b, c and two pads:

    input_ids     a0 a1 a2 b0 b1 c0 c1 c2 c3 p  p
    position_ids  0  1  2  0  1  0  1  2  3  0  1
    labels        from each sample's own loss mask; never across a boundary, never on pads

No attention mask is passed with packed rows. transformers then reads the sample boundaries
from the position ids (a position that does not follow its left neighbour starts a new
sample) and builds a block-diagonal causal mask for eager/SDPA, or varlen calls for
flash-attention: token c1 sees c0 and itself, never a or b.
"""
from __future__ import annotations

import bisect


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of sample indices whose lengths sum to at most `capacity` each.

    Best-fit decreasing: O(n log n) with the open bins kept sorted by free space.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sample {i} has {n} tokens, more than the block size {capacity}")
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            space, b = free.pop(at)
            bins[b].append(i)
            if space - n:
                bisect.insort(free, (space - n, b))
        else:
            bins.append([i])
            if capacity - n:
                bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


def padding_share(lengths: list[int], batches: list[list[int]], size_of) -> float:
    """Share of pad tokens when each batch (a list of indices) takes `size_of(batch)` slots."""
    real = sum(lengths[i] for b in batches for i in b)
    total = sum(size_of(b) for b in batches)
    return 1 - real / total if total else 0.0
