"""Task builders write the documented shapes, deterministically."""
import json
import os
import sys

import numpy as np
from PIL import Image

from lsb_mm.data.tasks import cross_tasks, image_tasks, keywords, read_task, text_tasks

sys.path.insert(0, os.path.dirname(__file__))
import helpers  # noqa: E402


def test_text_tasks(tmp_path):
    rs = np.random.RandomState(0)
    pairs = [(f"query {i}", " ".join(rs.choice(helpers.WORDS, 40))) for i in range(30)]
    pairs.append(("short one", "too short passage"))
    made = text_tasks(pairs, str(tmp_path), kinds=["query", "keyword", "pop-32"], seed=1)
    assert [os.path.basename(m) for m in made] == ["query", "keyword", "pop-32"]
    pop = read_task(str(tmp_path / "pop-32"))
    docs = {d["_id"]: d["text"] for d in pop.corpus}
    assert len(pop.queries) == 30 and json.load(open(tmp_path / "pop-32" / "task.json"))["skipped_queries"] == 1
    for q in pop.queries:
        (rel,) = pop.qrels[q["_id"]]
        words = q["text"].split()
        assert len(words) == 32 and f" {q['text']} " in f" {docs[rel]} "  # a 32-token span of its passage
    kw = read_task(str(tmp_path / "keyword"))
    assert all(len(q["text"].split()) == 3 for q in kw.queries)
    assert all(set(q["text"].split()) <= set(docs[next(iter(kw.qrels[q["_id"]]))].split()) for q in kw.queries)
    assert read_task(str(tmp_path / "query")).queries[0]["text"] == "query 0"
    again = tmp_path / "again"
    text_tasks(pairs, str(again), kinds=["pop-32"], seed=1)
    assert (again / "pop-32" / "queries.jsonl").read_text() == (tmp_path / "pop-32" / "queries.jsonl").read_text()
    assert (tmp_path / "pop-32" / "qrels" / "test.tsv").read_text().startswith("query-id\tcorpus-id\tscore\n")


def test_keywords_prefer_rare_terms():
    out = keywords(["the cat sat on the mat with zebra", "the cat ran", "the cat hid"], n=2)
    assert out[0].split()[0] in ("zebra", "sat", "mat") and "cat" not in out[0]


def test_image_tasks(tmp_path):
    folder = helpers.labelled_folder(tmp_path / "lab", per_class=4)
    made = image_tasks(folder, str(tmp_path / "tasks"), kinds=["class", "snippet-30"], position="random", seed=0)
    cls = read_task(made[0])
    n_classes = len(helpers.COLORS) * len(helpers.SHAPES)
    assert len(cls.queries) == 2 * n_classes and len(cls.corpus) == 2 * n_classes
    for q in cls.queries:
        assert all(d.split("/")[0] == q["label"] for d in cls.qrels[q["_id"]]) and len(cls.qrels[q["_id"]]) == 2
    assert not {q["image"] for q in cls.queries} & {d["image"] for d in cls.corpus}
    snip = read_task(made[1])
    src = {d["_id"]: d["image"] for d in snip.corpus}
    for q in snip.queries:
        (rel,) = snip.qrels[q["_id"]]
        full = Image.open(src[rel])
        crop = Image.open(q["image"])
        assert crop.size == (round(full.width * 0.3), round(full.height * 0.3))  # 30% of each side
        x0, y0, x1, y1 = q["box"]
        assert np.array_equal(np.asarray(crop), np.asarray(full.convert("RGB").crop((x0, y0, x1, y1))))
    assert any(q["box"][:2] != [0, 0] for q in snip.queries)  # random positions
    top = read_task(image_tasks(folder, str(tmp_path / "t2"), kinds=["snippet-50"])[0])
    assert all(q["box"][:2] == [0, 0] for q in top.queries)
    assert not [f for f in os.listdir(tmp_path / "tasks") if f.startswith(".")]


def test_cross_tasks(tmp_path):
    items = helpers.caption_items(tmp_path / "caps", 36)
    c2i, i2c = (read_task(m) for m in cross_tasks(items, str(tmp_path / "x")))
    assert len(c2i.queries) == 18 and len(c2i.corpus) == 36 and all(len(r) == 2 for r in c2i.qrels.values())
    assert len(i2c.queries) == 36 and all(len(r) == 1 for r in i2c.qrels.values())
