"""Shortened runs of the scripts in scripts/, so they cannot rot."""
import json
import os

import pytest

from conftest import need
from helpers import load

def test_bench_search_small(tmp_path):
    assert load("bench_search").main(["--n", "5000", "--dim", "32", "--queries", "20", "--loop-n", "500",
                                      "--loop-queries", "2", "--out", str(tmp_path)]) == 0
    res = json.load(open(tmp_path / "search.json"))
    assert res["full"]["same_ids_as_raw"] > 0.99 and res["loop"]["same_ids"] == 1.0
    assert "| lsb_mm.Index (Flat) |" in (tmp_path / "search.md").read_text()


@pytest.mark.slow
def test_bench_encode_and_train_small(tmp_path, manpages_present):
    assert load("bench_encode").main(["--skip-minilm", "--texts", "32", "--images", "16", "--repeats", "1",
                                      "--out", str(tmp_path)]) == 0
    rows = json.load(open(tmp_path / "encode.json"))["results"]
    assert {r["head"] for r in rows} == {"none", "slr", "llr", "clr"} and all(r["per_second"] > 0 for r in rows)
    assert load("bench_train").main(["--skip-minilm", "--skip-ddp", "--steps", "1", "--rounds", "1",
                                     "--out", str(tmp_path)]) == 0
    heads = json.load(open(tmp_path / "train.json"))["heads"]
    assert len(heads) == 4 and all(r["samples_per_s"] > 0 for r in heads)
    plugin = json.load(open(tmp_path / "train_plugin.json"))["plugin"]
    assert {(r["head"], r["path"]) for r in plugin} == {(h, p) for h in ("slr", "llr", "clr")
                                                        for p in ("cached", "tower rerun", "cached + corpus negatives")}
    assert all(r["samples_per_s"] > 0 for r in plugin) and "| vs tower rerun |" in (tmp_path / "train_plugin.md").read_text()


def test_quickstart_small(manpages_present, minilm_path, capsys):
    assert load("quickstart").main(["--pages", "30"]) == 0
    out = capsys.readouterr().out
    assert "Recall@1" in out and "bit-exact: True" in out


def _need_data(loader):
    from lsb_mm.errors import InputError

    try:
        loader()
    except InputError as exc:
        need(False, str(exc))


def _check_repro(path, rows, tasks):
    res = json.load(open(path))
    summary = res["summary"]
    assert set(rows) <= set(summary), sorted(summary)
    for row in rows:
        assert set(summary[row]) == set(tasks)
        assert all(0.0 <= m[0] <= 1.0 and m[2] >= 1 for t in summary[row].values() for m in t.values())
    assert "machine" in res
    return res


def _check_render(script, folder, name):
    """``--render`` re-writes the same markdown from the saved JSON, without training."""
    md = (folder / f"{name}.md").read_text()
    (folder / f"{name}.md").unlink()
    assert load(script).main(["--render", str(folder / f"{name}.json")]) == 0
    assert (folder / f"{name}.md").read_text() == md


