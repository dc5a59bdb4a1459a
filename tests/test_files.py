"""lsb_mm.files: atomic writes that never follow a planted symlink, JSONL errors that name file:line."""
import os

import numpy as np
import pytest

from lsb_mm.errors import InputError
from lsb_mm.files import atomic_write, iter_jsonl, write_text


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "out.json"
    write_text(str(path), "old")
    with pytest.raises(RuntimeError):
        with atomic_write(str(path)) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]  # no temp file left
    with atomic_write(str(path), "wb") as f:
        np.save(f, np.arange(3))
    assert np.load(path).tolist() == [0, 1, 2]
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(str(path), "a"):
            pass


def test_planted_symlinks_at_predictable_names_are_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out.npy"
    for name in ("out.npy.tmp", "out.npy.tmp.npy", ".out.npy.tmp", "out.tmp.npy"):
        os.symlink(victim, tmp_path / name)
    with atomic_write(str(out), "wb") as f:
        np.save(f, np.ones(2))
    assert victim.read_text() == "precious" and np.load(out).tolist() == [1.0, 1.0]


def test_cli_encode_does_not_write_through_a_symlink(tmp_path):
    from helpers import cli

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\n")
    out = tmp_path / "e.npy"
    os.symlink(victim, str(out) + ".tmp.npy")
    os.symlink(victim, tmp_path / "e.rows.jsonl.tmp")
    cli("encode", "--model", "open_clip:lsb-tiny-test", "--texts", str(texts), "--output", str(out), "-q")
    assert victim.read_text() == "precious" and np.load(out).shape[0] == 2


def test_iter_jsonl_names_the_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{"b": \n' + b'"\xff\xfe"\n')
    with pytest.raises(InputError, match=r"x.jsonl:3: not valid JSON"):
        list(iter_jsonl(str(p)))
    seen = []
    rows = list(iter_jsonl(str(p), on_error=lambda where, why: seen.append((where.rsplit(":", 1)[1], why))))
    assert rows == [(1, {"a": 1})] and [w for w, _ in seen] == ["3", "4"] and "not UTF-8" in seen[1][1]
