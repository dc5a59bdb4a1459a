"""The plug-in experiments of ``scripts/repro_plugin.py``, ``repro_finetune.py`` and ``sweep_heads.py``:
their data, their one training recipe, and the BM25 / fusion reference rows beside the heads."""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from lsb_mm_experiments.statistics import summarize



__all__ = ["plugin_config", "PLUGIN_HEADS", "PluginExperiment", "experiment_key", "plugin_train_files", "add_plugin_data_args",
           "add_run_args", "plugin_experiment", "plugin_references", "text_references", "fusion_note", "update_references",
           "HYBRID_REFERENCES"]


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
