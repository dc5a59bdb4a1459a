"""Seeded splits of a dataset into training and held-out parts."""
from __future__ import annotations

from typing import Callable, Dict, Hashable, List, Sequence, Tuple, TypeVar

import numpy as np

__all__ = ["stratified_split"]

T = TypeVar("T")


def stratified_split(items: Sequence[T], key: Callable[[T], Hashable], test_fraction: float, seed: int = 0
                     ) -> Tuple[List[T], List[T]]:
    """Split each group (by ``key``) into train / test with a seeded shuffle; order is kept within each part.

    A group gets ``round(len * test_fraction)`` test items, so a group of one stays in train.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    groups: Dict[Hashable, List[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(key(it), []).append(i)
    rs = np.random.default_rng(seed)
    test = set()
    for g in sorted(groups, key=str):
        idx = groups[g]
        n = int(round(len(idx) * test_fraction))
        test.update(int(i) for i in rs.permutation(idx)[:n])
    return [it for i, it in enumerate(items) if i not in test], [it for i, it in enumerate(items) if i in test]