def _check_hybrid_references(script, path, heads):
    """Text results carry BM25's two fusions with the untuned encoder (weight chosen on the
    training-page tasks); ``--update-references`` re-computes the reference rows of an older result
    on its rebuilt tasks, keeps the head rows, and refuses tasks that no longer reproduce it."""
    from lsb_mm.errors import InputError
    from lsb_mm.retrieval.fusion import FUSION_WEIGHTS
    from lsb_mm_experiments.plugin import HYBRID_REFERENCES

    res = json.load(open(path))
    assert res["references"] == ["untuned", "BM25", *HYBRID_REFERENCES]
    weighted = res["results"][HYBRID_REFERENCES[1]][0]
    chosen = weighted["fusion_validation"]
    assert weighted["hybrid"] == chosen["weight"] in FUSION_WEIGHTS and len(chosen["scores"]) == len(FUSION_WEIGHTS)
    assert all("train_tasks" in t for t in chosen["tasks"])  # never the test tasks
    assert res["results"][HYBRID_REFERENCES[0]][0]["hybrid"] == "rrf"
    md = open(str(path)[:-5] + ".md").read()
    assert f"| {HYBRID_REFERENCES[1]} |" in md and f"w = {chosen['weight']:g}, chosen on" in md
    old = {k: v for k, v in res.items() if k != "references"}  # a result from before the hybrid rows
    old["results"] = {k: v for k, v in res["results"].items() if k not in HYBRID_REFERENCES}
    with open(path, "w") as f:
        json.dump(old, f)
    assert load(script).main(["--update-references", str(path)]) == 0
    again = json.load(open(path))
    assert again["references"] == res["references"] and list(again["results"]) == list(res["results"])
    assert all(again["summary"][h] == res["summary"][h] for h in heads)  # head rows untouched
    assert again["summary"][HYBRID_REFERENCES[1]] == res["summary"][HYBRID_REFERENCES[1]]
    task = next(iter(again["results"]["BM25"][0]["tasks"].values()))
    task["metrics"]["ndcg@10"] += 0.01  # the saved BM25 row no longer matches the rebuilt tasks
    with open(path, "w") as f:
        json.dump(again, f)
    before = open(path, "rb").read()
    with pytest.raises(InputError, match="do not reproduce the saved 'BM25' row"):
        load(script).main(["--update-references", str(path)])
    assert open(path, "rb").read() == before
    with open(path, "w") as f:  # leave the result as it was for the rest of the test
        json.dump(res, f)


@pytest.mark.slow
def test_repro_text_small(tmp_path, manpages_present, minilm_path):
    """Stage 1 fine-tunes on one query per training page (validation pages left out); stage 2
    converges each head on the locked tuned tower with the sweep's recipe; runs resume from their JSONs."""
    recipe = {"winners": {"slr": "slr_a"}, "runs": [{"name": "slr_a", "lr": 1e-2, "temperature": 0.05, "weight_decay": 0.0,
                                                      "best": {"ndcg@10": 0.5}}]}
    (tmp_path / "sweep.json").write_text(json.dumps(recipe))
    argv = ["--pages", "40", "--seeds", "0", "--max-steps", "1", "--batch-size", "4", "--heads", "none", "slr", "--pop", "16",
            "--converge-max-steps", "4", "--eval-steps", "2", "--converge-batch-size", "8", "--recipe",
            str(tmp_path / "sweep.json"), "--work", str(tmp_path / "w"), "--out", str(tmp_path)]
    assert load("repro_text").main(argv) == 0
    res = _check_repro(tmp_path / "repro_text.json", ["untuned", "BM25", "none", "slr", "slr (head off)"],
                       ["query", "keyword", "pop-16"])
    assert res["data"]["train_examples"] == res["data"]["train_pages"] > 0
    kinds = {json.loads(line)["kind"] for line in open(tmp_path / "w" / "train.jsonl")}
    assert kinds <= {"query", "keyword", "pop-16"} and len(kinds) >= 2
    split = tmp_path / "w" / "split-seed0"
    val_pages = {json.loads(line)["pos"][0] for line in open(split / "0-train.held.jsonl")}
    for name in ("0-train.train.jsonl", "1-train.train.jsonl"):  # neither stage trains on a validation page
        assert val_pages and not val_pages & {json.loads(line)["pos"][0] for line in open(split / name)}
    assert val_pages == {json.loads(line)["pos"][0] for line in open(split / "1-train.held.jsonl")}
    none, slr = (next(r for r in res["runs"] if r["head"] == h) for h in ("none", "slr"))
    assert len(none["stage_seconds"]) == 1 and none["validation"] is None
    assert len(slr["stage_seconds"]) == 2 and slr["validation"]["from_step"] in (0, 2, 4)
    second = json.load(open(tmp_path / "w" / "runs" / "slr-seed0-converged" / "run_info.json"))
    assert second["config"]["model"] == str(tmp_path / "w" / "runs" / "slr-seed0" / "final")  # starts from stage 1
    assert (second["config"]["lr"], second["config"]["temperature"], second["config"]["train"]) == (1e-2, 0.05, "heads")
    assert "text" in second["tower_cache"]  # the tuned tower is locked and cached
    stage2_kinds = [json.loads(line)["kind"] for line in open(second["config"]["train_data"])]
    assert len(set(stage2_kinds)) >= 2 and len(stage2_kinds) > res["data"]["train_pages"] * 0.8  # every kind per page
    assert {json.loads(line)["kind"] for line in open(second["config"]["eval_data"])} == set(stage2_kinds)
    md = (tmp_path / "repro_text.md").read_text()
    assert "| untuned |" in md and "Verdicts" in md and "Stage 2" in md
    _check_render("repro_text", tmp_path, "repro_text")
    _check_hybrid_references("repro_text", tmp_path / "repro_text.json", ["none", "slr", "slr (head off)"])
    assert second["config"]["eval_distractors"]  # validation pages searched among the training pages
    before = os.path.getmtime(tmp_path / "repro_text" / "slr-seed0.json")
    assert load("repro_text").main(argv) == 0  # resumes: the finished runs are read back, not redone
    assert os.path.getmtime(tmp_path / "repro_text" / "slr-seed0.json") == before
    assert json.load(open(tmp_path / "repro_text.json"))["summary"] == res["summary"]
    # a run whose stage 2 is redone reuses its finished stage 1 (same settings) instead of training it again
    import shutil

    (tmp_path / "repro_text" / "slr-seed0.json").unlink()
    shutil.rmtree(tmp_path / "w" / "runs" / "slr-seed0-converged")
    stage1 = os.path.getmtime(tmp_path / "w" / "runs" / "slr-seed0" / "final" / "lsb_config.json")
    assert load("repro_text").main(argv) == 0
    assert os.path.getmtime(tmp_path / "w" / "runs" / "slr-seed0" / "final" / "lsb_config.json") == stage1
    assert (tmp_path / "w" / "runs" / "slr-seed0-converged" / "final").is_dir()
    from lsb_mm_experiments.reproduce import finished_run
    from lsb_mm.training.config import TrainConfig

    saved = json.load(open(tmp_path / "w" / "runs" / "slr-seed0" / "run_info.json"))["config"]
    assert finished_run(TrainConfig(**saved)) == str(tmp_path / "w" / "runs" / "slr-seed0" / "final")
    assert finished_run(TrainConfig(**{**saved, "lr": saved["lr"] * 2})) is None  # other settings: trained again
    # a finished run's record is not mixed with runs of other settings: a clear refusal, exit status 2
    from lsb_mm_experiments.reproduce import run_script

    assert run_script(lambda: load("repro_text").main(argv + ["--lr", "1e-4"])) == 2


