"""Contrastive training data: four input formats, validated up front, errors name ``file:line``.

- JSONL, one ``{"query": ..., "pos": [...], "neg": [...]}`` per line (``neg`` optional); items are
  texts or image paths relative to ``image_root``, by modality;
- CSV / TSV pairs (open_clip's ``--csv-img-key filepath --csv-caption-key caption``), cross-modal;
- an image folder with caption sidecars (``x.png`` + ``x.txt``, first line), cross-modal;
- a labelled image folder (``class_name/image.ext``), image-to-image: positives are other images
  of the class, negatives images of other classes.

With ``skip_bad`` a bad row is left out and recorded in :attr:`TrainData.skipped` (the trainer
writes them to a report); without it the first bad row raises :class:`InputError`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lsb_mm.errors import InputError
from lsb_mm.data.images import IMAGE_EXTENSIONS, list_image_files
from lsb_mm.files import iter_jsonl
from lsb_mm.data.sources import labelled_classes, read_caption, read_csv, sidecar_path

__all__ = ["MODALITIES", "TrainExample", "TrainData", "load_train_data", "item_kinds"]

MODALITIES = ("text", "image", "cross")


def item_kinds(modality: str) -> Tuple[str, str]:
    """(query kind, passage kind) of a modality: text->text, image->image, text->image."""
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return {"text": ("text", "text"), "image": ("image", "image"), "cross": ("text", "image")}[modality]


@dataclass
class TrainExample:
    query: str
    pos: Sequence[str]
    neg: Sequence[str] = ()
    source: str = ""


@dataclass
class TrainData:
    examples: List[TrainExample]
    modality: str
    fmt: str
    skipped: List[Dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def without_negatives(self) -> int:
        return sum(1 for e in self.examples if not e.neg)

    def sample_group(self, ex: TrainExample, n_neg: int, rng: np.random.Generator,
                     mined: Optional[Sequence[str]] = None) -> List[str]:
        """The positive then up to ``n_neg`` hard negatives (declared, else mined) for one epoch."""
        group = [ex.pos[int(rng.integers(len(ex.pos)))]]
        pool = ex.neg if len(ex.neg) else (mined or ())
        if n_neg > 0 and len(pool):
            idx = rng.choice(len(pool), size=n_neg, replace=len(pool) < n_neg)
            group += [pool[int(i)] for i in idx]
        return group


class _Rows:
    """Collects good examples; bad ones raise, or are recorded when skipping."""

    def __init__(self, skip_bad: bool):
        self.skip_bad, self.examples, self.skipped = skip_bad, [], []

    def bad(self, source: str, reason: str) -> None:
        if not self.skip_bad:
            raise InputError(f"{source}: {reason} (use --skip-bad to skip such rows and get a report)")
        self.skipped.append({"source": source, "reason": reason})


def _resolve_image(item: str, root: Optional[str]) -> str:
    return item if os.path.isabs(item) or not root else os.path.join(root, item)


def _check_item(value, kind: str, root: Optional[str], what: str) -> str:
    """Validate one text or image item; return it (image paths resolved). Raises ValueError(reason)."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    if kind == "image":
        path = _resolve_image(value, root)
        if not os.path.isfile(path):
            raise ValueError(f"{what}: image file {path} not found")
        return path
    return value


def _read_jsonl(path: str, modality: str, root: Optional[str], rows: _Rows) -> None:
    qk, pk = item_kinds(modality)
    for n, obj in iter_jsonl(path, on_error=rows.bad):
        src = f"{path}:{n}"
        try:
            if not isinstance(obj, dict):
                raise ValueError("expected a JSON object with 'query' and 'pos'")
            if "query" not in obj:
                raise ValueError("field 'query' is missing")
            query = _check_item(obj["query"], qk, root, "query")
            pos, neg = obj.get("pos"), obj.get("neg") or []
            if not isinstance(pos, list) or not pos:
                raise ValueError("field 'pos' must be a non-empty list")
            if not isinstance(neg, list):
                raise ValueError("field 'neg' must be a list")
            pos = [_check_item(p, pk, root, f"pos[{i}]") for i, p in enumerate(pos)]
            neg = [_check_item(p, pk, root, f"neg[{i}]") for i, p in enumerate(neg)]
        except ValueError as exc:
            rows.bad(src, str(exc))
            continue
        rows.examples.append(TrainExample(query, pos, neg, src))


def _read_csv(path: str, img_key: str, caption_key: str, root: Optional[str], rows: _Rows) -> None:
    for n, rec in read_csv(path, ((img_key, "--csv-img-key"), (caption_key, "--csv-caption-key"))):
        src = f"{path}:{n}"
        try:
            caption = _check_item(rec.get(caption_key), "text", root, caption_key)
            image = _check_item(rec.get(img_key), "image", root, img_key)
        except ValueError as exc:
            rows.bad(src, str(exc))
            continue
        rows.examples.append(TrainExample(caption, [image], (), src))


