"""Shared by ``scripts/repro_*.py``: splits, several seeds summarised as mean ± std, tables, verdicts.

A *row* is a named model configuration (``untuned``, ``none``, ``slr`` ...) with one
:func:`lsb_mm.evaluate` result per seed. :func:`summarize` turns rows into mean / std / n per
task and metric; :func:`results_table` renders them for people and :func:`verdicts` says, per
head and task, whether it beats the baseline (Welch's t-test over the seeds, p < ``ALPHA``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lsb_mm.data.splits import stratified_split

__all__ = ["stratified_split", "run_grid", "plugin_config", "validation_record", "finished_run", "settings_differ", "read_run_record", "run_script", "PLUGIN_HEADS", "PluginExperiment", "add_plugin_data_args", "add_run_args", "plugin_experiment",
           "plugin_references", "text_references", "fusion_note", "update_references", "HYBRID_REFERENCES", "query_modulation", "summarize", "results_table", "compact_table", "verdicts", "compare", "welch_p",
           "head_tables", "machine_line", "ALPHA"]

Summary = Dict[str, Dict[str, Dict[str, List[float]]]]  # row -> task -> metric -> [mean, std, n]


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
    import json

    from lsb_mm.training.checkpoint import remove_checkpoints
    from lsb_mm.evaluation.evaluate import CorpusCache, evaluate
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
            model = load_model(final)
            mine: Dict[str, dict] = {}
            cached = feature_cache.attach(model) if feature_cache is not None and model.has_image else contextlib.nullcontext()
            with cached:
                res = mine[head] = evaluate(model, folders, show_progress_bar=False, corpus_cache=docs)
                if head_off and head != "none":
                    mine[f"{head} (head off)"] = evaluate(model, folders, enhance=False, show_progress_bar=False,
                                                          corpus_cache=docs)
                modulation = query_modulation(model, folders)
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


def plugin_config(args, head: str, train_file: str, output: str, lr: float, temperature: float, weight_decay: float,
                  seed: int, modality: str = "text", eval_data: Optional[str] = None, head_lr: Optional[float] = None):
    """The plug-in recipe of ``scripts/sweep_heads.py`` and ``scripts/repro_plugin.py`` (one definition,
    so a reproduction trains exactly as the sweep chose): towers locked and cached, corpus negatives,
    validation carved from the training data, early stopping, best model kept. ``lr`` trains
    everything that trains: the heads, and a dual encoder's projections (image, cross), unless
    ``head_lr`` gives the heads their own. ``args``
    gives ``model``, ``model_options`` (or None), ``batch_size``, ``max_steps``, ``eval_steps``,
    ``patience``, ``val_fraction`` and, for image / cross, ``vocab_size``; cross is symmetric. With
    ``eval_data`` (a validation JSONL) nothing is carved from the training data; its queries search
    among the training documents too, as a carved validation's do."""
    from lsb_mm.training.config import TrainConfig

    extra = {} if modality == "text" else {"vocab_size": args.vocab_size, "symmetric": modality == "cross"}
    return TrainConfig(model=args.model, overwrite=True, model_options=dict(getattr(args, "model_options", None) or {}), head=head,
                       train_data=train_file, output=output, modality=modality, train="heads", corpus_negatives=True,
                       lr=lr, head_lr=head_lr or lr, temperature=temperature, weight_decay=weight_decay, batch_size=args.batch_size,
                       max_steps=args.max_steps, eval_steps=args.eval_steps, patience=args.patience,
                       val_fraction=0.0 if eval_data else args.val_fraction, eval_data=eval_data,
                       eval_distractors=bool(eval_data), seed=seed, log_steps=50,
                       keep_checkpoints=1, show_progress_bar=False, **extra)


PLUGIN_HEADS = {"text": ["slr", "llr", "clr", "adapter"], "image": ["none", "slr", "llr", "clr", "adapter"],
                "cross": ["none", "slr", "llr", "clr", "adapter"]}


@dataclasses.dataclass
class PluginExperiment:
    """The data and model of one plug-in experiment (``scripts/sweep_heads.py``, ``scripts/repro_plugin.py``).

    ``key`` names its results: ``text``, ``cross`` or ``image-<dataset>``. ``model`` /
    ``model_options`` are what :class:`~lsb_mm.TrainConfig` takes."""

    key: str
    modality: str
    label: str
    model: str
    model_options: Dict[str, Any]
    train_file: str
    folders: List[str]
    info: Dict[str, Any]
    untuned: Any = None  # the text experiment's untuned model (it sized the passages)
    extra_train: Optional[str] = None  # extra training queries (text: documentation sections), never validated on


