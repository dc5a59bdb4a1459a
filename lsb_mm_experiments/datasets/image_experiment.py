"""The image -> image and text -> image experiments shared by the reproductions, the head sweep and the demo.

Image -> image (:func:`build_image_experiment`): Debian ``dataset-fashion-mnist`` (a seeded,
class-balanced sample from the train split for training and from the test split held out) or
Debian ``tuxpaint-stamps-default`` (stamps labelled by category folder, split by category, seeded).
Training pairs come from the training images only (a random crop -> its image, an image -> the
other images of its class); held-out tasks are ``class`` and ``snippet-P``.

Text -> image (:func:`build_cross_experiment`): every captioned Tux Paint stamp, split by
category; training pairs caption -> stamp; held-out tasks ``caption2image`` and ``image2caption``.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Sequence, Tuple

__all__ = ["IMAGE_DATASETS", "IMAGE_SIZE", "build_image_experiment", "build_cross_experiment"]

IMAGE_DATASETS = ("fashion-mnist", "tuxpaint")
IMAGE_SIZE = {"fashion-mnist": 112, "tuxpaint": 160}  # 28 px images x4; stamps: 5x5 cells of EfficientNet-Lite0


def _fresh(work: str) -> str:
    """``<work>/data``, built from scratch each time (the split and the crops follow the arguments);
    nothing else under ``work`` is touched."""
    data = os.path.join(work, "data")
    if os.path.isdir(data):
        shutil.rmtree(data)
    os.makedirs(data)
    return data


def build_image_experiment(work: str, dataset: str, per_class: int = 200, limit: int = 0, test_fraction: float = 0.4,
                           snippets: Sequence[int] = (10, 30, 50, 80), crops_per_image: int = 1
                           ) -> Tuple[str, List[str], Dict]:
    """``(train JSONL, held-out task folders, info)`` of one image dataset under ``<work>/data`` (rebuilt).

    ``per_class``: Fashion-MNIST images per class in each split; ``limit``: Tux Paint's first N
    stamps (0: all); ``crops_per_image``: crop -> image training pairs per training image."""
    from lsb_mm.data.splits import stratified_split
    from lsb_mm.data.tasks import image_pair_training_data, image_tasks

    if dataset not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {dataset!r}; expected one of {IMAGE_DATASETS}")
    work = _fresh(work)
    if dataset == "fashion-mnist":
        from lsb_mm_experiments.datasets.fashion_mnist import export_labelled_folder

        train_dir = export_labelled_folder(os.path.join(work, "train"), "train", per_class, seed=0)
        test_dir = export_labelled_folder(os.path.join(work, "test"), "test", per_class, seed=0)
        info: Dict = {"per_class": per_class, "classes": 10, "test": 10 * per_class}
    else:
        from lsb_mm_experiments.datasets.tuxpaint import link_labelled_folder, load_tuxpaint

        data = load_tuxpaint()
        stamps = data.stamps[: limit or None]
        train, test = stratified_split(stamps, lambda s: s.category, test_fraction, seed=0)
        train_dir = link_labelled_folder(train, os.path.join(work, "train"))
        test_dir = link_labelled_folder(test, os.path.join(work, "test"))
        info = {"stamps": len(stamps), "train": len(train), "test": len(test), "skipped": data.skipped}
    train_file = os.path.join(work, "train.jsonl")
    info["train_examples"] = image_pair_training_data(train_dir, train_file, crops=crops_per_image)
    info["crops_per_image"] = crops_per_image
    kinds = ["class"] + [f"snippet-{p}" for p in snippets]
    folders = image_tasks(test_dir, os.path.join(work, "tasks"), kinds=kinds, position="random", seed=0)
    info["tasks"] = {os.path.basename(f): json.load(open(os.path.join(f, "task.json"), encoding="utf-8")) for f in folders}
    return train_file, folders, info


def build_cross_experiment(work: str, limit: int = 0, test_fraction: float = 0.4) -> Tuple[str, List[str], Dict]:
    """``(train JSONL, held-out task folders, info)`` of Tux Paint captions -> stamps under ``<work>/data`` (rebuilt)."""
    from lsb_mm.files import write_jsonl
    from lsb_mm.data.splits import stratified_split
    from lsb_mm.data.tasks import cross_tasks
    from lsb_mm_experiments.datasets.tuxpaint import load_tuxpaint

    work = _fresh(work)
    data = load_tuxpaint()
    stamps = data.stamps[: limit or None]
    train, test = stratified_split(stamps, lambda s: s.category, test_fraction, seed=0)
    train_file = os.path.join(work, "train.jsonl")
    write_jsonl(train_file, ({"query": s.caption, "pos": [s.path]} for s in train))
    folders = cross_tasks([(s.caption, s.path) for s in test], os.path.join(work, "tasks"))
    info = {"stamps": len(stamps), "train": len(train), "test": len(test), "skipped": data.skipped,
            "categories": len({s.category for s in stamps}), "train_examples": len(train)}
    return train_file, folders, info