def _read_caption_folder(folder: str, rows: _Rows) -> None:
    for img in list_image_files(folder):
        caption, problem = read_caption(img)
        if caption is None:
            rows.bad(img, problem)
            continue
        rows.examples.append(TrainExample(caption, [img], (), sidecar_path(img) + ":1"))


def _read_labelled_folder(folder: str, rows: _Rows) -> None:
    usable = labelled_classes(folder)
    if len(usable) < 2:
        raise InputError(f"{folder}: a labelled folder needs at least 2 class sub-folders with images, found {len(usable)}")
    everything = [(c, p) for c in usable for p in usable[c]]
    for c, imgs in usable.items():
        if len(imgs) < 2:
            rows.bad(imgs[0], f"class {c!r} has a single image: no positive to pair it with")
            continue
        others = [p for c2, p in everything if c2 != c]
        for i, img in enumerate(imgs):
            rows.examples.append(TrainExample(img, imgs[:i] + imgs[i + 1:], others, f"{img}"))


def detect_format(path: str, modality: Optional[str] = None) -> str:
    """``jsonl``, ``csv``, ``captions`` or ``labelled``. A folder is read as the modality needs it:
    ``cross``, images with caption sidecars anywhere below it (category sub-folders included, as
    ``build-tasks --captions`` reads them); ``image``, class sub-folders; without a modality, a
    caption folder when images sit at its top."""
    if os.path.isdir(path):
        if modality == "cross":
            return "captions"
        if modality == "image":
            return "labelled"
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(path)):
            return "captions"
        return "labelled"
    if not os.path.isfile(path):
        raise InputError(f"training data {path} does not exist")
    low = path.lower()
    if low.endswith(".jsonl") or low.endswith(".json"):
        return "jsonl"
    if low.endswith((".csv", ".tsv")):
        return "csv"
    raise InputError(f"training data {path}: expected a .jsonl, .csv or .tsv file, or an image folder")


def load_train_data(path: str, modality: str, image_root: Optional[str] = None, skip_bad: bool = False,
                    csv_img_key: str = "filepath", csv_caption_key: str = "caption") -> TrainData:
    """Read and validate a training (or held-out) set; see the module docstring for formats."""
    item_kinds(modality)
    fmt = detect_format(path, modality)
    allowed = {"jsonl": MODALITIES, "csv": ("cross",), "captions": ("cross",), "labelled": ("image",)}[fmt]
    if modality not in allowed:
        raise InputError(f"{path}: a {fmt} source serves --modality {' or '.join(allowed)}, not {modality!r}")
    rows = _Rows(skip_bad)
    root = image_root or (os.path.dirname(os.path.abspath(path)) if fmt in ("jsonl", "csv") else None)
    if fmt == "jsonl":
        _read_jsonl(path, modality, root, rows)
    elif fmt == "csv":
        _read_csv(path, csv_img_key, csv_caption_key, root, rows)
    elif fmt == "captions":
        _read_caption_folder(path, rows)
    else:
        _read_labelled_folder(path, rows)
    if skip_bad and "image" in item_kinds(modality):
        _drop_undecodable(rows, *item_kinds(modality))
    if not rows.examples:
        raise InputError(f"{path}: no usable training examples" + (f" ({len(rows.skipped)} skipped)" if rows.skipped else ""))
    return TrainData(rows.examples, modality, fmt, rows.skipped)


def _drop_undecodable(rows: _Rows, qkind: str, pkind: str) -> None:
    """``--skip-bad`` with images: decode every distinct image once, instead of failing mid-run.
    An undecodable image is reported once and left out of every positive / negative list; an
    example whose query image is one, or left with no positive, is left out too (and reported)."""
    from lsb_mm.data.images import check_images

    def images(ex: TrainExample) -> List[str]:
        return ([ex.query] if qkind == "image" else []) + (list(ex.pos) + list(ex.neg) if pkind == "image" else [])

    paths = list(dict.fromkeys(p for ex in rows.examples for p in images(ex)))
    bad = dict(check_images(paths)[1])
    if not bad:
        return
    rows.skipped.extend({"source": p, "reason": f"undecodable image: {why}"} for p, why in bad.items())
    kept = []
    for ex in rows.examples:
        if qkind == "image" and ex.query in bad:
            rows.skipped.append({"source": ex.source, "reason": f"its query image {ex.query} cannot be read"})
            continue
        if pkind == "image":
            ex = TrainExample(ex.query, [p for p in ex.pos if p not in bad], [p for p in ex.neg if p not in bad], ex.source)
            if not ex.pos:
                rows.skipped.append({"source": ex.source, "reason": "none of its positive images can be read"})
                continue
        kept.append(ex)
    rows.examples = kept
