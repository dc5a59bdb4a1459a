"""Reproduction helpers (split, mean ± std, verdicts), the real-data loaders, and model options."""
import gzip
import os

import numpy as np
import pytest

import lsb_mm
from conftest import need
from lsb_mm.errors import InputError
from lsb_mm.data.splits import stratified_split
from lsb_mm_experiments.statistics import compact_table, compare, results_table, summarize, verdicts


def result(**tasks):
    return {"tasks": {t: {"metrics": {"ndcg@10": v, "recall@10": v / 2}} for t, v in tasks.items()}}


def test_stratified_split_is_seeded_per_group_and_keeps_singletons_in_train():
    items = [("a", i) for i in range(10)] + [("b", i) for i in range(5)] + [("c", 0)]
    train, test = stratified_split(items, lambda x: x[0], 0.4, seed=3)
    assert sorted(train + test) == sorted(items) and not set(train) & set(test)
    assert sum(1 for x in test if x[0] == "a") == 4 and sum(1 for x in test if x[0] == "b") == 2
    assert ("c", 0) in train
    assert (train, test) == stratified_split(items, lambda x: x[0], 0.4, seed=3)
    assert test != stratified_split(items, lambda x: x[0], 0.4, seed=4)[1]
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(items, lambda x: x[0], 1.0)


def test_summary_verdicts_and_tables():
    rows = {"none": [result(q=0.50, k=0.60), result(q=0.52, k=0.60)],
            "slr": [result(q=0.60, k=0.61), result(q=0.62, k=0.59)],
            "llr": [result(q=0.40, k=0.60), result(q=0.42, k=0.60)],
            "BM25": [result(q=0.70, k=0.52)]}
    s = summarize(rows)
    mean, std, n = s["slr"]["q"]["ndcg@10"]
    assert (round(mean, 6), round(std, 6), n) == (0.61, round(np.std([0.60, 0.62], ddof=1), 6), 2)
    assert compare(s, "slr", "none", "q", "ndcg@10")[1] == "better"
    assert compare(s, "llr", "none", "q", "ndcg@10")[1] == "worse"
    assert compare(s, "slr", "none", "k", "ndcg@10")[1] == "same"  # 0.600 vs 0.600 +- 0.014
    # Welch's t-test: slr's +0.100 on q with stds 0.014 over 2 seeds each: t = 7.07, df = 2, p = 0.019
    assert compare(s, "slr", "none", "q", "ndcg@10")[2] == pytest.approx(0.0194, abs=1e-3)
    # one exact run (BM25) against two seeds: a one-sample test, t = 19, df = 1, p = 0.033 < 0.05
    assert compare(s, "BM25", "none", "q", "ndcg@10")[1] == "better"
    assert compare(s, "BM25", "none", "k", "ndcg@10")[:2] == (pytest.approx(-0.08), "worse")  # spread 0 on both sides
    close = summarize({"a": [result(q=0.50), result(q=0.60)], "b": [result(q=0.45), result(q=0.47)]})
    assert compare(close, "a", "b", "q", "ndcg@10")[1] == "same"  # +0.09 is beyond the pooled std (0.051) but p = 0.3
    one = summarize({"a": [result(q=0.5)], "b": [result(q=0.6)]})
    assert compare(one, "a", "b", "q", "ndcg@10")[1] == "one run"
    lines = verdicts(s, ["slr", "llr"], "none", "ndcg@10")
    assert "beats the baseline on q (+0.100, p=0.019)" in lines[0] and "does not beat it" in lines[0] and "is worse on q" in lines[1]
    table = "\n".join(results_table(s, ("ndcg@10", "recall@10"), baseline="none", order=["none", "slr"]))
    assert "| q | slr | 2 | 0.610 ± 0.014 | 0.305 ± 0.007 | +0.100 (better, p=0.019) |" in table
    assert "| BM25 | 0.700 | 0.520 |" in "\n".join(compact_table(s, "ndcg@10", ["BM25"]))  # one run: no ± 0.000
    assert "| slr | 0.610 ± 0.014 | 0.600 ± 0.014 |" in "\n".join(compact_table(s, "ndcg@10", ["none", "slr"]))


def test_fashion_mnist_reader_and_export(tmp_path):
    from lsb_mm_experiments.datasets import FASHION_CLASSES, export_labelled_folder, load_fashion_mnist

    try:
        images, labels = load_fashion_mnist("test")
    except InputError as exc:
        need(False, str(exc))
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8 and sorted(set(labels.tolist())) == list(range(10))
    out = export_labelled_folder(str(tmp_path / "fm"), "test", per_class=2, seed=1)
    assert sorted(os.listdir(out)) == sorted(FASHION_CLASSES)
    assert all(len(os.listdir(os.path.join(out, c))) == 2 for c in FASHION_CLASSES)
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(bad / name, "wb") as f:
            f.write(b"\x00\x00\x08\x99" + b"\x00" * 16)
    with pytest.raises(InputError, match="magic number"):
        load_fashion_mnist("test", root=str(bad))
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", root=str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="'train' or 'test'"):
        load_fashion_mnist("dev")


