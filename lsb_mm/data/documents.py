"""Documents to index: a folder of images, a JSONL / BEIR corpus, or a CSV of images with captions."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

from lsb_mm.data.sources import read_caption, read_csv, sidecar_path
from lsb_mm.errors import InputError
from lsb_mm.data.images import list_image_files
from lsb_mm.files import iter_jsonl

__all__ = ["Documents", "read_documents", "shard_slice"]


@dataclass
class Documents:
    kind: str  # "text" or "image"
    ids: List[str]
    items: List[str]  # texts or image paths
    metadata: List[Dict[str, str]]

    def subset(self, keep: List[int]) -> "Documents":
        return Documents(self.kind, [self.ids[i] for i in keep], [self.items[i] for i in keep], [self.metadata[i] for i in keep])


def read_documents(images: Optional[str] = None, corpus: Optional[str] = None, csv_path: Optional[str] = None,
                   csv_img_key: str = "filepath", csv_caption_key: str = "caption", image_root: Optional[str] = None) -> Documents:
    """Exactly one of ``images`` (folder), ``corpus`` (.jsonl or BEIR folder) or ``csv_path``."""
    if sum(x is not None for x in (images, corpus, csv_path)) != 1:
        raise InputError("give exactly one of --images, --corpus, --csv")
    if images is not None:
        paths = list_image_files(images)
        if not paths:
            raise InputError(f"--images {images}: no image files found")
        meta = []
        for p in paths:
            m = {"path": os.path.abspath(p)}
            cap, why = read_caption(p)  # a sidecar is optional here, but one that exists must be readable
            if cap is None and os.path.isfile(sidecar_path(p)):
                raise InputError(f"caption sidecar of {p}: {why}")
            if cap:
                m["caption"] = cap
            meta.append(m)
        return Documents("image", [os.path.relpath(p, images) for p in paths], [os.path.abspath(p) for p in paths], meta)
    if corpus is not None:
        path = os.path.join(corpus, "corpus.jsonl") if os.path.isdir(corpus) else corpus
        if not os.path.isfile(path):
            raise InputError(f"--corpus {corpus}: no corpus.jsonl / JSONL file there")
        ids, items, meta, kind = [], [], [], None
        root = os.path.dirname(os.path.abspath(path))
        for n, rec in iter_jsonl(path):
            k = ("image" if "image" in rec else "text" if "text" in rec else None) if isinstance(rec, dict) else None
            if k is None or "_id" not in rec:
                raise InputError(f"{path}:{n}: expected '_id' and 'text' or 'image'")
            if kind is None:
                kind = k
            elif k != kind:
                raise InputError(f"{path}:{n}: mixes text and image records")
            item = rec[k] if k == "text" else os.path.join(image_root or root, rec[k])
            if k == "text" and rec.get("title"):
                item = f"{rec['title']} {item}"
            ids.append(str(rec["_id"]))
            items.append(item)
            meta.append({"text": item[:300]} if k == "text" else {"path": item})
        if not ids:
            raise InputError(f"{path} holds no documents")
        return Documents(kind, ids, items, meta)
    root = image_root or os.path.dirname(os.path.abspath(csv_path))
    rows = [row for _, row in read_csv(csv_path, ((csv_img_key, "--csv-img-key"),))]
    paths = [os.path.join(root, r[csv_img_key]) for r in rows]
    meta = [{"path": p, **({"caption": r[csv_caption_key]} if r.get(csv_caption_key) else {})} for p, r in zip(paths, rows)]
    return Documents("image", [r[csv_img_key] for r in rows], paths, meta)


def shard_slice(n: int, shard: str) -> range:
    """Rows of shard ``i/n`` (1-based ``i``) of ``n`` documents: contiguous, sizes differing by at most one."""
    try:
        i, k = (int(x) for x in shard.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like 2/5, got {shard!r}") from None
    if not 1 <= i <= k:
        raise InputError(f"--shard {shard}: expected 1 <= i <= n")
    return range(n * (i - 1) // k, n * i // k)
