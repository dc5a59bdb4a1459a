"""What a training run writes about itself: ``run_info.json``, the ``skipped.jsonl`` of bad rows,
and the training record that every saved model's card and ``lsb_config.json`` carry."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Dict, Optional

from lsb_mm.data.training_data import TrainData
from lsb_mm.files import file_sha256, write_text
from lsb_mm.training.config import TrainConfig

__all__ = ["data_record", "training_record", "write_run_info"]

log = logging.getLogger(__name__)


def data_record(cfg: TrainConfig, data: TrainData, eval_data: Optional[TrainData]) -> Dict[str, Any]:
    """The training and validation files with their counts and sha256."""
    out = {"train": {"path": cfg.train_data, "examples": len(data),
                     "sha256": file_sha256(cfg.train_data) if os.path.isfile(cfg.train_data) else None}}
    if cfg.eval_data:
        out["validation"] = {"path": cfg.eval_data, "examples": len(eval_data.examples) if eval_data else None,
                             "sha256": file_sha256(cfg.eval_data) if os.path.isfile(cfg.eval_data) else None}
    elif cfg.val_fraction and eval_data is not None:
        out["validation"] = {"path": f"{cfg.val_fraction:g} of {cfg.train_data}", "examples": len(eval_data.examples),
                             "sha256": None}
    return out


def training_record(cfg: TrainConfig, run: Dict[str, int], data: Dict[str, Any], best: Dict[str, Any],
                    step: int, modulation: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """What the model card and ``lsb_config.json`` say of this run: the recipe (with ``run``:
    world size, global batch, total steps), the data, the best validation so far and the
    modulation strength there."""
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items() if isinstance(v, (str, int, float, bool))}
    recipe.update(run)
    return {"recipe": recipe, "data": data, "best": {k: best[k] for k in ("metric", "value", "step")},
            "modulation": modulation, "saved_step": step}


def write_run_info(cfg: TrainConfig, data: TrainData, info: Dict[str, Any]) -> None:
    """``<output>/run_info.json`` (``info`` plus the data counts and the whole config), and
    ``skipped.jsonl`` when rows were skipped; warns of examples without hard negatives."""
    info = {"examples": len(data), "format": data.fmt, "skipped": len(data.skipped),
            "without_hard_negatives": data.without_negatives, **info, "config": dataclasses.asdict(cfg)}
    write_text(os.path.join(cfg.output, "run_info.json"), json.dumps(info, indent=2))
    if data.skipped:
        path = os.path.join(cfg.output, "skipped.jsonl")
        write_text(path, "".join(json.dumps(row) + "\n" for row in data.skipped))
        log.warning("skipped %d bad rows of %s; see %s", len(data.skipped), cfg.train_data, path)
    if data.without_negatives and cfg.train_group_size > 1 and not cfg.mine_negatives:
        log.warning("%d of %d examples have no hard negatives: they use in-batch negatives only",
                    data.without_negatives, len(data))