def test_tuxpaint_loader_on_the_installed_package():
    """Only what every install guarantees: captioned PNG stamps, no mirrored copies, reasons for what is left out."""
    from lsb_mm_experiments.datasets import load_tuxpaint

    try:
        data = load_tuxpaint()
    except InputError as exc:
        need(False, str(exc))
    assert len(data) > 0 and data.by_category()
    assert all(s.caption and s.path.endswith(".png") and not s.path.endswith("_mirror.png") for s in data.stamps)
    assert all(os.path.isfile(s.path) and not os.path.isabs(s.category) for s in data.stamps)
    assert all(r["reason"].startswith("no English caption") for r in data.skipped)  # skipped may well be empty


def test_tuxpaint_loader_reports_what_it_leaves_out(tmp_path):
    """The skip path on a stamps folder built here: one stamp of each kind the loader meets."""
    from PIL import Image

    from lsb_mm_experiments.datasets import load_tuxpaint

    with pytest.raises(InputError, match="apt-get install tuxpaint-stamps-default"):
        load_tuxpaint(str(tmp_path / "nowhere"))
    cat = tmp_path / "animals" / "cats"
    cat.mkdir(parents=True)
    for name in ("a", "a_mirror", "b", "c", "d"):
        Image.new("RGBA", (8, 8)).save(cat / f"{name}.png")
    (cat / "a.txt").write_text("A thing.\nfr.utf8=Une chose.\n")
    (cat / "c.txt").write_text("\nfr.utf8=Rien en anglais.\n")   # an empty English line
    (cat / "d.txt").write_bytes(b"\xff\xfe not utf-8\n")
    (cat / "e.svg").write_text("<svg/>")
    d = load_tuxpaint(str(tmp_path))
    assert [(s.caption, s.category) for s in d.stamps] == [("A thing.", "animals/cats")]
    reasons = {os.path.basename(r["source"]): r["reason"] for r in d.skipped}
    assert sorted(reasons) == ["b.png", "c.png", "d.png"]
    assert "no caption sidecar b.txt" in reasons["b.png"] and "empty caption" in reasons["c.png"]
    assert "not UTF-8" in reasons["d.png"]
    assert all(r.startswith("no English caption") for r in reasons.values())
    (cat / "a.txt").unlink()
    with pytest.raises(InputError, match="no captioned PNG stamps"):
        load_tuxpaint(str(tmp_path))


def test_model_options_on_the_command_line(tmp_path, image_files):
    from helpers import cli

    folder = os.path.dirname(image_files[0])
    out = tmp_path / "out" / "e.npy"
    r = cli("encode", "--model", "timm:resnet18", "--head", "none", "--model-option", "img_size=64", "--images", folder,
            "--output", str(out))
    assert np.load(out).shape == (5, 512), r.stderr
    with pytest.raises(SystemExit) as exc:  # argparse: usage + "expected KEY=VALUE", status 2
        cli("encode", "--model", "timm:resnet18", "--model-option", "nonsense", "--images", folder, "--output", str(out))
    assert exc.value.code == 2
    bad = cli("encode", "--model", "timm:resnet18", "--model-option", "colour=1", "--images", folder,
              "--output", str(out), check=False)
    assert bad.returncode == 2 and "colour" in bad.stderr and "Traceback" not in bad.stderr
    with pytest.raises(SystemExit) as exc:  # create_model's own argument: its own flag, not a backbone option
        cli("encode", "--model", "timm:resnet18", "--model-option", "head=llr", "--images", folder, "--output", str(out))
    assert exc.value.code == 2


def test_train_config_model_options_build_the_model(tmp_path, tiny_hf_dir):
    import json
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    import helpers

    items = helpers.caption_items(tmp_path / "caps", 16)
    data = helpers.write_jsonl(tmp_path / "d.jsonl", [{"query": c, "pos": [p]} for c, p in items])
    final = lsb_mm.train(lsb_mm.TrainConfig(
        model=f"dual:hf:{tiny_hf_dir}|timm:resnet18", model_options={"embed_dim": 12, "text_options": {"pooling": "mean"},
                                                                      "image_options": {"img_size": 32}},
        head="none", modality="cross", train_data=data, output=str(tmp_path / "run"), max_steps=1, batch_size=8,
        show_progress_bar=False))
    from lsb_mm.data.images import load_image

    m = lsb_mm.load_model(final)
    assert m.embed_dim == 12 and m.image_transform(load_image(items[0][1])).shape == (3, 32, 32)
    info = json.load(open(tmp_path / "run" / "run_info.json"))
    assert info["config"]["model_options"]["embed_dim"] == 12
    with pytest.raises(lsb_mm.InputError, match="vocab_size"):
        lsb_mm.Trainer(lsb_mm.TrainConfig(model=f"hf:{tiny_hf_dir}", model_options={"vocab_size": 8}, train_data=data,
                                          output=str(tmp_path / "run2"), max_steps=1, batch_size=8, show_progress_bar=False))
    with pytest.raises(lsb_mm.ModelLoadError, match="saved model"):
        lsb_mm.create_model(final, embed_dim=4)
