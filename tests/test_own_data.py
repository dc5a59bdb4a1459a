"""A user's own text pairs: build-tasks --split writes held-out tasks, train.jsonl and val.jsonl."""
import json
import os

import pytest

from lsb_mm.cli import main

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


@pytest.fixture
def pairs_file(tmp_path):
    """30 passages of 40 words, one query each."""
    path = tmp_path / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(30):
            passage = " ".join(f"{WORDS[(i + j) % len(WORDS)]}{i}" for j in range(40))
            f.write(json.dumps({"query": f"topic {i} {WORDS[i % len(WORDS)]}", "passage": passage}) + "\n")
    return path


def run(capsys, *argv):
    assert main(list(argv)) == 0
    cap = capsys.readouterr()
    return json.loads(cap.out), cap.err


def test_split_writes_tasks_training_and_validation(pairs_file, tmp_path, capsys):
    from lsb_mm.data.tasks import read_task
    from lsb_mm.data.training_data import load_train_data
    from lsb_mm.files import iter_jsonl

    out = tmp_path / "own"
    rep, err = run(capsys, "build-tasks", "--pairs", str(pairs_file), "--split", "0.6", "--seed", "1", "--output", str(out))
    assert rep["documents"] == {"train": 14, "validation": 4, "test": 12} and rep["pairs"] == 30
    assert sorted(os.path.basename(t) for t in rep["tasks"]) == ["keyword", "pop-16", "pop-32", "query"]
    assert rep["skipped_kinds"] == ["pop-64", "pop-128", "pop-256"] and "pop-64, pop-128, pop-256 skipped" in err
    assert all(os.path.dirname(t) == str(out / "test") for t in rep["tasks"])
    assert sorted(os.listdir(out)) == ["test", "train.jsonl", "val.jsonl", "validation"]
    test_docs = {d["text"] for d in read_task(str(out / "test" / "query")).corpus}
    val_docs = {d["text"] for d in read_task(str(out / "validation" / "query")).corpus}
    train = [r for _, r in iter_jsonl(rep["train"])]
    val = [r for _, r in iter_jsonl(rep["validation"])]
    assert len(test_docs) == 12 and len({r["pos"][0] for r in train}) == 14 and len({r["pos"][0] for r in val}) == 4
    assert not test_docs & {r["pos"][0] for r in train + val}  # nothing held out trains or validates
    assert not {r["pos"][0] for r in train} & {r["pos"][0] for r in val}
    assert val_docs == {r["pos"][0] for r in val}  # validation tasks: the validation documents
    assert {r["kind"] for r in train} == {"query", "keyword", "pop-16", "pop-32"} and len(train) == 14 * 4
    assert rep["train_queries"] == len(train) and rep["validation_queries"] == len(val)
    assert len(load_train_data(rep["train"], "text").examples) == len(train)  # the trainer's format
    again, _ = run(capsys, "build-tasks", "--pairs", str(pairs_file), "--split", "0.6", "--seed", "1", "--output",
                   str(tmp_path / "again"))
    assert open(again["train"]).read() == open(rep["train"]).read()  # seeded


def test_passages_are_cut_to_the_window(pairs_file, tmp_path, capsys, tiny_hf_dir):
    from lsb_mm.data.tasks import read_task

    rep, err = run(capsys, "build-tasks", "--pairs", str(pairs_file), "--max-tokens", "12", "--text-tasks", "query",
                   "pop-8", "pop-16", "--output", str(tmp_path / "words"))
    assert rep["cut"] == 30 and "cut 30 of 30 passages to 12 words" in err and rep["skipped_kinds"] == ["pop-16"]
    assert max(len(d["text"].split()) for d in read_task(str(tmp_path / "words" / "query")).corpus) == 12
    rep, err = run(capsys, "build-tasks", "--pairs", str(pairs_file), "--model", f"hf:{tiny_hf_dir}", "--max-tokens", "20",
                   "--text-tasks", "query", "--output", str(tmp_path / "tok"))
    assert rep["cut"] == 30 and "tokens (hf:" in err
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_hf_dir)
    for d in read_task(str(tmp_path / "tok" / "query")).corpus:
        assert len(tok(d["text"])["input_ids"]) <= 20


@pytest.mark.parametrize("argv, match", [
    (["--split", "1.5"], r"must be in \(0, 1\)"),
    (["--split", "0.6", "--val-fraction", "1"], r"--val-fraction must be in \[0, 1\)"),
    (["--max-tokens", "0"], "max_tokens must be >= 1"),
    (["--model", "open_clip:lsb-tiny-test"], "needs a Hugging Face text tower"),
])
def test_bad_split_and_cut_options(pairs_file, tmp_path, capsys, argv, match):
    import re

    assert main(["build-tasks", "--pairs", str(pairs_file), "--output", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.search(match, err[-1]) and err[-1].startswith("lsb-mm build-tasks: error:")


def test_split_needs_one_pairs_or_captions_source(tmp_path, capsys, pairs_file):
    (tmp_path / "lab" / "a").mkdir(parents=True)
    assert main(["build-tasks", "--labelled", str(tmp_path / "lab"), "--split", "0.5", "--output", str(tmp_path / "o")]) == 2
    assert "--split applies to one source" in capsys.readouterr().err
    assert main(["build-tasks", "--pairs", str(pairs_file), "--captions", str(tmp_path / "lab"), "--split", "0.5",
                 "--output", str(tmp_path / "o")]) == 2
    assert "--split applies to one source" in capsys.readouterr().err
    assert main(["build-tasks", "--labelled", str(tmp_path / "lab"), "--max-tokens", "5", "--output", str(tmp_path / "o")]) == 2
    assert "cut text passages" in capsys.readouterr().err


def test_caption_folder_split(tmp_path, capsys):
    import helpers
    from lsb_mm.data.tasks import read_task
    from lsb_mm.data.training_data import load_train_data
    from lsb_mm.files import iter_jsonl

    items = helpers.caption_items(tmp_path / "caps", 20, seed=0)
    for n, (caption, path) in enumerate(items):
        if n < 19:  # one image without its sidecar: left out, and said so
            with open(os.path.splitext(path)[0] + ".txt", "w") as f:
                f.write(caption + "\n")
    rep, err = run(capsys, "build-tasks", "--captions", str(tmp_path / "caps"), "--split", "0.5", "--output",
                   str(tmp_path / "own"))
    assert "1 of 20 images have no caption sidecar" in err
    assert rep["documents"]["train"] + rep["documents"]["validation"] + rep["documents"]["test"] == 19
    test_images = {d["image"] for d in read_task(str(tmp_path / "own" / "test" / "caption2image")).corpus}
    trained = {r["pos"][0] for _, r in iter_jsonl(rep["train"])} | {r["pos"][0] for _, r in iter_jsonl(rep["validation"])}
    assert len(test_images) == rep["documents"]["test"] and not test_images & trained
    assert len(load_train_data(rep["train"], "cross").examples) == rep["train_queries"]
    assert os.path.isdir(tmp_path / "own" / "validation" / "image2caption")
