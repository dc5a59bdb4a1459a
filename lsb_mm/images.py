"""Loading images from paths or PIL objects: RGB conversion and loud failures."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable, Iterator, List, Sequence, TypeVar, Union

from PIL import Image, UnidentifiedImageError

from .errors import ImageLoadError, InputError

__all__ = ["ImageInput", "load_image", "to_rgb", "list_image_files", "IMAGE_EXTENSIONS", "one_thread", "on_one_thread"]

ImageInput = Union[str, os.PathLike, Image.Image]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def to_rgb(img: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited onto ``background``.

    Palette images with a transparency entry, LA and RGBA all go through alpha compositing,
    so a transparent stamp does not turn into a black square.
    """
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bit rather than clipping
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) or 1.0
        img = Image.fromarray((arr * (255.0 / hi)).clip(0, 255).astype("uint8"), mode="L")
    return img.convert("RGB")


def load_image(item: Any, index: int | None = None) -> Image.Image:
    """Open one image (path or PIL) as RGB; raise :class:`ImageLoadError` naming the file."""
    if isinstance(item, Image.Image):
        try:
            return to_rgb(item)
        except Exception as exc:  # a PIL object in an unusable mode
            raise ImageLoadError(f"<PIL image #{index}>", f"cannot convert mode {item.mode!r} to RGB ({exc})") from exc
    if not isinstance(item, (str, os.PathLike)):
        where = f" at index {index}" if index is not None else ""
        raise InputError(f"images must be file paths or PIL images; got {type(item).__name__}{where}")
    path = os.fspath(item)
    if not os.path.exists(path):
        raise ImageLoadError(path, "no such file")
    if os.path.isdir(path):
        raise ImageLoadError(path, "is a directory, not an image file")
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(path, f"not a decodable image ({exc})") from exc


def list_image_files(folder: str, recursive: bool = True) -> List[str]:
    """Sorted image files under ``folder`` (by extension)."""
    if not os.path.isdir(folder):
        raise InputError(f"image folder {folder!r} does not exist or is not a directory")
    out: List[str] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        out.extend(os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not recursive:
            break
    return out


def check_sequence(items: Sequence[Any], what: str) -> None:
    if isinstance(items, (str, bytes)) or not hasattr(items, "__len__"):
        raise InputError(f"{what} must be a list, got {type(items).__name__}")
    if len(items) == 0:
        raise InputError(f"{what} is an empty list; nothing to encode")


def check_images(paths: Sequence[str]) -> tuple:
    """Decode every image once: ``(readable paths, [(path, reason), ...])``. For ``--skip-bad``."""
    good, bad = [], []
    for p in paths:
        try:
            load_image(p)
            good.append(p)
        except ImageLoadError as exc:
            bad.append((str(p), exc.reason or str(exc)))
    return good, bad


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (the previous count is restored after).

    Image preprocessing is many tiny tensor operations per image (to tensor, normalise); spread over
    several threads, each one waits for every thread, which costs ~40x when another process holds a
    core (measured: 24 ms instead of 0.6 ms per image on 2 busy cores). DataLoader workers already run
    on one thread; this gives loading in the main process the same. Switch per batch, not per image:
    the first parallel operation after a switch resizes the thread pool (~0.3 ms).
    """
    import torch

    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


T = TypeVar("T")


def on_one_thread(batches: Iterable[T]) -> Iterator[T]:
    """Yield from ``batches`` (e.g. a DataLoader with ``num_workers=0``), producing each on one thread."""
    it = iter(batches)
    while True:
        with one_thread():
            try:
                batch = next(it)
            except StopIteration:
                return
        yield batch
