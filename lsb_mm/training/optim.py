"""What trains and how: the trainable parameters, AdamW groups, the learning-rate schedule, the
device and precision, and train / eval mode per module."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Set, Tuple

import torch

from lsb_mm.errors import InputError
from lsb_mm.models.device import resolve_device
from lsb_mm.training.config import TrainConfig
from lsb_mm.training.distributed import DistInfo

__all__ = ["select_trainable", "build_optimizer", "lr_lambda", "device_name", "autocast_dtype", "set_train_mode"]


def lr_lambda(cfg: TrainConfig, total: int):
    """Linear warm-up, then constant, cosine or linear decay to 0 at ``total`` steps."""
    def fn(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress)) if cfg.scheduler == "cosine" else 1.0 - progress

    return fn


def select_trainable(model, cfg: TrainConfig, kinds: Set[str]) -> List[torch.nn.Parameter]:
    """Set ``requires_grad`` on every parameter of ``model`` and return those that train: the heads
    of the sides in use, new projections, and with ``--train all`` the unlocked towers."""
    chosen = []
    for name, p in model.named_parameters():
        if name.startswith("text_head."):
            use = "text" in kinds
        elif name.startswith("image_head."):
            use = "image" in kinds
        else:
            inner = name[len("backbone."):]
            tower = model.backbone.tower_of(inner)
            if inner.startswith(model.backbone.adapter_prefixes()):
                use = tower in kinds  # new projections train like heads (LiT: towers locked)
            else:
                locked = (tower == "text" and cfg.lock_text) or (tower == "image" and cfg.lock_image)
                use = cfg.train == "all" and tower in kinds and not locked
        p.requires_grad_(use)
        if use:
            chosen.append(p)
    if not chosen:
        raise InputError(f"nothing to train: head {cfg.head!r} has no parameters and --train {cfg.train}"
                         + (" (use --train all)" if cfg.train == "heads" else ""))
    return chosen


def build_optimizer(model, cfg: TrainConfig, total_steps: int) -> Tuple[torch.optim.Optimizer, object]:
    """AdamW over the trainable parameters (heads at ``head_lr``, no weight decay on vectors) and
    its scheduler."""
    groups: Dict[tuple, List[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((not name.startswith("backbone."), p.ndim >= 2), []).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": ps, "lr": (cfg.head_lr or cfg.lr) if head else cfg.lr, "weight_decay": cfg.weight_decay if decay else 0.0}
         for (head, decay), ps in sorted(groups.items())], lr=cfg.lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))


def device_name(cfg: TrainConfig, dist: DistInfo) -> str:
    """``--device`` (checked), or with ``auto`` this rank's GPU when there is one, else the CPU."""
    if cfg.device != "auto":
        return str(resolve_device(cfg.device, "--device"))
    if torch.cuda.is_available():
        return f"cuda:{dist.local_rank}" if dist.enabled else "cuda"
    return "cpu"


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--precision`` on ``device`` (None: float32)."""
    p = cfg.precision
    if device.type != "cuda":
        if p in ("bf16", "fp16"):
            raise InputError(f"--precision {p} needs a CUDA device; this run is on {device}")
        return None
    if p == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]


def set_train_mode(model: torch.nn.Module, freeze_bn_stats: bool) -> None:
    """Train mode (dropout) for every module with something to train and for the parameter-free
    modules (dropout) inside them; a module whose parameters are all frozen stays in eval. With
    ``freeze_bn_stats`` batch-norm layers stay in eval too (running statistics kept, affine
    weights still trained)."""
    def visit(module: torch.nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
            return
        if freeze_bn_stats and isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
            return
        module.training = True
        for child in module.children():
            visit(child)

    visit(model)