def experiment_key(args) -> str:
    """The name of a plug-in experiment's results: ``text`` (``text-docs`` with ``--extra-docs``),
    ``cross`` or ``image-<dataset>``."""
    if args.modality == "text":
        return "text-docs" if getattr(args, "extra_docs", None) else "text"
    return "cross" if args.modality == "cross" else f"image-{args.dataset}"


def plugin_train_files(exp: PluginExperiment, work: str, seed: int, val_fraction: float) -> Tuple[str, Optional[str]]:
    """``(training file, validation file or None)`` of one seed's plug-in run. Without extra data
    the trainer carves the validation itself (``val_fraction`` of ``exp.train_file``). With
    ``exp.extra_train`` the validation is carved (seeded, whole documents) from the experiment's
    own training documents only, so early stopping looks at the test tasks' domain, and the extra
    examples join the training side."""
    from lsb_mm.data.splits import split_jsonl_by_document
    from lsb_mm.files import iter_jsonl, write_jsonl

    if exp.extra_train is None:
        return exp.train_file, None
    folder = os.path.join(work, f"split-seed{seed}")
    ((train, held),) = split_jsonl_by_document([exp.train_file], folder, val_fraction, seed)
    combined = os.path.join(folder, "train+extra.jsonl")
    write_jsonl(combined, (rec for path in (train, exp.extra_train) for _, rec in iter_jsonl(path)))
    return combined, held


def add_plugin_data_args(ap) -> None:
    """The options that choose a plug-in experiment's data and model (shared by the sweep and the reproduction)."""
    ap.add_argument("--modality", default="text", choices=["text", "image", "cross"],
                    help="text: man pages on all-MiniLM-L6-v2; image: image -> image on --dataset; cross: Tux Paint "
                         "captions -> stamps (image and cross: the MiniLM + EfficientNet-Lite0 dual encoder)")
    ap.add_argument("--dataset", default="tuxpaint", choices=["fashion-mnist", "tuxpaint"], help="image data (default: %(default)s)")
    ap.add_argument("--model", default=None, help="text: the encoder (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--pages", type=int, default=0, help="text: first N man pages only (0: all)")
    ap.add_argument("--limit", type=int, default=0, help="Tux Paint: first N stamps only (0: all)")
    ap.add_argument("--per-class", type=int, default=200, help="Fashion-MNIST images per class, train and test (default: %(default)s)")
    ap.add_argument("--crops-per-image", type=int, default=4, help="image: crop -> image training pairs per training image")
    ap.add_argument("--embed-dim", type=int, default=256, help="image, cross: the projections' shared space (default: %(default)s)")
    ap.add_argument("--vocab-size", type=int, default=256, help="image, cross: visual words (default: %(default)s)")
    ap.add_argument("--extra-docs", nargs="+", default=[], choices=["python3-doc", "linux-doc"],
                    help="text: more training queries from these Debian documentation packages (section title -> "
                         "section body); validation and test stay on man pages")
    ap.add_argument("--extra-sections", type=int, default=4000,
                    help="text: documentation sections drawn for --extra-docs (0: all; default: %(default)s)")


def add_run_args(ap, work: str) -> None:
    """Validation, output and ``--render`` options shared by the sweep and the reproductions."""
    ap.add_argument("--patience", type=int, default=3, help="stop after N evaluations without a gain (default: %(default)s)")
    ap.add_argument("--val-fraction", type=float, default=0.2,
                    help="training examples (whole documents) held out as validation (default: %(default)s)")
    ap.add_argument("--work", default=None, help=f"data, models and logs (default: {work})")
    ap.add_argument("--out", default="results", help="where the JSON / markdown go (default: %(default)s)")
    ap.add_argument("--render", metavar="JSON", help="only re-write the markdown of a saved result JSON (no training)")