@pytest.mark.slow
def test_repro_cross_small(tmp_path, minilm_path):
    from lsb_mm_experiments.datasets import load_tuxpaint

    _need_data(load_tuxpaint)
    assert load("repro_cross").main(["--limit", "50", "--seeds", "0", "--max-steps", "1", "--batch-size", "8", "--heads", "none", "llr",
                                     "--work", str(tmp_path / "w"), "--out", str(tmp_path)]) == 0
    res = _check_repro(tmp_path / "repro_cross.json", ["untrained", "none", "llr", "llr (head off)"],
                       ["caption2image", "image2caption"])
    cache = res["data"]["feature_cache"]  # the locked image tower ran once per image
    assert cache["misses"] == cache["items"] and cache["hits"] > 0
    assert "R@1" in (tmp_path / "repro_cross.md").read_text()
    _check_render("repro_cross", tmp_path, "repro_cross")


@pytest.mark.slow
def test_repro_image_small(tmp_path, minilm_path):
    from lsb_mm_experiments.datasets import load_fashion_mnist, load_tuxpaint

    _need_data(load_tuxpaint)
    _need_data(load_fashion_mnist)
    assert load("repro_image").main(["--per-class", "3", "--limit", "60", "--seeds", "0", "--max-steps", "1", "--batch-size", "8",
                                     "--heads", "none", "slr", "--snippets", "30", "--work", str(tmp_path / "w"),
                                     "--out", str(tmp_path)]) == 0
    res = json.load(open(tmp_path / "repro_image.json"))
    for name, size in (("fashion-mnist", 112), ("tuxpaint", 160)):
        ds = res["datasets"][name]
        assert ds["img_size"] == size
        assert set(ds["summary"]) >= {"EfficientNet-Lite0 (untuned)", "none", "slr", "slr (head off)"}
        assert set(ds["summary"]["none"]) == {"class", "snippet-30-random"}
    assert "## fashion-mnist" in (tmp_path / "repro_image.md").read_text()
    _check_render("repro_image", tmp_path, "repro_image")


