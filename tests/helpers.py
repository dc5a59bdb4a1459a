"""Shared test helpers (no test module imports another): running the CLI, loading a script of
``scripts/`` as a module, and a Hugging Face hub cache laid out as a download leaves it.

Hub cache: ``fill(hf_home, "org/name", {"path/in/repo": source})`` writes each file once under
``hub/models--org--name/blobs/<sha256>``, links it from ``snapshots/<commit>/<path>`` and writes
``refs/main``: what ``huggingface_hub`` finds after ``snapshot_download`` or ``hf_hub_download``.
A source is a file path or bytes.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import subprocess
import sys
from typing import Dict, Union

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "scripts")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(*args, check=True, subprocess_run=False):
    """Run the CLI in this process (fast); ``subprocess_run`` goes through ``python -m lsb_mm``."""
    if subprocess_run:
        r = subprocess.run([sys.executable, "-m", "lsb_mm", *args], capture_output=True, text=True, env=ENV, timeout=600)
    else:
        from lsb_mm.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        r = Result(code, out.getvalue(), err.getvalue())
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def load(name):
    """``scripts/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fill(hf_home: str, repo: str, files: Dict[str, Union[str, bytes]], commit: str = COMMIT) -> str:
    """Add ``repo`` to the cache under ``hf_home``; returns its snapshot folder."""
    base = os.path.join(hf_home, "hub", "models--" + repo.replace("/", "--"))
    snap = os.path.join(base, "snapshots", commit)
    os.makedirs(os.path.join(base, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(base, "refs"), exist_ok=True)
    for rel, src in files.items():
        data = src if isinstance(src, bytes) else open(src, "rb").read()
        blob = os.path.join(base, "blobs", hashlib.sha256(data).hexdigest())
        with open(blob, "wb") as f:
            f.write(data)
        link = os.path.join(snap, rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    with open(os.path.join(base, "refs", "main"), "w") as f:
        f.write(commit)
    return snap


def fill_folder(hf_home: str, repo: str, folder: str, commit: str = COMMIT) -> str:
    """Add every file under ``folder`` (a model saved locally) as repository ``repo``."""
    files = {}
    for root, _, names in os.walk(folder):
        for n in names:
            path = os.path.join(root, n)
            files[os.path.relpath(path, folder)] = path
    return fill(hf_home, repo, files, commit)
