"""Shared test helpers (no test module imports another): running the CLI, loading a script of
``scripts/`` as a module, a Hugging Face hub cache laid out as a download leaves it, small
structured training sets where retrieval can be learned in a few CPU steps, and writers of the
source formats (PNG bytes, WebDataset tars, Parquet in row groups).

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
import json
import subprocess
import sys
import tarfile
from typing import Dict, Union

import numpy as np
from PIL import Image

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


WORDS = ("apple river stone cloud tiger piano lemon forest candle rocket violet marble desert anchor "
         "falcon copper meadow harbor lantern glacier orchid saddle thunder walnut beacon canyon ember "
         "fossil garnet hollow island jasmine kettle lagoon mosaic nectar oyster pepper quartz raven").split()


def passage_queries(n_passages, per_passage=4, dev=60, negatives=0, seed=0):
    """Train / held-out records over one corpus of 8-word passages; each query is 2 of its words.

    Held-out queries are word pairs never used in training, over the first ``dev`` passages.
    """
    import itertools

    rs = np.random.RandomState(seed)
    passages = [" ".join(rs.choice(WORDS, 8, replace=False)) for _ in range(n_passages)]
    train, held_out = [], []
    for i, p in enumerate(passages):
        pairs = list(itertools.combinations(p.split(), 2))
        rs.shuffle(pairs)
        for a, b in pairs[:per_passage]:
            rec = {"query": f"{a} {b}", "pos": [p]}
            if negatives:
                rec["neg"] = [passages[(i + j + 1) % n_passages] for j in range(negatives)]
            train.append(rec)
        if i < dev:
            a, b = pairs[per_passage]
            held_out.append({"query": f"{a} {b}", "pos": [p]})
    return train, held_out


COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40),
          "purple": (140, 40, 170), "orange": (240, 140, 20)}
SHAPES = ("square", "stripes", "dot")


def draw(color, shape, rs, size=32, noise=False):
    """A coloured pattern on a grey background (noisy, with jittered colour, when ``noise``)."""
    arr = rs.randint(90, 160, (size, size, 3)).astype(np.uint8)
    c = np.array(COLORS[color], dtype=np.int64)
    if noise:
        arr = rs.randint(0, 256, (size, size, 3)).astype(np.uint8)
        c = c + rs.randint(-40, 41, 3)
    c = np.clip(c, 0, 255).astype(np.uint8)
    if shape == "square":
        o = rs.randint(0, 10)
        arr[o:o + 20, o:o + 20] = c
    elif shape == "stripes":
        arr[:, ::4] = c
        arr[:, 1::4] = c
    else:
        yy, xx = np.mgrid[:size, :size]
        cy, cx = rs.randint(12, 20, 2)
        arr[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = c
    return Image.fromarray(arr)


def labelled_folder(root, per_class=6, seed=0, noise=False):
    """class_name/img.png with one class per colour+shape."""
    rs = np.random.RandomState(seed)
    for color in COLORS:
        for shape in SHAPES:
            d = os.path.join(root, f"{color}_{shape}")
            os.makedirs(d, exist_ok=True)
            for i in range(per_class):
                draw(color, shape, rs, noise=noise).save(os.path.join(d, f"{i}.png"))
    return str(root)


def caption_items(root, n, seed=0):
    """n images with captions '<colour> <shape>'; returns [(caption, path)]."""
    rs = np.random.RandomState(seed)
    os.makedirs(root, exist_ok=True)
    out = []
    names = [(c, s) for c in COLORS for s in SHAPES]
    for i in range(n):
        c, s = names[i % len(names)]
        p = os.path.join(root, f"img_{seed}_{i}.png")
        draw(c, s, rs).save(p)
        out.append((f"a {c} {s}", p))
    return out


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def png(color, size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_tar(path, samples):
    """``samples``: [(key, {ext: bytes})] in order."""
    with tarfile.open(path, "w") as tf:
        for key, parts in samples:
            for ext, data in parts.items():
                add(tf, f"{key}.{ext}", data)


def write_parquet(path, columns, row_group_size):
    """A Parquet file in row groups of ``row_group_size`` rows, or of each size of a list."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    if isinstance(row_group_size, int):
        pq.write_table(table, path, row_group_size=row_group_size)
        return
    with pq.ParquetWriter(path, table.schema) as w:
        start = 0
        for n in row_group_size:
            w.write_table(table.slice(start, n), row_group_size=n)
            start += n
    assert pq.ParquetFile(path).metadata.num_row_groups == len(row_group_size)
