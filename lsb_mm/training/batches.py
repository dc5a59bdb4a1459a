"""The batches of a training run: an epoch is a seeded permutation of the examples cut into global
batches of ``batch_size x processes``; rank ``r`` takes the ``r``-th slice of each, so N processes
of batch B see exactly what one process of batch N·B sees. Each query brings its positive and
``train_group_size - 1`` negatives (given, mined, or drawn)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from lsb_mm.data.training_data import TrainData
from lsb_mm.errors import InputError
from lsb_mm.training.config import TrainConfig

__all__ = ["Batches", "EpochBatches"]

Load = Callable[[Sequence[str], str], Any]  # (items, kind) -> what the model takes (texts, pixel tensors ...)


class Batches:
    """Micro-batch ``mb`` of epoch ``e`` for one rank, the same on every run with the same seed."""

    def __init__(self, data: TrainData, cfg: TrainConfig, world_size: int, rank: int, kinds: Sequence[str], load: Load):
        self.data, self.cfg, self.rank, self.load = data, cfg, rank, load
        self.qkind, self.pkind = kinds
        self.global_batch = cfg.batch_size * world_size
        if self.global_batch == 1 and not cfg.mine_negatives:
            lonely = [e.source for e in data.examples if not e.neg]
            if lonely:
                raise InputError(f"{lonely[0]}: a group with no negatives in a batch of one: there is nothing to "
                                 "contrast with (add 'neg', use --mine-negatives or a larger --batch-size)")
        self.per_epoch = (len(data) // self.global_batch) // cfg.grad_accum * cfg.grad_accum
        if self.per_epoch == 0:
            raise InputError(f"{cfg.train_data}: {len(data)} examples do not fill one step of "
                             f"{self.global_batch * cfg.grad_accum} (batch size x processes x grad accumulation)")
        self.mined: Dict[int, List[str]] = {}  # example -> hard negatives of this epoch (--mine-negatives)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.data))

    def micro_batch(self, epoch: int, mb: int, perm: Optional[np.ndarray] = None) -> Dict[str, Any]:
        """This rank's slice of global micro-batch ``mb`` of ``epoch``."""
        perm = self.order(epoch) if perm is None else perm
        lo = mb * self.global_batch + self.rank * self.cfg.batch_size
        idx = perm[lo: lo + self.cfg.batch_size]
        queries, passages, pos_index = [], [], []
        for gi in idx:
            ex = self.data.examples[int(gi)]
            rng = np.random.default_rng([self.cfg.seed, epoch, int(gi)])
            group = self.data.sample_group(ex, self.cfg.train_group_size - 1, rng, self.mined.get(int(gi)))
            queries.append(ex.query)
            pos_index.append(len(passages))
            passages.extend(group)
        return {"queries": self.load(queries, self.qkind), "passages": self.load(passages, self.pkind),
                "pos_index": torch.tensor(pos_index, dtype=torch.long), "n": len(idx),
                "examples": torch.as_tensor(idx, dtype=torch.long)}


class EpochBatches(torch.utils.data.Dataset):
    """Item ``i`` is micro-batch ``start + i`` of one epoch, inputs already loaded (a DataLoader
    with workers decodes images ahead)."""

    def __init__(self, batches: Batches, epoch: int, start: int):
        self.b, self.epoch, self.start = batches, epoch, start
        self.perm = batches.order(epoch)

    def __len__(self) -> int:
        return self.b.per_epoch - self.start

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.b.micro_batch(self.epoch, self.start + i, self.perm)
