"""index / search / eval / build-tasks end to end, on real images (scikit-learn's digits as PNG)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import lsb_mm
from lsb_mm.evaluation.evaluate import evaluate
from helpers import cli

MODEL = "open_clip:lsb-tiny-test"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """120 real 8x8 digits (scikit-learn), upscaled to 32x32 PNGs in class folders, with captions."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    d = load_digits()
    names = "zero one two three four five six seven eight nine".split()
    for i in range(120):
        label = int(d.target[i])
        folder = root / "labelled" / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray((d.images[i] * (255 / 16)).astype(np.uint8)).resize((32, 32), Image.NEAREST)
        img.save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(f"a handwritten {names[label]}\n")
    return root


@pytest.mark.slow
def test_index_then_search_finds_the_query_image_first(digits, tmp_path):
    lab = digits / "labelled"
    out = tmp_path / "digits.index"
    r = cli("index", "--model", MODEL, "--head", "slr", "--images", str(lab), "--output", str(out), "-q", "--workers", "2",
            subprocess_run=True)
    summary = json.loads(r.stdout)
    assert summary["count"] == 120 and summary["kind"] == "image"
    for name in ("three/0003.png", "seven/0017.png"):
        r = cli("search", "--model", MODEL, "--head", "slr", "--index", str(out), "--image", str(lab / name), "-k", "3", "--json")
        hits, seconds = json.loads(r.stdout)["hits"], json.loads(r.stdout)["seconds"]
        assert set(seconds) == {"index_load", "model_load", "encode", "search"} and min(seconds.values()) >= 0
        assert hits[0]["id"] == name and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert hits[0]["caption"].startswith("a handwritten")
    r = cli("search", "--model", MODEL, "--head", "slr", "--index", str(out), "--text", "a handwritten seven", "-k", "2")
    assert r.stdout.splitlines()[0].split() == ["rank", "score", "id"] and len(r.stdout.splitlines()) == 3
    # another model is refused: its fingerprint differs from the index's
    r = cli("search", "--model", MODEL, "--head", "llr", "--index", str(out), "--text", "seven", check=False,
            subprocess_run=True)
    assert r.returncode == 2 and "encode with the same model" in r.stderr


def test_sharded_indexing_equals_one_index(digits, tmp_path):
    lab = str(digits / "labelled")
    cli("index", "--model", MODEL, "--images", lab, "--output", str(tmp_path / "all"), "-q", "--workers", "0")
    for i in (1, 2, 3):
        cli("index", "--model", MODEL, "--images", lab, "--shard", f"{i}/3", "--output", str(tmp_path / f"s{i}"), "-q",
            "--workers", "0")
    q = str(digits / "labelled" / "five" / "0005.png")
    one = json.loads(cli("search", "--model", MODEL, "--index", str(tmp_path / "all"), "--image", q, "--json").stdout)
    three = json.loads(cli("search", "--model", MODEL, "--index", *[str(tmp_path / f"s{i}") for i in (1, 2, 3)],
                           "--image", q, "--json").stdout)
    assert [h["id"] for h in one["hits"]] == [h["id"] for h in three["hits"]]


@pytest.mark.slow
def test_skip_bad_reports_unreadable_images(digits, tmp_path):
    import shutil

    folder = tmp_path / "imgs"
    shutil.copytree(digits / "labelled" / "one", folder)
    (folder / "broken.png").write_bytes(b"not a png")
    r = cli("index", "--model", MODEL, "--images", str(folder), "--output", str(tmp_path / "i"), "-q", check=False)
    assert r.returncode == 2 and "broken.png" in r.stderr
    r = cli("index", "--model", MODEL, "--images", str(folder), "--output", str(tmp_path / "i"), "-q", "--skip-bad")
    s = json.loads(r.stdout)
    assert s["skipped"] == 1 and s["count"] == len(list(folder.glob("*.png"))) - 1
    report = [json.loads(x) for x in open(s["skipped_report"])]
    assert report[0]["path"].endswith("broken.png")


def test_build_tasks_and_eval(digits, tmp_path):
    tasks = tmp_path / "tasks"
    cli("build-tasks", "--labelled", str(digits / "labelled"), "--image-tasks", "class", "snippet-50", "--output", str(tasks))
    cli("build-tasks", "--captions", str(digits / "labelled" / "three"), "--output", str(tasks))
    assert sorted(os.listdir(tasks)) == ["caption2image", "class", "image2caption", "snippet-50-top-left"]
    out = tmp_path / "results"
    r = cli("eval", "--model", MODEL, "--model", "open_clip:lsb-tiny-test", "--head", "slr", "--tasks", str(tasks),
            "--output", str(out), "--compare-plain", "-q")
    paths = json.loads(r.stdout)
    by_label = json.load(open(paths["json"]))
    assert list(by_label) == [MODEL, f"{MODEL} (plain)", f"{MODEL} #2", f"{MODEL} #2 (plain)"]  # keyed by label
    runs = list(by_label.values())
    assert [x["model"] for x in runs] == list(by_label)
    assert set(runs[0]["tasks"]) == {"caption2image", "class", "image2caption", "snippet-50-top-left"}
    md = open(paths["markdown"]).read()
    assert "| model | " in md and "snippet-50-top-left" in md
    with Image.open(paths["plot"]) as im:
        assert im.size[0] > 400
    # the Python API agrees with the CLI
    model = lsb_mm.create_model(MODEL, head="slr")
    res = evaluate(model, str(tasks / "class"))
    assert res["tasks"]["class"]["metrics"] == pytest.approx(runs[0]["tasks"]["class"]["metrics"], abs=1e-6)
    assert 0 < res["tasks"]["class"]["metrics"]["ndcg@10"] <= 1


