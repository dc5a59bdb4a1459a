"""Loading images from paths, PIL objects or encoded bytes (:class:`ImageBlob`): RGB conversion and loud failures."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from typing import Any, Iterable, Iterator, List, Sequence, TypeVar, Union

from PIL import Image, UnidentifiedImageError

from lsb_mm.errors import ImageLoadError, InputError

__all__ = ["ImageInput", "ImageBlob", "load_image", "load_image_bytes", "to_rgb", "list_image_files", "IMAGE_EXTENSIONS", "one_thread", "on_one_thread"]

ImageInput = Union[str, os.PathLike, Image.Image, "ImageBlob"]
_PIL_DEFAULT_MAX = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS as shipped
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
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = Image.fromarray(_to_8bit(img), mode="L")
    return img.convert("RGB")


def _to_8bit(img: Image.Image):
    """16/32-bit integer or float greyscale as uint8, scaled rather than clipped: floats in [0, 1]
    by 255, non-negative integers by 255 / max, anything else (negatives, floats beyond 1) by its
    own range; NaN / inf become 0."""
    import numpy as np

    arr = np.asarray(img, dtype=np.float64)
    finite = np.isfinite(arr)
    arr = np.where(finite, arr, 0.0)
    lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        out = arr * 255.0
    elif lo >= 0.0 and img.mode != "F":
        out = arr * (255.0 / (hi or 1.0))
    else:
        out = (arr - lo) * (255.0 / ((hi - lo) or 1.0))
    return np.rint(out).clip(0, 255).astype("uint8")


def max_image_pixels() -> int:
    """The largest image (width x height) decoded: ``LSB_MM_MAX_IMAGE_PIXELS`` if set, else PIL's
    default ``Image.MAX_IMAGE_PIXELS`` (89,478,485); a larger file is refused as a possible
    decompression bomb before its pixels are decoded (PIL itself only warns up to twice that)."""
    env = os.environ.get("LSB_MM_MAX_IMAGE_PIXELS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise InputError(f"LSB_MM_MAX_IMAGE_PIXELS must be a whole number of pixels, got {env!r}") from None
        if value < 1:
            raise InputError(f"LSB_MM_MAX_IMAGE_PIXELS must be >= 1, got {env!r}")
        return value
    return _PIL_DEFAULT_MAX


@dataclasses.dataclass(frozen=True)
class ImageBlob:
    """An encoded image held in memory (a tar member, a Parquet cell); ``name`` names it in errors."""

    data: bytes
    name: str

    def __repr__(self) -> str:
        return f"ImageBlob({self.name!r}, {len(self.data)} bytes)"


def load_image(item: Any, index: int | None = None) -> Image.Image:
    """Open one image (path, PIL image or :class:`ImageBlob`) as RGB; raise :class:`ImageLoadError` naming the file."""
    if isinstance(item, Image.Image):
        try:
            return to_rgb(item)
        except Exception as exc:  # a PIL object in an unusable mode
            raise ImageLoadError(f"<PIL image #{index}>", f"cannot convert mode {item.mode!r} to RGB ({exc})") from exc
    if isinstance(item, ImageBlob):
        return load_image_bytes(item.data, item.name)
    if not isinstance(item, (str, os.PathLike)):
        where = f" at index {index}" if index is not None else ""
        raise InputError(f"images must be file paths, PIL images or ImageBlobs; got {type(item).__name__}{where}")
    path = os.fspath(item)
    if not os.path.exists(path):
        raise ImageLoadError(path, "no such file")
    if os.path.isdir(path):
        raise ImageLoadError(path, "is a directory, not an image file")
    return _decode(path, path)


def load_image_bytes(data: bytes, name: str = "<upload>") -> Image.Image:
    """Decode an image held in memory (an upload) as RGB, with the same checks and pixel limit as
    :func:`load_image`; errors name ``name``."""
    import io

    if not isinstance(data, (bytes, bytearray)) or not data:
        raise ImageLoadError(name, "empty upload")
    return _decode(io.BytesIO(data), name)


def _decode(source, path: str) -> Image.Image:
    limit = max_image_pixels()
    try:
        if limit > (Image.MAX_IMAGE_PIXELS or 0):  # a limit raised on purpose raises PIL's own with it
            Image.MAX_IMAGE_PIXELS = limit
        with warnings.catch_warnings():  # the size is checked here, before decoding, against the limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
        with im:
            w, h = im.size
            if w * h > limit:
                raise ImageLoadError(path, f"it decodes to {w} x {h} = {w * h:,} pixels, over the limit of {limit:,} "
                                           "(a possible decompression bomb; raise LSB_MM_MAX_IMAGE_PIXELS for images "
                                           "you trust)")
            im.load()
            return to_rgb(im)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(path, f"too many pixels (over twice the limit of {limit:,}): a possible decompression "
                                   "bomb; raise LSB_MM_MAX_IMAGE_PIXELS for images you trust") from exc
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