@pytest.mark.slow
def test_sweep_then_plug_in_reproduction_small(tmp_path, manpages_present, minilm_path):
    """The sweep chooses on validation (one JSON per run, resumable); the reproduction reads its winners."""
    sweep = ["--pages", "40", "--heads", "slr", "adapter", "--lrs", "1e-2", "--max-steps", "4", "--eval-steps", "2",
             "--batch-size", "16", "--work", str(tmp_path / "sw"), "--out", str(tmp_path)]
    assert load("sweep_heads").main(sweep) == 0
    summary = json.load(open(tmp_path / "sweep_text.json"))
    assert set(summary["winners"]) == {"slr", "adapter"} and len(summary["runs"]) == 2
    assert all(r["best"]["ndcg@10"] > 0 and r["best_step"] in (0, 2, 4) for r in summary["runs"])
    kinds = {json.loads(line)["kind"] for line in open(tmp_path / "sw" / "train.jsonl")}
    assert len(kinds) >= 4  # every kind per training page
    before = {f: os.path.getmtime(tmp_path / "sweep_text" / f) for f in os.listdir(tmp_path / "sweep_text")}
    assert load("sweep_heads").main(sweep) == 0  # resumes: nothing is redone
    assert before == {f: os.path.getmtime(tmp_path / "sweep_text" / f) for f in os.listdir(tmp_path / "sweep_text")}
    _check_render("sweep_heads", tmp_path, "sweep_text")
    assert load("repro_plugin").main(["--pages", "40", "--heads", "slr", "adapter", "--seeds", "0", "--max-steps", "4",
                                           "--eval-steps", "2", "--batch-size", "16", "--recipe", str(tmp_path / "sweep_text.json"),
                                           "--work", str(tmp_path / "rp"), "--out", str(tmp_path)]) == 0
    res = _check_repro(tmp_path / "repro_text_plugin.json", ["untuned", "BM25", "slr", "adapter"],
                       ["query", "keyword", "pop-16", "pop-32", "pop-64", "pop-128"])
    assert res["recipe"]["slr"]["lr"] == 1e-2
    assert next(r for r in res["runs"] if r["head"] == "slr")["modulation"]["max_over_min"] >= 1
    assert next(r for r in res["runs"] if r["head"] == "adapter")["modulation"] is None
    md = (tmp_path / "repro_text_plugin.md").read_text()
    assert "Verdicts against `untuned`" in md and "Verdicts against `adapter`" in md
    _check_render("repro_plugin", tmp_path, "repro_text_plugin")
    _check_hybrid_references("repro_plugin", tmp_path / "repro_text_plugin.json", ["slr", "adapter"])
    assert load("results_summary").main(["--results", str(tmp_path)]) == 0
    summary = json.load(open(tmp_path / "summary.json"))
    text = next(e for e in summary["settings"] if e["file"] == "repro_text_plugin.json")
    assert text["best_head"] == "slr" and text["baseline"] == "untuned" and text["target_met_on"] == []
    assert {r["task"] for r in text["rows"]} == {"query", "keyword", "pop-16", "pop-32"}
    assert all(e["status"] == "not run" for e in summary["settings"] if e is not text)
    assert "Target **not met**" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_plug_in_reproduction_with_documentation_sections_small(tmp_path, manpages_present, minilm_path, monkeypatch):
    """``--extra-docs``: documentation sections join the training side only; validation is carved
    from the man pages per seed and searched among the training documents."""
    from lsb_mm_experiments.datasets import sphinx_docs
    from lsb_mm.errors import InputError

    root = tmp_path / "pydoc" / "html"
    root.mkdir(parents=True)
    body = lambda tag: " ".join(f"{tag}word{i} text" for i in range(40))  # noqa: E731
    (root / "p.html").write_text("<html><body>" + "".join(
        f'<section id="s{k}"><h2>Section {k} title</h2><p>{body(k)}</p></section>' for k in range(6)) + "</body></html>",
        encoding="utf-8")
    monkeypatch.setitem(sphinx_docs.DOC_PACKAGES, "python3-doc", str(tmp_path / "pyd*" / "html"))
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"winners": {"slr": "r"}, "runs": [
        {"name": "r", "lr": 1e-3, "temperature": 0.02, "weight_decay": 0.0, "best": {"ndcg@10": 0.5}}]}))
    assert load("repro_plugin").main(["--pages", "40", "--extra-docs", "python3-doc", "--extra-sections", "5",
                                      "--heads", "slr", "--seeds", "0", "--max-steps", "2", "--eval-steps", "2",
                                      "--batch-size", "16", "--recipe", str(sweep), "--work", str(tmp_path / "rp"),
                                      "--out", str(tmp_path)]) == 0
    res = _check_repro(tmp_path / "repro_text-docs_plugin.json", ["untuned", "BM25", "slr"],
                       ["query", "keyword", "pop-16", "pop-32", "pop-64", "pop-128"])
    extra = res["data"]["extra"]
    assert extra["sections"] == 5 and extra["found"]["kept"] == 6 and extra["train_examples"] >= 5 * 4
    cfg = json.load(open(tmp_path / "repro_text-docs_plugin" / "slr-seed0.json"))["config"]
    assert cfg["val_fraction"] == 0 and cfg["eval_distractors"] and cfg["eval_data"].endswith(".held.jsonl")
    held = [json.loads(line) for line in open(cfg["eval_data"])]
    trained = [json.loads(line) for line in open(cfg["train_data"])]
    assert held and not any("word" in r["pos"][0] for r in held)  # no documentation section validates
    assert sum("0word" in r["pos"][0] or "1word" in r["pos"][0] for r in trained) >= 1
    assert "documentation sections" in (tmp_path / "repro_text-docs_plugin.md").read_text()
    _check_render("repro_plugin", tmp_path, "repro_text-docs_plugin")
    with pytest.raises(InputError, match="does not apply to --modality image"):  # text only
        load("repro_plugin").main(["--modality", "image", "--extra-docs", "python3-doc", "--heads", "slr",
                                   "--recipe", str(sweep), "--work", str(tmp_path / "img"), "--out", str(tmp_path)])


