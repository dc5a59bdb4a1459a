"""``factory="auto"`` (lsb_mm.retrieval.autoindex): the ladder from Flat to IVF-PQ by size and memory budget,
memory estimates against what FAISS actually holds, and search tuning to a target recall."""
import numpy as np
import pytest

from lsb_mm.retrieval.autoindex import choose_factory, estimate_memory, exact_neighbours, parse_memory, recall_at, tune_search
from lsb_mm.errors import InputError


def clustered(n, d, seed=0, centres=64):
    rs = np.random.default_rng(seed)
    c = rs.normal(size=(centres, d)).astype("float32")
    x = c[rs.integers(0, centres, n)] + 0.35 * rs.normal(size=(n, d)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("text, expected", [("512M", 512 << 20), ("4G", 4 << 30), ("1.5T", int(1.5 * (1 << 40))),
                                            ("100kb", 100 << 10), (2048, 2048), ("64", 64)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["", "-1G", "0", "four gigs", "1.2.3G", None, True, 0, -5])
def test_parse_memory_refuses(bad):
    with pytest.raises(InputError, match="expected a positive size"):
        parse_memory(bad)


def test_the_ladder():
    assert choose_factory(10_000, 384).factory == "Flat"
    assert choose_factory(1_000_000, 384).factory == "HNSW32"  # no budget: the graph
    assert choose_factory(1_000_000, 384, 3 << 30).factory.startswith("HNSW")
    ivf = choose_factory(1_000_000, 384, 1600 << 20)  # the graph does not fit, the raw vectors do
    assert ivf.factory == "IVF4096,Flat" and ivf.memory <= 1600 << 20
    sq8 = choose_factory(1_000_000, 384, 500 << 20)
    assert sq8.factory == "IVF4096,SQ8" and sq8.memory <= 500 << 20
    pq = choose_factory(1_000_000, 384, 200 << 20)
    assert pq.factory == "IVF4096,PQ192x4fsr" and pq.memory <= 200 << 20
    small = choose_factory(1_000_000, 384, 30 << 20)
    assert "PQ" in small.factory and small.memory <= 30 << 20
    assert choose_factory(20_000_000, 128).factory.startswith("IVF")  # past HNSW_MAX even without a budget
    with pytest.raises(InputError, match="raise --max-index-memory or shard"):
        choose_factory(10 ** 9, 768, 1 << 30)
    with pytest.raises(InputError):
        choose_factory(0, 384)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF64,Flat", "IVF64,PQ8np", "IVF64,SQ8", "PQ8np", "IVF64,PQ16x4fsr",
                                     "OPQ4,IVF64,PQ4np"])
def test_memory_estimates_match_faiss(factory):
    import faiss

    x = clustered(6000, 32)
    index = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(x)
    index.add(x)
    held = faiss.serialize_index(index).nbytes
    est = estimate_memory(factory, len(x), 32)
    assert 0.6 * held <= est <= 1.6 * held, (factory, est, held)


def test_exact_neighbours_and_recall():
    x = clustered(3000, 16, seed=1)
    q = x[:50]
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    got = exact_neighbours(x, q, 10, batch=700)  # several batches
    assert recall_at(got, truth) == 1.0
    assert recall_at(got[:, :5], truth[:, :5]) == 1.0 and recall_at(np.zeros_like(truth), truth) < 0.2


