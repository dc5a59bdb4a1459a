"""Outputs of a locked tower for a fixed set of inputs: the fast path of plug-in training.

With its tower locked (``--train heads``: the paper's plug-in setting), a text's or an image's
tower output never changes. :meth:`TowerCache.build` runs each distinct input through the tower
once and keeps what the heads read: token ids and mask (text), hidden states (when a head needs
them: LLR, or visual words of images), the tower's pooled embedding and its summary. Training then
assembles token streams from these rows, with no tokenizer, no image decoding and no tower forward;
what sits above the tower (a dual encoder's projections, the heads) still runs and trains::

    cache = TowerCache.build(model, "text", texts, keep_hidden=True)
    f = model.backbone.finish_text(cache.features(cache.rows(["a query"]), device))
    stream = text_stream_of(model.backbone, f)            # as model.text_stream(["a query"])

Rows hold the tower's float32 output (``hidden_dtype=torch.float16`` halves the hidden states'
memory at a small cost in exactness). A set that does not fit ``max_gb`` is refused with the size
it would need, unless ``disk_dir`` is given: the hidden states (nearly all of a cache's size) then
go to a file in a temporary folder under ``disk_dir``, read back through a memory map, and only
the small per-input rows count against ``max_gb``. The folder goes when the cache does.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import weakref
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

from lsb_mm.errors import InputError
from lsb_mm.models.encoders.base import Backbone, ImageFeatures, TextFeatures

__all__ = ["TowerCache", "DiskRows", "tower_of_kind", "tower_parameters", "tower_frozen", "tower_digest", "tower_caches_for_run"]

log = logging.getLogger(__name__)


def tower_of_kind(model, kind: str) -> Backbone:
    """The locked part of ``model``'s ``kind`` side (``"text"`` or ``"image"``)."""
    return model.backbone.text_tower() if kind == "text" else model.backbone.image_tower()


def tower_parameters(model, kind: str) -> List[torch.nn.Parameter]:
    """The parameters of ``model``'s ``kind`` tower (all of a composite's inner tower)."""
    tower = tower_of_kind(model, kind)
    own = tower is not model.backbone  # a composite's inner tower: all of it is the tower
    return [p for n, p in tower.named_parameters() if own or tower.tower_of(n) == kind]


def tower_digest(model, kind: str) -> str:
    """A checksum of the configuration (pooling, window ...) and weights of ``model``'s ``kind``
    tower: a cache serves only the tower it was built from."""
    import hashlib
    import json

    from lsb_mm.files import tensor_digest

    tower = tower_of_kind(model, kind)
    own = tower is not model.backbone
    weights = tensor_digest({n: t for n, t in tower.state_dict().items() if own or tower.tower_of(n) == kind})
    return hashlib.sha256(f"{json.dumps(tower.spec(), sort_keys=True)}|{weights}".encode()).hexdigest()


def tower_frozen(model, kind: str) -> bool:
    """Whether no parameter of ``model``'s ``kind`` tower trains (its outputs can be cached)."""
    return not any(p.requires_grad for p in tower_parameters(model, kind))


class DiskRows:
    """Rows ``[length_i, dim]`` of one dtype in one file under a temporary folder of ``parent``,
    read through a memory map once :meth:`seal` is called; the folder is removed with the object."""

    def __init__(self, parent: str, dim: int, dtype: torch.dtype):
        os.makedirs(parent, exist_ok=True)
        self.folder = tempfile.mkdtemp(prefix="lsb-mm-tower-cache-", dir=parent)
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)
        self.dim, self.np_dtype = int(dim), np.dtype("float16" if dtype == torch.float16 else "float32")
        self.path = os.path.join(self.folder, "hidden.bin")
        self._file = open(self.path, "wb")
        self._offsets: Dict[int, tuple] = {}
        self._written = 0
        self._map: Optional[np.memmap] = None
        self.order: List[int] = []

    def add(self, key: int, rows: torch.Tensor) -> None:
        """Append ``rows`` (``[length, dim]``) as the row of ``key``."""
        data = rows.detach().to("cpu").numpy().astype(self.np_dtype, copy=False)
        self._file.write(np.ascontiguousarray(data).tobytes())
        self._offsets[key] = (self._written, data.shape[0])
        self._written += data.shape[0]

    def discard(self) -> None:
        """Close and remove the file and its folder now (a failed build)."""
        if not self._file.closed:
            self._file.close()
        self._cleanup()

    def seal(self, keys: Sequence[int]) -> None:
        """Close the file; row ``r`` is then the row added under ``keys[r]``."""
        self._file.close()
        self.order = [self._offsets[k] for k in keys]
        self._map = np.memmap(self.path, dtype=self.np_dtype, mode="r", shape=(self._written, self.dim)) \
            if self._written else None

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, r: int) -> torch.Tensor:
        start, length = self.order[r]
        if not length:
            return torch.zeros(0, self.dim)
        return torch.from_numpy(np.array(self._map[start:start + length]))

    @property
    def disk_bytes(self) -> int:
        return self._written * self.dim * self.np_dtype.itemsize