def plugin_experiment(args, work: str) -> PluginExperiment:
    """Build the training data and held-out tasks of ``args.modality`` under ``work``; sets
    ``args.model`` / ``args.model_options`` for :func:`plugin_config`."""
    from lsb_mm.errors import InputError
    from lsb_mm.models.pretrained import dual_encoder, text_model_or_minilm

    if getattr(args, "extra_docs", None) and args.modality != "text":
        raise InputError(f"--extra-docs adds text training data; it does not apply to --modality {args.modality}")
    if args.modality == "text":
        from lsb_mm_experiments.datasets.manpage_experiment import build_doc_training, build_manpage_experiment
        from lsb_mm.models.factory import create_model

        label, args.model = text_model_or_minilm(args.model)
        args.model_options = None
        untuned = create_model(args.model, head="none")
        train_file, folders, info = build_manpage_experiment(work, untuned, pages=args.pages, per_page="all")
        extra = None
        if getattr(args, "extra_docs", None):
            extra, info["extra"] = build_doc_training(work, untuned, args.extra_docs, args.extra_sections)
        return PluginExperiment(experiment_key(args), "text", label, args.model, {}, train_file, folders, info, untuned,
                                extra)
    from lsb_mm_experiments.datasets.image_experiment import IMAGE_SIZE, build_cross_experiment, build_image_experiment

    size = IMAGE_SIZE[args.dataset] if args.modality == "image" else 160
    args.model, args.model_options = dual_encoder(size, args.embed_dim)
    label = f"all-MiniLM-L6-v2 + EfficientNet-Lite0 ({size} px)"
    if args.modality == "cross":
        train_file, folders, info = build_cross_experiment(work, limit=args.limit)
        return PluginExperiment("cross", "cross", label, args.model, args.model_options, train_file, folders, info)
    train_file, folders, info = build_image_experiment(work, args.dataset, per_class=args.per_class, limit=args.limit,
                                                       crops_per_image=args.crops_per_image)
    info["img_size"] = size
    return PluginExperiment(f"image-{args.dataset}", "image", label, args.model, args.model_options, train_file, folders,
                            info)


def plugin_references(exp: PluginExperiment, feature_cache=None, corpus_cache=None) -> Dict[str, List[dict]]:
    """The reference rows of a plug-in experiment: text, :func:`text_references`; image, the
    untuned EfficientNet-Lite0's pooled features; cross, the untrained dual encoder (chance level)."""
    from lsb_mm.evaluation.evaluate import evaluate
    from lsb_mm.models.factory import create_model
    from lsb_mm.models.pretrained import efficientnet_lite0_weights

    if exp.modality == "text":
        return text_references(exp.untuned, exp.folders, exp.info["train_tasks"], corpus_cache)
    if exp.modality == "image":
        model, name = create_model("timm:tf_efficientnet_lite0", head="none", weights=efficientnet_lite0_weights(),
                                   img_size=exp.info["img_size"]), "EfficientNet-Lite0 (untuned)"
    else:
        model, name = create_model(exp.model, head="none", **exp.model_options), "untrained"
    with feature_cache.attach(model) if feature_cache is not None else contextlib.nullcontext():
        return {name: [evaluate(model, exp.folders, show_progress_bar=False)]}


HYBRID_REFERENCES = ("untuned + BM25 (RRF)", "untuned + BM25 (weighted)")


def text_references(untuned, folders: Sequence[str], val_tasks: str, corpus_cache=None) -> Dict[str, List[dict]]:
    """The reference rows of a text experiment: the untuned encoder, BM25, and their two fusions
    (:mod:`lsb_mm.retrieval.fusion`), reciprocal-rank and weighted score fusion. The weighted row's dense
    weight is chosen on ``val_tasks`` (tasks over training pages, never the test tasks); the
    choice, with every weight's validation score, is kept in the row as ``fusion_validation``."""
    from lsb_mm.evaluation.evaluate import CorpusCache, choose_fusion_weight, evaluate

    cache = corpus_cache if corpus_cache is not None else CorpusCache()
    chosen = choose_fusion_weight(untuned, val_tasks)
    dense = lambda **kw: evaluate(untuned, folders, show_progress_bar=False, corpus_cache=cache, **kw)  # noqa: E731
    weighted = {**dense(fusion=chosen["weight"]), "fusion_validation": chosen}
    return {"untuned": [dense()], "BM25": [evaluate("bm25", folders)], HYBRID_REFERENCES[0]: [dense(fusion="rrf")],
            HYBRID_REFERENCES[1]: [weighted]}


def fusion_note(results: Dict[str, List[dict]]) -> List[str]:
    """A line on the weighted-fusion reference row of saved results: the dense weight and how it was
    chosen (empty without that row)."""
    from lsb_mm.retrieval.fusion import CANDIDATES, RRF_K

    rows = results.get(HYBRID_REFERENCES[1])
    if not rows or "fusion_validation" not in rows[0]:
        return []
    v = rows[0]["fusion_validation"]
    grid = ", ".join(f"{float(w):g}: {x:.3f}" for w, x in v["scores"].items())
    return [f"`{HYBRID_REFERENCES[1]}`: score = w·dense + (1-w)·BM25 over each side's top {CANDIDATES} (scores "
            f"min-max scaled per query), w = {float(v['weight']):g}, chosen on {len(v['tasks'])} tasks over the training "
            f"pages (mean validation {v['metric']} per w: {grid}). `{HYBRID_REFERENCES[0]}`: reciprocal-rank fusion "
            f"(k = {RRF_K}) of the same candidates.", ""]


