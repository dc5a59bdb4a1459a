"""``lsb-mm demo``: LexSemBridge end to end on real data, offline, in minutes on a laptop CPU.

1. Tux Paint stamps (Debian ``tuxpaint-stamps-default``: ~785 pictures, an English caption each,
   121 categories), split by category: 60% to train, 40% held out.
2. The dual encoder of real packaged towers: all-MiniLM-L6-v2 (text) + EfficientNet-Lite0 with
   ImageNet weights (image), both locked, with learned projections into a shared space (LiT-style).
3. For the baseline (``none``: projections only) and for LexSemBridge (projections + ``--head``):
   train text->image on the training captions, and image->image on crops (four per stamp) and
   same-category pairs of the training stamps, with the plug-in recipe that
   ``scripts/sweep_heads.py`` chose on validation (:mod:`lsb_mm.training.recipes`): cached tower outputs,
   corpus negatives, a validation split of the training data (20%, whole stamps), early stopping,
   the best validation model kept.
4. Index the held-out stamps (FAISS, saved), evaluate ``caption2image`` and the fine-grained
   ``snippet-30`` task (a crop keeping 30% of each side, random position -> its stamp) and
   ``class``; print the table; write ``results.json``, ``results.md`` and ``gallery.html`` (a few
   text->image and image->image searches, baseline beside LexSemBridge, relevant hits framed green).

One seed: a demonstration, not the measurement. ``scripts/repro_plugin.py`` gives the 3-seed
numbers of the same recipe that the README reports.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Dict, List, Optional

from lsb_mm.errors import InputError
from lsb_mm.files import write_text

__all__ = ["run_demo"]

log = logging.getLogger(__name__)
TASK_METRICS = {"caption2image": ("recall@1", "recall@5", "recall@10"), "snippet-30-random": ("ndcg@10", "recall@10"),
                "class": ("ndcg@10",)}


def _say(msg: str) -> None:
    print(msg, flush=True)


def _check_data():
    from lsb_mm_experiments.datasets.tuxpaint import TUXPAINT_PACKAGE, load_tuxpaint

    try:
        return load_tuxpaint()
    except InputError as exc:
        raise InputError(f"{exc}. The demo reads the Debian package {TUXPAINT_PACKAGE}: run `bash scripts/setup.sh` "
                         f"as root (it installs it), or `sudo apt-get install {TUXPAINT_PACKAGE}`. "
                         "Without apt, copy a Tux Paint stamps folder and pass --stamps <folder>.") from exc


MARKER = ".lsb-mm-demo"


def _check_output(output: str) -> None:
    """The demo replaces its output folder: refuse a file, or a non-empty folder no earlier demo wrote."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise InputError(f"--output {output!r} is a file; give a folder for the demo's results")
    if os.path.isdir(output) and os.listdir(output) and not os.path.exists(os.path.join(output, MARKER)):
        raise InputError(f"--output {output!r} is a non-empty folder that no earlier demo wrote; the demo replaces "
                         "its output folder, so give a new or empty folder (or an earlier demo's)")


def _fresh_output(output: str) -> None:
    """Empty ``output`` for a new run (deleting only an earlier demo's folder) and mark it as the demo's."""
    _check_output(output)
    if os.path.isdir(output):
        shutil.rmtree(output)
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, MARKER), "w", encoding="utf-8") as f:
        f.write("written by lsb-mm demo; the next demo run with this --output replaces this folder\n")


