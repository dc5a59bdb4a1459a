"""lsb_mm.Index: exact search equals brute force, ANN recall, persistence, shards, refusals."""
import os
import re

import numpy as np
import pytest

from lsb_mm.retrieval.index import DEFAULT_ANN, Index, SearchIndexError


def unit(n, d, seed=0):
    x = np.random.RandomState(seed).randn(n, d).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(x, q, k):
    s = q @ x.T
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, top, 1), top


def test_flat_equals_brute_force():
    x, q = unit(3000, 48), unit(200, 48, seed=1)
    ix = Index.build(x, ids=[f"d{i}" for i in range(len(x))], factory="Flat")
    scores, ids = ix.search(q, k=10, batch_size=64)
    ref_s, ref_i = brute_force(x, q, 10)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    assert (ids == np.vectorize(lambda i: f"d{i}")(ref_i)).mean() > 0.999  # ties aside
    assert ix.device == "cpu" and len(ix) == 3000


@pytest.mark.slow
def test_default_ann_recall_on_100k_random_vectors():
    x, q = unit(100_000, 64), unit(500, 64, seed=1)
    exact = Index.build(x, factory="Flat").search(q, 10)[1]
    ann = Index.build(x, factory=DEFAULT_ANN).search(q, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ann, exact)])
    assert recall >= 0.95, recall


def test_search_parameters_and_ivf_pq():
    x = unit(5000, 32)
    ivf = Index.build(x, factory="IVF64,Flat")
    ivf.nprobe = 64  # all lists: exact
    np.testing.assert_array_equal(ivf.search(x[:50], 5)[1], Index.build(x).search(x[:50], 5)[1])
    assert ivf.nprobe == 64
    h = Index.build(x, factory="HNSW16")
    h.ef_search = 32
    assert h.ef_search == 32
    pq = Index.build(unit(5000, 32), factory="IVF16,PQ8x4")
    assert pq.search(x[:3], 4)[1].shape == (3, 4)
    with pytest.raises(SearchIndexError, match="no search parameter 'nprobe'"):
        Index.build(x).set_search_params(nprobe=3)
    with pytest.raises(SearchIndexError, match="cannot build index factory"):
        Index.build(x, factory="NotAnIndex")


def test_save_load_identical_and_shards(tmp_path):
    x, q = unit(6000, 32), unit(100, 32, seed=2)
    ids = [f"doc-{i}" for i in range(len(x))]
    meta = [{"path": f"/img/{i}.png", "caption": f"<b>{i}</b>"} for i in range(len(x))]
    whole = Index.build(x, ids=ids, metadata=meta, fingerprint="model-a")
    whole.save(tmp_path / "whole")
    again = Index.load(tmp_path / "whole")
    s1, i1 = whole.search(q, 10)
    s2, i2 = again.search(q, 10)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(i1, i2)
    assert again.metadata[5] == meta[5] and again.fingerprint == "model-a"
    cuts = [0, 2000, 4100, 6000]
    folders = []
    for a, b in zip(cuts, cuts[1:]):
        Index.build(x[a:b], ids=ids[a:b], metadata=meta[a:b], fingerprint="model-a").save(tmp_path / f"s{a}")
        folders.append(tmp_path / f"s{a}")
    shards = Index.load(folders)
    s3, i3 = shards.search(q, 10)
    np.testing.assert_array_equal(i3, i1)
    np.testing.assert_allclose(s3, s1, atol=1e-6)
    assert len(shards) == 6000 and shards.metadata[4500] == meta[4500]


def test_k_larger_than_index_and_add():
    ix = Index.build(unit(3, 8), ids=["a", "b", "c"])
    s, i = ix.search(unit(2, 8, seed=3), k=5)
    assert s.shape == i.shape == (2, 3) and set(i[0]) == set("abc")  # k capped at the index size
    assert ix.search(unit(1, 8), k=10 ** 12)[0].shape == (1, 3)  # an absurd k allocates nothing
    assert ix.search(unit(1, 8), k=np.int64(2))[0].shape == (1, 2)
    for bad in (0, -1, True, 2.5, "3", None):
        with pytest.raises(SearchIndexError, match=f"k must be a positive integer, got {re.escape(repr(bad))}"):
            ix.search(unit(1, 8), k=bad)
    ix.add(unit(2, 8, seed=4), ids=["d", "e"])
    assert len(ix) == 5 and set(ix.search(unit(1, 8, seed=5), k=5)[1][0]) == set("abcde")
    with pytest.raises(SearchIndexError, match="duplicate id 'a'"):
        ix.add(unit(1, 8), ids=["a"])