def test_image_search_script_writes_an_escaped_gallery(digits, tmp_path):
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("image_search", os.path.join(os.path.dirname(__file__), "..", "scripts",
                                                                                 "image_search.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    folder = tmp_path / "imgs"
    shutil.copytree(digits / "labelled" / "four", folder)
    first = sorted(folder.glob("*.png"))[0]
    (folder / first.name.replace(".png", ".txt")).write_text('<script>alert("x")</script> & "four"\n')
    evil = folder / "a<b>&c.png"
    shutil.copy(sorted(folder.glob("*.png"))[1], evil)
    assert mod.main(["index", "--model", MODEL, "--images", str(folder), "--output", str(tmp_path / "idx"), "--workers", "0"]) == 0
    html_path = tmp_path / "gallery.html"
    assert mod.main(["query", "--model", MODEL, "--index", str(tmp_path / "idx"), "--image", str(first), "--text",
                     "a handwritten four", "-k", "4", "--html", str(html_path)]) == 0
    page = html_path.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;four&quot;" in page
    assert "a&lt;b&gt;&amp;c.png" in page and "a<b>" not in page
    assert page.count("data:image/png;base64,") == 1 + 4 + 4  # the query image, then 4 hits per query
    image_section = page.split("Query: image ")[1]
    first_hit = image_section[image_section.index("#1"):]
    assert first_hit.split("class='name'>")[1].startswith(first.name)  # the query image itself ranks first


def test_eval_follows_the_cut_offs_asked_for(digits, tmp_path):
    """--k 1 5: metrics, primary, log line, markdown and plot at those cut-offs (no @10 anywhere)."""
    tasks = tmp_path / "tasks"
    cli("build-tasks", "--labelled", str(digits / "labelled"), "--image-tasks", "class", "--output", str(tasks))
    out = tmp_path / "results"
    r = cli("-v", "eval", "--model", MODEL, "--head", "slr", "--tasks", str(tasks), "--output", str(out), "--k", "1", "5",
            "--compare-plain", "-q")
    runs = list(json.load(open(json.loads(r.stdout)["json"])).values())
    metrics = runs[0]["tasks"]["class"]["metrics"]
    assert runs[0]["primary"] == "ndcg@5" and runs[0]["ks"] == [1, 5]
    assert {k.split("@")[1] for k in metrics} == {"1", "5"}
    md = open(out / "results.md").read()
    assert "NDCG@5 / MRR@5 / R@5" in md and "@10" not in md
    for bad in (["0"], ["-3", "5"]):
        r = cli("eval", "--model", MODEL, "--tasks", str(tasks), "--output", str(out), "--k", *bad, check=False)
        assert r.returncode == 2 and "cut-offs k must be a positive integer, got" in r.stderr and "Traceback" not in r.stderr
    from lsb_mm.evaluation.reports import markdown_table

    with pytest.raises(ValueError, match="different cut-offs"):
        markdown_table([runs[0], {**runs[1], "primary": "ndcg@10"}])
    assert "NDCG@1 / R@1" in markdown_table(runs, columns=["ndcg@1", "recall@1"])


def test_corpus_cache_encodes_each_corpus_once_per_model(digits, tmp_path):
    from lsb_mm.evaluation.evaluate import CorpusCache

    tasks = tmp_path / "tasks"
    cli("build-tasks", "--labelled", str(digits / "labelled"), "--image-tasks", "class", "--output", str(tasks))
    a = lsb_mm.create_model(MODEL, head="slr")
    b = lsb_mm.create_model(MODEL, head="slr", seed=1)  # other weights: other embeddings
    cache = CorpusCache()
    on = evaluate(a, str(tasks), corpus_cache=cache)
    off = evaluate(a, str(tasks), enhance=False, corpus_cache=cache)  # plain documents: the same encoding
    assert (cache.misses, cache.hits, len(cache)) == (1, 1, 1)
    other = evaluate(b, str(tasks), corpus_cache=cache)
    assert (cache.misses, len(cache)) == (2, 2)  # never served another model's embeddings
    fresh = evaluate(b, str(tasks))
    assert other["tasks"]["class"]["metrics"] == fresh["tasks"]["class"]["metrics"]
    # the same backbone with another query head: the same documents, served from the cache
    c = lsb_mm.create_model(MODEL, head="llr", head_init="random")
    assert c.document_fingerprint() == a.document_fingerprint() != c.fingerprint()
    with_c = evaluate(c, str(tasks), corpus_cache=cache)
    assert (cache.misses, cache.hits) == (2, 2)
    assert with_c["tasks"]["class"]["metrics"] == evaluate(c, str(tasks))["tasks"]["class"]["metrics"]
    d = lsb_mm.create_model(MODEL, head="llr", head_init="random", fusion_p=True)  # heads on documents too
    assert d.document_fingerprint() != c.document_fingerprint()
    assert on["tasks"]["class"]["metrics"] == off["tasks"]["class"]["metrics"]  # an untrained head is the identity
    with pytest.raises(TypeError):
        evaluate(a, str(tasks), _corpus_cache={})  # the private argument is gone
