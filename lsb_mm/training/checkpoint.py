"""Training checkpoints without pickle: model folder + optimizer / scheduler / RNG / data position.

``checkpoint-000020/``::

    model/                  a save_pretrained folder (load_model reads it)
    trainer_state.json      step, epoch, data position, scheduler, run settings, python RNG
    optimizer.safetensors   optimizer tensors (structure in trainer_state.json)
    rng.safetensors         torch (and CUDA) RNG states, numpy's MT state

Written atomically (temp folder + rename); a folder without ``trainer_state.json`` is never used.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from lsb_mm.errors import InputError
from lsb_mm.files import atomic_folder, read_json

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "prune_checkpoints", "remove_stale_temps",
           "run_contents", "clear_run", "STATE_NAME"]

STATE_NAME = "trainer_state.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def _optimizer_to_tensors(opt: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    state: Dict[int, Dict[str, Any]] = {}
    for key, t in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = t
    for pid, st in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    groups = meta["param_groups"]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def _rng_tensors() -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py = random.getstate()
    meta = {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def _restore_rng(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    v, st, g = meta["python"]
    random.setstate((v, tuple(st), g))


def save_checkpoint(folder: str, model, optimizer, scheduler, state: Dict[str, Any]) -> str:
    """Write a complete checkpoint atomically; ``state`` is JSON-able (step, position, settings)."""
    from safetensors.torch import save_file

    from lsb_mm.models.serialization import save_model

    opt_tensors, opt_meta = _optimizer_to_tensors(optimizer)
    rng_tensors, rng_meta = _rng_tensors()
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    full = {**state, "optimizer": opt_meta, "scheduler": sched, "rng": rng_meta}
    with atomic_folder(folder, STATE_NAME, "a checkpoint") as tmp:
        save_model(model, os.path.join(tmp, "model"))
        save_file(opt_tensors, os.path.join(tmp, "optimizer.safetensors"))
        save_file(rng_tensors, os.path.join(tmp, "rng.safetensors"))
        with open(os.path.join(tmp, STATE_NAME), "w", encoding="utf-8") as f:
            json.dump(full, f)
    return folder


def read_state(folder: str) -> Dict[str, Any]:
    """A checkpoint's ``trainer_state.json``, checked: an object whose ``step``, ``epoch`` and
    ``micro`` are integers >= 0 (a hand-edited or damaged file is refused, naming the field)."""
    path = os.path.join(folder, STATE_NAME)
    if not os.path.isfile(path):
        raise InputError(f"{folder} is not a complete training checkpoint ({STATE_NAME} missing)")
    state = read_json(path, InputError)
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(state).__name__}")
    for key in ("step", "epoch", "micro"):
        v = state.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InputError(f"{path}: {key!r} must be an integer >= 0, got {v!r}")
    return state


_TEMP = re.compile(r"^\.(checkpoint-\d+|final|best)\.tmp-")  # atomic_folder's temp names in a run folder
_OLD = re.compile(r"^\.(checkpoint-\d+|final|best)\.old-")  # its replaced copy: stale once the new one is in place


def remove_stale_temps(output: str) -> List[str]:
    """Delete the temp folders that an interrupted save left in a run folder (``.checkpoint-*.tmp-*``,
    ``.final.tmp-*``, ``.best.tmp-*``: never read, since a save only counts once renamed; and
    ``.NAME.old-*`` where ``NAME`` is in place again); returns them."""
    names = sorted(os.listdir(output)) if os.path.isdir(output) else []
    found = [os.path.join(output, n) for n in names if _TEMP.match(n)
             or (_OLD.match(n) and os.path.isdir(os.path.join(output, _OLD.match(n).group(1))))]
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found


RUN_FILES = ("run_info.json", "train_log.jsonl", "skipped.jsonl")  # with final/, best/ and checkpoints: a run


def run_contents(output: str) -> List[str]:
    """What of an earlier training run ``output`` holds: its files, model folders and checkpoints."""
    if not os.path.isdir(output):
        return []
    names = set(os.listdir(output))
    found = [n for n in RUN_FILES if n in names] + [f"{n}/" for n in ("final", "best") if n in names]
    return found + [os.path.basename(p) + "/" for _, p in _checkpoints_any(output)]


def _checkpoints_any(output: str) -> List[Tuple[int, str]]:
    """Every ``checkpoint-N`` folder, complete or not, by step."""
    if not os.path.isdir(output):
        return []
    return sorted((int(m.group(1)), os.path.join(output, n)) for n in os.listdir(output) if (m := _CKPT.match(n)))


def clear_run(output: str) -> None:
    """Remove an earlier run from ``output`` (``--overwrite``): exactly what :func:`run_contents`
    lists, and stale temp folders; anything else in the folder stays."""
    remove_stale_temps(output)
    for name in run_contents(output):
        path = os.path.join(output, name.rstrip("/"))
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def load_checkpoint(folder: str, optimizer, scheduler) -> Dict[str, Any]:
    """Restore optimizer, scheduler and RNG states in place; return the saved state dict."""
    from safetensors.torch import load_file

    state = read_state(folder)
    _optimizer_from_tensors(optimizer, load_file(os.path.join(folder, "optimizer.safetensors")), state["optimizer"])
    scheduler.load_state_dict({**scheduler.state_dict(), **state["scheduler"]})
    _restore_rng(load_file(os.path.join(folder, "rng.safetensors")), state["rng"])
    return state


def _checkpoints(output: str) -> List[Tuple[int, str]]:
    """The complete ``checkpoint-N`` folders (with their state file), by step."""
    return [(step, path) for step, path in _checkpoints_any(output) if os.path.isfile(os.path.join(path, STATE_NAME))]


def latest_checkpoint(output: str) -> Optional[str]:
    """The complete checkpoint with the highest step under ``output``, or None."""
    found = _checkpoints(output)
    return found[-1][1] if found else None


def remove_checkpoints(output: str) -> None:
    """Delete every checkpoint under ``output`` (a finished run's ``final`` model folder stays)."""
    for _, path in _checkpoints(output):
        shutil.rmtree(path, ignore_errors=True)


def prune_checkpoints(output: str, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (``keep <= 0`` keeps all)."""
    if keep > 0:
        for _, path in _checkpoints(output)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