def test_refusals(tmp_path):
    x = unit(100, 16)
    ix = Index.build(x, fingerprint="model-a")
    with pytest.raises(SearchIndexError, match="dimension 8, the index holds dimension 16"):
        ix.search(unit(2, 8), 3)
    with pytest.raises(SearchIndexError, match="queries come from model model-b"):
        ix.search(x[:2], 3, fingerprint="model-b")
    with pytest.raises(SearchIndexError, match="L2-normalised"):
        Index.build(x * 3)
    assert len(Index.build(x * 3, normalize=True)) == 100
    with pytest.raises(SearchIndexError, match="NaN"):
        Index.build(np.full((2, 4), np.nan))
    ix.save(tmp_path / "a")
    Index.build(unit(10, 16), fingerprint="model-b").save(tmp_path / "b")
    with pytest.raises(SearchIndexError, match="fingerprint"):
        Index.load([tmp_path / "a", tmp_path / "b"])


def test_half_written_folder_is_never_loaded(tmp_path, monkeypatch):
    import faiss

    x = unit(50, 8)
    Index.build(x).save(tmp_path / "idx")
    before = Index.load(tmp_path / "idx").search(x[:2], 3)[1]

    real = faiss.write_index

    def crash(index, path):
        real(index, path)
        raise OSError("killed while writing")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(OSError):
        Index.build(unit(60, 8, seed=9)).save(tmp_path / "idx")
    with pytest.raises(OSError):
        Index.build(x).save(tmp_path / "new")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["idx"]  # no partial folder under any name that loads
    np.testing.assert_array_equal(Index.load(tmp_path / "idx").search(x[:2], 3)[1], before)
    # a folder without its manifest (as a crash before the final write would leave it) is refused
    os.makedirs(tmp_path / "partial")
    real(faiss.IndexFlatIP(8), str(tmp_path / "partial" / "index.faiss"))
    with pytest.raises(SearchIndexError, match="manifest.json is missing"):
        Index.load(tmp_path / "partial")
    # a changed index file is refused
    with open(tmp_path / "idx" / "index.faiss", "ab") as f:
        f.write(b"\0")
    with pytest.raises(SearchIndexError, match="checksum"):
        Index.load(tmp_path / "idx")


def _edit_manifest(folder, **changes):
    import json

    path = os.path.join(folder, "manifest.json")
    man = json.load(open(path))
    for k, v in changes.items():
        if v is None:
            man.pop(k, None)
        else:
            man[k] = v
    json.dump(man, open(path, "w"))


def test_damaged_index_folders_get_clear_errors(tmp_path):
    import json
    import shutil

    import faiss

    x = unit(20, 8)
    Index.build(x, ids=[f"d{i}" for i in range(20)], metadata=[{"n": i} for i in range(20)]).save(tmp_path / "good")

    def damaged(name):
        shutil.copytree(tmp_path / "good", tmp_path / name)
        return tmp_path / name

    f = damaged("no_dim")
    _edit_manifest(f, dim=None)
    with pytest.raises(SearchIndexError, match="field 'dim' is None; expected a int"):
        Index.load(f)
    f = damaged("bad_count")
    _edit_manifest(f, count="20")
    with pytest.raises(SearchIndexError, match="field 'count'"):
        Index.load(f)
    f = damaged("not_a_dict")
    (f / "manifest.json").write_text("[1, 2]")
    with pytest.raises(SearchIndexError, match="is not supported"):
        Index.load(f)
    # a corrupt ids.jsonl whose checksum is not recorded (a version-1 manifest) still gets file:line,
    # and loading such a folder says that its side files are not verified
    f = damaged("ids_json")
    _edit_manifest(f, sha256=None, format_version=1,
                   index_sha256=json.load(open(f / "manifest.json"))["sha256"]["index.faiss"])
    (f / "ids.jsonl").write_text('"d0"\n{oops\n' + "".join(f'"d{i}"\n' for i in range(2, 20)))
    with pytest.raises(SearchIndexError, match=r"ids.jsonl:2: not valid JSON"):
        Index.load(f)
    # a current manifest must carry every checksum and the fingerprint (null: built without one)
    for key, match in (("sha256", "field 'sha256'"), ("fingerprint", "field 'fingerprint'")):
        f = damaged(f"no_{key}")
        _edit_manifest(f, **{key: None})
        with pytest.raises(SearchIndexError, match=match):
            Index.load(f)
    # with checksums (every new folder) any edit of a side file is refused, swapped lines included
    for name in ("ids.jsonl", "metadata.jsonl"):
        f = damaged(f"swap_{name}")
        lines = (f / name).read_text().splitlines(keepends=True)
        lines[0], lines[1] = lines[1], lines[0]
        (f / name).write_text("".join(lines))
        with pytest.raises(SearchIndexError, match=f"{name}: checksum does not match"):
            Index.load(f)
    f = damaged("no_sum")
    man = json.load(open(f / "manifest.json"))
    del man["sha256"]["ids.jsonl"]
    json.dump(man, open(f / "manifest.json", "w"))
    with pytest.raises(SearchIndexError, match="must give the checksum of each of"):
        Index.load(f)
    # an L2 index presented as inner product is refused
    f = damaged("metric")
    l2 = faiss.IndexFlatL2(8)
    l2.add(x)
    faiss.write_index(l2, str(f / "index.faiss"))
    _edit_manifest(f, sha256=None, format_version=1, index_sha256=__import__("lsb_mm.files", fromlist=["x"]).file_sha256(str(f / "index.faiss")))
    with pytest.raises(SearchIndexError, match="metric"):
        Index.load(f)
    with pytest.raises(SearchIndexError, match="without IDMap"):
        Index.build(x, factory="IDMap,Flat")
    f = damaged("garbage")
    (f / "index.faiss").write_bytes(b"not faiss")
    _edit_manifest(f, sha256=None, format_version=1, index_sha256=__import__("lsb_mm.files", fromlist=["x"]).file_sha256(str(f / "index.faiss")))
    with pytest.raises(SearchIndexError, match="FAISS cannot read it"):
        Index.load(f)
    assert len(Index.load(tmp_path / "good")) == 20


