"""Fashion-MNIST (Debian ``dataset-fashion-mnist``): 70,000 28x28 greyscale images, 10 classes.

:func:`load_fashion_mnist` reads the gzipped idx files (checking magic numbers and sizes);
:func:`export_labelled_folder` writes a seeded, class-balanced sample as PNG files in the
``class/image.png`` layout that the trainer and the task builders read.
"""
from __future__ import annotations

import gzip
import os
from typing import List, Tuple

import numpy as np

from lsb_mm.errors import InputError

__all__ = ["load_fashion_mnist", "export_labelled_folder", "FASHION_CLASSES", "FASHION_ROOT", "FASHION_PACKAGE"]

FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _read_idx(path: str, magic: int, dims: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    head = np.frombuffer(data[:4 + 4 * dims], dtype=">u4")
    if head[0] != magic:
        raise InputError(f"{path}: idx magic number {head[0]}, expected {magic}")
    shape = tuple(int(x) for x in head[1:])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise InputError(f"{path}: {body.size} bytes of data for shape {shape}")
    return body.reshape(shape)


def load_fashion_mnist(split: str = "test", root: str = FASHION_ROOT) -> Tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` of the ``train`` (60k) or ``test`` (10k) split."""
    if split not in _FILES:
        raise InputError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    paths = [os.path.join(root, f) for f in _FILES[split]]
    if not all(os.path.isfile(p) for p in paths):
        raise InputError(f"Fashion-MNIST not found under {root}; install it with: sudo apt-get install {FASHION_PACKAGE}")
    images, labels = _read_idx(paths[0], 2051, 3), _read_idx(paths[1], 2049, 1)
    if len(images) != len(labels) or labels.max() >= len(FASHION_CLASSES):
        raise InputError(f"{root}: {len(images)} images but {len(labels)} labels (max {labels.max()})")
    return images, labels.astype(np.int64)


def export_labelled_folder(out_dir: str, split: str = "test", per_class: int = 200, seed: int = 0,
                           root: str = FASHION_ROOT) -> str:
    """Write a seeded sample of ``per_class`` images of each class as ``out_dir/<class>/<split>-<index>.png``."""
    from PIL import Image

    from lsb_mm.files import atomic_folder

    images, labels = load_fashion_mnist(split, root)
    order = np.random.default_rng(seed).permutation(len(labels))
    with atomic_folder(out_dir) as tmp:
        for c, name in enumerate(FASHION_CLASSES):
            picked: List[int] = [int(i) for i in order if labels[i] == c][:per_class]
            if len(picked) < per_class:
                raise InputError(f"Fashion-MNIST {split}: class {name} has {len(picked)} images, {per_class} requested")
            os.makedirs(os.path.join(tmp, name))
            for i in picked:
                Image.fromarray(images[i]).save(os.path.join(tmp, name, f"{split}-{i:05d}.png"))
    return out_dir

