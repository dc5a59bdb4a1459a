"""Shared by ``scripts/repro_*.py``: splits, several seeds summarised as mean ± std, tables, verdicts.

A *row* is a named model configuration (``untuned``, ``none``, ``slr`` ...) with one
:func:`lsb_mm.evaluate` result per seed. :func:`summarize` turns rows into mean / std / n per
task and metric; :func:`results_table` renders them for people and :func:`verdicts` says, per
head and task, whether it beats the baseline (Welch's t-test over the seeds, p < ``ALPHA``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple



__all__ = ["run_grid", "validation_record", "finished_run", "settings_differ", "read_run_record", "run_script",
           "query_modulation"]

def run_grid(config: Callable[[str, int], Any], heads: Sequence[str], seeds: Sequence[int], folders: Sequence[str],
             feature_cache=None, head_off: bool = True, keep_checkpoints: bool = False,
             log: Callable[[str], None] = print, share_tower_caches: bool = False,
             then: Optional[Callable[[str, int, str], Any]] = None, runs_dir: Optional[str] = None
             ) -> Tuple[Dict[str, List[dict]], List[dict]]:
    """Train ``config(head, seed)`` (a :class:`~lsb_mm.TrainConfig`) for every seed and head, then
    evaluate each final model on ``folders``; heads other than ``none`` are also scored with the head
    off (row ``"<head> (head off)"``). ``then(head, seed, final folder)`` may return a second config
    that starts from the first stage's model (e.g. the head trained on to convergence with the tuned
    tower locked); its model is the one evaluated. A locked image tower is served from
    ``feature_cache`` in training and evaluation; ``share_tower_caches`` reuses the first run's tower
    caches in the others (plug-in runs on one locked tower; LLR runs first, its cache keeps hidden
    states; not with ``then``, whose towers differ per run). Documents are encoded once per distinct document side
    (:class:`~lsb_mm.evaluation.evaluate.CorpusCache`). With ``runs_dir`` each run is written to
    ``<runs_dir>/<head>-seed<seed>.json`` when done and read back instead of redone (resumable).
    Returns ``(rows, runs)``: evaluation results per row, and one record per run (with the
    query-side modulation strength on the test queries)."""
    from lsb_mm.training.checkpoint import remove_checkpoints
    from lsb_mm.evaluation.evaluate import CorpusCache
    from lsb_mm.models.factory import load_model
    from lsb_mm.files import write_text
    from lsb_mm.training.trainer import Trainer

    rows: Dict[str, List[dict]] = {}
    runs: List[dict] = []
    docs = CorpusCache()
    shared = None
    order = sorted(heads, key=lambda h: h != "llr") if share_tower_caches else list(heads)
    if runs_dir:
        os.makedirs(runs_dir, exist_ok=True)

    def train_stage(cfg, reuse: bool = True) -> Tuple[str, bool]:
        """(final folder, whether a finished run with the same settings was reused)."""
        nonlocal shared
        done = finished_run(cfg) if reuse else None
        if done:  # e.g. stage 1 of a run whose stage 2 is being redone
            log(f"{cfg.output}: finished with the same settings, reused")
            return done, True
        trainer = Trainer(cfg, feature_cache, tower_caches=shared)
        final = trainer.train()
        if share_tower_caches and then is None and shared is None and trainer.tower_caches:
            shared = trainer.tower_caches
        if not keep_checkpoints:  # the final model folder stays; checkpoints repeat it with optimizer state
            remove_checkpoints(cfg.output)
        return final, False

    for seed in seeds:
        for head in order:
            saved = os.path.join(runs_dir, f"{head}-seed{seed}.json") if runs_dir else None
            cfg = config(head, seed)
            done = read_run_record(saved, cfg) if saved else None
            if done is not None:
                for name, res in done.pop("rows").items():
                    rows.setdefault(name, []).append(res)
                runs.append(done)
                continue
            t0 = time.perf_counter()
            first = cfg
            final, reused = train_stage(cfg)
            second = then(head, seed, final) if then is not None else None
            stage_seconds, stages_reused = [round(time.perf_counter() - t0, 1)], [reused]
            if second is not None:  # a retrained first stage makes any earlier second stage stale
                (final, reused), cfg = train_stage(second, reuse=reused), second
                stage_seconds.append(round(time.perf_counter() - t0 - stage_seconds[0], 1))
                stages_reused.append(reused)
            t_train = time.perf_counter() - t0
            mine, modulation = _score(load_model(final), head, folders, feature_cache, docs, head_off)
            res = mine[head]
            for name, r in mine.items():
                rows.setdefault(name, []).append(r)
            run = {"head": head, "seed": seed, "train_seconds": round(t_train, 1), "stage_seconds": stage_seconds,
                   "stages_reused": stages_reused, "config": json.loads(json.dumps(dataclasses.asdict(first))),
                   "output": cfg.output, "validation": validation_record(cfg.output),
                   "metrics": {t: r["metrics"] for t, r in res["tasks"].items()}, "modulation": modulation}
            runs.append(run)
            if saved:
                write_text(saved, json.dumps({**run, "rows": mine}, indent=2))
            log(f"{head} seed {seed}: trained in {t_train:.0f} s; " +
                ", ".join(f"{t} NDCG@10 {r['metrics']['ndcg@10']:.3f}" for t, r in res["tasks"].items()))
    return rows, runs


def _score(model, head: str, folders: Sequence[str], feature_cache, docs, head_off: bool):
    """``({row: evaluate result}, query modulation)`` of one trained model: the head, and with
    ``head_off`` the same model with its head off."""
    from lsb_mm.evaluation.evaluate import evaluate

    mine: Dict[str, dict] = {}
    cached = feature_cache.attach(model) if feature_cache is not None and model.has_image else contextlib.nullcontext()
    with cached:
        mine[head] = evaluate(model, folders, show_progress_bar=False, corpus_cache=docs)
        if head_off and head != "none":
            mine[f"{head} (head off)"] = evaluate(model, folders, enhance=False, show_progress_bar=False, corpus_cache=docs)
        return mine, query_modulation(model, folders)


def read_run_record(path: str, cfg) -> Optional[Dict[str, Any]]:
    """A finished run's saved record (one JSON per run), or None when there is none; a record made
    with other settings than ``cfg`` (:func:`settings_differ`) is refused rather than mixed in.
    Records written before settings were recorded are trusted."""
    import json

    from lsb_mm.errors import InputError

    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        done = json.load(f)
    differ = settings_differ(done["config"], cfg) if "config" in done else []
    if differ:
        raise InputError(f"{path} was trained with other settings ({', '.join(differ)}); delete it to "
                         "train again, or write to another --out")
    return done


def settings_differ(saved: Dict[str, Any], cfg) -> List[str]:
    """The result-relevant settings (:data:`lsb_mm.training.config.RESUME_FIXED`, the head, the visual
    vocabulary, fusion, pooling) in which a saved config (``dataclasses.asdict`` of a
    :class:`~lsb_mm.TrainConfig`, as JSON) differs from ``cfg``; a key an older run did not record
    counts as its default."""
    import json

    from lsb_mm.training.config import RESUME_FIXED, TrainConfig

    now = json.loads(json.dumps(dataclasses.asdict(cfg)))
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    keys = (*RESUME_FIXED, "head", "vocab_size", "fit_codebook", "fusion_q", "fusion_p", "pooling", "image_root")
    return [k for k in keys if saved.get(k, defaults.get(k)) != now.get(k)]


def finished_run(cfg) -> Optional[str]:
    """``<output>/final`` of a training run that finished (its log ends with the ``final`` record
    of that run: the log is emptied when a run starts) with the same result-relevant settings as
    ``cfg`` (:func:`settings_differ`) on a training file of the same content, else None."""
    import json

    from lsb_mm.files import iter_jsonl
    from lsb_mm.models.serialization import CONFIG_NAME
    from lsb_mm.training.run_folder import FINAL_DIR, LOG_NAME

    final, info = os.path.join(cfg.output, FINAL_DIR), os.path.join(cfg.output, "run_info.json")
    log_path = os.path.join(cfg.output, LOG_NAME)
    if not all(os.path.isfile(p) for p in (os.path.join(final, CONFIG_NAME), info, log_path)):
        return None
    if not any("final" in rec for _, rec in iter_jsonl(log_path)):
        return None  # interrupted: the final folder, if any, is an older run's
    with open(info, encoding="utf-8") as f:
        saved = json.load(f)
    if settings_differ(saved.get("config", {}), cfg) or saved.get("train_file") != _file_stamp(cfg.train_data):
        return None
    return final


def _file_stamp(path: str) -> Optional[str]:

    from lsb_mm.files import file_sha256

    return file_sha256(path) if path and os.path.isfile(path) else None


def run_script(main: Callable[[], int]) -> int:
    """Run a script's ``main``: a user mistake (:class:`lsb_mm.LSBError`) prints one line and gives
    exit status 2, as the CLI does, instead of a traceback."""
    import sys

    from lsb_mm.errors import LSBError

    try:
        return main()
    except LSBError as exc:
        print(f"{os.path.basename(sys.argv[0])}: error: {exc}", file=sys.stderr)
        return 2


def validation_record(output: str) -> Optional[Dict[str, Any]]:
    """What a training run in ``output`` kept: ``{"from_step", "metric", "value", "steps_run"}`` of its
    best validation evaluation (None for a run without validation)."""

    from lsb_mm.files import iter_jsonl

    log = [rec for _, rec in iter_jsonl(os.path.join(output, "train_log.jsonl"))]
    final = next((rec["final"] for rec in log if "final" in rec), None)
    if final is None or final.get("value") is None:
        return None
    return {"from_step": final["from_step"], "metric": final["metric"], "value": final["value"],
            "steps_run": max((rec["step"] for rec in log if "loss" in rec), default=0)}


def query_modulation(model, folders: Sequence[str], batch_size: int = 128) -> Optional[Dict[str, float]]:
    """Modulation strength (:func:`lsb_mm.models.heads.modulation_strength`) of the query-side heads over every
    query of the task folders (text queries through the text head, image queries through the image
    head), or None when no query meets a head that modulates (``none``, ``adapter``) or without
    query-side fusion."""
    from lsb_mm.data.tasks import read_task
    from lsb_mm.models.explain import modulation_of

    queries = [q for f in folders for q in read_task(f).queries]
    return modulation_of(model, [q["text"] for q in queries if "text" in q],  # cross-modal task sets mix both kinds
                         [q["image"] for q in queries if "image" in q], batch_size)
