"""``lsb-mm index --engine ray`` on a local Ray instance (``ray.init(num_cpus=2)``: ``--replicas 2``)
over a small real corpus (man-page NAME lines, the packaged MiniLM), against the single-process
path; a worker SIGKILLed mid-job; the whole job SIGKILLed and restarted (issue 15)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import need

pytestmark = pytest.mark.ray

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
DOCS = 384
SHARD = 32  # a multiple of the batch size: shard batches are the single-process batches


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    try:
        import ray.data  # noqa: F401
    except ImportError:
        need(False, "Ray Data not installed (pip install 'ray[data]')")
    from lsb_mm_experiments.datasets.manpages import load_manpages

    pages = load_manpages(limit=DOCS)
    need(len(pages) == DOCS, "Debian package manpages (man-page NAME lines) not installed")
    folder = tmp_path_factory.mktemp("ray_corpus")
    with open(folder / "names.jsonl", "w", encoding="utf-8") as f:
        for p in pages:
            f.write(json.dumps({"_id": os.path.basename(p.path), "text": p.name_line}) + "\n")
    return folder


def index_cmd(output, *extra):
    return [sys.executable, "-m", "lsb_mm", "index", "--model", "minilm", "--corpus", "names.jsonl", "--batch-size", "16",
            "--shard-size", str(SHARD), "--output", output, "-q", *extra]


def ray_cmd(output):
    return index_cmd(output, "--engine", "ray", "--replicas", "2")


def report(stdout):
    """The one JSON line ``lsb-mm index`` writes to stdout (Ray's messages go to stderr)."""
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout holds more than the report: {stdout[-2000:]!r}"
    return json.loads(lines[0])


def complete(folder, argv, timeout=900):
    r = subprocess.run(argv, cwd=folder, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return report(r.stdout)


@pytest.fixture(scope="module")
def single(corpus):
    """The single-process path's index of the corpus (built once)."""
    complete(corpus, index_cmd("single"))
    import lsb_mm

    ix = lsb_mm.Index.load(str(corpus / "single"), device="cpu")
    return ix, ix._index.reconstruct_n(0, len(ix))


def markers(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".json") and n[0].isdigit()) if os.path.isdir(folder) else []


def ray_workers():
    """PIDs of Ray Data actor processes running our encoder."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if "MapWorker" in cmd and "RayEncoder" in cmd:
            pids.append(int(pid))
    return pids


def wait_for(cond, timeout=300.0):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def check_same(corpus, name, single):
    import lsb_mm
    from lsb_mm.scale.shards import EmbeddingShards

    ix, vectors = single
    other = lsb_mm.Index.load(str(corpus / name), device="cpu")
    assert other.ids == ix.ids and len(set(other.ids)) == DOCS  # every id exactly once, in corpus order
    emb = EmbeddingShards.open(str(corpus / f"{name}.embeddings")).rows()[:]
    np.testing.assert_array_equal(emb, vectors)  # bit-identical embeddings
    q = vectors[::37]
    assert (other.search(q, k=10)[1] == ix.search(q, k=10)[1]).all()


def test_ray_engine_equals_the_single_process_path(corpus, single):
    job = complete(corpus, ray_cmd("ray"))["job"]
    assert job["engine"] == "ray" and job["units"] == DOCS // SHARD
    assert job["items"] == DOCS and len(job["workers"]) >= 1
    check_same(corpus, "ray", single)


def test_a_worker_killed_mid_job_leaves_every_id_indexed_once(corpus, single):
    proc = subprocess.Popen(ray_cmd("killed_worker"), cwd=corpus, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        folder = str(corpus / "killed_worker.embeddings")
        wait_for(lambda: len(markers(folder)) >= 2 or proc.poll() is not None)
        victims = ray_workers()
        assert proc.poll() is None and victims, "the job ended before a worker could be killed"
        os.kill(victims[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert report(out)["count"] == DOCS
    check_same(corpus, "killed_worker", single)


def test_a_job_killed_and_restarted_skips_finished_shards(corpus, single):
    proc = subprocess.Popen(ray_cmd("restarted"), cwd=corpus, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    folder = str(corpus / "restarted.embeddings")
    try:
        wait_for(lambda: len(markers(folder)) >= 3 or proc.poll() is not None)
        assert proc.poll() is None, "the job ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Ray processes and actors
        proc.wait()
    wait_for(lambda: not ray_workers(), timeout=60)
    finished = len(markers(folder))
    assert 3 <= finished < DOCS // SHARD and not os.path.exists(corpus / "restarted")
    job = complete(corpus, ray_cmd("restarted"))["job"]
    assert job["skipped_units"] == finished and job["units"] == DOCS // SHARD - job["skipped_units"]
    check_same(corpus, "restarted", single)


RAY_OBJECT = r"""
import json, sys
import numpy as np
import lsb_mm

model = lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr", head_init="random", seed=4)  # saved nowhere
ray = lsb_mm.build_index(model, "names.jsonl", "ray.index", engine="ray", replicas=1, shard_size=128, batch_size=16)
mem = lsb_mm.build_index(model, "names.jsonl", "mem.index", shard_size=128, batch_size=16)
q = model.encode_query(["copy files", "list directory contents"])
(s1, i1), (s2, i2) = ray.search(q, k=10), mem.search(q, k=10)
print("RESULT " + json.dumps({"ids": ray.ids == mem.ids, "top": (i1 == i2).all().item(),
                              "scores": float(np.abs(s1 - s2).max()), "copies": ray.build_report["job"]}))
"""


def test_build_index_on_ray_with_a_model_object(corpus):
    """A model given as an object (never saved): the Ray workers load a copy saved beside the shards,
    and the index equals the in-process one."""
    r = subprocess.run([sys.executable, "-c", RAY_OBJECT], cwd=corpus, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert res["ids"] and res["top"] and res["scores"] < 1e-6, res
    assert any(n.startswith("model-") for n in os.listdir(corpus / "ray.index.embeddings"))
