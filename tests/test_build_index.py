"""``lsb_mm.build_index`` is the ``lsb-mm index`` pipeline: the same index from every source kind
and engine, the source kind told from the path, a model given by name or as an object."""
import json
import os

import numpy as np
import pytest

import helpers
from helpers import png, write_parquet, write_tar
from lsb_mm.cli import main

MODEL = "open_clip:lsb-tiny-test"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """One small source of each kind (texts carry words for BM25, images a caption)."""
    root = tmp_path_factory.mktemp("sources")
    words = helpers.WORDS
    docs = [{"_id": f"d{i}", "text": f"{words[i]} {words[i + 1]} and {words[i + 2]}"} for i in range(14)]
    helpers.write_jsonl(root / "c.jsonl", docs)
    beir = root / "beir"
    beir.mkdir()
    helpers.write_jsonl(beir / "corpus.jsonl", docs[:9])
    imgs = root / "imgs"
    imgs.mkdir()
    for i in range(6):
        (imgs / f"im{i}.png").write_bytes(png((40 * i, 200 - 30 * i, 90), size=(20 + i, 18)))
        (imgs / f"im{i}.txt").write_text(f"a {words[i]} square\n")
    (root / "t.csv").write_text("filepath,caption\n" + "".join(f"imgs/im{i}.png,{words[i]} thing\n" for i in range(6)))
    pq = root / "pq"
    pq.mkdir()
    write_parquet(pq / "a.parquet", {"_id": [d["_id"] for d in docs], "text": [d["text"] for d in docs]}, 5)
    tars = root / "tars"
    tars.mkdir()
    write_tar(tars / "a.tar", [(f"s{i}", {"png": png((30 * i, 60, 200 - 20 * i)), "txt": f"{words[i]} stamp".encode()})
                               for i in range(4)])
    write_tar(tars / "b.tar", [(f"s{i}", {"png": png((200, 25 * i, 40)), "txt": f"{words[i + 5]} badge".encode()})
                               for i in range(3)])
    return {"corpus": root / "c.jsonl", "beir": beir, "images": imgs, "csv": root / "t.csv", "parquet": pq,
            "tar": str(tars / "*.tar")}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import lsb_mm

    folder = tmp_path_factory.mktemp("model") / "m"
    lsb_mm.create_model(MODEL, head="slr", seed=1).save_pretrained(str(folder))
    return str(folder)


def _same(a, b):
    """Two saved index folders hold the same documents, vectors, metadata and BM25 side."""
    import lsb_mm

    x, y = lsb_mm.Index.load(str(a)), lsb_mm.Index.load(str(b))
    assert x.ids == y.ids and x.metadata == y.metadata and x.fingerprint == y.fingerprint
    assert x.factory == y.factory and (x.bm25 is None) == (y.bm25 is None)
    q = np.random.RandomState(0).randn(3, 32).astype(np.float32)
    (s1, i1), (s2, i2) = x.search(q, k=len(x)), y.search(q, k=len(y))
    np.testing.assert_array_equal(s1, s2)
    assert [list(r) for r in i1] == [list(r) for r in i2]
    if x.bm25 is not None:
        assert x.bm25.search(["apple river"], k=3)[1] == y.bm25.search(["apple river"], k=3)[1]


CASES = [("corpus", "--corpus", "memory"), ("beir", "--corpus", "memory"), ("images", "--images", "memory"),
         ("csv", "--csv", "memory"), ("parquet", "--parquet", "memory"), ("tar", "--tar", "memory"),
         ("corpus", "--corpus", "local"), ("images", "--images", "local"), ("parquet", "--parquet", "local"),
         ("tar", "--tar", "local")]


