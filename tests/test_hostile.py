"""Hostile input, class by class (issue 13): every bad input gets exit 2 and one line that names
the file, field or value; files that were there before are unchanged byte for byte; nothing is
silently wrong. Each case runs on its own copy of a small world (a saved model, an index, a run
folder with a checkpoint, tasks, images) built once; the classes are listed in ``CASES``."""
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
from typing import Callable, List

import numpy as np
import pytest
from PIL import Image

import helpers
from lsb_mm.cli import main

MODEL = "model"  # a saved tiny model folder inside the world (stable fingerprint)


@contextlib.contextmanager
def inside(folder):
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def run(folder, argv):
    """``(exit code, stdout, stderr)`` of the CLI run in ``folder``."""
    out, err = io.StringIO(), io.StringIO()
    with inside(folder), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def snapshot(root) -> dict:
    """``{relative path: sha256 of bytes, or 'link -> target'}`` of everything under ``root``."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(base, d))]:
            full = os.path.join(base, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                out[rel] = "link -> " + os.readlink(full)
            else:
                with open(full, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import lsb_mm

    w = tmp_path_factory.mktemp("world")
    lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr").save_pretrained(str(w / MODEL))
    docs = [f"document {i} about {t}" for i, t in enumerate(["cats", "dogs", "rivers", "stones", "clouds", "trees", "boats"])]
    helpers.write_jsonl(w / "corpus.jsonl", [{"_id": f"d{i}", "text": t} for i, t in enumerate(docs)])
    (w / "texts.txt").write_text("a cat\na river\n")
    helpers.write_jsonl(w / "pairs.jsonl", [{"query": f"about {t}", "passage": f"{t} " * 40 + f"end {i}"}
                                              for i, t in enumerate(["cats", "dogs", "rivers", "stones", "clouds", "trees",
                                                                     "boats", "hills", "roads", "lamps"])])
    helpers.write_jsonl(w / "train.jsonl", helpers.passage_queries(24, per_passage=1, dev=0)[0])
    helpers.labelled_folder(str(w / "labelled"), per_class=3)
    for caption, path in helpers.caption_items(str(w / "captions"), 8, seed=0):
        with open(os.path.splitext(path)[0] + ".txt", "w") as f:
            f.write(caption + "\n")
    Image.new("L", (20000, 20000)).save(w / "bomb.png", optimize=True)  # ~390 KB that decodes to 400 Mpx
    Image.new("L", (10000, 10000)).save(w / "big.png", optimize=True)  # PIL only warns at this size
    (w / "fake.png").write_text("not an image")
    good = w / "labelled" / sorted(os.listdir(w / "labelled"))[0]
    Image.open(next(good.iterdir())).convert("RGB").save(w / "photo.jpg")
    (w / "cut.jpg").write_bytes((w / "photo.jpg").read_bytes()[:200])  # a truncated JPEG
    (w / "outside").mkdir()
    (w / "outside" / "precious.txt").write_text("keep me\n")
    for argv in (["index", "--model", MODEL, "--corpus", "corpus.jsonl", "--bm25", "--output", "idx", "-q"],
                 ["train", "--model", MODEL, "--train-data", "train.jsonl", "--max-steps", "2", "--batch-size", "8",
                  "--output", "run", "-q"],
                 ["build-tasks", "--pairs", "pairs.jsonl", "--text-tasks", "query", "keyword", "--output", "tasks"]):
        code, _, err = run(w, argv)
        assert code == 0, err
    return w


@dataclasses.dataclass
class Case:
    name: str  # class / case
    setup: Callable  # (world copy) -> argv
    match: str  # regex the one error line must match


def edit_json(path, change):
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, "w") as f:
        json.dump(data, f)


def state(w):
    return w / "run" / "checkpoint-000002" / "trainer_state.json"


def resume(w):
    return ["train", "--model", MODEL, "--train-data", "train.jsonl", "--max-steps", "2", "--batch-size", "8",
            "--output", "run", "--resume", "-q"]


def swap_lines(path):
    lines = open(path).read().splitlines(keepends=True)
    lines[0], lines[1] = lines[1], lines[0]
    open(path, "w").write("".join(lines))


def write(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def folder_of(w, *names):
    """A folder ``imgs`` in the world copy holding copies of ``names``."""
    os.makedirs(w / "imgs", exist_ok=True)
    for name in names:
        shutil.copy(w / name, w / "imgs")
    return "imgs"


SEARCH = ["search", "--model", MODEL, "--index", "idx", "--text", "a cat"]
TRAIN = ["train", "--model", MODEL, "--train-data", "train.jsonl", "--max-steps", "2", "--batch-size", "8", "-q"]
LATIN1 = "caf\xe9 cr\xe8me\n".encode("latin-1")

CASES: List[Case] = [
    # -- k -------------------------------------------------------------------------------------------
    Case("k/zero", lambda w: SEARCH + ["-k", "0"], r"k must be a positive integer, got 0"),
    Case("k/negative", lambda w: SEARCH + ["-k", "-3"], r"k must be a positive integer, got -3"),
    # -- a training run folder -----------------------------------------------------------------------
    Case("run/reused output", lambda w: TRAIN + ["--output", "run"], r"--output run holds an earlier run .*--resume.*--overwrite"),
    Case("run/output is a file", lambda w: TRAIN + ["--output", "texts.txt"], r"--output texts.txt is a file"),
    Case("run/log is a symlink",
         lambda w: (os.remove(w / "run" / "train_log.jsonl"), os.symlink(w / "outside" / "precious.txt",
                    w / "run" / "train_log.jsonl"), resume(w))[-1], r"train_log.jsonl is a symbolic link"),
    Case("resume/step beyond the run", lambda w: (edit_json(state(w), lambda s: s.update(step=99)), resume(w))[-1],
         r"trainer_state.json: step 99 is beyond this run's 2 steps"),
    Case("resume/negative step", lambda w: (edit_json(state(w), lambda s: s.update(step=-5)), resume(w))[-1],
         r"trainer_state.json: 'step' must be an integer >= 0, got -5"),
    Case("resume/step as text", lambda w: (edit_json(state(w), lambda s: s.update(step="2")), resume(w))[-1],
         r"'step' must be an integer >= 0, got '2'"),
    Case("resume/step null", lambda w: (edit_json(state(w), lambda s: s.update(step=None)), resume(w))[-1],
         r"'step' must be an integer >= 0, got None"),
    Case("resume/epoch disagrees", lambda w: (edit_json(state(w), lambda s: s.update(epoch=7)), resume(w))[-1],
         r"step 2, epoch 7 and micro-batch \d+ do not agree"),
    Case("resume/state not JSON", lambda w: (write(str(state(w)), b"{oops"), resume(w))[-1],
         r"trainer_state.json is not valid JSON"),
    Case("resume/state not UTF-8", lambda w: (write(str(state(w)), b'{"step": "\xff"}'), resume(w))[-1],
         r"trainer_state.json is not valid JSON"),
    Case("train/resume and overwrite", lambda w: TRAIN + ["--output", "run", "--resume", "--overwrite"],
         r"resume or overwrite, not both"),
    Case("train/data not UTF-8", lambda w: (write(str(w / "bad.jsonl"), b'{"query": "\xff", "pos": ["x"]}\n'),
                                            [a if a != "train.jsonl" else "bad.jsonl" for a in TRAIN] + ["--output", "new"])[-1],
         r"bad.jsonl:1: not UTF-8 text"),
    # -- build-tasks ----------------------------------------------------------------------------------
    Case("tasks/existing task folder", lambda w: ["build-tasks", "--pairs", "pairs.jsonl", "--text-tasks", "query",
                                                  "--output", "tasks"], r"task folder .*tasks/query exists: add --overwrite"),
    Case("tasks/foreign folder, even with --overwrite",
         lambda w: (write(str(w / "tasks" / "query" / "my_notes.txt"), b"mine\n"),
                    ["build-tasks", "--pairs", "pairs.jsonl", "--text-tasks", "query", "--output", "tasks", "--overwrite"])[-1],
         r"tasks/query exists and is not a task folder written by lsb-mm \(it holds my_notes.txt\)"),
    Case("tasks/task folder is a symlink",
         lambda w: (os.makedirs(w / "t2"), os.symlink(w / "outside", w / "t2" / "query"),
                    ["build-tasks", "--pairs", "pairs.jsonl", "--text-tasks", "query", "--output", "t2", "--overwrite"])[-1],
         r"t2/query exists and is a symbolic link, not a task folder"),
    Case("tasks/earlier split", lambda w: (write(str(w / "split" / "train.jsonl"), b"{}\n"),
                                           ["build-tasks", "--pairs", "pairs.jsonl", "--split", "0.6", "--output", "split"])[-1],
         r"--output split already holds train.jsonl of an earlier split: add --overwrite"),
    Case("tasks/output is a file", lambda w: ["build-tasks", "--pairs", "pairs.jsonl", "--output", "texts.txt"],
         r"--output texts.txt is a file"),
    Case("tasks/pairs not UTF-8", lambda w: (write(str(w / "p.jsonl"), b'{"query": "q", "passage": "caf\xe9"}\n'),
                                             ["build-tasks", "--pairs", "p.jsonl", "--output", "new"])[-1],
         r"p.jsonl:1: not UTF-8 text"),
    Case("tasks/bomb among captions", lambda w: (shutil.copy(w / "bomb.png", w / "captions" / "zz.png"),
                                                 write(str(w / "captions" / "zz.txt"), b"a bomb\n"),
                                                 ["build-tasks", "--captions", "captions", "--output", "new"])[-1],
         r"--captions captions: 1 of 9 images cannot be read, e.g. .*zz.png: too many pixels"),
    Case("tasks/text file named .png among labelled images",
         lambda w: (shutil.copy(w / "fake.png", w / "labelled" / sorted(os.listdir(w / "labelled"))[0] / "zz.png"),
                    ["build-tasks", "--labelled", "labelled", "--output", "new"])[-1],
         r"--labelled labelled: 1 of \d+ images cannot be read, e.g. .*zz.png: not a decodable image"),
    Case("tasks/caption sidecar not UTF-8",
         lambda w: (write(str(next((w / "captions").rglob("*.txt"))), LATIN1),
                    ["build-tasks", "--captions", "captions", "--output", "new"])[-1],
         r"caption sidecar of .*\.png: .*\.txt:1 is not UTF-8 text"),
    # -- index folders --------------------------------------------------------------------------------
    Case("index/ids swapped", lambda w: (swap_lines(w / "idx" / "ids.jsonl"), SEARCH)[-1],
         r"idx/ids.jsonl: checksum does not match manifest.json"),
    Case("index/checksums removed", lambda w: (edit_json(w / "idx" / "manifest.json", lambda m: m.pop("sha256")),
                                               SEARCH)[-1], r"manifest.json: field 'sha256' .* is missing"),
    Case("index/fingerprint removed", lambda w: (edit_json(w / "idx" / "manifest.json", lambda m: m.pop("fingerprint")),
                                                 SEARCH)[-1], r"manifest.json: field 'fingerprint' must be"),
    Case("index/fingerprint not text", lambda w: (edit_json(w / "idx" / "manifest.json", lambda m: m.update(fingerprint=7)),
                                                  SEARCH)[-1], r"field 'fingerprint' must be .* got 7"),
    Case("index/metric edited", lambda w: (edit_json(w / "idx" / "manifest.json", lambda m: m.update(metric="l2")),
                                           SEARCH)[-1], r"metric 'l2' unknown"),
    Case("index/another model", lambda w: ["search", "--model", "open_clip:lsb-tiny-test", "--head", "llr", "--index",
                                           "idx", "--text", "a cat"], r"the queries come from model \w+, the index was built"),
    Case("index/metadata edited", lambda w: (swap_lines(w / "idx" / "metadata.jsonl"), SEARCH)[-1],
         r"idx/metadata.jsonl: checksum does not match"),
    Case("index/ids not UTF-8", lambda w: (write(str(w / "idx" / "ids.jsonl"), b'"d\xff"\n'), SEARCH)[-1],
         r"idx/ids.jsonl: checksum does not match"),
    Case("index/bm25 side edited", lambda w: (write(str(w / "idx" / "bm25" / "ids.json"), b'["x"]'),
                                              SEARCH + ["--hybrid", "rrf"])[-1], r"the BM25 side of index idx: .*ids.json: checksum does not match"),
    # -- model folders --------------------------------------------------------------------------------
    Case("model/backbone file removed", lambda w: (os.remove(next((w / MODEL / "backbone").iterdir())),
                                                   ["encode", "--model", MODEL, "--texts", "texts.txt", "--output", "e.npy"])[-1],
         r"backbone files differ from lsb_config.json: missing \['backbone/"),
    Case("model/backbone file edited",
         lambda w: (write(str(next((w / MODEL / "backbone").iterdir())), b"{}"),
                    ["encode", "--model", MODEL, "--texts", "texts.txt", "--output", "e.npy"])[-1],
         r"backbone/.*: checksum does not match lsb_config.json"),
    Case("model/weights outside the folder",
         lambda w: (edit_json(w / MODEL / "lsb_config.json", lambda c: c["weights"].update(file="../idx/index.faiss")),
                    ["encode", "--model", MODEL, "--texts", "texts.txt", "--output", "e.npy"])[-1],
         r"weights.file must be a file name inside the folder, got '../idx/index.faiss'"),
    # -- images ---------------------------------------------------------------------------------------
    Case("image/bomb, encode", lambda w: ["encode", "--model", MODEL, "--images", folder_of(w, "bomb.png"), "--output", "e.npy"],
         r"bomb.png: too many pixels \(over twice the limit of 89,478,485\): a possible decompression bomb"),
    Case("image/over the limit, encode", lambda w: ["encode", "--model", MODEL, "--images", folder_of(w, "big.png"),
                                                    "--output", "e.npy"],
         r"big.png: it decodes to 10000 x 10000 = 100,000,000 pixels, over the limit of 89,478,485"),
    Case("image/bomb, search", lambda w: ["search", "--model", MODEL, "--index", "idx", "--image", "bomb.png"],
         r"bomb.png: too many pixels"),
    Case("image/bomb in a folder, index", lambda w: (os.makedirs(w / "imgs"), shutil.copy(w / "photo.jpg", w / "imgs"),
                                                     shutil.copy(w / "bomb.png", w / "imgs"),
                                                     ["index", "--model", MODEL, "--images", "imgs", "--output", "new",
                                                      "--workers", "0", "-q"])[-1], r"bomb.png: too many pixels"),
    Case("image/truncated JPEG, 2 workers", lambda w: (os.makedirs(w / "imgs"), shutil.copy(w / "photo.jpg", w / "imgs"),
                                                      shutil.copy(w / "cut.jpg", w / "imgs"),
                                                      ["encode", "--model", MODEL, "--images", "imgs", "--output", "e.npy",
                                                       "--workers", "2", "-q"])[-1], r"cut.jpg: not a decodable image"),
    Case("image/text file named .png", lambda w: ["encode", "--model", MODEL, "--images", folder_of(w, "photo.jpg", "fake.png"),
                                                  "--output", "e.npy"],
         r"fake.png: not a decodable image"),
    # -- paths: a file where a folder goes, a folder where a file goes, missing, someone else's ------------
    Case("path/train output under a file", lambda w: TRAIN + ["--output", "texts.txt/sub"], r"texts.txt/sub: Not a directory"),
    Case("path/pairs missing", lambda w: ["build-tasks", "--pairs", "nope.jsonl", "--output", "new"],
         r"nope.jsonl: No such file or directory"),
    Case("path/index output is a file", lambda w: ["index", "--model", MODEL, "--corpus", "corpus.jsonl", "--output",
                                                   "texts.txt"], r"texts.txt exists and is a file, not an lsb-mm index folder"),
    Case("path/index output is someone's folder", lambda w: ["index", "--model", MODEL, "--corpus", "corpus.jsonl",
                                                            "--output", "outside"],
         r"outside exists and is a folder without manifest.json, not an lsb-mm index folder; refusing to replace it"),
    Case("path/encode output is a folder", lambda w: ["encode", "--model", MODEL, "--texts", "texts.txt", "--output", "idx"],
         r"--output idx is a folder; give the path of the .npy file"),
    Case("path/eval output is a file", lambda w: ["eval", "--model", "bm25", "--tasks", "tasks", "--output", "texts.txt"],
         r"texts.txt: File exists"),
    Case("path/negative workers", lambda w: ["encode", "--model", MODEL, "--images", "labelled", "--output", "e.npy",
                                             "--workers", "-1"], r"--workers must be >= 0"),
    # -- text and tasks -------------------------------------------------------------------------------
    Case("text/texts not UTF-8", lambda w: (write(str(w / "t.txt"), LATIN1),
                                            ["encode", "--model", MODEL, "--texts", "t.txt", "--output", "e.npy"])[-1],
         r"t.txt:1: not UTF-8 text"),
    Case("text/empty line", lambda w: (write(str(w / "t.txt"), b"a\n\nb\n"),
                                       ["encode", "--model", MODEL, "--texts", "t.txt", "--output", "e.npy"])[-1],
         r"t.txt:2: empty line"),
    Case("eval/qrels not UTF-8", lambda w: (write(str(w / "tasks" / "query" / "qrels" / "test.tsv"), b"q0\td\xff\t1\n"),
                                            ["eval", "--model", "bm25", "--tasks", "tasks", "--output", "res"])[-1],
         r"qrels/test.tsv:1: not UTF-8 text"),
    Case("eval/qrels score not a number",
         lambda w: (write(str(w / "tasks" / "query" / "qrels" / "test.tsv"), b"query-id\tcorpus-id\tscore\nq0\td0\tabc\n"),
                    ["eval", "--model", "bm25", "--tasks", "tasks", "--output", "res"])[-1],
         r"qrels/test.tsv:2: the score must be an integer relevance grade, got 'abc'"),
    Case("eval/qrels score nan", lambda w: (write(str(w / "tasks" / "query" / "qrels" / "test.tsv"), b"q0\td0\tnan\n"),
                                            ["eval", "--model", "bm25", "--tasks", "tasks", "--output", "res"])[-1],
         r"got 'nan'"),
    Case("eval/qrels row short", lambda w: (write(str(w / "tasks" / "query" / "qrels" / "test.tsv"), b"q0\td0\n"),
                                            ["eval", "--model", "bm25", "--tasks", "tasks", "--output", "res"])[-1],
         r"qrels/test.tsv:1: expected 'query-id<TAB>corpus-id<TAB>score'"),
    Case("eval/task.json not JSON", lambda w: (write(str(w / "tasks" / "query" / "task.json"), b"{oops"),
                                               ["eval", "--model", "bm25", "--tasks", "tasks", "--output", "res"])[-1],
         r"task.json is not valid JSON"),
    Case("eval/duplicate document id",
         lambda w: (write(str(w / "tasks" / "query" / "corpus.jsonl"),
                          b'{"_id": "d0", "text": "a"}\n{"_id": "d0", "text": "b"}\n'),
                    ["eval", "--model", "bm25", "--tasks", "tasks", "--output", "res"])[-1],
         r"corpus.jsonl:2: '_id' 'd0' appears twice"),
    Case("eval/document text a number", lambda w: (write(str(w / "tasks" / "query" / "corpus.jsonl"), b'{"_id": "d0", "text": 7}\n'),
                                                   ["eval", "--model", "bm25", "--tasks", "tasks", "--output", "res"])[-1],
         r"corpus.jsonl:1: field 'text' must be a string, got int"),
    Case("eval/k zero", lambda w: ["eval", "--model", "bm25", "--tasks", "tasks", "--output", "res", "--k", "0"],
         r"cut-offs k must be a positive integer, got 0"),
    Case("index/format version true", lambda w: (edit_json(w / "idx" / "manifest.json", lambda m: m.update(format_version=True)),
                                                 SEARCH)[-1], r"format 'lsb-mm-index' version True is not supported"),
    Case("model/format version true",
         lambda w: (edit_json(w / MODEL / "lsb_config.json", lambda c: c.update(format_version=True)),
                    ["encode", "--model", MODEL, "--texts", "texts.txt", "--output", "e.npy"])[-1],
         r"format_version True is not supported"),
    # -- device names: checked before anything is placed (cuda:99 is missing on any machine) ------------
    Case("device/encode on a GPU that is not there", lambda w: ["encode", "--model", MODEL, "--texts", "texts.txt",
                                                               "--output", "e.npy", "--device", "cuda:99"],
         r"device 'cuda:99': torch sees (no CUDA GPU|\d+ CUDA GPU)"),
    Case("device/encode bogus", lambda w: ["encode", "--model", MODEL, "--texts", "texts.txt", "--output", "e.npy",
                                           "--device", "bogus"], r"device 'bogus' is not a device: expected 'auto', 'cpu'"),
    Case("device/search meta", lambda w: SEARCH + ["--device", "meta"], r"device 'meta' is not a device"),
    Case("device/search gpu (FAISS's word)", lambda w: SEARCH + ["--device", "gpu"], r"device 'gpu' is not a device"),
    Case("device/train on a GPU that is not there", lambda w: TRAIN + ["--output", "fresh-run", "--device", "cuda:99"],
         r"--device 'cuda:99': torch sees (no CUDA GPU|\d+ CUDA GPU)"),
    Case("device/train bogus", lambda w: TRAIN + ["--output", "fresh-run", "--device", "cuda:x"], r"--device 'cuda:x' is not a device"),
    # -- data loss: an output that would replace an input, or results lsb-mm wrote earlier ---------------
    Case("loss/encode output is the texts input", lambda w: ["encode", "--model", MODEL, "--texts", "texts.txt",
                                                            "--output", "texts.txt"],
         r"--output texts.txt would write texts.txt, which is the --texts input"),
    Case("loss/encode rows file is the texts input", lambda w: (shutil.copy(w / "texts.txt", w / "e.rows.jsonl"),
                                                               ["encode", "--model", MODEL, "--texts", "e.rows.jsonl",
                                                                "--output", "e.npy"])[-1],
         r"--output e.npy would write e.rows.jsonl, which is the --texts input"),
    Case("loss/encode output links to the texts input", lambda w: (os.symlink("texts.txt", w / "e.npy"),
                                                                  ["encode", "--model", MODEL, "--texts", "texts.txt",
                                                                   "--output", "e.npy"])[-1],
         r"--output e.npy would write e.npy, which is the --texts input"),
    Case("loss/eval output holds earlier results", lambda w: (os.makedirs(w / "res"), write(str(w / "res" / "results.json"), b"{}"),
                                                             ["eval", "--model", "bm25", "--tasks", "tasks", "--output", "res"])[-1],
         r"--output res holds results.json of an earlier eval: pass --overwrite"),
    Case("loss/eval output holds an earlier plot", lambda w: (os.makedirs(w / "res"), write(str(w / "res" / "recall.png"), b"x"),
                                                             ["eval", "--model", "bm25", "--tasks", "tasks", "--output", "res"])[-1],
         r"--output res holds recall.png of an earlier eval"),
    Case("loss/eval output holds a link named results.md",
         lambda w: (os.makedirs(w / "res"), os.symlink("../texts.txt", w / "res" / "results.md"),
                    ["eval", "--model", "bm25", "--tasks", "tasks", "--output", "res"])[-1],
         r"--output res holds results.md of an earlier eval"),
    Case("eval/corpus not UTF-8", lambda w: (write(str(w / "tasks" / "query" / "corpus.jsonl"), b'{"_id": "d0", "text": "\xff"}\n'),
                                             ["eval", "--model", "bm25", "--tasks", "tasks", "--output", "res"])[-1],
         r"corpus.jsonl:1: not UTF-8 text"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(case, world, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    argv = case.setup(w)
    before = snapshot(w)
    code, _, err = run(w, argv)
    errors = [line for line in err.splitlines() if re.match(r"lsb-mm( [\w-]+)?: error: ", line)]
    assert code == 2, err[-2000:]
    assert "Traceback" not in err and len(errors) == 1, err[-2000:]
    assert re.search(case.match, errors[0]), errors[0]
    after = snapshot(w)
    changed = sorted(p for p in before if after.get(p) != before[p])
    assert not changed, f"changed or removed by a refused command: {changed}"


def test_the_cases_cover_every_class():
    classes = {c.name.split("/")[0] for c in CASES}
    assert classes == {"k", "run", "resume", "train", "tasks", "index", "model", "image", "path", "text", "eval", "loss", "device"}
    assert len({c.name for c in CASES}) == len(CASES)


# -- what must succeed, and say so ---------------------------------------------------------------------
def test_an_absurd_k_is_capped_not_allocated(world, tmp_path):
    code, out, err = run(world, SEARCH + ["-k", "1000000000000", "--json"])
    assert code == 0, err
    assert len(json.loads(out)["hits"]) == 7  # every document, no Q x k array


def test_overwrite_replaces_only_the_earlier_run(world, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    (w / "run" / "notes.txt").write_text("mine\n")
    os.makedirs(w / "run" / ".checkpoint-000009.tmp-x")
    os.makedirs(w / ".idx.tmp-x")  # what a killed index write leaves beside its folder
    os.makedirs(w / ".idx.old-x")
    os.makedirs(w / ".idx2.old-y")  # a crash between the two renames: the old copy is the only one ...
    for out in ("idx", "idx2"):
        code, _, err = run(w, ["index", "--model", MODEL, "--corpus", "corpus.jsonl", "--output", out, "-q"])
        assert code == 0, err
    assert not [n for n in os.listdir(w) if n.startswith((".idx.", ".idx2."))]  # ... until the write that replaces it
    code, _, err = run(w, TRAIN + ["--output", "run", "--overwrite", "--max-steps", "3"])
    assert code == 0, err
    assert (w / "run" / "notes.txt").read_text() == "mine\n"  # not part of the run: kept
    assert sorted(p.name for p in (w / "run").iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-000003"]
    assert not (w / "run" / ".checkpoint-000009.tmp-x").exists()  # a stale temp folder is cleared
    assert json.loads((w / "run" / "run_info.json").read_text())["total_steps"] == 3


def test_an_empty_folder_may_receive_a_model_or_an_index(tmp_path):
    import lsb_mm

    m = lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr")
    for name in ("m", "ix"):
        os.makedirs(tmp_path / name)
    m.save_pretrained(str(tmp_path / "m"))
    lsb_mm.Index.build(m.encode_text(["a", "b"]), ids=["a", "b"]).save(str(tmp_path / "ix"))
    assert lsb_mm.load_model(str(tmp_path / "m")).fingerprint() == m.fingerprint()
    assert len(lsb_mm.Index.load(str(tmp_path / "ix"))) == 2


def test_skip_bad_reports_every_bad_image_and_goes_on(world, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    os.makedirs(w / "imgs")
    for name in ("photo.jpg", "bomb.png", "fake.png", "cut.jpg"):
        shutil.copy(w / name, w / "imgs")
    code, out, err = run(w, ["index", "--model", MODEL, "--images", "imgs", "--output", "ix", "--skip-bad", "-q"])
    assert code == 0, err
    rep = json.loads(out)
    assert rep["count"] == 1 and rep["skipped"] == 3
    reasons = {json.loads(line)["path"].split("/")[-1]: json.loads(line)["reason"]
               for line in open(w / rep["skipped_report"])}
    assert set(reasons) == {"bomb.png", "fake.png", "cut.jpg"} and "too many pixels" in reasons["bomb.png"]


def test_cross_training_skip_bad_decodes_and_reports(world, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    shutil.copy(w / "fake.png", w / "captions" / "zz.png")
    (w / "captions" / "zz.txt").write_text("a fake\n")
    code, _, err = run(w, ["train", "--model", MODEL, "--modality", "cross", "--train-data", "captions", "--max-steps", "1",
                           "--batch-size", "4", "--skip-bad", "--output", "cross", "-q"])
    assert code == 0, err
    skipped = [json.loads(line) for line in open(w / "cross" / "skipped.jsonl")]
    assert any(s["source"].endswith("zz.png") and "undecodable" in s["reason"] for s in skipped)


def test_loose_qrels_are_reported(world, tmp_path, caplog):
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    with open(w / "tasks" / "query" / "qrels" / "test.tsv", "a") as f:
        f.write("q0\tnot-a-doc\t1\nq-unknown\td0\t1\n")
    code, _, err = run(w, ["eval", "--model", "bm25", "--tasks", "tasks/query", "--output", "res"])
    assert code == 0, err
    text = caplog.text
    assert "1 relevant document(s) not in corpus.jsonl, counted as never retrieved" in text
    assert "1 qrels query id(s) not in queries.jsonl, left out" in text


def test_float_and_signed_tiffs_are_scaled_not_blackened(tmp_path):
    from lsb_mm.data.images import load_image

    ramp = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(ramp, mode="F").save(tmp_path / "unit.tif")
    Image.fromarray(ramp * 1000 - 500, mode="F").save(tmp_path / "wide.tif")
    Image.fromarray((ramp * 2000 - 1000).astype(np.int32), mode="I").save(tmp_path / "signed.tif")
    for name in ("unit.tif", "wide.tif", "signed.tif"):
        a = np.asarray(load_image(str(tmp_path / name)))[..., 0]
        assert a.min() == 0 and a.max() == 255 and 120 < a.mean() < 135, name
        assert np.all(np.diff(a.reshape(-1).astype(int)) >= 0), name  # order kept


def test_a_byte_order_mark_is_not_text(world, tmp_path):
    import lsb_mm

    (tmp_path / "t.txt").write_bytes("\ufeffa cat\n".encode("utf-8"))
    code, _, err = run(world, ["encode", "--model", MODEL, "--texts", str(tmp_path / "t.txt"), "--output",
                               str(tmp_path / "e.npy")])
    assert code == 0, err
    m = lsb_mm.load_model(str(world / MODEL))
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), m.encode_text(["a cat"]), atol=1e-6)