class TowerCache:
    """Per-input rows of one locked tower; see the module docstring. Build with :meth:`build`."""

    def __init__(self, kind: str, items: List[str], ids: List[torch.Tensor], mask: List[torch.Tensor],
                 hidden: Optional[Union[List[torch.Tensor], DiskRows]], hidden_dim: int, pooled: torch.Tensor, summary: torch.Tensor):
        self.kind, self.items = kind, items
        self._row = {item: i for i, item in enumerate(items)}
        self._ids, self._mask, self._hidden = ids, mask, hidden
        self.hidden_dim = int(hidden_dim)
        self.pooled, self.summary = pooled, summary
        self.build_seconds = 0.0
        self.tower_digest = ""

    def __len__(self) -> int:
        return len(self.items)

    @property
    def keeps_hidden(self) -> bool:
        return self._hidden is not None

    @property
    def on_disk(self) -> bool:
        """Whether the hidden states are read from a file (``disk_dir`` of :meth:`build`)."""
        return isinstance(self._hidden, DiskRows)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (the hidden states too, unless they are on disk: :attr:`disk_bytes`)."""
        rows = [*self._ids, *self._mask, *([] if self.on_disk else (self._hidden or [])), self.pooled, self.summary]
        return sum(t.numel() * t.element_size() for t in rows)

    @property
    def disk_bytes(self) -> int:
        return self._hidden.disk_bytes if self.on_disk else 0

    def covers(self, items: Iterable[str]) -> bool:
        """Whether every one of ``items`` has a row."""
        return all(x in self._row for x in items)

    def rows(self, items: Iterable[str]) -> List[int]:
        """Row numbers of ``items``; an input that was not cached is an error (the cache is fixed)."""
        try:
            return [self._row[x] for x in items]
        except KeyError as exc:
            raise KeyError(f"tower cache ({self.kind}): {exc.args[0]!r} was not cached") from None

    def plain_embeddings(self, model, items: Sequence[str], device: Union[str, torch.device]) -> torch.Tensor:
        """Normalised plain embeddings ``[N, d]`` of ``items`` (documents: no token positions), with
        gradient through what sits above the tower (e.g. a dual encoder's projection)."""
        rows = torch.as_tensor(self.rows(items), dtype=torch.long)
        pooled, summary = self.pooled[rows].to(device), self.summary[rows].to(device)
        empty = pooled.new_zeros(len(rows), 0, self.hidden_dim)
        bb = model.backbone
        if self.kind == "text":
            none = torch.zeros(len(rows), 0, dtype=torch.long, device=device)
            done = bb.finish_text(TextFeatures(ids=none, mask=none.bool(), hidden=empty, pooled=pooled, summary=summary))
        else:
            done = bb.finish_image(ImageFeatures(hidden=empty, pooled=pooled, summary=summary))
        return torch.nn.functional.normalize(done.pooled, dim=-1)

    def features(self, rows: Sequence[int], device: Union[str, torch.device] = "cpu") -> Union[TextFeatures, ImageFeatures]:
        """The tower's features of ``rows`` as one padded batch (what ``text_tower().text_features``
        or ``image_tower().image_features`` returns, up to padding the heads never read)."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        pooled, summary = self.pooled[idx].to(device), self.summary[idx].to(device)
        lengths = [self._ids[r].shape[0] for r in idx.tolist()]
        n, longest = len(lengths), max(lengths) if lengths else 0
        ids = torch.zeros(n, longest, dtype=torch.long)
        mask = torch.zeros(n, longest, dtype=torch.bool)
        if self._hidden is not None:
            hidden = torch.zeros(n, longest, self.hidden_dim, dtype=torch.float32)
        for j, (r, length) in enumerate(zip(idx.tolist(), lengths)):
            ids[j, :length], mask[j, :length] = self._ids[r], self._mask[r]
            if self._hidden is not None:
                hidden[j, :length] = self._hidden[r]
        if self._hidden is None:  # no head reads it: a broadcast zero of the right shape, no memory
            hidden = torch.zeros(1, 1, self.hidden_dim).expand(n, longest, self.hidden_dim)
        ids, mask, hidden = ids.to(device), mask.to(device), hidden.to(device)
        if self.kind == "text":
            return TextFeatures(ids=ids, mask=mask, hidden=hidden, pooled=pooled, summary=summary)
        return ImageFeatures(hidden=hidden, pooled=pooled, summary=summary)

    @classmethod
    @torch.no_grad()
    def build(cls, model, kind: str, items: Iterable[str], keep_hidden: bool = True,
              hidden_dtype: torch.dtype = torch.float32, batch_size: int = 64, max_gb: float = 4.0,
              num_workers: int = 0, show_progress_bar: Optional[bool] = None,
              disk_dir: Optional[str] = None) -> "TowerCache":
        """Run every distinct input of ``items`` (texts, or image paths for ``kind="image"``)
        through ``model``'s locked ``kind`` tower once, in float32, in batches. The tower must be
        locked (no parameter with ``requires_grad``; the trainer locks it with ``--train heads``)
        and in eval mode. With ``disk_dir`` the hidden states go to disk (module docstring)."""
        if kind not in ("text", "image"):
            raise ValueError(f"kind must be 'text' or 'image', got {kind!r}")
        if kind == "image" and not keep_hidden:
            raise ValueError("an image tower cache keeps its hidden states: visual words are assigned from them")
        tower = tower_of_kind(model, kind)
        if not tower_frozen(model, kind):
            raise RuntimeError(f"tower cache: the {kind} tower has trainable parameters; its outputs change as it trains")
        if any(m.training for m in tower.modules() if any(True for _ in m.parameters(recurse=False))):
            raise RuntimeError(f"tower cache: the {kind} tower is in train mode (dropout, batch statistics); call .eval()")
        items = list(dict.fromkeys(items))
        if not items:
            raise InputError(f"tower cache: no {kind} inputs to cache")
        t0 = time.perf_counter()
        limit = int(max_gb * (1 << 30))
        dim = getattr(tower, "text_hidden_dim" if kind == "text" else "image_hidden_dim")
        disk = DiskRows(disk_dir, dim, hidden_dtype) if keep_hidden and disk_dir else None
        hidden: Optional[List[torch.Tensor]] = [] if keep_hidden and disk is None else None
        device = model.device
        if kind == "text":
            order = sorted(range(len(items)), key=lambda i: -len(items[i]))  # similar lengths share a batch
            chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
            batches = ((c, {k: v.to(device) for k, v in model.backbone.tokenize([items[i] for i in c]).items()})
                       for c in chunks)
            total = len(chunks)
        else:
            loader = model._pixel_batches(items, batch_size, num_workers)
            starts = range(0, len(items), batch_size)
            batches = ((list(range(s, min(s + batch_size, len(items)))), px.to(device)) for s, px in zip(starts, loader))
            total = len(starts)
        rows: Dict[int, tuple] = {}
        try:
            cls._run_tower(tower, kind, batches, total, keep_hidden, hidden_dtype, disk, rows, limit, max_gb, len(items),
                           device, show_progress_bar)
        except BaseException:
            if disk is not None:  # no half-written file left behind
                disk.discard()
            raise
        return cls._assemble(model, tower, kind, items, rows, hidden, disk, dim, t0)

    @staticmethod
    def _run_tower(tower, kind, batches, total, keep_hidden, hidden_dtype, disk, rows, limit, max_gb, n_items, device,
                   show_progress_bar) -> None:
        from tqdm.auto import tqdm

        used = 0
        with torch.autocast(device.type, enabled=False):
            bar = tqdm(batches, total=total, desc=f"cache {kind} tower", unit="batch",
                       disable=not (show_progress_bar if show_progress_bar is not None else total > 4))
            for chunk, x in bar:
                f = tower.text_features(x) if kind == "text" else tower.image_features(x.float())
                f_ids = f.ids if kind == "text" else torch.zeros(f.hidden.shape[:2], dtype=torch.long, device=device)
                f_mask = f.mask if kind == "text" else torch.ones(f.hidden.shape[:2], dtype=torch.bool, device=device)
                for j, i in enumerate(chunk):
                    on = f_mask[j].nonzero()
                    length = int(on[-1]) + 1 if on.numel() else 0  # trailing padding dropped
                    h = f.hidden[j, :length].to("cpu", hidden_dtype) if keep_hidden else None
                    if disk is not None:
                        disk.add(i, h)
                        h = None
                    row = (f_ids[j, :length].cpu().clone(), f_mask[j, :length].cpu().clone(),
                           h.clone() if h is not None else None, f.pooled[j].float().cpu(), f.summary[j].float().cpu())
                    used += sum(t.numel() * t.element_size() for t in row if t is not None)
                    if used > limit:
                        raise InputError(f"tower cache: the {kind} outputs of {n_items} inputs need more than "
                                         f"{max_gb:g} GiB of memory (reached after {len(rows)}); raise --tower-cache-gb, keep "
                                         "hidden states in float16 (--tower-cache-dtype float16) or on disk "
                                         "(--tower-cache-dir DIR), or turn the cache off (0)")
                    rows[i] = row

    @classmethod
    def _assemble(cls, model, tower, kind, items, rows, hidden, disk, dim, t0) -> "TowerCache":
        ids, mask, pooled, summary = [], [], [], []
        for i in range(len(items)):
            a, m, h, p, s = rows[i]
            ids.append(a)
            mask.append(m)
            if hidden is not None:
                hidden.append(h)
            pooled.append(p)
            summary.append(s)
        if disk is not None:
            disk.seal(range(len(items)))
        out = cls(kind, items, ids, mask, disk if disk is not None else hidden, dim, torch.stack(pooled),
                  torch.stack(summary))
        out.build_seconds = time.perf_counter() - t0
        out.tower_digest = tower_digest(model, kind)
        log.info("tower cache (%s): %d inputs, %.3f GiB in memory, %.3f GiB on disk, %.1f s", kind, len(items),
                 out.nbytes / (1 << 30), out.disk_bytes / (1 << 30), out.build_seconds)
        return out


def tower_caches_for_run(model, inputs: Dict[str, List[str]], max_gb: float, shared: Dict[str, "TowerCache"],
                         **build_options) -> Dict[str, "TowerCache"]:
    """One cache per kind of ``inputs`` (``{"text": [...], "image": [...]}``) within ``max_gb`` in all.
    A cache in ``shared`` (e.g. from an earlier run of a sweep) is used when it serves the run: it
    covers the inputs, holds hidden states where a head reads them (LLR, visual words) and was built
    from the same tower; else that is an error. ``build_options`` go to :meth:`TowerCache.build`."""
    out: Dict[str, TowerCache] = {}
    for kind, items in inputs.items():
        head = model.text_head if kind == "text" else model.image_head
        keep = kind == "image" or (head is not None and head.kind == "llr")  # only LLR reads text hidden states
        given = shared.get(kind)
        if given is not None:
            if not given.covers(items) or (keep and not given.keeps_hidden) or \
                    given.tower_digest != tower_digest(model, kind):
                raise InputError(f"the {kind} tower cache given to the trainer does not serve this run (other "
                                 "inputs, other tower weights, or no hidden states for LLR); build it from this "
                                 "run's data or let the trainer build its own")
            out[kind] = given
            continue
        cache = TowerCache.build(model, kind, items, keep_hidden=keep, max_gb=max_gb, **build_options)
        max_gb -= cache.nbytes / (1 << 30)
        out[kind] = cache
        log.info("tower cache %s: %d inputs, %.3f GiB in %.1f s", kind, len(cache), cache.nbytes / (1 << 30),
                 cache.build_seconds)
    return out
