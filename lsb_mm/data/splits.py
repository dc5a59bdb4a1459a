"""Seeded splits of a dataset into training and held-out parts."""
from __future__ import annotations

from typing import Callable, Dict, Hashable, List, Sequence, Tuple, TypeVar

import numpy as np

__all__ = ["stratified_split", "split_jsonl_by_document"]

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


def split_jsonl_by_document(paths: Sequence[str], out_dir: str, fraction: float, seed: int) -> List[Tuple[str, str]]:
    """Hold out the same documents in several training JSONL files: about ``fraction`` of the
    documents (an example's document is its first positive, ``pos[0]``) of the first file, drawn
    with ``seed``; every example of any file whose document is held out goes to that file's held-out
    part. Returns ``[(train path, held-out path)]`` per input, written under ``out_dir`` as
    ``<i>-<name>.train.jsonl`` / ``<i>-<name>.held.jsonl`` (``i``: the input's position)."""
    import os

    from lsb_mm.errors import InputError
    from lsb_mm.files import iter_jsonl, write_jsonl

    if not 0 < fraction < 1:
        raise InputError(f"fraction must be in (0, 1), got {fraction}")
    records = [[rec for _, rec in iter_jsonl(p)] for p in paths]
    docs = list(dict.fromkeys(r["pos"][0] for r in records[0]))
    n = int(round(len(docs) * fraction))
    if not 0 < n < len(docs):
        raise InputError(f"{paths[0]}: {len(docs)} documents cannot be split with fraction {fraction}")
    held = {docs[i] for i in np.random.default_rng([seed, 7919]).permutation(len(docs))[:n]}
    os.makedirs(out_dir, exist_ok=True)
    out = []
    for i, (path, recs) in enumerate(zip(paths, records)):
        stem = f"{i}-{os.path.splitext(os.path.basename(path))[0]}"  # inputs may share a file name
        parts = (os.path.join(out_dir, f"{stem}.train.jsonl"), os.path.join(out_dir, f"{stem}.held.jsonl"))
        write_jsonl(parts[0], (r for r in recs if r["pos"][0] not in held))
        write_jsonl(parts[1], (r for r in recs if r["pos"][0] in held))
        out.append(parts)
    return out
