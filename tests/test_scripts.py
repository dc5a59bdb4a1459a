"""Shortened runs of the scripts in scripts/, so they cannot rot."""
import importlib.util
import json
import os

import pytest

from conftest import need

SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "scripts")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def manpages_present():
    from lsb_mm.datasets import manpage_files
    from lsb_mm.errors import InputError

    try:
        need(len(manpage_files()) > 50, "Debian manpages not installed")
    except InputError as exc:
        need(False, str(exc))


def test_bench_search_small(tmp_path):
    assert load("bench_search").main(["--n", "5000", "--dim", "32", "--queries", "20", "--loop-n", "500",
                                      "--loop-queries", "2", "--out", str(tmp_path)]) == 0
    res = json.load(open(tmp_path / "search.json"))
    assert res["full"]["same_ids_as_raw"] > 0.99 and res["loop"]["same_ids"] == 1.0
    assert "| lsb_mm.Index (Flat) |" in (tmp_path / "search.md").read_text()


def test_bench_encode_and_train_small(tmp_path, manpages_present):
    assert load("bench_encode").main(["--skip-minilm", "--texts", "32", "--images", "16", "--repeats", "1",
                                      "--out", str(tmp_path)]) == 0
    rows = json.load(open(tmp_path / "encode.json"))["results"]
    assert {r["head"] for r in rows} == {"none", "slr", "llr", "clr"} and all(r["per_second"] > 0 for r in rows)
    assert load("bench_train").main(["--skip-minilm", "--skip-ddp", "--steps", "1", "--rounds", "1",
                                     "--out", str(tmp_path)]) == 0
    heads = json.load(open(tmp_path / "train.json"))["heads"]
    assert len(heads) == 4 and all(r["samples_per_s"] > 0 for r in heads)


def test_quickstart_small(manpages_present, minilm_path, capsys):
    assert load("quickstart").main(["--pages", "30"]) == 0
    out = capsys.readouterr().out
    assert "Recall@1" in out and "bit-exact: True" in out
