"""Safe file writing and reading, shared by every layer (a leaf: imports nothing of lsb-mm but errors and the version).

- :class:`atomic_folder`: build a folder under a temporary sibling name, then swap it into place;
- :func:`atomic_write`: a file created exclusively in its target folder (``tempfile.mkstemp``, so a
  symlink planted at a predictable name is never followed), renamed over the target on success;
- :func:`tensor_digest` / :func:`file_sha256`: checksums of tensors and of files;
- :func:`iter_jsonl` / :func:`write_jsonl`: JSONL with errors that name ``file:line``;
- :func:`write_manifest` / :func:`read_manifest` / :func:`verify_checksums`: the checksummed
  manifest of every lsb-mm folder format (index, BM25, embedding shards).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import IO, Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

from lsb_mm._version import __version__
from lsb_mm.errors import InputError

__all__ = ["atomic_folder", "atomic_write", "write_text", "tensor_digest", "file_sha256", "iter_jsonl", "write_jsonl",
           "read_json", "same_file", "checksums", "write_manifest", "read_manifest", "verify_checksums"]


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file (through links too; a missing path is compared by name)."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.abspath(a) == os.path.abspath(b)


def check_replaceable(folder: str, marker: str, kind: str) -> None:
    """Raise InputError unless ``folder`` is absent, empty, or a folder of ``kind`` (it holds
    ``marker``): an output that would replace a file, a link or someone else's folder is refused."""
    if os.path.isdir(folder) and not os.path.islink(folder) and not os.listdir(folder):
        return  # an empty folder (e.g. from mkdtemp) holds nothing to lose
    if os.path.lexists(folder) and (os.path.islink(folder) or not os.path.isfile(os.path.join(folder, marker))):
        what = "a file" if not os.path.isdir(folder) else f"a folder without {marker}"
        raise InputError(f"{folder} exists and is {what}, not {kind} folder; refusing to replace it "
                         "(choose another output, or remove it yourself)")


class atomic_folder:
    """Context manager: write into a temporary sibling folder, then swap it into place.

    A crash leaves the old folder (or nothing) and a ``.tmp-*`` sibling, never a half-written
    folder under the final name. With ``marker`` (a file every folder of this ``kind`` holds), an
    existing path without it (a file, a link, someone else's folder) is refused, never replaced.
    """

    def __init__(self, folder: str, marker: Optional[str] = None, kind: str = "lsb-mm"):
        self.folder = os.path.abspath(folder)
        self.shown = folder
        self.marker, self.kind = marker, kind

    def __enter__(self) -> str:
        if self.marker is not None:
            check_replaceable(self.shown, self.marker, self.kind)
        parent = os.path.dirname(self.folder)
        os.makedirs(parent, exist_ok=True)
        self._sweep(parent)
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.folder)}.tmp-", dir=parent)
        return self.tmp

    def _sweep(self, parent: str) -> None:
        """Remove what an interrupted write of this same folder left: ``.NAME.tmp-*`` (never read),
        and ``.NAME.old-*`` once ``NAME`` exists (while it does not, the old copy is the only one).
        Two writers of one folder at a time are not supported."""
        base = os.path.basename(self.folder)
        for name in os.listdir(parent):
            stale = name.startswith(f".{base}.tmp-") or (name.startswith(f".{base}.old-") and os.path.isdir(self.folder))
            if stale and os.path.isdir(os.path.join(parent, name)) and not os.path.islink(os.path.join(parent, name)):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if os.path.exists(self.folder):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.folder)}.old-", dir=os.path.dirname(self.folder))
            os.rmdir(old)
            os.rename(self.folder, old)
        os.rename(self.tmp, self.folder)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        self._sweep(os.path.dirname(self.folder))  # NAME is in place: an older crash's .old-* copy is superseded


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
    """Open a new file for writing that replaces ``path`` only when the ``with`` block succeeds.

    The temporary file is created exclusively (``O_EXCL``) in ``path``'s folder with a random
    name, so an existing file or symlink is never written through; ``mode`` is ``"w"`` (UTF-8
    text) or ``"wb"``. On error the temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with (os.fdopen(fd, "wb") if mode == "wb" else os.fdopen(fd, "w", encoding="utf-8")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str, text: str) -> str:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`); returns ``path``."""
    with atomic_write(path) as f:
        f.write(text)
    return path


