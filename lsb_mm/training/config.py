"""Every setting of a training run (:class:`TrainConfig`), importable without torch so that the
command line can build its parser (and ``--help``) at once; the trainer is :mod:`lsb_mm.training.trainer`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional

from lsb_mm.data.training_data import item_kinds
from lsb_mm.errors import InputError

__all__ = ["TrainConfig", "RESUME_FIXED"]

# settings that must not change between a run and its resumption, or the result would differ
RESUME_FIXED = ("model", "model_options", "train_data", "modality", "batch_size", "train_group_size", "grad_accum", "seed",
                "corpus_negatives", "freeze_bn_stats", "tower_cache_dtype", "val_fraction", "eval_data",
                "eval_distractors", "eval_steps", "best_metric", "keep_best", "patience",
                "temperature", "train", "lock_text", "lock_image", "cross_device_negatives", "symmetric",
                "mine_negatives", "mine_top_k", "lr", "head_lr", "scheduler", "warmup_steps", "weight_decay",
                "max_grad_norm", "precision", "max_steps", "epochs")


@dataclass
class TrainConfig:
    """Every setting of a training run (the CLI's options, one to one). ``lr``, ``temperature`` and
    ``weight_decay`` left as None come from :func:`lsb_mm.training.recipes.recipe_for`: the plug-in recipe
    swept on validation for the modality and head (``train="heads"``), else the fine-tune defaults."""

    model: str
    train_data: str
    output: str
    modality: str = "text"
    head: str = "clr"
    image_root: Optional[str] = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "caption"
    skip_bad: bool = False
    train_group_size: int = 1
    mine_negatives: bool = False
    mine_top_k: int = 30
    temperature: Optional[float] = None
    symmetric: bool = False
    fusion_q: Optional[bool] = None
    fusion_p: Optional[bool] = None
    train: str = "heads"
    lock_text: bool = False
    lock_image: bool = False
    lr: Optional[float] = None
    head_lr: Optional[float] = None
    weight_decay: Optional[float] = None
    warmup_steps: int = 0
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    precision: str = "auto"
    seed: int = 42
    max_steps: int = 0
    epochs: int = 1
    batch_size: int = 32
    cross_device_negatives: bool = False
    save_steps: int = 0
    keep_checkpoints: int = 2
    resume: Optional[str] = None
    overwrite: bool = False
    eval_data: Optional[str] = None
    eval_distractors: bool = False
    val_fraction: float = 0.0
    eval_steps: int = 0
    best_metric: str = "ndcg@10"
    keep_best: bool = True
    patience: int = 0
    log_steps: int = 10
    num_workers: int = 0
    device: str = "auto"
    vocab_size: int = 1024
    fit_codebook: int = -1
    pooling: Optional[str] = None
    model_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    feature_cache_gb: float = 4.0
    tower_cache_gb: float = 4.0
    tower_cache_dtype: str = "float32"
    tower_cache_dir: Optional[str] = None
    corpus_negatives: bool = False
    freeze_bn_stats: bool = False
    show_progress_bar: bool = True

    def __post_init__(self) -> None:
        """Fill lr, temperature and weight decay left as None from the recipe (:mod:`lsb_mm.training.recipes`):
        the swept plug-in recipe of the modality and head with ``train="heads"``, else the fine-tune
        defaults. ``defaults_from`` says which recipe filled something (None when all were given)."""
        from lsb_mm.training.recipes import recipe_for

        missing = [k for k in ("lr", "temperature", "weight_decay") if getattr(self, k) is None]
        recipe = recipe_for(self.modality, self.head, self.train)
        for k in missing:
            setattr(self, k, recipe[k])
        self.defaults_from = {"recipe": recipe["source"], "filled": missing} if missing else None

    def check(self) -> None:
        from lsb_mm.models.device import resolve_device

        item_kinds(self.modality)
        resolve_device(self.device, "--device")
        checks = [
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.train_group_size >= 1, "train_group_size must be >= 1 (1 = positive only, in-batch negatives)"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.lr > 0 and (self.head_lr is None or self.head_lr > 0), "lr and head_lr must be > 0"),
            (self.max_steps > 0 or self.epochs > 0, "give max_steps or epochs > 0"),
            (self.train in ("heads", "all"), "train must be 'heads' or 'all'"),
            (self.scheduler in ("cosine", "linear", "constant"), "scheduler must be cosine, linear or constant"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), "precision must be auto, fp32, bf16 or fp16"),
            (not self.symmetric or self.modality == "cross", "symmetric applies to --modality cross"),
            (self.mine_top_k >= 1, "mine_top_k must be >= 1"),
            (self.feature_cache_gb >= 0, "feature_cache_gb must be >= 0 (0 = off)"),
            (self.tower_cache_gb >= 0, f"tower_cache_gb must be >= 0 (0 = off), got {self.tower_cache_gb}"),
            (self.tower_cache_dtype in ("float32", "float16"), f"tower_cache_dtype must be float32 or float16, "
                                                                f"got {self.tower_cache_dtype!r}"),
            (self.log_steps >= 1, f"log_steps must be >= 1 (log every N steps), got {self.log_steps}"),
            (0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}"),
            (not (self.val_fraction and self.eval_data), "give eval_data or val_fraction, not both"),
            (not self.eval_distractors or self.eval_data, "eval_distractors applies to eval_data (val_fraction always "
                                                          "searches among the training documents)"),
            (self.patience >= 0, f"patience must be >= 0 (0 = no early stopping), got {self.patience}"),
            (self.best_metric.split("@")[0] in ("ndcg", "mrr", "recall", "success")
             and self.best_metric.partition("@")[2] in ("1", "5", "10"),
             f"best_metric must be ndcg|mrr|recall|success @1|5|10, got {self.best_metric!r}"),
            (self.save_steps >= 0, f"save_steps must be >= 0 (0 = only at the end), got {self.save_steps}"),
            (self.eval_steps >= 0, f"eval_steps must be >= 0 (0 = only at the end), got {self.eval_steps}"),
            (not (self.overwrite and self.resume), "give resume or overwrite, not both"),
            (self.keep_checkpoints >= 0, f"keep_checkpoints must be >= 0 (0 = all), got {self.keep_checkpoints}"),
            (self.max_steps >= 0 and self.epochs >= 0, "max_steps and epochs must be >= 0"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.max_grad_norm >= 0, f"max_grad_norm must be >= 0 (0 = off), got {self.max_grad_norm}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
            (self.vocab_size >= 2, f"vocab_size must be >= 2, got {self.vocab_size}"),
            (self.fit_codebook >= -1, f"fit_codebook must be -1 (up to 1000 images), 0 (never) or N > 0, got {self.fit_codebook}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg)