def update_references(path: str, references: Callable[[Dict[str, Any]], Dict[str, List[dict]]],
                      render: Callable[[Dict[str, Any]], List[str]], keep_equal: Sequence[str] = ("untuned", "BM25")) -> int:
    """Re-compute the reference rows of a saved reproduction (``--update-references``) without
    training again: ``references(payload)`` rebuilds its tasks from its settings and returns the rows;
    they replace the saved reference rows, then the summary and markdown are re-written. The rows in
    ``keep_equal`` that the saved result has must come out the same (every metric within 1e-6),
    which shows the rebuilt tasks are the ones the heads were tested on; otherwise nothing is written."""
    import json

    from lsb_mm_experiments.benchmarking import write_benchmark
    from lsb_mm.errors import InputError

    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    fresh = references(payload)
    saved = payload["results"]
    for name in keep_equal:
        if name not in saved or name not in fresh:
            continue
        old, new = saved[name][0]["tasks"], fresh[name][0]["tasks"]
        bad = [f"{t} {m}: saved {old[t]['metrics'][m]:.6f}, now {new.get(t, {}).get('metrics', {}).get(m, float('nan')):.6f}"
               for t in old for m in old[t]["metrics"]
               if not abs(old[t]["metrics"][m] - new.get(t, {}).get("metrics", {}).get(m, float("inf"))) <= 1e-6]
        if bad:
            raise InputError(f"{path}: the re-built tasks do not reproduce the saved {name!r} row ({'; '.join(bad[:3])}"
                             f"{' ...' if len(bad) > 3 else ''}); re-run the reproduction instead")
    old_refs = payload.get("references", [r for r in saved if r in ("untuned", "BM25")])
    payload["results"] = {**fresh, **{k: v for k, v in saved.items() if k not in fresh and k not in old_refs}}
    payload["references"] = list(fresh)
    payload["summary"] = summarize(payload["results"])
    out_dir, name = os.path.split(os.path.splitext(path)[0])
    write_benchmark(out_dir or ".", name, payload, render(payload))
    return 0


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


def summarize(rows: Dict[str, List[Dict[str, object]]]) -> Summary:
    """Mean, sample std (0 for one run) and count of every metric of every task, per row."""
    out: Summary = {}
    for name, results in rows.items():
        tasks = list(dict.fromkeys(t for r in results for t in r["tasks"]))
        out[name] = {}
        for t in tasks:
            metrics = [r["tasks"][t]["metrics"] for r in results if t in r["tasks"]]
            out[name][t] = {}
            for m in metrics[0]:
                v = np.array([x[m] for x in metrics], dtype=np.float64)
                out[name][t][m] = [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)]
    return out