def write_jsonl(path: str, records: Iterable[Any]) -> None:
    """One JSON value per line, UTF-8 kept as is; written atomically (a symlink at ``path`` is
    replaced, never written through)."""
    with atomic_write(path) as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def iter_lines(path: str, on_error: Optional[Callable[[str, str], None]] = None) -> Iterator[Tuple[int, str]]:
    """Yield ``(line number, text)`` of every line of a UTF-8 file (newline kept; a byte-order
    mark at the start dropped). A line that is not UTF-8 raises InputError naming ``file:line``,
    or, with ``on_error``, is reported as ``on_error("file:line", reason)`` and skipped."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                _bad_line(path, n, f"not UTF-8 text (byte {exc.start + 1} of the line)", on_error)
                continue
            yield n, line


def _bad_line(path: str, n: int, reason: str, on_error: Optional[Callable[[str, str], None]]) -> None:
    """Raise InputError naming ``path:n``, or report it to ``on_error`` (the caller then skips the line)."""
    if on_error is None:
        raise InputError(f"{path}:{n}: {reason}") from None
    on_error(f"{path}:{n}", reason)


def iter_jsonl(path: str, on_error: Optional[Callable[[str, str], None]] = None) -> Iterator[Tuple[int, Any]]:
    """Yield ``(line number, parsed value)`` for each non-blank line.

    A line that is not JSON (or not UTF-8) raises InputError naming ``file:line``, or, with
    ``on_error``, is reported as ``on_error("file:line", reason)`` and skipped.
    """
    for n, line in iter_lines(path, on_error):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            _bad_line(path, n, f"not valid JSON ({exc.msg} at column {exc.colno})", on_error)
            continue
        yield n, value


def tensor_digest(tensors: Dict[str, Any]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of CPU tensors, in name order."""
    import torch

    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k]
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str, error: type = InputError, missing: Optional[str] = None) -> Any:
    """The JSON value in ``path``; ``error`` (an :class:`~lsb_mm.errors.InputError` subclass) says
    that the file is missing (``missing``: the message) or not valid UTF-8 JSON."""
    if not os.path.isfile(path):
        raise error(missing or f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from exc


def checksums(folder: str, names: Iterable[str]) -> Dict[str, str]:
    """``{name: SHA-256}`` of the files ``names`` under ``folder``."""
    return {name: file_sha256(os.path.join(folder, name)) for name in names}


def write_manifest(path: str, fmt: str, version: int, fields: Dict[str, Any], files: Iterable[str] = ()) -> Dict[str, Any]:
    """Write ``{"format", "format_version", **fields, "sha256": {file: checksum}}`` to ``path``, the
    checksums of ``files`` beside it (call it last, inside the folder's :class:`atomic_folder`)."""
    manifest = {"format": fmt, "format_version": version, **fields,
                "sha256": checksums(os.path.dirname(path), files)}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def read_manifest(path: str, fmt: str, versions: Tuple[int, int], error: type = InputError,
                  missing: Optional[str] = None) -> Dict[str, Any]:
    """The manifest at ``path``: a JSON object of format ``fmt`` and an integer ``format_version``
    within ``versions`` (lowest, highest), else ``error`` naming the file and what it holds."""
    man = read_json(path, error, missing)
    got = (man.get("format"), man.get("format_version")) if isinstance(man, dict) else (None, None)
    if got[0] != fmt or not isinstance(got[1], int) or isinstance(got[1], bool) or not versions[0] <= got[1] <= versions[1]:
        span = f"{versions[0]}" if versions[0] == versions[1] else f"{versions[0]}..{versions[1]}"
        raise error(f"{path}: format {got[0]!r} version {got[1]!r} is not supported by lsb-mm {__version__} "
                    f"(expected {fmt!r} version {span})")
    return man


def verify_checksums(folder: str, sums: Any, names: Iterable[str], source: str, error: type = InputError,
                     hint: str = "") -> None:
    """Every file of ``names`` under ``folder`` exists and has the SHA-256 that ``sums`` (a manifest's
    ``{name: checksum}``, read from ``source``) records, else ``error`` naming the file."""
    names = list(names)
    if not isinstance(sums, dict) or any(not isinstance(sums.get(n), str) for n in names):
        raise error(f"{source}: field 'sha256' must give the checksum of each of {names}")
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise error(f"{path} is missing")
        if file_sha256(path) != sums[name]:
            raise error(f"{path}: checksum does not match {os.path.basename(source)} (file changed or corrupt){hint}")
