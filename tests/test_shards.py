"""Work units over every source kind, embedding shards (resumable, verified) and the sharded
``lsb-mm index --engine local`` path against the in-memory one (issue 15)."""
import io
import json
import os

import numpy as np
import pytest

import helpers
from helpers import png, write_parquet, write_tar
from lsb_mm.cli import main
from lsb_mm.data.documents import Documents
from lsb_mm.data.readers import Source, Unit, plan_units, read_source, read_unit
from lsb_mm.errors import InputError
from lsb_mm.scale.shards import EmbeddingShards, ShardRows

MODEL = "open_clip:lsb-tiny-test"


def texts(n, prefix="doc"):
    return [{"_id": f"{prefix}{i}", "text": f"{prefix} {i} about {helpers.WORDS[i % len(helpers.WORDS)]}"}
            for i in range(n)]


def concat(units):
    docs = [read_unit(u) for u in units]
    return [i for d in docs for i in d.ids], [x for d in docs for x in d.items], [m for d in docs for m in d.metadata]


# -- readers ---------------------------------------------------------------------------------------
def test_units_of_every_source_cover_each_document_once_in_order(tmp_path):
    helpers.write_jsonl(tmp_path / "c.jsonl", texts(23))
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(7):
        (folder / ("sub" if i % 2 else "") / f"im{i}.png").write_bytes(png((10 * i, 0, 0)))
    (folder / "im0.txt").write_text("a black square\n")
    (tmp_path / "t.csv").write_text("filepath,caption\n" + "".join(f"imgs/im{i}.png,c{i}\n" for i in range(0, 7, 2)))
    write_parquet(tmp_path / "p.parquet", {"_id": [f"p{i}" for i in range(25)], "text": [f"row {i}" for i in range(25)]}, 4)
    write_parquet(tmp_path / "big.parquet", {"_id": [f"q{i}" for i in range(31)], "text": [f"row {i}" for i in range(31)]},
                  [12, 3, 12, 4])
    tars = tmp_path / "tars"
    tars.mkdir()
    write_tar(tars / "a.tar", [(f"s{i}", {"png": png((0, 20 * i, 0)), "txt": f"caption {i}".encode()}) for i in range(3)])
    write_tar(tars / "b.tar", [("s0", {"png": png((0, 0, 9)), "json": b'{"license": "cc0"}'})])
    cases = [(Source("corpus", str(tmp_path / "c.jsonl")), 10, [10, 10, 3]),
             (Source("images", str(folder)), 3, [3, 3, 1]),
             (Source("csv", str(tmp_path / "t.csv")), 3, [3, 1]),
             (Source("parquet", str(tmp_path / "p.parquet")), 10, [8, 8, 9]),  # whole row groups (4 rows; the last 1)
             (Source("parquet", str(tmp_path / "big.parquet")), 5, [5, 5, 2, 3, 5, 5, 2, 4]),  # groups of 12, 3, 12, 4:
             # a group larger than a shard is cut into slices, smaller ones stay whole
             (Source("tar", str(tars)), 2, [3, 1])]  # one unit per tar file
    for source, size, sizes in cases:
        units = plan_units(source, size)
        assert [len(u) for u in units] == sizes, source
        assert [u.shard for u in units] == list(range(len(units)))
        assert [Unit.from_dict(json.loads(json.dumps(u.to_dict()))) for u in units] == units
        whole = read_source(source)
        ids, items, meta = concat(units)
        assert ids == whole.ids and len(set(ids)) == len(ids), source
        assert meta == whole.metadata
        assert [repr(x) for x in items] == [repr(x) for x in whole.items]
    tar_docs = read_source(Source("tar", str(tars)))
    assert tar_docs.kind == "image" and tar_docs.ids == ["a/s0", "a/s1", "a/s2", "b/s0"]
    assert tar_docs.metadata[1]["caption"] == "caption 1" and tar_docs.metadata[3]["license"] == "cc0"
    assert read_source(Source("images", str(folder))).metadata[0]["caption"] == "a black square"


