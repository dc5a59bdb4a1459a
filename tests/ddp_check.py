"""Run under torchrun: one cross-device step on this rank's half of a fixed global batch.

Writes the mean loss and the averaged gradients (rank 0) to OUT/ddp_step.safetensors.
"""
import os
import sys

import torch
from safetensors.torch import save_file

from lsb_mm.training.distributed import all_reduce_grads, all_reduce_mean
from lsb_mm.training.config import TrainConfig
from lsb_mm.training.trainer import Trainer


def main(data: str, out: str, per_rank: int) -> None:
    t = Trainer(TrainConfig(model="open_clip:lsb-tiny-test", head="llr", modality="text", train_data=data,
                            output=out, batch_size=per_rank, train="all", cross_device_negatives=True,
                            max_steps=1, show_progress_bar=False))
    torch.manual_seed(0)
    loss = t.compute_loss(t.micro_batch(0, 0))
    loss.backward()
    all_reduce_grads(t.params, t.dist.world_size)
    mean_loss = all_reduce_mean(float(loss), "cpu")
    if t.dist.is_main:
        grads = {n: p.grad.detach().clone() for n, p in t.model.named_parameters() if p.grad is not None}
        save_file({"loss": torch.tensor([mean_loss], dtype=torch.float64), **{f"grad.{k}": v for k, v in grads.items()}},
                  os.path.join(out, f"step_world{t.dist.world_size}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