@pytest.mark.parametrize("modality", ["image", "cross"])
@pytest.mark.slow
def test_image_and_cross_sweep_then_plug_in_reproduction_small(tmp_path, minilm_path, modality):
    """The plug-in sweep and reproduction on the dual encoder: projections train with the heads,
    `none` is a trained row, the adapter a control, and the image head's modulation is reported."""
    data = ["--modality", modality, "--dataset", "tuxpaint", "--limit", "60", "--crops-per-image", "2", "--embed-dim", "32",
            "--vocab-size", "16", "--max-steps", "4", "--eval-steps", "2", "--batch-size", "8"]
    assert load("sweep_heads").main(data + ["--heads", "none", "slr", "adapter", "--lrs", "1e-3", "--head-lr-scales",
                                            "1", "10", "--work", str(tmp_path / "sw"), "--out", str(tmp_path)]) == 0
    key = "cross" if modality == "cross" else "image-tuxpaint"
    summary = json.load(open(tmp_path / f"sweep_{key}.json"))
    assert set(summary["winners"]) == {"none", "slr", "adapter"} and summary["key"] == key
    assert sorted(r["name"] for r in summary["runs"]) == [  # `none` has no head to scale
        "adapter_lr0.001_t0.02_wd0.01", "adapter_lr0.001_t0.02_wd0.01_h10", "none_lr0.001_t0.02_wd0.01",
        "slr_lr0.001_t0.02_wd0.01", "slr_lr0.001_t0.02_wd0.01_h10"]
    info = json.load(open(tmp_path / "sw" / "runs" / "slr_lr0.001_t0.02_wd0.01_h10" / "run_info.json"))
    assert (info["config"]["lr"], info["config"]["head_lr"]) == (1e-3, 1e-2)
    if modality == "image":
        examples = [json.loads(line) for line in open(tmp_path / "sw" / "data" / "train.jsonl")]
        assert len(examples) > 2 * 36  # two crops per training image, and the same-class pairs
    _check_render("sweep_heads", tmp_path, f"sweep_{key}")
    assert load("repro_plugin").main(data + ["--heads", "none", "slr", "adapter", "--seeds", "0", "--recipe",
                                             str(tmp_path / f"sweep_{key}.json"), "--work", str(tmp_path / "rp"),
                                             "--out", str(tmp_path)]) == 0
    reference = "untrained" if modality == "cross" else "EfficientNet-Lite0 (untuned)"
    tasks = ["caption2image", "image2caption"] if modality == "cross" else \
        ["class", "snippet-10-random", "snippet-30-random", "snippet-50-random", "snippet-80-random"]
    res = _check_repro(tmp_path / f"repro_{key}_plugin.json", [reference, "none", "slr", "adapter"], tasks)
    assert res["references"] == [reference]
    winner = next(r for r in summary["runs"] if r["name"] == summary["winners"]["slr"])
    assert res["recipe"]["slr"]["head_lr"] == winner["head_lr"]  # the reproduction trains the winner's head lr
    slr = next(r for r in res["runs"] if r["head"] == "slr")
    assert json.load(open(tmp_path / f"repro_{key}_plugin" / "slr-seed0.json"))["config"]["head_lr"] == winner["head_lr"]
    assert slr["modulation"]["max_over_min"] >= 1 and slr["steps_run"] >= 2
    md = (tmp_path / f"repro_{key}_plugin.md").read_text()
    assert "Verdicts against `none`" in md and "Verdicts against `adapter`" in md
    _check_render("repro_plugin", tmp_path, f"repro_{key}_plugin")


