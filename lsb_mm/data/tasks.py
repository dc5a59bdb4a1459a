"""Fine-grained retrieval tasks in BEIR layout: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``.

Each record is ``{"_id": ..., "text": ...}`` or ``{"_id": ..., "image": <path>}``; ``task.json``
says what was built and what was left out. Everything is deterministic given ``seed``.

- text, from (query, passage) pairs or a BEIR folder: ``query``, ``keyword`` (the top tf-idf terms
  of the relevant passage), ``pop-N`` (a span of N whitespace tokens of the relevant passage);
- images, from a labelled folder: ``class`` (each class split in half: queries from one half,
  same-class images of the other half relevant) and ``snippet-P`` (a crop keeping P% of each side,
  at the ``top-left`` as the paper or at a ``random`` position; the source image relevant);
- cross-modal, from (caption, image) items: ``caption2image`` and ``image2caption``.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import os
import re
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lsb_mm.errors import InputError
from lsb_mm.data.images import load_image
from lsb_mm.files import atomic_folder, iter_jsonl, iter_lines, read_json, write_jsonl
from lsb_mm.data.sources import labelled_classes

__all__ = ["write_task", "read_task", "text_tasks", "image_tasks", "cross_tasks", "read_beir_pairs", "Task",
           "image_pair_training_data"]

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_\-]+")
STOP = set("""a an and are as at be by for from has have in is it its of on or that the this to was were will with
which not can if into than then there these those their they you your we our he she his her them also may such
see use used using only other more most when where who whom how what while one two each all any no""".split())


class Task:
    """A loaded task: queries and corpus records, qrels, and its description."""

    def __init__(self, folder: str, info: dict, queries: List[dict], corpus: List[dict], qrels: Dict[str, Dict[str, int]]):
        self.folder, self.info, self.queries, self.corpus, self.qrels = folder, info, queries, corpus, qrels

    @property
    def name(self) -> str:
        return self.info.get("name", os.path.basename(self.folder))

    @staticmethod
    def kind(records: List[dict]) -> str:
        return "image" if "image" in records[0] else "text"


log = logging.getLogger(__name__)
_REPLACE = contextvars.ContextVar("lsb_mm_replace_tasks", default=True)


@contextlib.contextmanager
def replacing(allowed: bool):
    """Within the block, :func:`write_task` replaces an existing task folder only if ``allowed``
    (the CLI's ``--overwrite``; the library default is to replace, atomically)."""
    token = _REPLACE.set(bool(allowed))
    try:
        yield
    finally:
        _REPLACE.reset(token)


TASK_FILES = ("corpus.jsonl", "queries.jsonl", "qrels", "task.json", "query_images")  # what write_task puts in a folder


def write_task(folder: str, name: str, queries: List[dict], corpus: List[dict], qrels: List[Tuple[str, str, int]],
               move_in: Optional[Dict[str, str]] = None, **info) -> str:
    """Write one task folder (atomically); ``move_in`` maps sub-folder names to folders moved inside."""
    if not queries or not corpus:
        raise InputError(f"task {name}: nothing to write ({len(queries)} queries, {len(corpus)} documents)")
    if os.path.lexists(folder):
        if os.path.islink(folder) or not os.path.isdir(folder):
            raise InputError(f"{folder} exists and is a {'symbolic link' if os.path.islink(folder) else 'file'}, not a "
                             "task folder; refusing to replace it: choose another output")
        foreign = sorted(set(os.listdir(folder)) - set(TASK_FILES))
        if foreign or not os.path.isfile(os.path.join(folder, "task.json")):
            raise InputError(f"{folder} exists and is not a task folder written by lsb-mm (it holds "
                             f"{', '.join(foreign[:3]) or 'no task.json'}); refusing to replace it: choose another output")
        if not _REPLACE.get():
            raise InputError(f"task folder {folder} exists: add --overwrite to replace it, or choose another output")
    with atomic_folder(folder) as tmp:
        write_jsonl(os.path.join(tmp, "corpus.jsonl"), corpus)
        write_jsonl(os.path.join(tmp, "queries.jsonl"), queries)
        os.makedirs(os.path.join(tmp, "qrels"))
        with open(os.path.join(tmp, "qrels", "test.tsv"), "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t{s}\n" for q, d, s in qrels)
        with open(os.path.join(tmp, "task.json"), "w", encoding="utf-8") as f:
            json.dump({"name": name, "queries": len(queries), "corpus": len(corpus), "qrels": len(qrels), **info}, f, indent=2)
        for sub, src in (move_in or {}).items():
            os.rename(src, os.path.join(tmp, sub))
    return folder


def read_task(folder: str) -> Task:
    """Read a BEIR-layout folder (ours, or BEIR's own); image paths are made absolute."""
    def jsonl(name):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise InputError(f"task folder {folder}: {name} is missing")
        out, seen = [], set()
        for n, rec in iter_jsonl(path):
            if not isinstance(rec, dict) or "_id" not in rec or not ({"text", "image"} & set(rec)):
                raise InputError(f"{path}:{n}: expected '_id' and 'text' or 'image'")
            rec["_id"] = str(rec["_id"])
            bad = next((k for k in ("text", "image", "title") if k in rec and not isinstance(rec[k], str)), None)
            if bad:
                raise InputError(f"{path}:{n}: field {bad!r} must be a string, got {type(rec[bad]).__name__}")
            if rec["_id"] in seen:
                raise InputError(f"{path}:{n}: '_id' {rec['_id']!r} appears twice")
            seen.add(rec["_id"])
            if "image" in rec and not os.path.isabs(rec["image"]):
                rec["image"] = os.path.join(folder, rec["image"])
            if "text" in rec and rec.get("title"):
                rec["text"] = f"{rec['title']} {rec['text']}"
            out.append(rec)
        if not out:
            raise InputError(f"{path} holds no records")
        return out

    queries, corpus = jsonl("queries.jsonl"), jsonl("corpus.jsonl")
    qrels: Dict[str, Dict[str, int]] = {}
    qpath = os.path.join(folder, "qrels", "test.tsv")
    if not os.path.isfile(qpath):
        raise InputError(f"task folder {folder}: qrels/test.tsv is missing")
    for n, line in iter_lines(qpath):
        parts = line.rstrip("\r\n").split("\t")
        if n == 1 and parts[0] == "query-id":
            continue
        if parts == [""]:
            continue
        if len(parts) != 3:
            raise InputError(f"{qpath}:{n}: expected 'query-id<TAB>corpus-id<TAB>score', got {line.rstrip()!r}")
        try:
            grade = float(parts[2])
        except ValueError:
            grade = math.nan
        if not math.isfinite(grade) or grade != int(grade):
            raise InputError(f"{qpath}:{n}: the score must be an integer relevance grade, got {parts[2]!r}")
        qrels.setdefault(parts[0], {})[parts[1]] = int(grade)
    info = {}
    if os.path.isfile(os.path.join(folder, "task.json")):
        info = read_json(os.path.join(folder, "task.json"), InputError)
        if not isinstance(info, dict):
            raise InputError(f"{os.path.join(folder, 'task.json')}: expected a JSON object")
    _report_loose_qrels(folder, qrels, {q["_id"] for q in queries}, {d["_id"] for d in corpus})
    qids = {q["_id"] for q in queries}
    qrels = {q: r for q, r in qrels.items() if q in qids}
    return Task(folder, info, [q for q in queries if q["_id"] in qrels], corpus, qrels)


def _report_loose_qrels(folder: str, qrels: Dict[str, Dict[str, int]], qids: set, dids: set) -> None:
    """Warn (once per read, with counts and an example) about qrels that cannot count as written:
    rows of unknown queries (left out), relevant documents missing from the corpus (they stay,
    as trec_eval keeps them: unretrievable, so they lower recall and NDCG), queries without qrels
    (not evaluated)."""
    unknown_q = sorted(set(qrels) - qids)
    missing = sorted({(q, d) for q, r in qrels.items() if q in qids for d, g in r.items() if g > 0 and d not in dids})
    unjudged = sorted(qids - set(qrels))
    notes = []
    if unknown_q:
        notes.append(f"{len(unknown_q)} qrels query id(s) not in queries.jsonl, left out (e.g. {unknown_q[0]!r})")
    if missing:
        notes.append(f"{len(missing)} relevant document(s) not in corpus.jsonl, counted as never retrieved "
                     f"(e.g. query {missing[0][0]!r} -> {missing[0][1]!r})")
    if unjudged:
        notes.append(f"{len(unjudged)} quer(ies) without qrels, not evaluated (e.g. {unjudged[0]!r})")
    if notes:
        log.warning("task %s: %s", folder, "; ".join(notes))


# -- text ------------------------------------------------------------------------------------
def read_beir_pairs(folder: str) -> List[Tuple[str, str]]:
    """(query, relevant passage) pairs of a BEIR folder (the first relevant passage of each query)."""
    t = read_task(folder)
    docs = {d["_id"]: d.get("text", "") for d in t.corpus}
    out = []
    for q in t.queries:
        best = max(t.qrels[q["_id"]].items(), key=lambda kv: kv[1])
        if best[1] > 0 and best[0] in docs:
            out.append((q["text"], docs[best[0]]))
    return out


def keywords(passages: Sequence[str], n: int = 3) -> List[str]:
    """The ``n`` highest tf-idf terms of each passage (idf over ``passages``), in passage order."""
    toks = [[w.lower() for w in _WORD.findall(p) if w.lower() not in STOP] for p in passages]
    df = Counter(w for ts in toks for w in set(ts))
    N = len(passages)
    out = []
    for ts in toks:
        tf = Counter(ts)
        scored = sorted(tf, key=lambda w: (-tf[w] * math.log((1 + N) / (1 + df[w])), ts.index(w)))
        out.append(" ".join(scored[:n]))
    return out


def text_tasks(pairs: Sequence[Tuple[str, str]], out_dir: str, kinds: Sequence[str] = ("query", "keyword", "pop-32"),
               seed: int = 0, n_keywords: int = 3) -> List[str]:
    """Build text tasks from (query, passage) pairs: the corpus is every distinct passage."""
    if not pairs:
        raise InputError("no (query, passage) pairs to build tasks from")
    passages = list(dict.fromkeys(p for _, p in pairs))
    pid = {p: f"d{i}" for i, p in enumerate(passages)}
    corpus = [{"_id": pid[p], "text": p} for p in passages]
    rs = np.random.default_rng(seed)
    kw = dict(zip(passages, keywords(passages, n_keywords)))
    made = []
    for kind in kinds:
        queries, qrels, skipped = [], [], 0
        for i, (q, p) in enumerate(pairs):
            if kind == "query":
                text = q
            elif kind == "keyword":
                text = kw[p]
            elif re.fullmatch(r"pop-\d+", kind):
                n = int(kind.split("-")[1])
                words = p.split()
                if len(words) < n:
                    skipped += 1
                    continue
                start = int(rs.integers(0, len(words) - n + 1))
                text = " ".join(words[start:start + n])
            else:
                raise InputError(f"unknown text task {kind!r}; expected query, keyword or pop-N")
            if not text.strip():
                skipped += 1
                continue
            queries.append({"_id": f"q{i}", "text": text})
            qrels.append((f"q{i}", pid[p], 1))
        made.append(write_task(os.path.join(out_dir, kind), kind, queries, corpus, qrels, modality="text",
                               skipped_queries=skipped, seed=seed))
    return made


# -- images ------------------------------------------------------------------------------------
def _labelled(folder: str) -> Dict[str, List[str]]:
    out = labelled_classes(folder)
    if len(out) < 2:
        raise InputError(f"{folder}: expected at least 2 class sub-folders with images")
    return out


def crop_box(w: int, h: int, percent: int, position: str, rs: np.random.Generator) -> Tuple[int, int, int, int]:
    """The crop keeping ``percent``% of each side, at the top-left or a random position."""
    cw, ch = max(1, round(w * percent / 100)), max(1, round(h * percent / 100))
    if position == "top-left":
        x, y = 0, 0
    elif position == "random":
        x, y = int(rs.integers(0, w - cw + 1)), int(rs.integers(0, h - ch + 1))
    else:
        raise InputError(f"snippet position must be 'top-left' or 'random', got {position!r}")
    return x, y, x + cw, y + ch


def image_tasks(folder: str, out_dir: str, kinds: Sequence[str] = ("class", "snippet-30"), position: str = "top-left",
                seed: int = 0, max_per_class: Optional[int] = None) -> List[str]:
    """Build image tasks from a labelled folder (``class/image``)."""
    by_class = _labelled(folder)
    os.makedirs(out_dir, exist_ok=True)
    rs = np.random.default_rng(seed)
    if max_per_class:
        by_class = {c: sorted(rs.choice(v, min(len(v), max_per_class), replace=False).tolist()) for c, v in by_class.items()}
    made = []
    for kind in kinds:
        name = kind if kind == "class" else f"{kind}-{position}"
        target = os.path.join(out_dir, name)
        if kind == "class":
            queries, corpus, qrels = [], [], []
            for c, imgs in by_class.items():
                order = rs.permutation(len(imgs))
                half = len(imgs) // 2
                if half == 0:
                    continue
                qs, ds = [imgs[i] for i in order[:half]], [imgs[i] for i in order[half:]]
                corpus += [{"_id": f"{c}/{os.path.basename(p)}", "image": os.path.abspath(p), "label": c} for p in ds]
                for p in qs:
                    qid = f"q:{c}/{os.path.basename(p)}"
                    queries.append({"_id": qid, "image": os.path.abspath(p), "label": c})
                    qrels += [(qid, f"{c}/{os.path.basename(d)}", 1) for d in ds]
            made.append(write_task(target, name, queries, corpus, qrels, modality="image", seed=seed))
        elif re.fullmatch(r"snippet-\d+", kind):
            pct = int(kind.split("-")[1])
            if not 0 < pct <= 100:
                raise InputError(f"{kind}: the percentage must be in 1..100")
            import shutil
            import tempfile

            staging = tempfile.mkdtemp(prefix=".query_images-", dir=out_dir if os.path.isdir(out_dir) else None)
            everything = [(c, p) for c, v in by_class.items() for p in v]
            corpus = [{"_id": f"{c}/{os.path.basename(p)}", "image": os.path.abspath(p), "label": c} for c, p in everything]
            queries, qrels = [], []
            for i, (c, p) in enumerate(everything):
                img = load_image(p)
                box = crop_box(img.width, img.height, pct, position, rs)
                out = os.path.join(staging, f"{i:06d}.png")
                img.crop(box).save(out)
                qid = f"q{i}"
                queries.append({"_id": qid, "image": os.path.join("query_images", f"{i:06d}.png"), "source": corpus[i]["_id"],
                                "box": list(box)})
                qrels.append((qid, corpus[i]["_id"], 1))
            try:
                made.append(write_task(target, name, queries, corpus, qrels, move_in={"query_images": staging},
                                       modality="image", percent=pct, position=position, seed=seed))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        else:
            raise InputError(f"unknown image task {kind!r}; expected class or snippet-P")
    return made


def image_pair_training_data(folder: str, out_file: str, percents: Sequence[int] = (10, 30, 50, 80), seed: int = 0,
                             crops: int = 1) -> int:
    """Image-to-image training data (JSONL) from a labelled folder: for each image, ``crops`` crops
    each keeping a random one of ``percents``% of each side at a random position -> the image, and
    the image -> the other images of its class (when it has any). Crops go to ``<out_file's
    folder>/train_crops``. Returns the number of examples."""
    if crops < 1:
        raise InputError(f"crops must be >= 1 per image, got {crops}")
    by_class = _labelled(folder)
    rs = np.random.default_rng(seed)
    crop_dir = os.path.join(os.path.dirname(os.path.abspath(out_file)), "train_crops")
    os.makedirs(crop_dir, exist_ok=True)
    n = 0
    with open(out_file, "w", encoding="utf-8") as f:
        for images in by_class.values():
            images = [os.path.abspath(p) for p in images]
            for i, path in enumerate(images):
                img = load_image(path)
                for _ in range(crops):
                    crop = os.path.join(crop_dir, f"{n:06d}.png")
                    img.crop(crop_box(img.width, img.height, int(rs.choice(percents)), "random", rs)).save(crop)
                    f.write(json.dumps({"query": crop, "pos": [path]}) + "\n")
                    n += 1
                if len(images) > 1:
                    f.write(json.dumps({"query": path, "pos": images[:i] + images[i + 1:]}) + "\n")
                    n += 1
    return n


# -- cross-modal -------------------------------------------------------------------------------
def cross_tasks(items: Sequence[Tuple[str, str]], out_dir: str) -> List[str]:
    """``caption2image`` and ``image2caption`` from (caption, image path) items; an identical
    caption makes all its images relevant (and each image relevant to all its captions)."""
    if not items:
        raise InputError("no (caption, image) items to build tasks from")
    images = list(dict.fromkeys(os.path.abspath(p) for _, p in items))
    captions = list(dict.fromkeys(c for c, _ in items))
    iid = {p: f"i{n}" for n, p in enumerate(images)}
    cid = {c: f"c{n}" for n, c in enumerate(captions)}
    pairs = sorted({(cid[c], iid[os.path.abspath(p)]) for c, p in items})
    img_records = [{"_id": iid[p], "image": p} for p in images]
    cap_records = [{"_id": cid[c], "text": c} for c in captions]
    return [write_task(os.path.join(out_dir, "caption2image"), "caption2image", cap_records, img_records,
                       [(c, i, 1) for c, i in pairs], modality="cross"),
            write_task(os.path.join(out_dir, "image2caption"), "image2caption", img_records, cap_records,
                       [(i, c, 1) for c, i in pairs], modality="cross")]