@pytest.mark.parametrize("name,flag,engine", CASES)
def test_build_index_equals_lsb_mm_index(tmp_path, sources, saved_model, name, flag, engine, capsys):
    import lsb_mm

    src = str(sources[name])
    extra = ["--image-root", str(sources["images"].parent)] if name == "csv" else []
    code = main(["index", "--model", saved_model, flag, src, "--output", str(tmp_path / "cli"), "--bm25",
                 "--engine", engine, "--shard-size", "4", "-q", *extra])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    index = lsb_mm.build_index(saved_model, src, str(tmp_path / "py"), bm25=True, engine=engine, shard_size=4,
                               show_progress_bar=False, image_root=extra[1] if extra else None)
    assert index.build_report["count"] == report["count"] == len(index)
    _same(tmp_path / "cli", tmp_path / "py")


def test_the_source_kind_is_told_from_the_path(sources):
    from lsb_mm.errors import InputError
    from lsb_mm.retrieval.pipeline import source_of

    kinds = {name: source_of(path).kind for name, path in sources.items()}
    assert kinds == {"corpus": "corpus", "beir": "corpus", "images": "images", "csv": "csv", "parquet": "parquet",
                     "tar": "tar"}
    assert source_of(sources["parquet"] / "a.parquet").kind == "parquet"
    assert source_of(sources["images"], kind="images").kind == "images"
    with pytest.raises(InputError, match="no such file or folder"):
        source_of(str(sources["images"]) + "-missing")
    with pytest.raises(InputError, match="kind must be one of"):
        source_of(sources["images"], kind="videos")
    with pytest.raises(InputError, match=r"\.jsonl, \.csv"):
        source_of(sources["images"] / "im0.txt")


def test_a_model_object_gives_the_index_of_its_saved_folder(tmp_path, sources, saved_model):
    import lsb_mm

    model = lsb_mm.load_model(saved_model)
    a = lsb_mm.build_index(model, sources["corpus"], str(tmp_path / "a"), bm25=True, show_progress_bar=False)
    lsb_mm.build_index(saved_model, sources["corpus"], str(tmp_path / "b"), bm25=True, show_progress_bar=False)
    assert a.fingerprint == model.fingerprint()
    _same(tmp_path / "a", tmp_path / "b")
    # unsaved, the index is still searchable, and in FAISS's (scores, ids) order
    c = lsb_mm.build_index(model, sources["corpus"], show_progress_bar=False)
    scores, ids = c.search(model.encode_query(["apple river"]), k=3, fingerprint=model.fingerprint())
    assert scores.shape == (1, 3) and isinstance(ids[0][0], str) and c.build_report["index"] is None


def test_build_index_refuses_bad_arguments_before_encoding(tmp_path, sources, saved_model):
    import lsb_mm
    from lsb_mm.errors import InputError

    for kw, match in (({"engine": "spark"}, "engine must be one of"), ({"max_memory": "1G"}, "applies to --factory auto"),
                      ({"target_recall": 1.5}, "--target-recall"), ({"batch_size": 0}, "--batch-size"),
                      ({"engine": "local"}, "--embeddings"), ({"engine": "local", "shard": "1/2", "embeddings": "e"}, "--shard")):
        with pytest.raises(InputError, match=match):
            lsb_mm.build_index(saved_model, sources["corpus"], **kw)
    with pytest.raises(InputError, match="model must be"):
        lsb_mm.build_index(3, sources["corpus"])
    assert not os.path.exists("e")


def test_skip_bad_without_an_output_reports_in_python_and_writes_nothing(tmp_path, sources, saved_model, monkeypatch):
    import shutil

    import lsb_mm

    imgs = tmp_path / "imgs"
    shutil.copytree(sources["images"], imgs)
    (imgs / "broken.png").write_bytes(b"not an image")
    monkeypatch.chdir(tmp_path)
    index = lsb_mm.build_index(saved_model, imgs, skip_bad=True, show_progress_bar=False)
    report = index.build_report
    assert report["skipped"] == 1 and report["skipped_files"][0]["path"].endswith("broken.png")
    assert len(index) == 6 and sorted(os.listdir(tmp_path)) == ["imgs"]