class FakeGpus:
    """FAISS's GPU entry points, mocked: two GPUs; 'moved' indexes stay CPU objects so search still runs."""

    def __init__(self, monkeypatch, fail=False):
        import faiss

        self.moved = []
        self.fail = fail
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
        monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", lambda: type("Opts", (), {})())
        monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", self.to_gpus)
        monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda index: index)
        monkeypatch.setattr(faiss, "GpuParameterSpace", faiss.ParameterSpace)

    def to_gpus(self, index, co=None):
        import faiss

        assert co.shard is True
        if self.fail:
            raise RuntimeError("Error in ... This index type is not implemented on GPU.")
        self.moved.append(type(faiss.downcast_index(index)).__name__)
        return index


@pytest.mark.parametrize("factory, on_gpu", [
    ("Flat", True), ("IVF16,Flat", True), ("IVF16,PQ4", True), ("IVF16,SQ8", True), ("OPQ4,IVF16,PQ4", True),
    ("SQfp16", True), ("PCA8,Flat", True),
    ("HNSW32", False), ("PQ4", False), ("SQ8", False), ("IVF16,PQ4x4fs", False), ("IVF16,Flat,RFlat", False),
    ("HNSW16,SQ8", False), ("PCA8,HNSW16", False), ("BFlat", False), ("BIVF16,Rescore2", False), ("BHNSW16", False)])
@pytest.mark.slow
def test_only_index_types_faiss_runs_on_gpu_are_moved(factory, on_gpu, monkeypatch, caplog):
    gpus = FakeGpus(monkeypatch)
    x = unit(800, 16)
    with caplog.at_level("WARNING", logger="lsb_mm.retrieval.index"):
        ix = Index.build(x, factory=factory)  # device="auto", the default
    assert (ix.device == "gpu x2") == on_gpu and bool(gpus.moved) == on_gpu
    assert ("stays on the CPU" in caplog.text) == (not on_gpu)
    assert ix.search(x[:3], 1)[1][:, 0].tolist() == ["0", "1", "2"] or factory != "Flat"
    if not on_gpu:
        with pytest.raises(SearchIndexError, match="no GPU implementation"):
            Index.build(x, factory=factory, device="gpu")
    assert Index.build(x, factory=factory, device="cpu").device == "cpu"


def test_gpu_move_failure_and_shards_honour_device(monkeypatch, tmp_path, caplog):
    x = unit(600, 16)
    Index.build(x[:300], ids=[f"a{i}" for i in range(300)], device="cpu").save(tmp_path / "flat")
    Index.build(x[300:], ids=[f"b{i}" for i in range(300)], factory="HNSW32", device="cpu").save(tmp_path / "hnsw")
    gpus = FakeGpus(monkeypatch)
    with caplog.at_level("WARNING", logger="lsb_mm.retrieval.index"):
        both = Index.load([tmp_path / "flat", tmp_path / "hnsw"])
    assert gpus.moved == ["IndexFlatIP"] and both.device == "cpu + gpu x2" and "HNSW" in caplog.text
    assert both.search(x[[0, 400]], 1)[1][:, 0].tolist() == ["a0", "b100"]
    assert Index.load([tmp_path / "flat"]).device == "gpu x2"
    assert Index.load([tmp_path / "flat", tmp_path / "hnsw"], device="cpu").device == "cpu"
    with pytest.raises(SearchIndexError, match="no GPU implementation"):
        Index.load([tmp_path / "flat", tmp_path / "hnsw"], device="gpu")
    failing = FakeGpus(monkeypatch, fail=True)
    with caplog.at_level("WARNING", logger="lsb_mm.retrieval.index"):
        assert Index.build(x, factory="Flat").device == "cpu"  # auto: a failed move keeps the CPU index
    assert "could not move" in caplog.text and failing.moved == []
    with pytest.raises(SearchIndexError, match="could not move"):
        Index.build(x, factory="Flat", device="gpu")
