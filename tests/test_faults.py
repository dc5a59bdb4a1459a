"""Fault injection (issue 13): ``lsb-mm index``, ``train`` (killed while a checkpoint is being
written) and ``build-tasks`` are killed with SIGKILL at random points, several times each. After
every kill the previous result still loads, and a rerun completes."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import helpers

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
KILLS = 4  # per command
MODEL = "open_clip:lsb-tiny-test"


def lsb(folder, *args):
    return [sys.executable, "-m", "lsb_mm", *args]


def complete(folder, argv, timeout=600):
    r = subprocess.run(argv, cwd=folder, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def kill_at(folder, argv, when, ready=None, deadline=300.0):
    """Start ``argv``, SIGKILL it ``when`` seconds after start (or as soon as ``ready()`` is true
    after that), and return whether it was still running when killed."""
    proc = subprocess.Popen(argv, cwd=folder, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < deadline:
        if time.time() - t0 >= when and (ready is None or ready()):
            break
        time.sleep(0.002)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return alive


def timed(folder, argv):
    t0 = time.time()
    complete(folder, argv)
    return time.time() - t0


@pytest.fixture
def rng():
    seed = int(os.environ.get("LSB_MM_FAULT_SEED", random.randrange(1 << 30)))
    print(f"fault-injection seed {seed} (LSB_MM_FAULT_SEED={seed} to replay)")
    return random.Random(seed)


@pytest.mark.slow
def test_index_killed_anywhere_keeps_the_previous_index(tmp_path, rng):
    import lsb_mm

    helpers.write_jsonl(tmp_path / "corpus.jsonl", [{"_id": f"d{i}", "text": f"document {i} on topic {i % 7}"}
                                                      for i in range(300)])
    lsb_mm.create_model(MODEL, head="slr").save_pretrained(str(tmp_path / "m"))
    argv = lsb(tmp_path, "index", "--model", "m", "--corpus", "corpus.jsonl", "--bm25", "--output", "idx", "-q")
    full = timed(tmp_path, argv)
    q = lsb_mm.load_model(str(tmp_path / "m")).encode_text(["topic 3"])
    expected = lsb_mm.Index.load(str(tmp_path / "idx")).search(q, k=5)[1].tolist()
    killed = 0
    for _ in range(KILLS):
        killed += kill_at(tmp_path, argv, rng.uniform(0.2, full))
        ix = lsb_mm.Index.load(str(tmp_path / "idx"))  # whole and verified: the old folder or the new one
        assert len(ix) == 300 and ix.search(q, k=5)[1].tolist() == expected
    assert killed >= 1, "every kill came after the command ended: nothing was tested"
    complete(tmp_path, argv)
    assert lsb_mm.Index.load(str(tmp_path / "idx")).search(q, k=5)[1].tolist() == expected


@pytest.mark.slow
def test_train_killed_while_checkpointing_resumes(tmp_path, rng):
    import lsb_mm
    from lsb_mm.training.checkpoint import latest_checkpoint, read_state

    helpers.write_jsonl(tmp_path / "d.jsonl", helpers.passage_queries(60, per_passage=1, dev=0)[0])
    args = ["train", "--model", MODEL, "--head", "slr", "--train-data", "d.jsonl", "--batch-size", "4",
            "--max-steps", "40", "--save-steps", "1", "--keep-checkpoints", "2", "--output", "run", "-q"]
    def saving():  # a checkpoint is being written, and an earlier one is complete
        run = tmp_path / "run"
        return run.is_dir() and latest_checkpoint(str(run)) is not None and \
            any(n.startswith(".checkpoint-") for n in os.listdir(run))

    mid_save = 0
    for i in range(KILLS):
        argv = lsb(tmp_path, *args, *(["--resume"] if i else []))
        mid_save += kill_at(tmp_path, argv, rng.uniform(0.0, 3.0), ready=saving)
        latest = latest_checkpoint(str(tmp_path / "run"))
        assert latest is not None, "killed before the first checkpoint"
        step = read_state(latest)["step"]
        lsb_mm.load_model(os.path.join(latest, "model"))  # the newest complete checkpoint loads
        assert 0 < step <= 40
    assert mid_save >= 1, "no kill landed while the run was writing a checkpoint"
    complete(tmp_path, lsb(tmp_path, *args, "--resume"))
    final = tmp_path / "run" / "final"
    assert lsb_mm.load_model(str(final)).text_head.kind == "slr"
    assert json.loads((final / "lsb_config.json").read_text())["training"]["saved_step"] == 40
    assert not [n for n in os.listdir(tmp_path / "run") if ".tmp-" in n]  # interrupted saves cleared
    steps = [json.loads(line)["step"] for line in open(tmp_path / "run" / "train_log.jsonl") if '"loss"' in line]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # each logged step once, to the end


def test_build_tasks_killed_anywhere_leaves_loadable_tasks(tmp_path, rng):
    from lsb_mm.data.tasks import read_task
    from lsb_mm.evaluation.evaluate import find_tasks
    from lsb_mm.files import iter_jsonl

    helpers.write_jsonl(tmp_path / "pairs.jsonl", [{"query": f"how to do thing {i}",
                                                      "passage": " ".join(f"w{i}_{j} topic{j % 9}" for j in range(80))}
                                                     for i in range(400)])
    argv = lsb(tmp_path, "build-tasks", "--pairs", "pairs.jsonl", "--split", "0.6", "--output", "own", "--overwrite")
    full = timed(tmp_path, argv)

    def check():  # every task that eval would find loads (a killed write's hidden temp folder is no task)
        for side in ("test", "validation"):
            found = find_tasks([str(tmp_path / "own" / side)])
            assert len(found) == 6
            for folder in found:
                task = read_task(folder)
                assert task.queries and task.corpus
        kinds = {os.path.basename(f) for f in found}
        for name in ("train.jsonl", "val.jsonl"):  # whole training records of the tasks' kinds
            rows = [r for _, r in iter_jsonl(str(tmp_path / "own" / name))]
            assert rows and all(set(r) == {"query", "pos", "kind"} and r["kind"] in kinds and r["pos"] for r in rows)

    check()
    killed = 0
    for _ in range(KILLS):
        killed += kill_at(tmp_path, argv, rng.uniform(0.2, full))
        check()
    assert killed >= 1, "every kill came after the command ended: nothing was tested"
    complete(tmp_path, argv)
    check()


@pytest.mark.slow
def test_server_keeps_answering_while_a_rebuild_is_killed_and_reloaded(tmp_path, rng):
    """``lsb-mm serve`` on a loopback port answers a steady stream of searches while ``lsb-mm index``
    rebuilding its folder is killed mid-way and ``/admin/reload`` is called after each kill: no request
    fails, and a completed rebuild is served after the next reload."""
    import threading
    import urllib.error
    import urllib.request

    import lsb_mm
    from lsb_mm.serving.background import running_server

    helpers.write_jsonl(tmp_path / "corpus.jsonl", [{"_id": f"d{i}", "text": f"document {i} on topic {i % 7}"}
                                                      for i in range(300)])
    helpers.write_jsonl(tmp_path / "new.jsonl", [{"_id": f"n{i}", "text": f"note {i} on topic {i % 5}"}
                                                   for i in range(400)])
    lsb_mm.create_model(MODEL, head="slr").save_pretrained(str(tmp_path / "m"))
    complete(tmp_path, lsb(tmp_path, "index", "--model", "m", "--corpus", "corpus.jsonl", "--output", "idx", "-q"))
    rebuild = lsb(tmp_path, "index", "--model", "m", "--corpus", "new.jsonl", "--output", "idx", "-q")

    def post(url, path, body):
        req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    with running_server(["--model", str(tmp_path / "m"), "--index", f"live={tmp_path / 'idx'}"], env=ENV) as url:
        statuses, failures, seen, stop = [], [], set(), threading.Event()

        def client():
            while not stop.is_set():
                status, body = post(url, "/search", {"index": "live", "text": "topic 3", "k": 3})
                statuses.append(status)
                if status == 200:
                    seen.add(body["hits"][0]["id"][0])
                else:
                    failures.append((status, body))

        t = threading.Thread(target=client)
        t.start()
        try:
            full = timed(tmp_path, rebuild)  # a whole rebuild, then back to the old corpus for the kills
            complete(tmp_path, lsb(tmp_path, "index", "--model", "m", "--corpus", "corpus.jsonl", "--output", "idx", "-q"))
            assert post(url, "/admin/reload", {"index": "live"})[1]["reloaded"][0]["count"] == 300
            killed = 0
            for _ in range(KILLS):
                killed += kill_at(tmp_path, rebuild, rng.uniform(0.2, full))
                status, body = post(url, "/admin/reload", {"index": "live"})
                assert status in (200, 409), body  # the folder is whole (old or new) or the reload says why
                if status == 409:
                    assert "still serving" in body["error"]
            assert killed >= 1, "every kill came after the command ended: nothing was tested"
            complete(tmp_path, rebuild)
            status, body = post(url, "/admin/reload", {"index": "live"})
            assert status == 200 and body["reloaded"][0]["count"] == 400
            n_before = len(statuses)
            deadline = time.time() + 30
            while len(statuses) < n_before + 3 and time.time() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            t.join(timeout=60)
        assert statuses and not failures, f"{len(failures)} of {len(statuses)} requests failed: {failures[:5]}"
    assert "n" in seen and len(statuses) > 10