def test_tar_and_parquet_images_decode_like_files(tmp_path):
    import lsb_mm

    data = [png((200, 10 * i, 30), (20 + i, 16)) for i in range(4)]
    for i, d in enumerate(data):
        (tmp_path / f"k{i}.png").write_bytes(d)
    write_tar(tmp_path / "s.tar", [(f"k{i}", {"png": d}) for i, d in enumerate(data)])
    write_parquet(tmp_path / "p.parquet", {"id": [f"k{i}" for i in range(4)], "image": data,
                                           "caption": [f"c{i}" for i in range(4)]}, 2)
    model = lsb_mm.create_model(MODEL, head="slr")
    want = model.encode_image([str(tmp_path / f"k{i}.png") for i in range(4)], show_progress_bar=False)
    for source in (Source("tar", str(tmp_path / "s.tar")), Source("parquet", str(tmp_path / "p.parquet"))):
        docs = read_source(source)
        np.testing.assert_array_equal(model.encode_image(docs.items, show_progress_bar=False), want)
    assert read_source(Source("parquet", str(tmp_path / "p.parquet"))).metadata[0]["caption"] == "c0"


@pytest.mark.parametrize("case", ["parquet columns", "tar mixed", "tar empty sample", "tar json", "not tar",
                                  "not parquet", "no files", "parquet text type", "tar truncated", "tar names",
                                  "parquet shrank"])