def _table(results: Dict[str, dict], rows: List[str]) -> List[str]:
    cols = [(t, m) for t, ms in TASK_METRICS.items() for m in ms]
    head = "| model | " + " | ".join(f"{t} {m.replace('recall', 'R').replace('ndcg', 'NDCG')}" for t, m in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    for r in rows:
        lines.append(f"| {r} | " + " | ".join(f"{results[r][t]['metrics'][m]:.3f}" for t, m in cols) + " |")
    if len(rows) == 2:
        a, b = rows
        lines.append("| Δ | " + " | ".join(f"{results[b][t]['metrics'][m] - results[a][t]['metrics'][m]:+.3f}"
                                          for t, m in cols) + " |")
    return lines


def _searches(model, index, queries: List[dict], kind: str, qrels: Dict[str, Dict[str, int]], docs: Dict[str, dict],
              label: str, k: int = 5) -> List[dict]:
    from lsb_mm.evaluation.evaluate import encode_records

    q = encode_records(model, queries, "query", show_progress_bar=False)
    scores, ids = index.search(q, k=k, fingerprint=model.fingerprint())
    out = []
    for rec, srow, irow in zip(queries, scores, ids):
        hits = [{"rank": r + 1, "score": float(s), "id": i, "path": docs[i].get("image"), "caption": docs[i].get("caption"),
                 "relevant": qrels[rec["_id"]].get(i, 0) > 0} for r, (s, i) in enumerate(zip(srow, irow)) if i is not None]
        out.append({"query": rec.get("text") or os.path.basename(rec["image"]), "query_image": rec.get("image"),
                    "note": f"{kind}, {label}", "hits": hits})
    return out


def run_demo(output: str = "runs/demo", head: str = "slr", max_steps: int = 600, eval_steps: int = 50, patience: int = 3,
             batch_size: int = 64, img_size: int = 160, seed: int = 0, limit: int = 0, crops_per_image: int = 4,
             stamps_root: Optional[str] = None, gallery_queries: int = 4) -> dict:
    """Run the demo (see the module docstring); returns the results dict also written to ``results.json``."""
    from lsb_mm.training.feature_cache import ImageFeatureCache

    if head == "none":
        raise InputError("--head must be a LexSemBridge head (slr, llr or clr); the baseline 'none' always runs")
    _check_output(output)
    t0 = time.perf_counter()
    data = _prepare(output, stamps_root, limit, seed, crops_per_image)
    cache = ImageFeatureCache()
    rows = {"baseline (none)": "none", f"LexSemBridge ({head})": head}
    train_args = {"max_steps": max_steps, "eval_steps": eval_steps, "patience": patience, "seed": seed,
                  "batch_size": min(batch_size, max(2, len(data["train"]) // 2))}
    models, recipes, folders = _train_rows(data, rows, img_size, cache, train_args)
    results, modulation, gallery = _evaluate_rows(output, data, rows, models, cache, gallery_queries)
    for label, h in rows.items():  # the text->image model beside the index it built, for lsb-mm serve
        os.replace(folders[label]["cross"], os.path.join(output, f"model-{h}"))
    _say("[4/5] indexed and evaluated the held-out stamps")
    return _report(output, head, rows, data, results, modulation, recipes, gallery, cache, t0)


def _prepare(output: str, stamps_root: Optional[str], limit: int, seed: int, crops_per_image: int) -> dict:
    """Step 1: the stamps split by category, the training files and the held-out task folders."""
    from lsb_mm.data.splits import stratified_split
    from lsb_mm.data.tasks import cross_tasks, image_pair_training_data, image_tasks
    from lsb_mm_experiments.datasets.tuxpaint import link_labelled_folder, load_tuxpaint

    data = load_tuxpaint(stamps_root) if stamps_root else _check_data()
    stamps = data.stamps[: limit or None]
    train_set, test_set = stratified_split(stamps, lambda s: s.category, 0.4, seed=0)
    _fresh_output(output)
    work = os.path.join(output, "work")
    os.makedirs(work)
    _say(f"[1/5] data: {len(stamps)} Tux Paint stamps ({len(data.skipped)} without a caption left out), "
         f"{len(train_set)} to train, {len(test_set)} held out")
    cross_file = os.path.join(work, "captions.jsonl")
    with open(cross_file, "w", encoding="utf-8") as f:
        for s in train_set:
            f.write(json.dumps({"query": s.caption, "pos": [s.path]}) + "\n")
    image_file = os.path.join(work, "image_pairs.jsonl")
    image_pair_training_data(link_labelled_folder(train_set, os.path.join(work, "train_stamps")), image_file, seed=seed,
                             crops=crops_per_image)
    tasks_dir = os.path.join(work, "tasks")
    cross_tasks([(s.caption, s.path) for s in test_set], tasks_dir)
    image_tasks(link_labelled_folder(test_set, os.path.join(work, "test_stamps")), tasks_dir, kinds=("class", "snippet-30"),
                position="random", seed=seed)
    return {"stamps": stamps, "skipped": data.skipped, "train": train_set, "test": test_set, "work": work,
            "files": {"cross": cross_file, "image": image_file},
            "tasks": {t: os.path.join(tasks_dir, t) for t in TASK_METRICS}}


def _train_rows(data: dict, rows: Dict[str, str], img_size: int, cache, train_args: dict):
    """Steps 2-3: for each row (baseline, head), a text->image and an image->image model of the
    dual encoder, towers locked, with the plug-in recipe; returns (models, recipes, folders)."""
    from lsb_mm import TrainConfig, load_model, train
    from lsb_mm.models.pretrained import dual_encoder
    from lsb_mm.training.checkpoint import remove_checkpoints
    from lsb_mm_experiments.reproduce import validation_record

    name, options = dual_encoder(img_size)
    _say("[2/5] dual encoder: all-MiniLM-L6-v2 + EfficientNet-Lite0 (ImageNet), towers locked, 256-d projections")
    models: Dict[str, Dict[str, object]] = {}
    recipes: Dict[str, Dict[str, dict]] = {}
    folders: Dict[str, Dict[str, str]] = {}
    for label, h in rows.items():
        models[label], recipes[label], folders[label] = {}, {}, {}
        for modality, file in data["files"].items():
            t = time.perf_counter()
            cfg = TrainConfig(model=name, overwrite=True, model_options=options, head=h, modality=modality, train_data=file,
                              train="heads", symmetric=modality == "cross", corpus_negatives=True, val_fraction=0.2,
                              vocab_size=256, output=os.path.join(data["work"], "runs", f"{h}-{modality}"),
                              show_progress_bar=False, log_steps=50, keep_checkpoints=1, **train_args)
            folders[label][modality] = train(cfg, feature_cache=cache)
            models[label][modality] = load_model(folders[label][modality])
            remove_checkpoints(cfg.output)
            recipes[label][modality] = {"lr": cfg.lr, "temperature": cfg.temperature, "weight_decay": cfg.weight_decay,
                                        "from": (cfg.defaults_from or {}).get("recipe"),
                                        **(validation_record(cfg.output) or {})}
            r = recipes[label][modality]
            _say(f"[3/5] trained {label} {'text->image' if modality == 'cross' else 'image->image'} "
                 f"in {time.perf_counter() - t:.0f} s (lr {cfg.lr:g}, temperature {cfg.temperature:g}; best validation "
                 f"NDCG@10 {r.get('value', float('nan')):.3f} at step {r.get('from_step')} of {r.get('steps_run')})")
    return models, recipes, folders


def _evaluate_rows(output: str, data: dict, rows: Dict[str, str], models, cache, gallery_queries: int):
    """Step 4: evaluate every row on the held-out tasks, index the held-out stamps (saved) and run
    the gallery's searches; returns (results, modulation, gallery)."""
    from lsb_mm import Index, evaluate
    from lsb_mm.data.tasks import read_task
    from lsb_mm_experiments.reproduce import query_modulation

    tasks = data["tasks"]
    results: Dict[str, dict] = {}
    modulation: Dict[str, dict] = {label: {} for label in rows}
    gallery: List[tuple] = []
    cap_task, snip_task = read_task(tasks["caption2image"]), read_task(tasks["snippet-30-random"])
    captions = {os.path.realpath(s.path): s.caption for s in data["test"]}  # snippet corpora hold links to the stamps
    cap_docs, snip_docs = ({d["_id"]: {"image": d["image"], "caption": captions.get(os.path.realpath(d["image"]))}
                            for d in t.corpus} for t in (cap_task, snip_task))
    picks = list(range(0, len(cap_task.queries), max(1, len(cap_task.queries) // gallery_queries)))[:gallery_queries]
    for label in rows:
        cross_model, image_model = models[label]["cross"], models[label]["image"]
        results[label] = {}
        for model, task_names in ((cross_model, ["caption2image"]), (image_model, ["snippet-30-random", "class"])):
            with cache.attach(model):
                res = evaluate(model, [tasks[t] for t in task_names], show_progress_bar=False)
                mod = query_modulation(model, [tasks[task_names[0]]])
            results[label].update(res["tasks"])
            if mod:
                modulation[label][task_names[0]] = mod
        with cache.attach(cross_model), cache.attach(image_model):
            index = Index.build(cross_model.encode_image([d["image"] for d in cap_task.corpus], role="document"),
                                ids=[d["_id"] for d in cap_task.corpus], fingerprint=cross_model.fingerprint(),
                                metadata=[{"path": os.path.abspath(d["image"]), "caption": cap_docs[d["_id"]]["caption"]}
                                          for d in cap_task.corpus])
            index.save(os.path.join(output, f"index-{rows[label]}"))
            gallery_cap = _searches(cross_model, index, [cap_task.queries[i] for i in picks], "text -> image",
                                    cap_task.qrels, cap_docs, label)
            snip_index = Index.build(image_model.encode_image([d["image"] for d in snip_task.corpus], role="document"),
                                     ids=[d["_id"] for d in snip_task.corpus], fingerprint=image_model.fingerprint())
            gallery_snip = _searches(image_model, snip_index, [snip_task.queries[i] for i in picks], "image -> image, 30% crop",
                                     snip_task.qrels, snip_docs, label)
        gallery.append((gallery_cap, gallery_snip))
    return results, modulation, gallery


def _report(output: str, head: str, rows, data: dict, results, modulation, recipes, gallery, cache, t0: float) -> dict:
    """Step 5: the gallery, ``results.md`` / ``results.json``, and the table printed."""
    from lsb_mm.evaluation.gallery import write_gallery
    from lsb_mm_experiments.benchmarking import machine_info

    # baseline beside LexSemBridge for each query
    ordered = [r for pair in zip(*(g[0] for g in gallery)) for r in pair] + [r for pair in zip(*(g[1] for g in gallery)) for r in pair]
    gallery_path = write_gallery(os.path.join(output, "gallery.html"), f"lsb-mm demo: baseline vs LexSemBridge ({head})", ordered)
    lines = _table(results, list(rows))
    for label, per_task in modulation.items():
        for t, m in per_task.items():
            lines.append(f"\nModulation of {label} on the {t} queries: median max(a)/min(a) {m['max_over_min']:.2f} "
                         f"(1 = an untrained head), entropy {m['entropy']:.3f} of uniform.")
    seconds = time.perf_counter() - t0
    m = machine_info()
    md = [f"# lsb-mm demo: Tux Paint, {len(data['test'])} held-out stamps, one seed", "",
          f"Machine: {m['cuda'] or m['cpu']} ({m['threads']} threads); {seconds:.0f} s.", ""] + lines
    write_text(os.path.join(output, "results.md"), "\n".join(md) + "\n")
    payload = {"head": head, "seconds": round(seconds, 1), "machine": m, "stamps": len(data["stamps"]),
               "train": len(data["train"]), "test": len(data["test"]), "skipped": data["skipped"],
               "feature_cache": cache.stats(), "results": results, "modulation": modulation, "recipes": recipes}
    write_text(os.path.join(output, "results.json"), json.dumps(payload, indent=2))
    _say("[5/5] results (held-out stamps; Δ = LexSemBridge - baseline):\n\n" + "\n".join(lines) + "\n")
    _say(f"gallery: {gallery_path}\nresults: {os.path.join(output, 'results.md')}, {os.path.join(output, 'results.json')}\n"
         f"indexes: {os.path.join(output, 'index-none')}, {os.path.join(output, f'index-{head}')}\n"
         f"search them in a browser: lsb-mm serve --model {os.path.join(output, f'model-{head}')} "
         f"--index stamps={os.path.join(output, f'index-{head}')}   (then open http://127.0.0.1:8000/)\n"
         f"done in {seconds:.0f} s")
    return payload
