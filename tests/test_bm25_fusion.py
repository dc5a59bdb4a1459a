"""BM25 and hybrid fusion: the retriever, its folder, the fusions, and evaluate(..., fusion=...)."""
import json
import os
import re

import numpy as np
import pytest

from lsb_mm.errors import InputError
from lsb_mm.retrieval.bm25 import BM25
from lsb_mm.retrieval.fusion import FUSION_WEIGHTS, rrf, weighted_fusion

DOCS = ["the cat sat on the mat", "a dog ran far away", "cats and dogs play together", "mat cleaning tips"]
IDS = ["a", "b", "c", "d"]


def test_bm25_ranks_shared_terms_and_pads_with_none():
    bm = BM25.build(DOCS, IDS)
    scores, ids = bm.search(["cat mat", "the of and", "dog", "zebra"], k=6)
    assert scores.shape == (4, 4) and scores.dtype == np.float32  # k capped at the corpus size
    assert ids[0][:2] == ["a", "d"] and ids[0][2:] == [None] * 2  # only documents sharing a term
    assert ids[1] == [None] * 4 and ids[3] == [None] * 4  # stop words only; no known term
    assert ids[2][0] == "b" and np.all(scores[0, :2] > 0) and np.all(scores[0, 2:] == 0)
    assert np.all(np.diff(scores[0, :2]) <= 0)
    assert bm.search([], k=3)[0].shape == (0, 3) and len(bm) == 4
    assert bm.search(["cat"], k=10 ** 12)[0].shape == (1, 4)  # an absurd k allocates nothing


@pytest.mark.parametrize("texts, ids, match", [
    ([], None, "no documents"), (DOCS, IDS[:2], "2 ids for 4 documents"), (DOCS, ["a", "a", "b", "c"], "unique"),
    (["ok", 3], None, "document '1' is a int"),
])
def test_bm25_refuses_bad_corpora(texts, ids, match):
    with pytest.raises(InputError, match=match):
        BM25.build(texts, ids)


def test_bm25s_debug_lines_do_not_reach_a_root_handler():
    """bm25s sets its own logger to DEBUG; a root handler of any level (a CLI's stderr) must not
    then print a debug line per index or search."""
    import logging

    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logging.getLogger().addHandler(handler)
    try:
        BM25.build(DOCS, IDS).search(["cat"], k=2)
    finally:
        logging.getLogger().removeHandler(handler)
    assert [r for r in seen if r.name.startswith("bm25s") and r.levelno < logging.WARNING] == []


@pytest.mark.parametrize("k", [0, -1, True, 2.5, "3", None])
def test_bm25_k_must_be_a_positive_integer(k):
    with pytest.raises(InputError, match=f"k must be a positive integer, got {re.escape(repr(k))}"):
        BM25.build(DOCS).search(["cat"], k=k)
    assert BM25.build(DOCS).search(["cat"], k=np.int64(2))[0].shape == (1, 2)