def test_bad_sources_name_the_file(case, tmp_path):
    p = tmp_path / "x"
    if case == "parquet columns":
        write_parquet(p.with_suffix(".parquet"), {"name": ["a"], "body": ["b"]}, 1)
        source, match = Source("parquet", str(p.with_suffix(".parquet"))), r"x\.parquet: expected an '_id'"
    elif case == "parquet text type":
        write_parquet(p.with_suffix(".parquet"), {"_id": ["a"], "text": [3]}, 1)
        source, match = Source("parquet", str(p.with_suffix(".parquet"))), r"row 1: 'text' must be a string"
    elif case == "tar mixed":
        write_tar(p.with_suffix(".tar"), [("a", {"png": png((1, 2, 3))}), ("b", {"txt": b"just text"})])
        source, match = Source("tar", str(p.with_suffix(".tar"))), r"x\.tar mixes image samples and text-only"
    elif case == "tar empty sample":
        write_tar(p.with_suffix(".tar"), [("a", {"cls": b"3"})])
        source, match = Source("tar", str(p.with_suffix(".tar"))), r"x\.tar:a: a sample needs an image"
    elif case == "tar json":
        write_tar(p.with_suffix(".tar"), [("a", {"png": png((1, 2, 3)), "json": b"[1]"})])
        source, match = Source("tar", str(p.with_suffix(".tar"))), r"a\.json: expected a JSON object"
    elif case == "not tar":
        p.with_suffix(".tar").write_bytes(b"hello")
        source, match = Source("tar", str(p.with_suffix(".tar"))), r"x\.tar: not a readable tar file"
    elif case == "not parquet":
        p.with_suffix(".parquet").write_bytes(b"hello")
        source, match = Source("parquet", str(p.with_suffix(".parquet"))), r"x\.parquet: not a readable Parquet"
    elif case == "tar truncated":  # a half-downloaded shard
        write_tar(p.with_suffix(".tar"), [(f"s{i}", {"png": png((i, 2, 3)) * 50}) for i in range(6)])
        data = p.with_suffix(".tar").read_bytes()
        p.with_suffix(".tar").write_bytes(data[:len(data) // 2 + 700])
        source, match = Source("tar", str(p.with_suffix(".tar"))), r"x\.tar(:\S+)?: damaged tar"
    elif case == "tar names":  # ids are <tar name>/<key>: two tars of one name would collide
        for sub in ("a", "b"):
            (tmp_path / sub).mkdir()
            write_tar(tmp_path / sub / "000.tar", [("k", {"png": png((1, 2, 3))})])
        source, match = Source("tar", str(tmp_path / "*" / "000.tar")), r"share the name '000'"
        with pytest.raises(InputError, match=match):
            plan_units(source, 10)
    elif case == "parquet shrank":  # planned, then the file was replaced by a shorter one
        write_parquet(p.with_suffix(".parquet"), {"_id": [f"r{i}" for i in range(10)], "text": ["t"] * 10}, 10)
        unit = plan_units(Source("parquet", str(p.with_suffix(".parquet"))), 10)[0]
        from lsb_mm.data.readers import clear_cache, read_unit
        write_parquet(p.with_suffix(".parquet"), {"_id": ["r0"], "text": ["t"]}, 1)
        clear_cache()
        with pytest.raises(InputError, match=r"x\.parquet: has 1 rows, the job planned 10"):
            read_unit(unit)
        return
    else:
        source, match = Source("tar", str(tmp_path / "*.tar")), r"no \.tar files found"
    with pytest.raises(InputError, match=match):
        read_source(source)


# -- shards ------------------------------------------------------------------------------------------
def _docs(unit):
    return Documents("text", [f"d{i}" for i in range(unit.start, unit.stop)], ["x"] * len(unit),
                     [{"n": i} for i in range(unit.start, unit.stop)])


def _unit_vectors(unit, d=8):
    x = np.random.default_rng(unit.shard).standard_normal((len(unit), d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_shards_resume_verify_and_stream(tmp_path):
    helpers.write_jsonl(tmp_path / "c.jsonl", texts(10))
    units = plan_units(Source("corpus", str(tmp_path / "c.jsonl")), 4)
    folder = str(tmp_path / "emb")
    s = EmbeddingShards.open(folder, units, "fp1", "float32")
    assert [u.shard for u in s.todo()] == [0, 1, 2]
    for u in units[:2]:
        s.write(u, _unit_vectors(u), _docs(u))
    base = os.path.join(folder, "000002")
    open(base + ".npy", "wb").write(b"half")  # a killed writer's leftovers without a marker
    assert [u.shard for u in EmbeddingShards.open(folder, units, "fp1", "float32").todo()] == [2]
    with pytest.raises(InputError, match="2 of 3 shards|1 of 3 shards are not finished"):
        s.rows()
    s.write(units[2], _unit_vectors(units[2]), _docs(units[2]))
    rows = s.rows()
    want = np.concatenate([_unit_vectors(u) for u in units])
    assert isinstance(rows, ShardRows) and rows.shape == (10, 8)
    np.testing.assert_array_equal(rows[:], want)
    np.testing.assert_array_equal(rows[3:9], want[3:9])
    np.testing.assert_array_equal(rows.take([9, 0, 5, 4]), want[[9, 0, 5, 4]])
    assert [start for start, _ in rows.chunks(3)] == [0, 3, 4, 7, 8]  # never across shards
    ids, meta = s.ids_and_metadata()
    assert ids == [f"d{i}" for i in range(10)] and meta[7] == {"n": 7} and s.kind() == "text"
    # a shard edited in place (same size) is caught by its checksum
    a = np.load(base + ".npy")
    a[0, 0] += 1
    np.save(base + ".npy", a)
    with pytest.raises(InputError, match=r"000002\.npy: checksum does not match"):
        s.rows()
    # a truncated shard counts as unfinished
    with open(base + ".npy", "r+b") as f:
        f.truncate(100)
    assert [u.shard for u in s.todo()] == [2]


def test_shards_of_another_job_are_refused_or_overwritten(tmp_path):
    helpers.write_jsonl(tmp_path / "c.jsonl", texts(10))
    units = plan_units(Source("corpus", str(tmp_path / "c.jsonl")), 4)
    folder = str(tmp_path / "emb")
    s = EmbeddingShards.open(folder, units, "fp1", "float32")
    s.write(units[0], _unit_vectors(units[0]), _docs(units[0]))
    for kw, match in (({"fingerprint": "fp2"}, "the model differ"), ({"dtype": "float16"}, "dtype differ")):
        args = {"fingerprint": "fp1", "dtype": "float32", **kw}
        with pytest.raises(InputError, match=match):
            EmbeddingShards.open(folder, units, args["fingerprint"], args["dtype"])
    with pytest.raises(InputError, match="the documents or --shard-size differ"):
        EmbeddingShards.open(folder, plan_units(Source("corpus", str(tmp_path / "c.jsonl")), 5), "fp1", "float32")
    fresh = EmbeddingShards.open(folder, units, "fp2", "float16", overwrite=True)
    assert len(fresh.todo()) == 3 and sorted(os.listdir(folder)) == ["plan.json"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an lsb-mm embedding shard folder"):
        EmbeddingShards.open(str(tmp_path / "other"), units, "fp1", "float32")


def test_float16_shards_stream_normalised(tmp_path):
    helpers.write_jsonl(tmp_path / "c.jsonl", texts(6))
    units = plan_units(Source("corpus", str(tmp_path / "c.jsonl")), 6)
    s = EmbeddingShards.open(str(tmp_path / "emb"), units, None, "float16")
    x = _unit_vectors(units[0], d=64)
    s.write(units[0], x, _docs(units[0]))
    got = s.rows()[:]
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(got, x, atol=2e-3)
    assert os.path.getsize(tmp_path / "emb" / "000000.npy") < x.nbytes * 0.6


# -- the sharded CLI path ----------------------------------------------------------------------------
def run(cwd, *argv):
    import contextlib

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


def test_engine_local_equals_the_memory_path_and_resumes(tmp_path):
    import lsb_mm

    helpers.write_jsonl(tmp_path / "c.jsonl", texts(150))
    lsb_mm.create_model(MODEL, head="slr", head_init="random").save_pretrained(str(tmp_path / "m"))
    common = ["index", "--model", "m", "--corpus", "c.jsonl", "--batch-size", "16", "--shard-size", "32", "-q"]
    code, out, err = run(tmp_path, *common, "--output", "mem")
    assert code == 0, err
    code, out, err = run(tmp_path, *common, "--output", "sh", "--engine", "local")
    assert code == 0, err
    report = json.loads(out)
    assert report["shards"] == 5 and report["job"]["units"] == 5 and report["job"]["items"] == 150
    mem, sh = lsb_mm.Index.load(str(tmp_path / "mem")), lsb_mm.Index.load(str(tmp_path / "sh"))
    assert sh.ids == mem.ids and sh.metadata == mem.metadata and sh.fingerprint == mem.fingerprint
    emb = EmbeddingShards.open(str(tmp_path / "sh.embeddings")).rows()[:]
    np.testing.assert_array_equal(emb, mem._index.reconstruct_n(0, len(mem)))  # bit-identical vectors
    model = lsb_mm.load_model(str(tmp_path / "m"))
    q = model.encode_text(["doc 3 about apple", "river"], show_progress_bar=False)
    assert (sh.search(q, k=10)[1] == mem.search(q, k=10)[1]).all()
    # a rerun skips every finished shard; a lost shard is the only one redone
    os.unlink(tmp_path / "sh.embeddings" / "000003.json")
    code, out, err = run(tmp_path, *common, "--output", "sh", "--engine", "local")
    assert code == 0, err
    job = json.loads(out)["job"]
    assert job["skipped_units"] == 4 and job["units"] == 1 and job["items"] == 32
    assert lsb_mm.Index.load(str(tmp_path / "sh")).ids == mem.ids


def test_engine_flags_are_checked(tmp_path):
    import lsb_mm

    helpers.write_jsonl(tmp_path / "c.jsonl", texts(20))
    lsb_mm.create_model(MODEL, head="slr").save_pretrained(str(tmp_path / "m"))
    base = ["index", "--model", "m", "--corpus", "c.jsonl", "--output", "ix", "-q"]
    for extra, match in ((["--engine", "local", "--shard", "1/2"], "--shard applies to --engine memory"),
                         (["--engine", "local", "--shard-size", "0"], "shard size must be a positive integer, got 0"),
                         (["--engine", "ray", "--replicas", "0"], "--replicas must be a positive integer, got 0"),
                         (["--engine", "local", "--embeddings", "ix/emb"], "--embeddings ix/emb is inside --output")):
        code, _, err = run(tmp_path, *base, *extra)
        assert code == 2 and "Traceback" not in err and match in err, err
    assert not os.path.exists(tmp_path / "ix")


def test_streaming_many_shards_holds_no_file_open_between_reads(tmp_path):
    helpers.write_jsonl(tmp_path / "c.jsonl", texts(120))
    units = plan_units(Source("corpus", str(tmp_path / "c.jsonl")), 2)  # 60 shards
    s = EmbeddingShards.open(str(tmp_path / "emb"), units, None, "float32")
    vectors = []
    for u in units:
        x = _unit_vectors(u, d=8)
        s.write(u, x, _docs(u))
        vectors.append(x)
    opened = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = opened()
    rows = s.rows()
    assert opened() - before < 5  # not one descriptor per shard
    np.testing.assert_array_equal(rows[:], np.concatenate(vectors))
    np.testing.assert_array_equal(rows.take([119, 0, 61]), np.concatenate(vectors)[[119, 0, 61]])
    seen = 0
    for start, block in rows.chunks(64):
        assert start == seen and opened() - before < 5
        seen += len(block)
    assert seen == 120


def test_starting_over_removes_only_what_lsb_mm_wrote(tmp_path):
    """``--overwrite`` (and resuming) sweep a shard folder of its shards and half-written files only:
    a user's dot-files, digit-named notes and look-alike names stay, byte for byte."""
    helpers.write_jsonl(tmp_path / "c.jsonl", texts(10))
    units = plan_units(Source("corpus", str(tmp_path / "c.jsonl")), 4)
    folder = tmp_path / "emb"
    s = EmbeddingShards.open(str(folder), units, "fp1", "float32")
    s.write(units[0], _unit_vectors(units[0]), _docs(units[0]))
    (folder / ".000001.parquet.zz9.tmp").write_bytes(b"half")
    mine = {".bashrc": b"alias ll='ls -l'", "2024.txt": b"notes", "000001.npy.bak": b"a copy", ".hidden.tmp": b"mine",
            ".cache": b"x"}
    for name, data in mine.items():
        (folder / name).write_bytes(data)
    EmbeddingShards.open(str(folder), units, "fp1", "float32")  # resuming sweeps only its own temp file
    assert not (folder / ".000001.parquet.zz9.tmp").exists() and all((folder / n).read_bytes() == d for n, d in mine.items())
    EmbeddingShards.open(str(folder), units, "fp2", "float32", overwrite=True)
    assert sorted(os.listdir(folder)) == sorted(["plan.json", *mine])
    assert all((folder / n).read_bytes() == d for n, d in mine.items())


def test_resuming_sweeps_what_a_killed_writer_left(tmp_path):
    helpers.write_jsonl(tmp_path / "c.jsonl", texts(6))
    units = plan_units(Source("corpus", str(tmp_path / "c.jsonl")), 3)
    folder = tmp_path / "emb"
    s = EmbeddingShards.open(str(folder), units, None, "float32")
    s.write(units[0], _unit_vectors(units[0]), _docs(units[0]))
    (folder / ".000001.npy.k3j2.tmp").write_bytes(b"half a shard")  # SIGKILL leaves it: no exception ran
    again = EmbeddingShards.open(str(folder), units, None, "float32")
    assert not (folder / ".000001.npy.k3j2.tmp").exists() and [u.shard for u in again.todo()] == [1]


def test_sharded_index_refuses_a_changed_source_and_mixed_kinds(tmp_path):
    import lsb_mm

    lsb_mm.create_model(MODEL, head="none").save_pretrained(str(tmp_path / "m"))
    docs = texts(12)
    helpers.write_jsonl(tmp_path / "c.jsonl", docs)
    base = ["index", "--model", "m", "--corpus", "c.jsonl", "--engine", "local", "--shard-size", "4",
            "--embeddings", "c.emb", "-q", "--bm25"]
    assert run(tmp_path, *base, "--output", "ix1")[0] == 0
    # the same number of documents, in another order: the finished shards no longer hold these ids
    helpers.write_jsonl(tmp_path / "c.jsonl", docs[::-1])
    code, _, err = run(tmp_path, *base, "--output", "ix2")
    assert code == 2 and "no longer those of shard 0" in err and "Traceback" not in err, err
    # image shards beside text shards make no index
    tars = tmp_path / "tars"
    tars.mkdir()
    write_tar(tars / "a.tar", [("s0", {"png": png((200, 0, 0)), "txt": b"red"})])
    write_tar(tars / "b.tar", [("s0", {"txt": b"just words"})])
    code, _, err = run(tmp_path, "index", "--model", "m", "--tar", "tars", "--engine", "local", "--output", "ix3", "-q")
    assert code == 2 and "shards of kinds ['image', 'text']" in err, err
    assert not (tmp_path / "ix3").exists()
