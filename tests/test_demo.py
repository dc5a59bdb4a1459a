"""`lsb-mm demo` on a slice of the real Tux Paint stamps, and its message when the data is missing."""
import json

import pytest

import lsb_mm
from conftest import need
from helpers import cli


@pytest.mark.slow
def test_demo_small(tmp_path, minilm_path):
    from lsb_mm_experiments.datasets import load_tuxpaint
    from lsb_mm_experiments.demo import run_demo

    try:
        load_tuxpaint()
    except lsb_mm.InputError as exc:
        need(False, str(exc))
    out = tmp_path / "demo"
    res = run_demo(str(out), head="llr", limit=70, max_steps=1, gallery_queries=2)
    saved = json.load(open(out / "results.json"))
    assert saved["results"] == json.loads(json.dumps(res["results"]))
    assert set(res["results"]) == {"baseline (none)", "LexSemBridge (llr)"}
    for row in res["results"].values():
        assert set(row) == {"caption2image", "snippet-30-random", "class"}
        assert all(0 <= v <= 1 for t in row.values() for v in t["metrics"].values())
    cache = res["feature_cache"]  # each distinct image through the locked tower once, then read back
    assert cache["misses"] == cache["items"] and cache["hits"] >= cache["items"] > 0
    page = (out / "gallery.html").read_text()
    assert page.count('<div class="query">') == 8  # 2 queries x (text->image, image->image) x (baseline, head)
    assert 'class="card rel"' in page and ".rel{" in page
    assert "Δ" in (out / "results.md").read_text()
    mods = res["modulation"]["LexSemBridge (llr)"]
    assert set(mods) == {"caption2image", "snippet-30-random"} and all(m["max_over_min"] >= 1 for m in mods.values())
    assert res["modulation"]["baseline (none)"] == {} and "Modulation of LexSemBridge (llr)" in (out / "results.md").read_text()
    from lsb_mm.training.recipes import PLUGIN

    for label, head in (("baseline (none)", "none"), ("LexSemBridge (llr)", "llr")):  # the swept plug-in recipes
        for modality in ("cross", "image"):
            used = res["recipes"][label][modality]
            assert used["from"] == PLUGIN[(modality, head)]["source"] and used["lr"] == PLUGIN[(modality, head)]["lr"]
            assert used["from_step"] in (0, 1) and used["metric"] == "ndcg@10"  # the best validation model is kept
    for name in ("index-none", "index-llr"):
        assert len(lsb_mm.Index.load(str(out / name))) == res["test"]


def test_demo_without_the_data_says_what_to_install(tmp_path):
    r = cli("demo", "--output", str(tmp_path / "d"), "--stamps", str(tmp_path / "nowhere"), check=False)
    assert r.returncode == 2 and "apt-get install tuxpaint-stamps-default" in r.stderr and "Traceback" not in r.stderr


def test_demo_never_deletes_a_folder_it_did_not_write(tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "thesis.tex").write_text("precious")
    r = cli("demo", "--output", str(keep), check=False)
    assert r.returncode == 2 and "no earlier demo wrote" in r.stderr and "Traceback" not in r.stderr
    assert (keep / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    r = cli("demo", "--output", str(tmp_path / "file"), check=False)
    assert r.returncode == 2 and "is a file" in r.stderr
    from lsb_mm_experiments.demo import MARKER, _fresh_output

    old = tmp_path / "old_demo"
    old.mkdir()
    (old / MARKER).write_text("")
    (old / "results.json").write_text("{}")
    _fresh_output(str(old))  # an earlier demo's folder is replaced
    assert sorted(p.name for p in old.iterdir()) == [MARKER]