def test_bm25_folder_round_trip_and_verification(tmp_path):
    bm = BM25.build(DOCS, IDS, k1=1.2, b=0.6)
    bm.save(str(tmp_path / "bm"))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary folder left
    back = BM25.load(str(tmp_path / "bm"))
    for q in (["cat mat"], ["dogs play"]):
        s0, i0 = bm.search(q, k=4)
        s1, i1 = back.search(q, k=4)
        assert i0 == i1 and np.allclose(s0, s1)
    assert (back.k1, back.b, back.ids) == (1.2, 0.6, IDS)
    with open(tmp_path / "bm" / "vocab.index.json", "a", encoding="utf-8") as f:
        f.write(" ")
    with pytest.raises(InputError, match="checksum does not match"):
        BM25.load(str(tmp_path / "bm"))
    os.remove(tmp_path / "bm" / "manifest.json")
    with pytest.raises(InputError, match="manifest.json is missing"):
        BM25.load(str(tmp_path / "bm"))
    (tmp_path / "bm" / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="format .* is not supported by lsb-mm .*lsb-mm-bm25"):
        BM25.load(str(tmp_path / "bm"))
    (tmp_path / "bm" / "manifest.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        BM25.load(str(tmp_path / "bm"))


def test_rrf_by_hand():
    # doc x: 1/61 + 1/62; y: 1/62 + 1/61; z: 1/63; w: 1/63 -> x, y tie (x first seen), then z, w
    scores, ids = rrf([[["x", "y", "z"]], [["y", "x", "w", None]]], k=3)
    assert ids == [["x", "y", "z"]] and scores[0] == pytest.approx([1 / 61 + 1 / 62, 1 / 62 + 1 / 61, 1 / 63])
    assert rrf([[["a", None]], [[None, None]]], k=5) == ([[1 / 61]], [["a"]])


def test_weighted_fusion_ends_and_middle():
    dense = (np.array([[0.9, 0.5, 0.1]]), [["a", "b", "c"]])
    lexical = (np.array([[7.0, 3.0, 0.0]]), [["c", "d", None]])
    assert weighted_fusion(dense, lexical, 1.0, 3) == ([[1.0, 0.5, 0.0]], [["a", "b", "c"]])
    # normalised: dense a 1, b .5, c 0; lexical c 1, d 0. w = 0: c first, the zeros by id
    assert weighted_fusion(dense, lexical, 0.0, 2)[1] == [["c", "a"]]
    # w = 0.5: a .5, b .25, c .5, d 0 -> a and c tie (by id), then b
    assert weighted_fusion(dense, lexical, 0.5, 3) == ([[0.5, 0.5, 0.25]], [["a", "c", "b"]])
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        weighted_fusion(dense, lexical, 1.5, 3)
    assert FUSION_WEIGHTS[0] == 0.0 and FUSION_WEIGHTS[-1] == 1.0 and len(FUSION_WEIGHTS) == 11


@pytest.fixture
def text_task(tmp_path):
    from lsb_mm.data.tasks import text_tasks

    words = ["socket", "pipe", "signal", "thread", "memory", "file", "clock", "mutex", "device", "timer"]
    pairs = [(f"{w} call", f"the {w} interface: " + " ".join(f"{w}{j}" for j in range(12))) for w in words]
    return text_tasks(pairs, str(tmp_path / "tasks"), kinds=["query", "keyword"], seed=0)


def test_evaluate_bm25_and_hybrid(text_task, tiny_hf_dir):
    import lsb_mm
    from lsb_mm.data.tasks import read_task
    from lsb_mm.evaluation.evaluate import choose_fusion_weight
    from lsb_mm.evaluation.metrics import evaluate_run

    bm = lsb_mm.evaluate("bm25", text_task)
    assert bm["model"] == "BM25" and set(bm["tasks"]) == {"query", "keyword"}
    task = read_task(text_task[1])  # keyword: BM25 run by hand equals evaluate's
    _, ids = BM25.build([d["text"] for d in task.corpus], [d["_id"] for d in task.corpus]).search(
        [q["text"] for q in task.queries], k=10)
    hand = evaluate_run({q["_id"]: [i for i in row if i] for q, row in zip(task.queries, ids)}, task.qrels, (1, 3, 5, 10))
    assert bm["tasks"]["keyword"]["metrics"] == hand["metrics"]
    model = lsb_mm.create_model(f"hf:{tiny_hf_dir}", head="none")
    model.name = "tiny"
    fused = lsb_mm.evaluate(model, text_task, fusion="rrf")
    assert fused["model"] == "tiny + BM25 (RRF)" and fused["hybrid"] == "rrf"
    only_dense = lsb_mm.evaluate(model, text_task, fusion=1.0)["tasks"]
    dense = lsb_mm.evaluate(model, text_task)["tasks"]
    assert all(only_dense[t]["metrics"]["ndcg@10"] == pytest.approx(dense[t]["metrics"]["ndcg@10"]) for t in dense)
    chosen = choose_fusion_weight(model, text_task)
    assert chosen["weight"] in FUSION_WEIGHTS and set(chosen["scores"]) == set(FUSION_WEIGHTS)
    assert chosen["scores"][chosen["weight"]] == max(chosen["scores"].values())


def test_evaluate_refuses_what_bm25_cannot_do(text_task, tiny_hf_dir, tmp_path, rgb_images):
    import lsb_mm
    from lsb_mm.data.tasks import write_task

    with pytest.raises(InputError, match="must be 'bm25'"):
        lsb_mm.evaluate("tfidf", text_task)
    with pytest.raises(InputError, match="with BM25 alone"):
        lsb_mm.evaluate("bm25", text_task, fusion="rrf")
    model = lsb_mm.create_model(f"hf:{tiny_hf_dir}", head="none")
    with pytest.raises(InputError, match="fusion must be 'rrf' or a dense weight"):
        lsb_mm.evaluate(model, text_task, fusion="max")
    folder = write_task(str(tmp_path / "img"), "img", [{"_id": "q", "text": "a cat"}],
                        [{"_id": "d", "image": "x.png"}], [("q", "d", 1)])
    with pytest.raises(InputError, match="BM25 needs text queries and documents"):
        lsb_mm.evaluate("bm25", folder)


def test_eval_cli_bm25_hybrid_labels_and_saved_folders(text_task, tiny_hf_dir, tmp_path, capsys):
    import lsb_mm
    from lsb_mm.cli import main

    saved = tmp_path / "run" / "final"
    lsb_mm.create_model(f"hf:{tiny_hf_dir}", head="slr").save_pretrained(str(saved))
    tasks = os.path.dirname(text_task[0])
    out = tmp_path / "res"
    argv = ["eval", "--model", "bm25", "--model", f"hf:{tiny_hf_dir}", "--model", f"hybrid:hf:{tiny_hf_dir}",
            "--model", str(saved), "--pooling", "mean", "--tasks", tasks, "--output", str(out), "-q"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"--pooling not applied to {saved}" in err  # the shared option, skipped for the saved folder with a note
    runs = json.load(open(out / "results.json"))
    assert list(runs) == ["BM25", f"hf:{tiny_hf_dir}", f"hf:{tiny_hf_dir} + BM25", "run/final"]
    assert runs[f"hf:{tiny_hf_dir} + BM25"]["hybrid"] == "rrf"
    assert runs["BM25"]["tasks"]["keyword"]["metrics"] == lsb_mm.evaluate("bm25", text_task)["tasks"]["keyword"]["metrics"]
    assert "| BM25 |" in (out / "results.md").read_text()
    # weighted fusion: W chosen on validation folders, recorded; labels given by the user
    assert main(["eval", "--model", f"hybrid:hf:{tiny_hf_dir}", "--model", "bm25", "--label", "fused", "--label", "lexical",
                 "--fusion", "weighted", "--fusion-val", tasks, "--tasks", tasks, "--output", str(out), "-q"]) == 2
    assert "holds results.json, results.md, recall.png of an earlier eval: pass --overwrite" in capsys.readouterr().err
    assert main(["eval", "--model", f"hybrid:hf:{tiny_hf_dir}", "--model", "bm25", "--label", "fused", "--label", "lexical",
                 "--fusion", "weighted", "--fusion-val", tasks, "--tasks", tasks, "--output", str(out), "-q",
                 "--overwrite"]) == 0
    runs = json.load(open(out / "results.json"))
    assert list(runs) == ["fused", "lexical"] and runs["fused"]["fusion_validation"]["weight"] == runs["fused"]["hybrid"]
    assert "chosen on --fusion-val" in capsys.readouterr().err


def test_quiet_silences_the_hub_bars_and_restores_them(text_task, tiny_hf_dir, tmp_path, capsys):
    """``-q`` means no progress bar, transformers' "Loading weights" included; a later command
    without ``-q`` in the same process shows it again."""
    from lsb_mm.cli import main

    argv = ["eval", "--model", f"hf:{tiny_hf_dir}", "--head", "none", "--tasks", text_task[0], "--output", str(tmp_path),
            "--overwrite"]
    assert main(argv + ["-q"]) == 0
    assert "Loading weights" not in capsys.readouterr().err
    assert main(argv) == 0
    assert "Loading weights" in capsys.readouterr().err


@pytest.mark.parametrize("extra, match", [
    (["--fusion", "weighted"], "needs exactly one of --fusion-weight"),
    (["--fusion", "weighted", "--fusion-weight", "0.5", "--fusion-val", "x"], "needs exactly one of --fusion-weight"),
    (["--fusion", "weighted", "--fusion-weight", "1.5"], r"--fusion-weight must be in \[0, 1\]"),
    (["--label", "a", "--label", "b"], "2 labels for 1 --model"),
    (["--fusion-weight", "0.5"], "add --fusion weighted"),
])
def test_eval_cli_refuses_bad_fusion_and_labels(text_task, tiny_hf_dir, tmp_path, capsys, extra, match):
    from lsb_mm.cli import main

    argv = ["eval", "--model", f"hybrid:hf:{tiny_hf_dir}", "--tasks", os.path.dirname(text_task[0]), "--output",
            str(tmp_path / "o"), "-q", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(match, err), err


def test_index_with_a_bm25_side_saves_loads_and_fuses(tmp_path):
    from lsb_mm.retrieval.index import Index, SearchIndexError

    rs = np.random.default_rng(0)
    x = rs.standard_normal((4, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = Index.build(x, ids=IDS)
    with pytest.raises(SearchIndexError, match="no BM25 side"):
        index.search_hybrid(x[:1], ["cat"], k=2)
    with pytest.raises(SearchIndexError, match="3 texts"):
        index.add_bm25(DOCS[:3])
    index.add_bm25(DOCS)
    scores, ids = index.search_hybrid(x[1:2], ["cat mat"], k=3)
    dense = [list(index.search(x[1:2], 4)[1][0])]  # b first (its own vector)
    assert (scores, ids) == rrf([dense, index.bm25.search(["cat mat"], 4)[1]], 3)
    assert "b" in ids[0] and ("a" in ids[0] or "d" in ids[0])  # both sides contribute
    assert index.search_hybrid(x[1:2], ["cat mat"], k=2, fusion=1.0)[1] == [["b", index.search(x[1:2], 2)[1][0][1]]]
    assert index.search_hybrid(x[1:2], ["cat mat"], k=1, fusion=0.0)[1] == [["a"]]  # BM25's best
    with pytest.raises(SearchIndexError, match="cannot grow"):
        index.add(x[:1], ids=["e"])
    index.save(str(tmp_path / "ix"))
    back = Index.load(str(tmp_path / "ix"))
    assert back.bm25 is not None and back.search_hybrid(x[1:2], ["cat mat"], k=3) == (scores, ids)
    with open(tmp_path / "ix" / "bm25" / "manifest.json", "a", encoding="utf-8") as f:
        f.write(" ")  # the index's manifest keeps the BM25 manifest's checksum
    with pytest.raises(SearchIndexError, match="checksum does not match"):
        Index.load(str(tmp_path / "ix"))
    plain = Index.build(x, ids=IDS)
    plain.save(str(tmp_path / "plain"))
    assert Index.load(str(tmp_path / "plain")).bm25 is None
    both = Index.load([str(tmp_path / "plain")])  # one folder given as a list: still one index
    assert both.bm25 is None


def test_index_and_search_cli_with_bm25(tiny_hf_dir, tmp_path, capsys):
    from lsb_mm.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in zip(IDS, DOCS)))
    model = f"hf:{tiny_hf_dir}"
    assert main(["index", "--model", model, "--head", "none", "--corpus", str(corpus), "--bm25", "--output",
                 str(tmp_path / "ix"), "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["bm25"] is True
    search = ["search", "--model", model, "--head", "none", "--index", str(tmp_path / "ix"), "--text", "cat mat",
              "-k", "3", "--json"]
    assert main(search + ["--hybrid", "0"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["id"] == "a" and hits[0]["text"] == DOCS[0]  # BM25's best, with its metadata
    assert main(search + ["--hybrid", "rrf"]) == 0
    fused = json.loads(capsys.readouterr().out)["hits"]
    assert len(fused) == 3 and fused[0]["score"] >= fused[-1]["score"]
    assert main(["index", "--model", model, "--head", "none", "--corpus", str(corpus), "--output",
                 str(tmp_path / "plain"), "-q"]) == 0
    capsys.readouterr()
    bad = [(["--index", str(tmp_path / "plain"), "--text", "cat", "--hybrid", "rrf"], "no BM25 side"),
           (["--index", str(tmp_path / "ix"), "--image", "x.png", "--hybrid", "rrf"], "give --text")]
    for extra, match in bad:
        assert main(["search", "--model", model, "--head", "none", *extra]) == 2
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        main(search + ["--hybrid", "2"])
    assert exc.value.code == 2 and "dense weight must be in [0, 1]" in capsys.readouterr().err
