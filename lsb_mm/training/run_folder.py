"""The run folder of ``lsb-mm train``: what may be in ``--output``, resuming, and the run log.

``<output>/``: ``train_log.jsonl`` (one JSON record per logged step / evaluation), ``run_info.json``,
``checkpoint-NNNNNN/`` (see :mod:`lsb_mm.training.checkpoint`), ``best/`` and ``final/`` models.
A folder that holds an earlier run is refused unless resuming it or asked to overwrite it.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional

from lsb_mm.errors import InputError
from lsb_mm.files import iter_jsonl, write_text
from lsb_mm.training.checkpoint import clear_run, latest_checkpoint, read_state, remove_stale_temps, run_contents
from lsb_mm.training.config import RESUME_FIXED, TrainConfig
from lsb_mm.training.distributed import barrier

__all__ = ["FINAL_DIR", "BEST_DIR", "LOG_NAME", "prepare_output", "resume_folder", "append_log", "truncate_log"]

log = logging.getLogger(__name__)
FINAL_DIR = "final"
BEST_DIR = "best"
LOG_NAME = "train_log.jsonl"


def prepare_output(cfg: TrainConfig, is_main: bool) -> None:
    """``--output`` must be a folder that holds no earlier run, unless resuming it or asked to
    ``overwrite`` it (then that run, and only it, is removed first). Temp folders of an
    interrupted save are cleared; a log that is a symlink is refused (it would be written through)."""
    out = cfg.output
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--output {out} is a file; give a folder for the run")
    log_path = os.path.join(out, LOG_NAME)
    if os.path.islink(log_path):
        raise InputError(f"{log_path} is a symbolic link; the run log is written in place, so it is refused "
                         "(remove the link)")
    earlier = run_contents(out)
    if earlier and not cfg.resume:
        if not cfg.overwrite:
            shown = ", ".join(earlier[:4]) + (f" and {len(earlier) - 4} more" if len(earlier) > 4 else "")
            raise InputError(f"--output {out} holds an earlier run ({shown}): continue it with --resume, replace "
                             "it with --overwrite, or choose another folder")
        if is_main:
            clear_run(out)
            log.info("--overwrite: removed the earlier run in %s (%s)", out, ", ".join(earlier))
    elif is_main:
        for path in remove_stale_temps(out):
            log.info("removed %s, left by an interrupted save", path)
    barrier()  # every rank, whichever branch it saw (rank 0 may have cleared before another rank looked)


def resume_folder(cfg: TrainConfig, world_size: int) -> Optional[str]:
    """The checkpoint ``--resume`` names (``latest``: the newest complete one), checked against
    this run's settings; None without ``--resume``."""
    r = cfg.resume
    if not r:
        return None
    folder = latest_checkpoint(cfg.output) if r == "latest" else r
    if folder is None:
        raise InputError(f"--resume: no complete checkpoint under {cfg.output}")
    state = read_state(folder)
    saved = state.get("config", {})
    for key in RESUME_FIXED:
        if key in saved and saved[key] != getattr(cfg, key):
            raise InputError(f"--resume {folder}: {key} was {saved[key]!r}, now {getattr(cfg, key)!r}; "
                             "an exact resume needs the same setting")
    if state.get("world_size") != world_size:
        raise InputError(f"--resume {folder}: saved with {state.get('world_size')} processes, now {world_size}")
    return folder


def append_log(output: str, record: Dict[str, Any]) -> None:
    with open(os.path.join(output, LOG_NAME), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def truncate_log(output: str, step: int) -> None:
    """Forget the log lines written after ``step`` (a resumed run writes them again)."""
    path = os.path.join(output, LOG_NAME)
    if os.path.isfile(path):
        write_text(path, "".join(json.dumps(rec) + "\n" for _, rec in iter_jsonl(path) if rec.get("step", 0) <= step))