@pytest.mark.parametrize("factory, param", [("IVF64,Flat", "nprobe"), ("HNSW8", "efSearch")])
def test_tune_search_reaches_the_target_with_the_smallest_value(factory, param):
    import faiss

    x = clustered(8000, 24, seed=2)
    index = faiss.index_factory(24, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    q = clustered(200, 24, seed=3)
    truth = exact_neighbours(x, q, 10)
    out = tune_search(index, q, truth, 0.9)
    assert out["param"] == param and out["met"] and out["recall"] >= 0.9
    assert all(t["recall"] < 0.9 for t in out["tried"][:-1])  # the first value that met it
    if param == "nprobe":
        assert faiss.extract_index_ivf(index).nprobe == out["value"]
    with pytest.raises(InputError, match="target recall"):
        tune_search(index, q, truth, 1.5)


def test_index_build_auto_records_and_keeps_its_choice(tmp_path):
    from lsb_mm import Index

    x = clustered(12000, 32, seed=4)
    ix = Index.build(x, factory="auto", max_memory="1M", target_recall=0.9, tune_queries=200)
    assert ix.factory == "IVF256,SQ8" and ix.build_info["auto"]["memory"] <= 1 << 20
    assert ix.build_info["tuning"]["met"] and ix.build_info["tuning"]["queries"] == 200
    ix.save(str(tmp_path / "auto.index"))
    back = Index.load(str(tmp_path / "auto.index"))
    assert back.factory == ix.factory and back.build_info == ix.build_info
    assert back.nprobe == ix.build_info["tuning"]["value"]  # the tuned nprobe is saved with the index
    flat = Index.build(x[:500], factory="auto")
    assert flat.factory == "Flat" and flat.build_info["tuning"]["recall"] == 1.0


def test_a_target_the_codes_cannot_reach_is_reported(caplog):
    from lsb_mm import Index

    x = clustered(12000, 32, seed=4)
    ix = Index.build(x, factory="auto", max_memory="400K", target_recall=0.99, tune_queries=100)
    t = ix.build_info["tuning"]
    assert ix.factory.endswith("x4fsr") and not t["met"] and t["recall"] < 0.99
    best = max(r["recall"] for r in t["tried"])
    assert t["recall"] >= best - 0.005 and t["value"] == min(r["nprobe"] for r in t["tried"] if r["recall"] >= best - 0.005)
    assert "short of the target 0.990" in caplog.text


def test_cli_index_factory_auto(tmp_path, capsys):
    import json

    import lsb_mm
    import helpers
    from lsb_mm.cli import main

    lsb_mm.create_model("open_clip:lsb-tiny-test", head="none").save_pretrained(str(tmp_path / "m"))
    helpers.write_jsonl(tmp_path / "c.jsonl", [{"_id": f"d{i}", "text": f"document {i} on topic {i % 9}"} for i in range(300)])
    base = ["index", "--model", str(tmp_path / "m"), "--corpus", str(tmp_path / "c.jsonl"), "--output", str(tmp_path / "ix"), "-q"]
    assert main(base + ["--factory", "auto", "--target-recall", "0.9"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["factory"] == "Flat" and out["build"]["auto"]["factory"] == "Flat" and out["build"]["tuning"]["met"]
    for extra, message in ((["--factory", "auto", "--max-index-memory", "lots"], "expected a positive size"),
                           (["--max-index-memory", "1G"], "applies to --factory auto"),
                           (["--factory", "auto", "--target-recall", "1.5"], "--target-recall must be in (0, 1]"),
                           (["--factory", "auto", "--max-index-memory", "1K"], "raise --max-index-memory")):
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, message", [({"tune_queries": 0}, "tune_queries"), ({"target_recall": 0.0}, "target recall"),
                                             ({"max_memory": "-3G"}, "expected a positive size")])
def test_index_build_refuses_bad_tuning_settings(kwargs, message):
    from lsb_mm import Index
    from lsb_mm.errors import InputError as Bad

    opts = {"factory": "auto", **kwargs}
    if "target_recall" not in kwargs:
        opts["target_recall"] = 0.9
    with pytest.raises(Bad, match=message):
        Index.build(clustered(300, 8), **opts)


def test_auto_beside_the_recorded_autofaiss_choices():
    """scripts/autofaiss_choices.py recorded autofaiss's pick for a grid of sizes, dimensions and budgets
    (autofaiss needs numpy < 2, so it ran in its own venv); lsb-mm's picks must still be the recorded ones,
    fit their budget, and exist exactly where autofaiss finds an index."""
    import json
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "bench_results", "autofaiss_choices.json")
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)["rows"]
    assert len(rows) == 40
    for r in rows:
        try:
            ours = choose_factory(r["n"], r["dim"], parse_memory(r["budget"]))
        except InputError:
            ours = None
        assert (ours.factory if ours else None) == r["lsb_mm"], r
        assert (ours is None) == (r["autofaiss"] is None), r  # an index fits for both, or for neither
        if ours is not None:
            assert ours.memory <= r["budget_bytes"]
            # within the budget, lsb-mm spends at least 35% of what autofaiss's pick holds (no needlessly short code)
            assert ours.memory >= 0.35 * min(r["autofaiss_bytes"], r["budget_bytes"]), r