ALPHA = 0.05  # significance level of the verdicts


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test on two ``(mean, std, n)`` rows. A row of one run counts as
    exact (a deterministic reference such as the untuned model or BM25): a one-sample test against it."""
    from lsb_mm.errors import require_extra

    require_extra("experiments", "Welch's t-test of the reproductions", "scipy")
    from scipy import stats

    diff = a[0] - b[0]
    va, vb = (r[1] ** 2 / r[2] if r[2] > 1 else 0.0 for r in (a, b))
    se = math.sqrt(va + vb)
    if se == 0.0:
        return 1.0 if abs(diff) < 1e-12 else 0.0
    terms = [v ** 2 / (r[2] - 1) for v, r in ((va, a), (vb, b)) if r[2] > 1]
    df = (va + vb) ** 2 / sum(terms)
    return float(2 * stats.t.sf(abs(diff) / se, df))


def compare(summary: Summary, row: str, baseline: str, task: str, metric: str) -> Tuple[float, str, float]:
    """``(difference of means, verdict, p)``: ``better`` / ``worse`` when Welch's t-test over the seeds
    gives p < ``ALPHA``, ``same`` otherwise, ``one run`` when neither row has two seeds (p is nan)."""
    a, b = summary[row][task][metric], summary[baseline][task][metric]
    diff = a[0] - b[0]
    if a[2] < 2 and b[2] < 2:
        return diff, "one run", float("nan")
    p = welch_p(a, b)
    if p < ALPHA:
        return diff, "better" if diff > 0 else "worse", p
    return diff, "same", p


def _cell(stat: Sequence[float]) -> str:
    """``mean ± std`` over seeds; a single run shows its value alone (no spread to report)."""
    return f"{stat[0]:.3f} ± {stat[1]:.3f}" if stat[2] > 1 else f"{stat[0]:.3f}"


def _label(metric: str) -> str:
    name, k = metric.split("@")
    return {"ndcg": "NDCG", "mrr": "MRR", "recall": "R"}.get(name, name) + f"@{k}"


def results_table(summary: Summary, metrics: Sequence[str], baseline: str = "", order: Sequence[str] = (),
                  delta_metric: Optional[str] = None) -> List[str]:
    """Markdown lines: one row per (task, model), cells ``mean ± std``; with a ``baseline`` row, a
    last column gives each other row's difference on ``delta_metric`` (default: the first) and its verdict."""
    rows = list(order) or list(summary)
    tasks = list(dict.fromkeys(t for r in rows for t in summary[r]))
    delta_metric = delta_metric or metrics[0]
    head = ["task", "model", "seeds"] + [_label(m) for m in metrics]
    if baseline:
        head.append(f"Δ {_label(delta_metric)} vs {baseline}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for t in tasks:
        for r in rows:
            s = summary[r].get(t)
            if s is None:
                continue
            cells = [t, r, str(int(s[metrics[0]][2]))] + [_cell(s[m]) for m in metrics]
            if baseline:
                if r == baseline or t not in summary.get(baseline, {}):
                    cells.append("")
                else:
                    diff, verdict, p = compare(summary, r, baseline, t, delta_metric)
                    cells.append(f"{diff:+.3f} ({verdict}{'' if math.isnan(p) else f', p={p:.2g}'})")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def compact_table(summary: Summary, metric: str, order: Sequence[str] = ()) -> List[str]:
    """Markdown lines: models x tasks, each cell ``mean ± std`` of one metric."""
    rows = list(order) or list(summary)
    tasks = list(dict.fromkeys(t for r in rows for t in summary[r]))
    lines = [f"| {_label(metric)} | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for r in rows:
        cells = [_cell(summary[r][t][metric]) if t in summary[r] else "-" for t in tasks]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines


def verdicts(summary: Summary, heads: Sequence[str], baseline: str, metric: str) -> List[str]:
    """One plain sentence per head: the tasks where it beats, matches or trails the baseline."""
    lines = []
    for h in heads:
        tasks = [t for t in summary[h] if t in summary[baseline]]
        by: Dict[str, List[str]] = {"better": [], "same": [], "worse": [], "one run": []}
        for t in tasks:
            diff, v, p = compare(summary, h, baseline, t, metric)
            by[v].append(f"{t} ({diff:+.3f}{'' if math.isnan(p) else f', p={p:.2g}'})")
        parts = []
        if by["better"]:
            parts.append("beats the baseline on " + ", ".join(by["better"]))
        if by["same"]:
            parts.append(f"does not beat it (no significant difference, Welch's t-test p ≥ {ALPHA}) on " + ", ".join(by["same"]))
        if by["worse"]:
            parts.append("is worse on " + ", ".join(by["worse"]))
        if by["one run"]:
            parts.append("cannot be judged from one seed on " + ", ".join(by["one run"]))
        lines.append(f"- `{h}` vs `{baseline}`, {_label(metric)}: " + "; ".join(parts) + ".")
    return lines


def head_tables(summary: Summary, heads: Sequence[str], order: Sequence[str], metrics: Sequence[str], metric: str,
                baselines: Sequence[str] = ("none",)) -> List[str]:
    """Compact table on ``metric``, the full table with each row's difference to the first baseline
    present, and the verdicts of every other head against each baseline present."""
    present = [b for b in baselines if b in summary]
    lines = compact_table(summary, metric, order) + ["", "All metrics:", ""]
    lines += results_table(summary, metrics, baseline=present[0] if present else "", order=order, delta_metric=metric)
    for base in present:
        named = [h for h in heads if h != base and h in summary]
        if named:
            lines += ["", f"Verdicts against `{base}` (Welch's t-test over the seeds, p < {ALPHA}):", ""]
            lines += verdicts(summary, named, base, metric)
    return lines


def machine_line(payload: Dict[str, Any]) -> str:
    """``Machine: ...`` of a saved result (its ``machine`` and, when known, ``total_seconds``)."""
    m, seconds = payload["machine"], payload.get("total_seconds")
    return (f"Machine: {m['cuda'] or m['cpu']}, {m['cores']} cores ({m['threads']} torch thread(s), torch {m['torch']})"
            + (f"; total {seconds:.0f} s." if seconds is not None else "."))
