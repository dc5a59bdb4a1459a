"""One contrastive trainer for text->text, image->image and text->image (``--modality``).

``lsb_mm.train(TrainConfig(...))`` or ``Trainer(config).train()``; ``lsb-mm train`` is a thin
layer over it. Single process or torchrun (DDP semantics: gradients averaged over ranks; with
``cross_device_negatives`` every query also scores the other ranks' passages, with gradient).

Batches: ``batch_size`` queries per process per micro-batch; each query brings its positive and
``train_group_size - 1`` hard negatives; every other passage of the (global) batch is a negative
too. An epoch is a seeded permutation of the examples, cut into global batches; rank ``r`` takes
the ``r``-th slice, so N processes of batch B see exactly what one process of batch N·B sees.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from lsb_mm.training.checkpoint import (clear_run, latest_checkpoint, load_checkpoint, prune_checkpoints, read_state, remove_stale_temps,
                         run_contents, save_checkpoint)
from lsb_mm.data.training_data import TrainData, item_kinds, load_train_data
from lsb_mm.training.config import RESUME_FIXED, TrainConfig
from lsb_mm.training.distributed import DistInfo, all_reduce_grads, all_reduce_mean, barrier, init_distributed
from lsb_mm.models.encoders.adapters import image_stream_of, text_stream_of
from lsb_mm.models.encoders.base import ImageFeatures, TextFeatures
from lsb_mm.training.feature_cache import ImageFeatureCache, image_tower_frozen
from lsb_mm.training.tower_cache import TowerCache, tower_digest, tower_frozen
from lsb_mm.errors import InputError
from lsb_mm.files import atomic_folder, file_sha256, iter_jsonl, write_text
from lsb_mm.data.images import load_image, one_thread
from lsb_mm.models.heads import modulation_rows, modulation_strength
from lsb_mm.training.losses import corpus_nce, info_nce
from lsb_mm.evaluation.metrics import evaluate_run

__all__ = ["TrainConfig", "Trainer", "train", "split_validation", "FINAL_DIR", "BEST_DIR"]

log = logging.getLogger(__name__)
FINAL_DIR = "final"
BEST_DIR = "best"
LOG_NAME = "train_log.jsonl"



def _lr_lambda(cfg: TrainConfig, total: int):
    def fn(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress)) if cfg.scheduler == "cosine" else 1.0 - progress

    return fn


class _MicroBatches(torch.utils.data.Dataset):
    """Item ``i`` is this rank's micro-batch ``start + i`` of one epoch, images already decoded."""

    def __init__(self, trainer: "Trainer", epoch: int, start: int):
        self.t, self.epoch, self.start = trainer, epoch, start
        self.perm = trainer.epoch_order(epoch)

    def __len__(self) -> int:
        return self.t.micro_per_epoch - self.start

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.t.micro_batch(self.epoch, self.start + i, self.perm)