@pytest.mark.slow
def test_dual_encoder_fine_tune_after_the_plug_in_stage_small(tmp_path, minilm_path):
    """Stage 1 = the plug-in run; stage 2 starts from its model with every tower unlocked, on the
    same validation split (its step-0 score is stage 1's best), mined negatives; runs resume."""
    sweep = {"winners": {"none": "a", "slr": "b"},
             "runs": [{"name": "a", "lr": 1e-3, "temperature": 0.02, "weight_decay": 0.01, "best": {"ndcg@10": 0.1}},
                      {"name": "b", "lr": 1e-3, "temperature": 0.05, "weight_decay": 0.0, "best": {"ndcg@10": 0.1}}]}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    argv = ["--modality", "cross", "--limit", "60", "--embed-dim", "32", "--vocab-size", "16", "--heads", "none", "slr",
            "--seeds", "0", "--plugin-max-steps", "4", "--max-steps", "2", "--eval-steps", "1", "--batch-size", "8",
            "--plugin-batch-size", "8", "--recipe", str(tmp_path / "sweep.json"), "--work", str(tmp_path / "w"),
            "--out", str(tmp_path)]
    assert load("repro_finetune").main(argv) == 0
    res = _check_repro(tmp_path / "repro_cross_finetune.json", ["untrained", "none", "slr", "slr (head off)"],
                       ["caption2image", "image2caption"])
    runs = tmp_path / "w" / "runs"
    for head in ("none", "slr"):
        first, second = (json.load(open(runs / f"{head}-seed0{s}" / "run_info.json"))["config"] for s in ("-plugin", ""))
        assert first["train"] == "heads" and first["corpus_negatives"] and first["temperature"] == second["temperature"]
        assert second["train"] == "all" and second["mine_negatives"] and second["freeze_bn_stats"]
        assert second["model"] == str(runs / f"{head}-seed0-plugin" / "final")
        evals = [[json.loads(line) for line in open(runs / f"{head}-seed0{s}" / "train_log.jsonl")] for s in ("-plugin", "")]
        best_first = max(r["eval"]["ndcg@10"] for r in evals[0] if "eval" in r)
        assert next(r["eval"]["ndcg@10"] for r in evals[1] if "eval" in r and r["step"] == 0) == pytest.approx(best_first)
    assert all(len(r["stage_seconds"]) == 2 for r in res["runs"])
    assert "Stage 2: every tower unlocked" in (tmp_path / "repro_cross_finetune.md").read_text()
    _check_render("repro_finetune", tmp_path, "repro_cross_finetune")
    assert load("repro_finetune").main(argv) == 0  # resumes from the per-run JSONs
    assert json.load(open(tmp_path / "repro_cross_finetune.json"))["summary"] == res["summary"]
