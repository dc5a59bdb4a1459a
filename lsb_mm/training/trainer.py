"""One contrastive trainer for text->text, image->image and text->image (``--modality``).

``lsb_mm.train(TrainConfig(...))`` or ``Trainer(config).train()``; ``lsb-mm train`` is a thin
layer over it. Single process or torchrun (DDP semantics: gradients averaged over ranks; with
``cross_device_negatives`` every query also scores the other ranks' passages, with gradient).
Every other passage of the (global) batch is a negative too; how batches are cut:
:mod:`lsb_mm.training.batches`. The run folder: :mod:`lsb_mm.training.run_folder`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from lsb_mm.data.images import load_image, one_thread
from lsb_mm.data.training_data import TrainData, item_kinds, load_train_data
from lsb_mm.errors import InputError
from lsb_mm.files import atomic_folder
from lsb_mm.models.encoders.adapters import image_stream_of, text_stream_of
from lsb_mm.models.heads import modulation_rows, modulation_strength
from lsb_mm.training.batches import Batches, EpochBatches
from lsb_mm.training.codebook import fit_codebook_for_run
from lsb_mm.training.checkpoint import load_checkpoint, prune_checkpoints, save_checkpoint
from lsb_mm.training.config import TrainConfig
from lsb_mm.training.distributed import DistInfo, all_reduce_grads, all_reduce_mean, barrier, gather_objects, init_distributed
from lsb_mm.training.feature_cache import ImageFeatureCache, serve_locked_images
from lsb_mm.training.losses import corpus_nce, info_nce
from lsb_mm.training.mining import mine_negatives
from lsb_mm.training.optim import autocast_dtype, build_optimizer, device_name, select_trainable, set_train_mode
from lsb_mm.training.records import data_record, training_record, write_run_info
from lsb_mm.training.run_folder import (BEST_DIR, FINAL_DIR, LOG_NAME, append_log, prepare_output, resume_folder,
                                        truncate_log)
from lsb_mm.training.tower_cache import TowerCache, tower_caches_for_run, tower_frozen
from lsb_mm.training.validation import retrieval_metrics, split_validation

__all__ = ["Trainer", "train"]

log = logging.getLogger(__name__)



class Trainer:
    """Contrastive training of an lsb-mm model; see the module docstring.

    With a locked image tower (``--train heads``, ``--lock-image``, or a dual encoder's towers) its
    features are computed once per distinct image and served from an
    :class:`~lsb_mm.training.feature_cache.ImageFeatureCache` (``feature_cache_gb``, 0 = off); pass
    ``feature_cache`` to share one cache between runs over the same tower.
    """

    def __init__(self, config: TrainConfig, feature_cache: Optional[ImageFeatureCache] = None,
                 tower_caches: Optional[Dict[str, TowerCache]] = None):
        config.check()
        self.cfg = cfg = config
        self.feature_cache = feature_cache
        self.shared_tower_caches = dict(tower_caches or {})
        self.dist: DistInfo = init_distributed(cfg.device)
        prepare_output(cfg, self.dist.is_main)
        self.device = torch.device(device_name(cfg, self.dist))
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
        self.batches = Batches(self.data, cfg, self.dist.world_size, self.dist.rank, (self.qkind, self.pkind), self._load)
        self.global_batch, self.micro_per_epoch = self.batches.global_batch, self.batches.per_epoch
        self.steps_per_epoch = self.micro_per_epoch // cfg.grad_accum
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * self.steps_per_epoch
        self.resume_from = resume_folder(cfg, self.dist.world_size)
        self.model = self._build_model()
        self._build_optimizer()
        self.autocast_dtype = autocast_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
        self.step, self.epoch, self.micro = 0, 0, 0
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
        self.params = select_trainable(self.model, self.cfg, {self.qkind, self.pkind})
        self.optimizer, self.scheduler = build_optimizer(self.model, self.cfg, self.total_steps)

    # -- data --------------------------------------------------------------------------------
    @property
    def transform(self):
        if self._transform is None:
            self._transform = self.model.image_transform
        return self._transform

    def micro_batch(self, epoch: int, mb: int) -> Dict[str, Any]:
        """This rank's slice of global micro-batch ``mb`` of ``epoch`` (see :mod:`lsb_mm.training.batches`)."""
        return self.batches.micro_batch(epoch, mb)

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
        """Plain embeddings ``[N, d]`` of every training document, from the cache."""
        return self.tower_caches[self.pkind].plain_embeddings(self.model, self.pool, self.device)

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
        kinds = (self.qkind, self.pkind)
        with serve_locked_images(self.model, kinds, self.feature_cache, self.cfg.feature_cache_gb) as self.feature_cache:
            return self._train()

    def _train(self) -> str:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        os.makedirs(cfg.output, exist_ok=True)
        if self.resume_from:
            self._restore(self.resume_from)
        elif fit_codebook_for_run(self.model, self.data, (self.qkind, self.pkind), cfg.fit_codebook, cfg.seed, self.dist):
            self._build_optimizer()  # a new vocabulary re-created the image head: own its new parameters
        self._build_tower_caches()
        if not self.resume_from and self.dist.is_main:
            self._write_report()
            open(os.path.join(cfg.output, LOG_NAME), "w").close()
        self._train_mode()
        bar = self._bar()
        self._window = {"t": time.perf_counter(), "seen": 0, "loss": 0.0, "n": 0}  # since the last log line
        if self.eval_data is not None and self.step == 0 and cfg.eval_steps:
            self._evaluate()
        while self.step < self.total_steps and not self._stop:
            if cfg.mine_negatives and self.micro == 0:
                self._mine()
            # own generator: creating a loader must not draw from the global RNG (dropout), or a
            # resumed run, which creates one more loader, would drift from an uninterrupted one
            loader = torch.utils.data.DataLoader(EpochBatches(self.batches, self.epoch, self.micro), batch_size=None,
                                                 shuffle=False, num_workers=cfg.num_workers,
                                                 generator=torch.Generator().manual_seed(cfg.seed))
            for batch in loader:
                if self._micro_step(batch, bar):
                    break
            if self._stop:
                break
            if self.micro >= self.micro_per_epoch:
                self.epoch, self.micro = self.epoch + 1, 0
        bar.close()
        if self.eval_data is not None and (not cfg.eval_steps or self.step % cfg.eval_steps):
            self._evaluate()
        self._save_checkpoint()
        return self._save_final()

    def _micro_step(self, batch: Dict[str, Any], bar) -> bool:
        """Forward and backward of one micro-batch, then (every ``grad_accum``) an optimizer step
        with its logging, evaluation and checkpoint; returns whether the run is over."""
        cfg, w = self.cfg, self._window
        loss = self.compute_loss(batch)
        scaled = loss / cfg.grad_accum
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        w["loss"], w["n"], w["seen"] = w["loss"] + float(loss.detach()), w["n"] + 1, w["seen"] + batch["n"] * self.dist.world_size
        self.micro += 1
        if self.micro % cfg.grad_accum:
            return False
        grad_norm = self.optimizer_step()
        self.step += 1
        if self.step % cfg.log_steps == 0 or self.step == self.total_steps or self.step == 1:
            now = time.perf_counter()
            rec = {"step": self.step, "epoch": self.epoch, "loss": all_reduce_mean(w["loss"] / w["n"], self.device),
                   "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                   "samples_per_s": w["seen"] / max(now - w["t"], 1e-9)}
            mod = self._batch_modulation(batch)
            if mod:
                rec["modulation"] = mod
            self._log(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", sps=f"{rec['samples_per_s']:.1f}")
            self._window = {"t": now, "seen": 0, "loss": 0.0, "n": 0}
        bar.update(1)
        if self.eval_data is not None and cfg.eval_steps and self.step % cfg.eval_steps == 0:
            self._evaluate()
        if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < self.total_steps and not self._stop:
            self._save_checkpoint()
        return self.step >= self.total_steps or self._stop

    def _save_final(self) -> str:
        """``<output>/final``: the best model on validation with ``keep_best``, else the last one."""
        cfg = self.cfg
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
        cfg, ev = self.cfg, self.eval_data
        inputs: Dict[str, List[str]] = {}
        for kind in self.cached_kinds:
            items = [e.query for e in self.data.examples] if kind == self.qkind else []
            if kind == self.pkind:
                items += self.pool
            if ev is not None:  # validation reads the cache too
                items += [e.query for e in ev.examples] if kind == self.qkind else []
                items += [p for e in ev.examples for p in list(e.pos) + list(e.neg)] if kind == self.pkind else []
            inputs[kind] = items
        was = self.model.training
        self.model.eval()
        self.tower_caches = tower_caches_for_run(
            self.model, inputs, cfg.tower_cache_gb, self.shared_tower_caches, disk_dir=cfg.tower_cache_dir,
            hidden_dtype=torch.float16 if cfg.tower_cache_dtype == "float16" else torch.float32,
            num_workers=cfg.num_workers, show_progress_bar=cfg.show_progress_bar and self.dist.is_main)
        if was:
            self._train_mode()

    def _train_mode(self) -> None:
        set_train_mode(self.model, self.cfg.freeze_bn_stats)

    def _bar(self):
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                    disable=not (self.cfg.show_progress_bar and self.dist.is_main))

    def _log(self, record: Dict[str, Any]) -> None:
        if self.dist.is_main:
            append_log(self.cfg.output, record)

    def _write_report(self) -> None:
        write_run_info(self.cfg, self.data, {
            "world_size": self.dist.world_size, "global_batch": self.global_batch, "total_steps": self.total_steps,
            "trainable_parameters": sum(p.numel() for p in self.params), "device": str(self.device),
            "defaults_from": getattr(self.cfg, "defaults_from", None), "train_file": self._data_record["train"]["sha256"],
            "precision": str(self.autocast_dtype or "fp32"),
            "tower_cache": {k: {"inputs": len(c), "gib": round(c.nbytes / (1 << 30), 4), "hidden": c.keeps_hidden,
                                "disk_gib": round(c.disk_bytes / (1 << 30), 4), "build_seconds": round(c.build_seconds, 2)}
                            for k, c in self.tower_caches.items()}})

    @torch.no_grad()
    def _mine(self) -> None:
        """Hard negatives for this epoch: top-ranked training documents that are not positives."""
        was = self.model.training
        self.model.eval()
        side = {"query": self.qkind, "document": self.pkind}
        self.batches.mined = mine_negatives(self.data, lambda items, role: self._encode_items(items, side[role], role),
                                    self.cfg.mine_top_k)
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
        return lambda items, role: self.model.encode(items, kind, role, show_progress_bar=False)

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
        run = {"world_size": self.dist.world_size, "global_batch": self.global_batch, "total_steps": self.total_steps}
        return training_record(self.cfg, run, self._data_record, self.best, self.step, modulation)

    @functools.cached_property
    def _data_record(self) -> Dict[str, Any]:
        """The training and validation files with their counts and sha256, hashed once per run."""
        return data_record(self.cfg, self.data, self.eval_data)

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
                "config": dataclasses.asdict(self.cfg), "mined": {str(k): v for k, v in self.batches.mined.items()},
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
        self.batches.mined = {int(k): v for k, v in state.get("mined", {}).items()}
        self.best.update(state.get("best", {}))
        self._stop = bool(state.get("stopped", False))
        if self.dist.is_main:  # forget log lines written after the checkpoint
            truncate_log(self.cfg.output, self.step)
        log.info("resumed from %s at step %d", folder, self.step)

    def _check_ranks_agree(self) -> None:
        """With several processes, every rank must end with the same weights; record the digest."""
        from lsb_mm.models.serialization import state_fingerprint

        digests = gather_objects(state_fingerprint(self.model), self.dist)
        self._log({"step": self.step, "weights_fingerprint_per_rank": digests})
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks ended with different weights: {digests}")


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