class Trainer:
    """Contrastive training of an lsb-mm model; see the module docstring.

    With a locked image tower (``--train heads``, ``--lock-image``, or a dual encoder's towers) its
    features are computed once per distinct image and served from an
    :class:`~lsb_mm.models.encoders.ImageFeatureCache` (``feature_cache_gb``, 0 = off); pass
    ``feature_cache`` to share one cache between runs over the same tower.
    """

    def __init__(self, config: TrainConfig, feature_cache: Optional[ImageFeatureCache] = None,
                 tower_caches: Optional[Dict[str, TowerCache]] = None):
        config.check()
        self.cfg = cfg = config
        self.feature_cache = feature_cache
        self.shared_tower_caches = dict(tower_caches or {})
        self.dist: DistInfo = init_distributed(cfg.device)
        self._check_output()
        self.device = torch.device(self._device_name())
        self.qkind, self.pkind = item_kinds(cfg.modality)
        self.data: TrainData = load_train_data(cfg.train_data, cfg.modality, cfg.image_root, cfg.skip_bad,
                                               cfg.csv_img_key, cfg.csv_caption_key)
        self.eval_data = load_train_data(cfg.eval_data, cfg.modality, cfg.image_root, cfg.skip_bad, cfg.csv_img_key,
                                         cfg.csv_caption_key) if cfg.eval_data else None
        self.eval_distractors: List[str] = []
        if cfg.val_fraction:  # validation carved from the training data: whole positive documents go to one side
            self.data, self.eval_data = split_validation(self.data, cfg.val_fraction, cfg.seed)
        if cfg.val_fraction or (cfg.eval_data and cfg.eval_distractors):
            # the held-out queries search their documents among every training document too
            self.eval_distractors = list(dict.fromkeys(p for e in self.data.examples for p in e.pos))
        self.best: Dict[str, Any] = {"metric": cfg.best_metric, "value": None, "step": None, "bad_evals": 0}
        self._stop = False
        self.global_batch = cfg.batch_size * self.dist.world_size
        if self.global_batch == 1 and not cfg.mine_negatives:
            lonely = [e.source for e in self.data.examples if not e.neg]
            if lonely:
                raise InputError(f"{lonely[0]}: a group with no negatives in a batch of one: there is nothing to "
                                 "contrast with (add 'neg', use --mine-negatives or a larger --batch-size)")
        self.micro_per_epoch = (len(self.data) // self.global_batch) // cfg.grad_accum * cfg.grad_accum
        if self.micro_per_epoch == 0:
            raise InputError(f"{cfg.train_data}: {len(self.data)} examples do not fill one step of "
                             f"{self.global_batch * cfg.grad_accum} (batch size x processes x grad accumulation)")
        self.steps_per_epoch = self.micro_per_epoch // cfg.grad_accum
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * self.steps_per_epoch
        self.resume_from = self._resume_folder()
        self.model = self._build_model()
        self._build_optimizer()
        self.autocast_dtype = self._precision()
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
        self.step, self.epoch, self.micro = 0, 0, 0
        self.mined: Dict[int, List[str]] = {}
        self._transform = None
        # plug-in fast path: outputs of each locked tower, per distinct training input (built in train())
        self.tower_caches: Dict[str, TowerCache] = {}
        self.cached_kinds = [k for k in dict.fromkeys((self.qkind, self.pkind))
                             if cfg.tower_cache_gb > 0 and tower_frozen(self.model, k)]
        self.pool = list(dict.fromkeys(p for e in self.data.examples for p in list(e.pos) + list(e.neg)))
        self.pool_row = {p: i for i, p in enumerate(self.pool)}  # training document -> its row in the pool
        if cfg.corpus_negatives:
            if self.pkind not in self.cached_kinds:
                raise InputError("--corpus-negatives scores every query against all training documents, which needs "
                                 f"the {self.pkind} tower locked and its outputs cached (--train heads or --lock-"
                                 f"{self.pkind}, --tower-cache-gb > 0)")
            if self.model.fusion["document"]:
                raise InputError("--corpus-negatives needs plain documents (--no-fusion-p): with the head on the "
                                 "document side every document would pass the head at every step")

    # -- set-up ----------------------------------------------------------------------------
    def _device_name(self) -> str:
        if self.cfg.device != "auto":
            return self.cfg.device
        if torch.cuda.is_available():
            return f"cuda:{self.dist.local_rank}" if self.dist.enabled else "cuda"
        return "cpu"

    def _precision(self) -> Optional[torch.dtype]:
        p = self.cfg.precision
        if self.device.type != "cuda":
            if p in ("bf16", "fp16"):
                raise InputError(f"--precision {p} needs a CUDA device; this run is on {self.device}")
            return None
        if p == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]

    def _check_output(self) -> None:
        """``--output`` must be a folder that holds no earlier run, unless resuming it or asked to
        ``overwrite`` it (then that run, and only it, is removed first). Temp folders of an
        interrupted save are cleared; a log that is a symlink is refused (it would be written through)."""
        out = self.cfg.output
        if os.path.exists(out) and not os.path.isdir(out):
            raise InputError(f"--output {out} is a file; give a folder for the run")
        log_path = os.path.join(out, LOG_NAME)
        if os.path.islink(log_path):
            raise InputError(f"{log_path} is a symbolic link; the run log is written in place, so it is refused "
                             "(remove the link)")
        earlier = run_contents(out)
        if earlier and not self.cfg.resume:
            if not self.cfg.overwrite:
                shown = ", ".join(earlier[:4]) + (f" and {len(earlier) - 4} more" if len(earlier) > 4 else "")
                raise InputError(f"--output {out} holds an earlier run ({shown}): continue it with --resume, replace "
                                 "it with --overwrite, or choose another folder")
            if self.dist.is_main:
                clear_run(out)
                log.info("--overwrite: removed the earlier run in %s (%s)", out, ", ".join(earlier))
        elif self.dist.is_main:
            for path in remove_stale_temps(out):
                log.info("removed %s, left by an interrupted save", path)
        barrier()  # every rank, whichever branch it saw (rank 0 may have cleared before another rank looked)

    def _resume_folder(self) -> Optional[str]:
        r = self.cfg.resume
        if not r:
            return None
        folder = latest_checkpoint(self.cfg.output) if r == "latest" else r
        if folder is None:
            raise InputError(f"--resume: no complete checkpoint under {self.cfg.output}")
        saved = read_state(folder).get("config", {})
        for key in RESUME_FIXED:
            if key in saved and saved[key] != getattr(self.cfg, key):
                raise InputError(f"--resume {folder}: {key} was {saved[key]!r}, now {getattr(self.cfg, key)!r}; "
                                 "an exact resume needs the same setting")
        if read_state(folder).get("world_size") != self.dist.world_size:
            raise InputError(f"--resume {folder}: saved with {read_state(folder).get('world_size')} processes, "
                             f"now {self.dist.world_size}")
        return folder

    def _build_model(self):
        from lsb_mm.models.factory import create_model, load_model, reserved_options

        cfg = self.cfg
        if self.resume_from:
            model = load_model(os.path.join(self.resume_from, "model"))
        else:
            clash = sorted(set(cfg.model_options) & reserved_options())
            if clash:
                raise InputError(f"model_options {clash} are not backbone options: set them as train settings "
                                 f"(e.g. --{clash[0].replace('_', '-')}), not through --model-option")
            opts = {**cfg.model_options, **({"pooling": cfg.pooling} if cfg.pooling else {})}
            model = create_model(cfg.model, head=cfg.head, vocab_size=cfg.vocab_size, seed=cfg.seed, **opts)
            if cfg.fusion_q is not None:
                model.fusion["query"] = cfg.fusion_q
            if cfg.fusion_p is not None:
                model.fusion["document"] = cfg.fusion_p
        for kind in {self.qkind, self.pkind}:
            if not (model.has_text if kind == "text" else model.has_image):
                raise InputError(f"--modality {cfg.modality} needs a {kind} tower; {cfg.model} has none")
        return model.to(self.device)

    def _build_optimizer(self) -> None:
        """AdamW over the trainable parameters: heads at ``head_lr``, no weight decay on vectors."""
        cfg = self.cfg
        self.params = self._select_trainable()
        groups: Dict[tuple, List[torch.nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                groups.setdefault((not name.startswith("backbone."), p.ndim >= 2), []).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": ps, "lr": (cfg.head_lr or cfg.lr) if head else cfg.lr, "weight_decay": cfg.weight_decay if decay else 0.0}
             for (head, decay), ps in sorted(groups.items())], lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg, self.total_steps))

    def _select_trainable(self) -> List[torch.nn.Parameter]:
        cfg, kinds = self.cfg, {self.qkind, self.pkind}
        chosen = []
        for name, p in self.model.named_parameters():
            if name.startswith("text_head."):
                use = "text" in kinds
            elif name.startswith("image_head."):
                use = "image" in kinds
            else:
                inner = name[len("backbone."):]
                tower = self.model.backbone.tower_of(inner)
                if inner.startswith(self.model.backbone.adapter_prefixes()):
                    use = tower in kinds  # new projections train like heads (LiT: towers locked)
                else:
                    locked = (tower == "text" and cfg.lock_text) or (tower == "image" and cfg.lock_image)
                    use = cfg.train == "all" and tower in kinds and not locked
            p.requires_grad_(use)
            if use:
                chosen.append(p)
        if not chosen:
            raise InputError(f"nothing to train: head {cfg.head!r} has no parameters and --train {cfg.train}"
                             + (" (use --train all)" if cfg.train == "heads" else ""))
        return chosen

    # -- data --------------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.data))

    @property
    def transform(self):
        if self._transform is None:
            self._transform = self.model.image_transform
        return self._transform

    def micro_batch(self, epoch: int, mb: int, perm: Optional[np.ndarray] = None) -> Dict[str, Any]:
        """This rank's slice of global micro-batch ``mb`` of ``epoch``."""
        perm = self.epoch_order(epoch) if perm is None else perm
        lo = mb * self.global_batch + self.dist.rank * self.cfg.batch_size
        idx = perm[lo: lo + self.cfg.batch_size]
        queries, passages, pos_index = [], [], []
        for gi in idx:
            ex = self.data.examples[int(gi)]
            rng = np.random.default_rng([self.cfg.seed, epoch, int(gi)])
            group = self.data.sample_group(ex, self.cfg.train_group_size - 1, rng, self.mined.get(int(gi)))
            queries.append(ex.query)
            pos_index.append(len(passages))
            passages.extend(group)
        return {"queries": self._load(queries, self.qkind), "passages": self._load(passages, self.pkind),
                "pos_index": torch.tensor(pos_index, dtype=torch.long), "n": len(idx),
                "examples": torch.as_tensor(idx, dtype=torch.long)}

    def _load(self, items: Sequence[str], kind: str):
        if kind == "text" or kind in self.cached_kinds:  # cached inputs are looked up, not decoded
            return list(items)
        with one_thread():  # preprocessing on one thread, as in a DataLoader worker (see one_thread)
            return torch.stack([self.transform(load_image(p)) for p in items])

    def _stream(self, items, kind: str):
        """The token stream of ``items``: read from the tower cache when the tower is cached."""
        cache = self.tower_caches.get(kind)
        if cache is None:
            return self.model.text_stream(items) if kind == "text" else self.model.image_stream(items.to(self.device))
        bb, f = self.model.backbone, cache.features(cache.rows(items), self.device)
        return text_stream_of(bb, bb.finish_text(f)) if kind == "text" else \
            image_stream_of(bb, self.model.visual_words, bb.finish_image(f))

    def _embed(self, items, kind: str, role: str) -> torch.Tensor:
        return self.model.embed(self._stream(items, kind), role=role)

    def _pool_embeddings(self) -> torch.Tensor:
        """Plain embeddings ``[N, d]`` of every training document, from the cache (with gradient
        through what sits above the tower, e.g. a dual encoder's projection)."""
        cache, bb = self.tower_caches[self.pkind], self.model.backbone
        rows = torch.as_tensor(cache.rows(self.pool), dtype=torch.long)
        pooled, summary = cache.pooled[rows].to(self.device), cache.summary[rows].to(self.device)
        empty = pooled.new_zeros(len(rows), 0, cache.hidden_dim)  # documents need no token positions here
        if self.pkind == "text":
            none = torch.zeros(len(rows), 0, dtype=torch.long, device=self.device)
            done = bb.finish_text(TextFeatures(ids=none, mask=none.bool(), hidden=empty, pooled=pooled, summary=summary))
        else:
            done = bb.finish_image(ImageFeatures(hidden=empty, pooled=pooled, summary=summary))
        return torch.nn.functional.normalize(done.pooled, dim=-1)

    # -- the step ---------------------------------------------------------------------------------
    def compute_loss(self, batch: Dict[str, Any]) -> torch.Tensor:
        """InfoNCE of one micro-batch (plus the image->text direction with ``symmetric``)."""
        cfg = self.cfg
        ctx = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else contextlib.nullcontext()
        with ctx:
            q = self._embed(batch["queries"], self.qkind, "query")
            pos = batch["pos_index"].to(self.device)
            if cfg.corpus_negatives:  # every training document is a negative (exact softmax over the pool)
                loss = self._corpus_loss(q, batch)
            else:
                p = self._embed(batch["passages"], self.pkind, "document")
                loss = info_nce(q, p, pos, cfg.temperature, cfg.cross_device_negatives)
            if cfg.symmetric:
                # each positive image against the batch's captions
                passages = batch["passages"]
                positives = [passages[i] for i in pos.tolist()] if isinstance(passages, list) else passages[pos.cpu()]
                images = self._embed(positives, self.pkind, "query")
                texts = self._embed(batch["queries"], self.qkind, "document")
                own = torch.arange(len(batch["queries"]), device=self.device)
                loss = 0.5 * (loss + info_nce(images, texts, own, cfg.temperature, cfg.cross_device_negatives))
        return loss

    def _corpus_loss(self, q: torch.Tensor, batch: Dict[str, Any]) -> torch.Tensor:
        where = self.pool_row
        passages = batch["passages"]
        target = torch.tensor([where[passages[i]] for i in batch["pos_index"].tolist()], dtype=torch.long)
        exclude = torch.zeros(len(target), len(self.pool), dtype=torch.bool)
        for j, gi in enumerate(batch["examples"].tolist()):  # a query's other positives are not its negatives
            exclude[j, [where[p] for p in self.data.examples[gi].pos]] = True
        exclude[torch.arange(len(target)), target] = False
        return corpus_nce(q, self._pool_embeddings(), target.to(self.device), self.cfg.temperature,
                          exclude.to(self.device))

    def optimizer_step(self) -> float:
        """Average gradients over ranks, clip, step; return the pre-clip gradient norm."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        all_reduce_grads(self.params, self.dist.world_size)
        grads = [p for p in self.params if p.grad is not None]
        limit = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(grads, limit) if grads else torch.zeros(())
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    # -- the loop --------------------------------------------------------------------------------
    def train(self) -> str:
        """Run to ``total_steps``; returns the final model folder (``<output>/final``)."""
        with self._image_cache():
            return self._train()

    def _image_cache(self):
        """Serve a locked image tower's features from the cache for the whole run, else nothing."""
        if "image" not in (self.qkind, self.pkind) or not image_tower_frozen(self.model) or \
                (self.feature_cache is None and self.cfg.feature_cache_gb <= 0):
            return contextlib.nullcontext()
        if self.feature_cache is None:
            self.feature_cache = ImageFeatureCache(self.cfg.feature_cache_gb)
        return self.feature_cache.attach(self.model)

    def _train(self) -> str:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        os.makedirs(cfg.output, exist_ok=True)
        if self.resume_from:
            self._restore(self.resume_from)
        else:
            self._maybe_fit_codebook()
        self._build_tower_caches()
        if not self.resume_from and self.dist.is_main:
            self._write_report()
            open(os.path.join(cfg.output, LOG_NAME), "w").close()
        self._train_mode()
        bar = self._bar()
        t_last, seen, loss_acc, n_acc = time.perf_counter(), 0, 0.0, 0
        if self.eval_data is not None and self.step == 0 and cfg.eval_steps:
            self._evaluate()
        while self.step < self.total_steps and not self._stop:
            if cfg.mine_negatives and self.micro == 0:
                self._mine()
            # own generator: creating a loader must not draw from the global RNG (dropout), or a
            # resumed run, which creates one more loader, would drift from an uninterrupted one
            loader = torch.utils.data.DataLoader(_MicroBatches(self, self.epoch, self.micro), batch_size=None,
                                                 shuffle=False, num_workers=cfg.workers,
                                                 generator=torch.Generator().manual_seed(cfg.seed))
            for batch in loader:
                loss = self.compute_loss(batch)
                scaled = loss / cfg.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                loss_acc += float(loss.detach())
                n_acc += 1
                seen += batch["n"] * self.dist.world_size
                self.micro += 1
                if self.micro % cfg.grad_accum:
                    continue
                grad_norm = self.optimizer_step()
                self.step += 1
                if self.step % cfg.log_steps == 0 or self.step == self.total_steps or self.step == 1:
                    now = time.perf_counter()
                    rec = {"step": self.step, "epoch": self.epoch, "loss": all_reduce_mean(loss_acc / n_acc, self.device),
                           "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                           "samples_per_s": seen / max(now - t_last, 1e-9)}
                    mod = self._batch_modulation(batch)
                    if mod:
                        rec["modulation"] = mod
                    self._log(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", sps=f"{rec['samples_per_s']:.1f}")
                    t_last, seen, loss_acc, n_acc = now, 0, 0.0, 0
                bar.update(1)
                if self.eval_data is not None and cfg.eval_steps and self.step % cfg.eval_steps == 0:
                    self._evaluate()
                if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < self.total_steps and not self._stop:
                    self._save_checkpoint()
                if self.step >= self.total_steps or self._stop:
                    break
            if self._stop:
                break
            if self.micro >= self.micro_per_epoch:
                self.epoch, self.micro = self.epoch + 1, 0
        bar.close()
        if self.eval_data is not None and (not cfg.eval_steps or self.step % cfg.eval_steps):
            self._evaluate()
        self._save_checkpoint()
        final = os.path.join(cfg.output, FINAL_DIR)
        self._check_ranks_agree()
        best = os.path.join(cfg.output, BEST_DIR)
        if self.dist.is_main:
            if cfg.keep_best and self.best["step"] is not None and os.path.isdir(best):
                from lsb_mm.models.serialization import CONFIG_NAME

                with atomic_folder(final, CONFIG_NAME, "an lsb-mm model") as tmp:  # the final model is the best on validation
                    shutil.copytree(best, tmp, dirs_exist_ok=True)
                log.info("saved %s (the best on validation: %s %.4f at step %d)", final, cfg.best_metric,
                         self.best["value"], self.best["step"])
            else:
                self.model.save_pretrained(final, training=self._training_record())
                log.info("saved %s", final)
            self._log({"step": self.step, "final": {"from_step": self.best["step"] if cfg.keep_best and
                                                    self.best["step"] is not None else self.step, **self.best}})
        barrier()
        return final

    # -- pieces of the loop ------------------------------------------------------------------------
    def _build_tower_caches(self) -> None:
        """Run each distinct training input through its locked tower once (the plug-in fast path)."""
        cfg, budget = self.cfg, self.cfg.tower_cache_gb
        was = self.model.training
        self.model.eval()
        for kind in self.cached_kinds:
            items = [e.query for e in self.data.examples] if kind == self.qkind else []
            if kind == self.pkind:
                items += self.pool
            if self.eval_data is not None:  # validation reads the cache too
                items += [e.query for e in self.eval_data.examples] if kind == self.qkind else []
                items += [p for e in self.eval_data.examples for p in list(e.pos) + list(e.neg)] if kind == self.pkind else []
            head = self.model.text_head if kind == "text" else self.model.image_head
            keep = kind == "image" or (head is not None and head.kind == "llr")  # only LLR reads text hidden states
            given = self.shared_tower_caches.get(kind)
            if given is not None:  # a cache shared between runs (e.g. a sweep): it must fit this run
                if not given.covers(items) or (keep and not given.keeps_hidden) or \
                        given.tower_digest != tower_digest(self.model, kind):
                    raise InputError(f"the {kind} tower cache given to the trainer does not serve this run (other "
                                     "inputs, other tower weights, or no hidden states for LLR); build it from this "
                                     "run's data or let the trainer build its own")
                self.tower_caches[kind] = given
                continue
            cache = TowerCache.build(self.model, kind, items, keep_hidden=keep, max_gb=budget,
                                     hidden_dtype=torch.float16 if cfg.tower_cache_dtype == "float16" else torch.float32,
                                     num_workers=cfg.workers, show_progress_bar=cfg.show_progress and self.dist.is_main,
                                     disk_dir=cfg.tower_cache_dir)
            budget -= cache.nbytes / (1 << 30)
            self.tower_caches[kind] = cache
            log.info("tower cache %s: %d inputs, %.3f GiB in %.1f s", kind, len(cache), cache.nbytes / (1 << 30),
                     cache.build_seconds)
        if was:
            self._train_mode()

    def _train_mode(self) -> None:
        """Train mode (dropout) for every module with something to train and for the parameter-free
        modules (dropout) inside them; a module whose parameters are all frozen stays in eval. With
        ``freeze_bn_stats`` batch-norm layers stay in eval too (running statistics kept, affine
        weights still trained)."""
        def visit(module: torch.nn.Module) -> None:
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
                return
            if self.cfg.freeze_bn_stats and isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
                return
            module.training = True
            for child in module.children():
                visit(child)

        visit(self.model)

    def _bar(self):
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                    disable=not (self.cfg.show_progress and self.dist.is_main))

    def _log(self, record: Dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(os.path.join(self.cfg.output, LOG_NAME), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _write_report(self) -> None:
        cfg, d = self.cfg, self.data
        info = {"examples": len(d), "format": d.fmt, "skipped": len(d.skipped), "without_hard_negatives": d.without_negatives,
                "world_size": self.dist.world_size, "global_batch": self.global_batch, "total_steps": self.total_steps,
                "trainable_parameters": sum(p.numel() for p in self.params), "device": str(self.device),
                "defaults_from": getattr(cfg, "defaults_from", None),
                "train_file": self._data_record["train"]["sha256"],
                "precision": str(self.autocast_dtype or "fp32"), "config": dataclasses.asdict(cfg),
                "tower_cache": {k: {"inputs": len(c), "gib": round(c.nbytes / (1 << 30), 4), "hidden": c.keeps_hidden,
                                    "disk_gib": round(c.disk_bytes / (1 << 30), 4),
                                    "build_seconds": round(c.build_seconds, 2)} for k, c in self.tower_caches.items()}}
        write_text(os.path.join(cfg.output, "run_info.json"), json.dumps(info, indent=2))
        if d.skipped:
            path = os.path.join(cfg.output, "skipped.jsonl")
            write_text(path, "".join(json.dumps(row) + "\n" for row in d.skipped))
            log.warning("skipped %d bad rows of %s; see %s", len(d.skipped), cfg.train_data, path)
        if d.without_negatives and cfg.train_group_size > 1 and not cfg.mine_negatives:
            log.warning("%d of %d examples have no hard negatives: they use in-batch negatives only",
                        d.without_negatives, len(d))

    def _images_of(self, data: TrainData, limit: int) -> List[str]:
        seen: Dict[str, None] = {}
        for e in data.examples:
            for item in ([e.query] if self.qkind == "image" else []) + (list(e.pos) if self.pkind == "image" else []):
                seen.setdefault(item)
                if len(seen) >= limit:
                    return list(seen)
        return list(seen)

    def _maybe_fit_codebook(self) -> None:
        """Fit the visual words on training images before training an image head on a fresh codebook.

        Rank 0 fits; the others take its centroids. The vocabulary shrinks when the images give
        fewer than 40 patch features per visual word (the same rule on every rank).
        """
        m, n = self.model, self.cfg.fit_codebook
        if "image" not in (self.qkind, self.pkind) or n == 0 or m.image_head is None or m.image_head.kind == "none" \
                or bool(m.visual_words.fitted):
            return
        images = self._images_of(self.data, n if n > 0 else 1000)
        with torch.no_grad():
            patches = m.image_stream(self.transform(load_image(images[0])).unsqueeze(0)).ids.shape[1]
        vocab = max(2, min(m.visual_words.vocab_size, len(images) * patches // 40))  # FAISS wants >= 39 points each
        if self.dist.is_main:
            m.fit_codebook(images, vocab_size=vocab, seed=self.cfg.seed, show_progress_bar=False)
        else:
            m.resize_visual_vocab(vocab, seed=self.cfg.seed)
        if self.dist.enabled:  # every rank starts from rank 0's codebook and (possibly re-created) image head
            import torch.distributed as dist

            for t in [m.visual_words.centroids, m.visual_words.fitted, *m.image_head.parameters(), *m.image_head.buffers()]:
                dist.broadcast(t.data, 0)
        self._build_optimizer()  # a new vocabulary re-created the image head: own its new parameters

    @torch.no_grad()
    def _mine(self) -> None:
        """Hard negatives for this epoch: top-ranked passages of the pool that are not positives."""
        import faiss

        was = self.model.training
        self.model.eval()
        pool = list(dict.fromkeys(p for e in self.data.examples for p in e.pos))
        docs = self._encode_items(pool, self.pkind, "document")
        queries = self._encode_items([e.query for e in self.data.examples], self.qkind, "query")
        index = faiss.IndexFlatIP(docs.shape[1])
        index.add(np.ascontiguousarray(docs, dtype=np.float32))
        k = min(len(pool), self.cfg.mine_top_k + max(len(e.pos) for e in self.data.examples) + 1)
        _, top = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        self.mined = {}
        for i, e in enumerate(self.data.examples):
            own = set(e.pos) | {e.query}
            self.mined[i] = [pool[j] for j in top[i] if j >= 0 and pool[j] not in own][: self.cfg.mine_top_k]
        if was:
            self._train_mode()

    def _encode_items(self, items: List[str], kind: str, role: str, batch_size: int = 256) -> np.ndarray:
        """Embeddings of training inputs, from the tower cache when there is one (no gradient)."""
        if kind not in self.tower_caches:
            return self._encoder(kind)(items, role)
        with torch.no_grad():
            parts = [self._embed(items[s:s + batch_size], kind, role).float().cpu() for s in range(0, len(items), batch_size)]
        return torch.cat(parts).numpy()

    def _encoder(self, kind: str):
        m = self.model
        return (lambda items, role: m.encode_text(items, role=role, show_progress_bar=False)) if kind == "text" else \
            (lambda items, role: m.encode_image(items, role=role, show_progress_bar=False))

    @torch.no_grad()
    def _evaluate(self) -> Dict[str, float]:
        """Held-out retrieval (every query against the eval set's passages, plus every training
        document when the validation was carved from the training data); keeps the best model."""
        was = self.model.training
        self.model.eval()
        metrics = retrieval_metrics(self.eval_data, lambda items, role: self._encode_items(items, self.qkind, role),
                                    lambda items, role: self._encode_items(items, self.pkind, role),
                                    distractors=self.eval_distractors)
        modulation = self._modulation([e.query for e in self.eval_data.examples])
        if was:
            self._train_mode()
        rec: Dict[str, Any] = {"step": self.step, "eval": metrics}
        if modulation:
            rec["modulation"] = modulation
        value, best = metrics[self.cfg.best_metric], self.best
        if best["value"] is None or value > best["value"]:
            best.update(value=value, step=self.step, bad_evals=0)
            if self.cfg.keep_best:
                self._save_best(modulation)
        else:
            best["bad_evals"] += 1
            if self.cfg.patience and best["bad_evals"] >= self.cfg.patience:
                self._stop = True
                rec["early_stop"] = f"{self.cfg.best_metric} did not improve in {best['bad_evals']} evaluations"
        rec["best"] = {k: best[k] for k in ("metric", "value", "step")}
        self._log(rec)
        if self.dist.is_main:
            log.info("step %d eval %s", self.step, metrics)
        return metrics

    def _batch_modulation(self, batch: Dict[str, Any]) -> Optional[Dict[str, float]]:
        """Modulation strength on the last micro-batch's queries (eval mode: no dropout, no RNG drawn)."""
        self.model.eval()
        try:
            return self._modulation(list(batch["queries"]) if isinstance(batch["queries"], list) else [])
        finally:
            self._train_mode()

    def _save_best(self, modulation: Optional[Dict[str, float]] = None) -> None:
        if self.dist.is_main:
            self.model.save_pretrained(os.path.join(self.cfg.output, BEST_DIR), training=self._training_record(modulation))
        barrier()

    def _training_record(self, modulation: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
        """What the model card and ``lsb_config.json`` say of this run: the recipe, the data (files,
        counts, checksums), the best validation so far and the modulation strength there."""
        cfg = self.cfg
        recipe = {k: v for k, v in dataclasses.asdict(cfg).items() if isinstance(v, (str, int, float, bool))}
        recipe.update(world_size=self.dist.world_size, global_batch=self.global_batch, total_steps=self.total_steps)
        best = {k: self.best[k] for k in ("metric", "value", "step")}
        return {"recipe": recipe, "data": self._data_record, "best": best, "modulation": modulation, "saved_step": self.step}

    @functools.cached_property
    def _data_record(self) -> Dict[str, Any]:
        """The training and validation files with their counts and sha256, hashed once per run."""
        cfg = self.cfg
        data = {"train": {"path": cfg.train_data, "examples": len(self.data),
                          "sha256": file_sha256(cfg.train_data) if os.path.isfile(cfg.train_data) else None}}
        if cfg.eval_data:
            data["validation"] = {"path": cfg.eval_data, "examples": len(self.eval_data.examples) if self.eval_data else None,
                                  "sha256": file_sha256(cfg.eval_data) if os.path.isfile(cfg.eval_data) else None}
        elif cfg.val_fraction and self.eval_data is not None:
            data["validation"] = {"path": f"{cfg.val_fraction:g} of {cfg.train_data}", "examples": len(self.eval_data.examples),
                                  "sha256": None}
        return data

    @torch.no_grad()
    def _modulation(self, queries: List[str], batch_size: int = 256) -> Optional[Dict[str, float]]:
        """Modulation strength of the query-side head over ``queries`` (None for heads without one)."""
        head = self.model.text_head if self.qkind == "text" else self.model.image_head
        if not hasattr(head, "modulation") or not self.model.fusion["query"] or not queries:
            return None
        if self.qkind == "image" and self.qkind not in self.tower_caches:  # images would need decoding here
            return None
        return modulation_strength(modulation_rows(head, (self._stream(queries[s:s + batch_size], self.qkind)
                                                          for s in range(0, len(queries), batch_size))))

    def _state(self) -> Dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "micro": self.micro, "world_size": self.dist.world_size,
                "config": dataclasses.asdict(self.cfg), "mined": {str(k): v for k, v in self.mined.items()},
                "best": dict(self.best), "stopped": self._stop}

    def _save_checkpoint(self) -> None:
        if self.dist.is_main:
            folder = os.path.join(self.cfg.output, f"checkpoint-{self.step:06d}")
            save_checkpoint(folder, self.model, self.optimizer, self.scheduler, self._state())
            prune_checkpoints(self.cfg.output, self.cfg.keep_checkpoints)
        barrier()

    def _restore(self, folder: str) -> None:
        state = load_checkpoint(folder, self.optimizer, self.scheduler)
        step, epoch, micro = state["step"], state["epoch"], state["micro"]
        where = os.path.join(folder, "trainer_state.json")
        if step > self.total_steps:
            raise InputError(f"{where}: step {step} is beyond this run's {self.total_steps} steps")
        if micro > self.micro_per_epoch or step != epoch * self.steps_per_epoch + micro // self.cfg.grad_accum:
            raise InputError(f"{where}: step {step}, epoch {epoch} and micro-batch {micro} do not agree with "
                             f"{self.steps_per_epoch} steps of {self.cfg.grad_accum} micro-batch(es) per epoch")
        self.step, self.epoch, self.micro = step, epoch, micro
        self.mined = {int(k): v for k, v in state.get("mined", {}).items()}
        self.best.update(state.get("best", {}))
        self._stop = bool(state.get("stopped", False))
        if self.dist.is_main:  # forget log lines written after the checkpoint
            path = os.path.join(self.cfg.output, LOG_NAME)
            if os.path.isfile(path):
                keep = [json.dumps(rec) + "\n" for _, rec in iter_jsonl(path) if rec.get("step", 0) <= self.step]
                write_text(path, "".join(keep))
        log.info("resumed from %s at step %d", folder, self.step)

    def _check_ranks_agree(self) -> None:
        """With several processes, every rank must end with the same weights; record the digest."""
        from lsb_mm.models.serialization import state_fingerprint

        digest = state_fingerprint(self.model)
        digests = [digest]
        if self.dist.enabled:
            import torch.distributed as dist

            digests = [None] * self.dist.world_size
            dist.all_gather_object(digests, digest)
        self._log({"step": self.step, "weights_fingerprint_per_rank": digests})
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks ended with different weights: {digests}")


def retrieval_metrics(data: TrainData, encode_query, encode_passage, ks: Sequence[int] = (1, 5, 10),
                      distractors: Sequence[str] = ()) -> Dict[str, float]:
    """Held-out NDCG@k, MRR@k, Recall@k and success@k of every query against the union of the
    set's passages (and ``distractors``), with the definitions of :mod:`lsb_mm.evaluation.metrics`
    (trec_eval's: Recall@k divides by all of a query's positives)."""
    corpus = list(dict.fromkeys([p for e in data.examples for p in list(e.pos) + list(e.neg)] + list(distractors)))
    q = torch.from_numpy(encode_query([e.query for e in data.examples], role="query"))
    d = torch.from_numpy(encode_passage(corpus, role="document"))
    top = (q @ d.t()).topk(min(max(ks), len(corpus)), dim=1).indices.tolist()
    run = {str(i): [str(j) for j in row] for i, row in enumerate(top)}
    where = {p: str(i) for i, p in enumerate(corpus)}
    qrels = {str(i): {where[p]: 1 for p in e.pos} for i, e in enumerate(data.examples)}
    means = evaluate_run(run, qrels, ks)["metrics"]
    return {name: value for name, value in means.items() if name.split("@")[0] in ("ndcg", "mrr", "recall", "success")}


def split_validation(data: TrainData, fraction: float, seed: int) -> "tuple[TrainData, TrainData]":
    """``(train, validation)``: about ``fraction`` of the examples held out, grouped by their first
    positive so that no validation document is also a training positive (seeded)."""
    groups: Dict[str, List[int]] = {}
    for i, e in enumerate(data.examples):
        groups.setdefault(e.pos[0], []).append(i)
    order = list(groups)
    rng = np.random.default_rng([seed, 7919])
    held: List[int] = []
    for g in (order[i] for i in rng.permutation(len(order))):
        if len(held) >= fraction * len(data.examples):
            break
        held += groups[g]
    if not held or len(held) == len(data.examples):
        raise InputError(f"val_fraction {fraction}: {len(data.examples)} examples in {len(groups)} positive groups "
                         "cannot be split into training and validation")
    val_pos = {data.examples[i].pos[0] for i in held}
    keep = sorted(set(range(len(data.examples))) - set(held))
    train_ex = [data.examples[i] for i in keep]
    leaked = [e.source for e in train_ex if set(e.pos) & val_pos]
    if leaked:
        log.info("%d training examples share a positive with the validation set", len(leaked))
    mk = lambda ex: TrainData(ex, data.modality, data.fmt, data.skipped if ex is train_ex else [])  # noqa: E731
    return mk(train_ex), mk([data.examples[i] for i in sorted(held)])


def train(config: TrainConfig | Dict[str, Any], feature_cache: Optional[ImageFeatureCache] = None,
          tower_caches: Optional[Dict[str, TowerCache]] = None) -> str:
    """Train from a :class:`TrainConfig` (or a dict of its fields); returns the final model folder.

    ``tower_caches`` (``{"text": TowerCache, ...}``, e.g. ``trainer.tower_caches`` of an earlier run
    on the same data and tower) skips building them again."""
    if isinstance(config, dict):
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise InputError(f"unknown training settings {unknown}")
        config = TrainConfig(**config)
    return Trainer(config, feature_cache, tower_caches).train()
