"""Exceptions raised for user mistakes; the CLI turns them into one clear line and exit 2."""
from __future__ import annotations

__all__ = ["LSBError", "ModelLoadError", "ImageLoadError", "InputError", "SearchIndexError", "MissingExtraError", "require_extra",
           "positive_int", "user_message"]


class LSBError(Exception):
    """Base class of every error that is the user's input, not a bug."""


class InputError(LSBError, ValueError):
    """An argument or an input item is not what was expected."""


class SearchIndexError(InputError):
    """A query or an index folder that does not fit (dimension, model, files)."""


class ModelLoadError(LSBError):
    """A model name, folder or weights file cannot be turned into a model."""


class MissingExtraError(LSBError, ImportError):
    """A feature needs an optional extra that is not installed; the message says how to install it."""


def require_extra(extra: str, what: str, *modules: str) -> None:
    """Import ``modules`` (e.g. ``"fastapi"``); if one is missing, raise :class:`MissingExtraError`
    naming ``what`` needs it and ``pip install -e '.[<extra>]'``."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise MissingExtraError(f"{what} needs the '{extra}' extra ({exc.name or name} is not installed): "
                                    f"pip install -e '.[{extra}]' in the lsb-mm clone") from None


class ImageLoadError(LSBError):
    """An image file is missing or cannot be decoded; names the file."""

    def __init__(self, path: str, reason: str | None = None):
        # one-argument form (a full message) lets DataLoader workers re-raise it intact
        super().__init__(f"cannot read image {path!s}: {reason}" if reason is not None else str(path))
        self.path = str(path)
        self.reason = reason


def positive_int(value, what: str = "k", error: type = InputError) -> int:
    """``value`` as an ``int`` if it is a positive integer (numpy integers included; ``bool``,
    floats and strings are not), else ``error`` naming ``what`` and the value."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise error(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def user_message(exc: BaseException) -> str:
    """The one-line message of ``exc``. An error re-raised from a DataLoader worker carries torch's
    "Caught X in DataLoader worker process N. Original Traceback ..." text: its own last line is kept."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    import re

    found = re.findall(rf"^(?:[\w.]+\.)?{type(exc).__name__}: (.+)$", text, flags=re.M)
    return found[-1] if found else text.strip().splitlines()[-1]
