"""Hugging Face hub names, resolved as transformers, sentence-transformers, open_clip and timm resolve them.

Online, files download into the standard cache (``HF_HOME`` / ``HF_HUB_CACHE``) with the hub's own
progress bars; offline (``HF_HUB_OFFLINE=1``, or no network) the cache serves them. A model that is
neither in the cache nor reachable raises one :class:`~lsb_mm.errors.ModelLoadError` naming the
id, the cache folder and how to fetch it.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

from lsb_mm.errors import ModelLoadError
from lsb_mm.names import is_repo_id

__all__ = ["is_repo_id", "split_revision", "resolve", "snapshot", "cache_folder", "hub_miss", "raise_hub_miss"]

# what a model needs from a repository: configs, tokenizer files and weights in safetensors; other formats
# (ONNX, OpenVINO, TF, Flax, Rust) stay on the hub. pytorch_model.bin only where no safetensors exist.
_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.safetensors")


def split_revision(ident: str) -> Tuple[str, Optional[str]]:
    """``org/name@rev`` -> ``("org/name", "rev")``; no ``@`` -> ``(ident, None)``."""
    repo, sep, rev = ident.partition("@")
    if sep and not rev:
        raise ModelLoadError(f"{ident!r}: nothing after '@' (expected <org>/<name>@<revision>)")
    return repo, (rev or None)


def cache_folder() -> str:
    """The hub cache this process reads and writes (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return constants.HF_HUB_CACHE


def _offline() -> bool:
    """Whether the hub itself is in offline mode (what decided that nothing was fetched)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_miss(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says a hub file is neither cached nor reachable."""
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError
    except ImportError:  # older huggingface_hub
        from huggingface_hub.utils import LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError
    kinds = (LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError)
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kinds):
            return True
        text = str(exc)
        if "offline mode" in text.lower() or "couldn't connect to" in text.lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def raise_hub_miss(name: str, repo: str, exc: BaseException | None = None) -> None:
    """Raise the one-line error of a model neither in the cache nor reachable."""
    where = cache_folder()
    cli = _download_command()
    why = "the hub is offline (HF_HUB_OFFLINE=1)" if _offline() else "the hub cannot be reached or has no such model"
    raise ModelLoadError(f"{name}: {repo!r} is not in the Hugging Face cache ({where}) and {why}; fetch it where "
                         f"the hub is reachable with `{cli} {repo}` (into that cache), "
                         "or give a local folder") from exc


def resolve(name: str, ident: str) -> str:
    """A local folder for ``ident``: the folder itself when it exists, else the hub snapshot of
    ``org/name[@revision]``; ``name`` is the full model name, for messages."""
    if os.path.isdir(ident):
        return ident
    if not is_repo_id(ident):
        raise ModelLoadError(f"{name}: {ident!r} is neither a folder nor a Hugging Face model id (<org>/<name>[@revision])")
    repo, revision = split_revision(ident)
    return snapshot(name, repo, revision)


def _download_command() -> str:
    """The hub's download command: ``hf download`` since huggingface_hub 0.34, ``huggingface-cli download`` before."""
    import huggingface_hub

    try:
        major, minor = (int(x) for x in huggingface_hub.__version__.split(".")[:2])
    except ValueError:
        return "hf download"
    return "hf download" if (major, minor) >= (0, 34) else "huggingface-cli download"


def snapshot(name: str, repo: str, revision: Optional[str] = None,
             patterns: Sequence[str] = _PATTERNS) -> str:
    """The local snapshot folder of hub model ``repo`` (downloaded on first use, from the cache after).

    Only configs, tokenizer files and safetensors weights are fetched; a repository with no
    safetensors gets its ``pytorch_model.bin`` files (read later with ``weights_only=True``).
    """
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo, revision=revision, allow_patterns=list(patterns))
        if not any(f.endswith(".safetensors") for _, _, files in os.walk(folder) for f in files):
            folder = snapshot_download(repo, revision=revision, allow_patterns=[*patterns, "*.bin"])
    except Exception as exc:  # noqa: BLE001 -- the hub's errors are many; the miss is one line, the rest says what
        if hub_miss(exc):
            raise_hub_miss(name, repo + (f"@{revision}" if revision else ""), exc)
        raise ModelLoadError(f"{name}: cannot fetch {repo!r} from the Hugging Face hub: {exc}") from exc
    return folder
