"""Plug-in training (towers locked) on cached tower outputs: the same loss and gradients as running
the towers, corpus negatives, exact resume, bounded memory."""
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lsb_mm
from lsb_mm.training.tower_cache import TowerCache
from lsb_mm.errors import InputError
from lsb_mm.training.config import TrainConfig
from lsb_mm.training.trainer import Trainer, train

sys.path.insert(0, os.path.dirname(__file__))
import helpers  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    text, _ = helpers.passage_queries(40, per_passage=2, dev=0, negatives=2, seed=3)
    caps = helpers.caption_items(root / "caps", 48, seed=2)
    return {
        "text": helpers.write_jsonl(root / "text.jsonl", text),
        "image": helpers.labelled_folder(root / "labelled", per_class=3, seed=1),
        "cross": helpers.write_jsonl(root / "cross.jsonl", [{"query": c, "pos": [p]} for c, p in caps]),
    }


def _models(tiny_hf_dir):
    return {
        "open_clip": "open_clip:lsb-tiny-test",
        "hf": f"hf:{tiny_hf_dir}",
        "resnet": "timm:resnet18",
        "dual": f"dual:hf:{tiny_hf_dir}|timm:resnet18",
    }


CASES = [  # (modality, model, head, extra settings)
    ("text", "open_clip", "llr", {"train_group_size": 3}),
    ("text", "hf", "clr", {"pooling": "mean", "train_group_size": 2}),
    ("text", "hf", "slr", {"pooling": "cls"}),
    ("image", "resnet", "llr", {"model_options": {"img_size": 32}}),
    ("cross", "open_clip", "llr", {"symmetric": True}),
    ("cross", "dual", "slr", {"model_options": {"embed_dim": 16, "text_options": {"pooling": "mean"},
                                                "image_options": {"img_size": 32}}, "symmetric": True}),
]


def _trainer(tmp_path, data, tiny_hf_dir, modality, model, head, extra, **kw):
    cfg = dict(model=_models(tiny_hf_dir)[model], head=head, modality=modality, train_data=data[modality],
               output=str(tmp_path / f"o{len(os.listdir(tmp_path))}"), batch_size=6, max_steps=2, vocab_size=16,
               fit_codebook=0, seed=5, show_progress_bar=False, **extra)
    cfg.update(kw)
    return Trainer(TrainConfig(**cfg))


@pytest.mark.parametrize("modality, model, head, extra", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_cached_towers_give_the_uncached_loss_and_gradients(modality, model, head, extra, tmp_path, data, tiny_hf_dir):
    results = []
    for gb, disk in ((1.0, None), (1.0, str(tmp_path / "disk")), (0.0, None)):  # memory, disk-backed, no cache
        t = _trainer(tmp_path, data, tiny_hf_dir, modality, model, head, extra, tower_cache_gb=gb, tower_cache_dir=disk)
        t._build_tower_caches()
        assert bool(t.tower_caches) == (gb > 0)
        assert all(c.on_disk == (disk is not None and c.keeps_hidden) for c in t.tower_caches.values())
        t._train_mode()
        batch = t.micro_batch(0, 0)
        loss = t.compute_loss(batch)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in t.model.named_parameters() if p.grad is not None}
        results.append((float(loss.detach()), grads))
    plain_loss, plain = results[-1]
    for cached_loss, cached in results[:-1]:
        assert cached and set(cached) == set(plain)
        assert abs(cached_loss - plain_loss) <= 1e-5, (cached_loss, plain_loss)
        for name in plain:
            assert torch.allclose(cached[name], plain[name], atol=1e-5, rtol=1e-4), name


def test_disk_backed_tower_cache_serves_sets_that_do_not_fit_memory(tmp_path, tiny_hf_dir):
    m = lsb_mm.create_model(f"hf:{tiny_hf_dir}", head="llr").requires_grad_(False).eval()
    texts = [f"text number {i} " * (1 + i % 7) for i in range(60)] + [""]
    memory = TowerCache.build(m, "text", texts)
    budget = 1.1 * (memory.nbytes - sum(t.numel() * 4 for t in memory._hidden)) / (1 << 30)  # all but the hidden states
    with pytest.raises(InputError, match="--tower-cache-dir"):
        TowerCache.build(m, "text", texts, max_gb=budget)
    for dtype in (torch.float32, torch.float16):
        disk = TowerCache.build(m, "text", texts, max_gb=budget, disk_dir=str(tmp_path), hidden_dtype=dtype)
        on_disk_f32 = disk.disk_bytes * (4 // torch.empty(0, dtype=dtype).element_size())
        assert disk.on_disk and disk.nbytes + on_disk_f32 == memory.nbytes  # the hidden states, and only they, on disk
        folder = disk._hidden.folder
        assert os.path.dirname(folder) == str(tmp_path) and os.listdir(folder) == ["hidden.bin"]
        rows = disk.rows([texts[3], texts[-1], texts[10], texts[3]])
        a, b = memory.features(rows), disk.features(rows)
        assert torch.equal(a.ids, b.ids) and torch.equal(a.mask, b.mask) and torch.equal(a.pooled, b.pooled)
        tol = 0 if dtype == torch.float32 else 1e-2
        assert torch.allclose(a.hidden, b.hidden, atol=tol, rtol=tol)
        del disk, b
        import gc

        gc.collect()
        assert not os.path.exists(folder)  # the temporary folder goes with the cache
    with pytest.raises(InputError, match="need more than"):  # even the small rows do not fit: nothing left behind
        TowerCache.build(m, "text", texts, max_gb=1e-6, disk_dir=str(tmp_path / "failed"))
    assert os.listdir(tmp_path / "failed") == []


def test_corpus_negatives_are_an_exact_softmax_over_the_training_documents(tmp_path, data, tiny_hf_dir):
    t = _trainer(tmp_path, data, tiny_hf_dir, "text", "hf", "llr", {"pooling": "mean", "train_group_size": 2},
                 corpus_negatives=True)
    with torch.no_grad():  # a head that modulates: queries differ from plain embeddings
        t.model.text_head.proj_weight.normal_(0, 0.05)
    t._build_tower_caches()
    batch = t.micro_batch(0, 0)
    loss = float(t.compute_loss(batch).detach())
    m = t.model
    with torch.no_grad():
        q = m.encode_query([t.data.examples[i].query for i in batch["examples"].tolist()], convert_to="torch")
        d = m.encode_text(t.pool, role="document", convert_to="torch")
    logits = q @ d.t() / t.cfg.temperature
    targets = []
    for j, gi in enumerate(batch["examples"].tolist()):
        ex = t.data.examples[gi]
        target = t.pool.index(batch["passages"][int(batch["pos_index"][j])])
        for p in ex.pos:
            if t.pool.index(p) != target:
                logits[j, t.pool.index(p)] = float("-inf")
        targets.append(target)
    assert len(t.pool) == 40 > len(batch["passages"]) and abs(loss - float(F.cross_entropy(logits, torch.tensor(targets)))) <= 1e-4


def test_plug_in_training_with_corpus_negatives_learns(tmp_path, data, tiny_hf_dir):
    out = tmp_path / "run"
    train(TrainConfig(model=f"hf:{tiny_hf_dir}", head="slr", pooling="mean", modality="text", train_data=data["text"],
                      output=str(out), batch_size=16, max_steps=30, lr=3e-3, log_steps=1, corpus_negatives=True,
                      show_progress_bar=False))
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])
    info = json.load(open(out / "run_info.json"))
    rows = [json.loads(line) for line in open(data["text"])]
    distinct = {r["query"] for r in rows} | {p for r in rows for p in r["pos"] + r.get("neg", [])}
    assert info["tower_cache"]["text"]["inputs"] == len(distinct)  # every distinct query and document, once
    assert info["tower_cache"]["text"]["hidden"] is False


def test_corpus_negatives_need_cached_plain_documents(tmp_path, data, tiny_hf_dir):
    with pytest.raises(InputError, match="needs the text tower locked"):
        _trainer(tmp_path, data, tiny_hf_dir, "text", "open_clip", "slr", {}, corpus_negatives=True, train="all")
    with pytest.raises(InputError, match="needs the text tower locked"):
        _trainer(tmp_path, data, tiny_hf_dir, "text", "open_clip", "slr", {}, corpus_negatives=True, tower_cache_gb=0)
    with pytest.raises(InputError, match="needs plain documents"):
        _trainer(tmp_path, data, tiny_hf_dir, "text", "open_clip", "slr", {}, corpus_negatives=True, fusion_p=True)


def test_resume_with_the_tower_cache_is_exact(tmp_path, data, tiny_hf_dir):
    base = dict(model=f"hf:{tiny_hf_dir}", head="llr", pooling="mean", modality="text", train_data=data["text"],
                batch_size=8, max_steps=6, lr=3e-3, train_group_size=2, corpus_negatives=True, seed=3,
                show_progress_bar=False, keep_checkpoints=0)
    full = train(TrainConfig(output=str(tmp_path / "full"), **base))
    train(TrainConfig(output=str(tmp_path / "cut"), save_steps=3, **{**base, "max_steps": 6}))
    # resume from the step-3 checkpoint of the second run: the rest must equal the uninterrupted run
    import shutil

    shutil.rmtree(tmp_path / "cut" / "final")
    shutil.rmtree(tmp_path / "cut" / "checkpoint-000006")
    resumed = train(TrainConfig(output=str(tmp_path / "cut"), save_steps=3, resume="latest", **base))
    a, b = lsb_mm.load_model(full).state_dict(), lsb_mm.load_model(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tower_cache_bounds_and_refusals(tiny_hf_dir):
    m = lsb_mm.create_model(f"hf:{tiny_hf_dir}", head="llr").requires_grad_(False)  # the trainer locks it so
    texts = [f"text number {i} " * 20 for i in range(50)]
    with pytest.raises(InputError, match="need more than 0.0001 GiB"):
        TowerCache.build(m, "text", texts, max_gb=1e-4)
    cache = TowerCache.build(m, "text", texts + texts[:5], keep_hidden=False)
    assert len(cache) == 50 and not cache.keeps_hidden
    with pytest.raises(KeyError, match="was not cached"):
        cache.rows(["something else"])
    with pytest.raises(ValueError, match="keeps its hidden states"):
        TowerCache.build(m, "image", ["x.png"], keep_hidden=False)
    for p in m.parameters():
        p.requires_grad_(True)
    with pytest.raises(RuntimeError, match="trainable parameters"):
        TowerCache.build(m, "text", texts)
    for p in m.parameters():
        p.requires_grad_(False)
    m.train()
    with pytest.raises(RuntimeError, match="train mode"):
        TowerCache.build(m, "text", texts)


def test_cli_plug_in_flags(tmp_path, data):
    from helpers import cli

    out = tmp_path / "run"
    cli("train", "--model", "open_clip:lsb-tiny-test", "--head", "llr", "--train-data", data["text"], "--output", str(out),
        "--max-steps", "3", "--batch-size", "8", "--corpus-negatives", "--tower-cache-dtype", "float16", "-q")
    info = json.load(open(out / "run_info.json"))
    assert info["config"]["corpus_negatives"] and info["tower_cache"]["text"]["hidden"] is True
    r = cli("train", "--model", "open_clip:lsb-tiny-test", "--train-data", data["text"], "--output", str(tmp_path / "x"),
            "--max-steps", "1", "--corpus-negatives", "--train", "all", check=False)
    assert r.returncode == 2 and "needs the text tower locked" in r.stderr and "Traceback" not in r.stderr
    r = cli("train", "--model", "open_clip:lsb-tiny-test", "--train-data", data["text"], "--output", str(tmp_path / "y"),
            "--max-steps", "1", "--tower-cache-gb", "-1", check=False)
    assert r.returncode == 2 and "tower_cache_gb must be >= 0" in r.stderr


def test_validation_split_keeps_documents_apart():
    from lsb_mm.data.training_data import TrainData, TrainExample
    from lsb_mm.training.validation import split_validation

    ex = [TrainExample(f"q{i}", [f"d{i // 3}"], [f"d{(i // 3 + 1) % 20}"], f"x:{i}") for i in range(60)]
    data = TrainData(ex, "text", "jsonl")
    tr, val = split_validation(data, 0.25, seed=1)
    assert len(tr) + len(val) == 60 and 15 <= len(val) <= 17
    assert not {e.pos[0] for e in tr.examples} & {e.pos[0] for e in val.examples}  # a document on one side only
    assert [e.query for e in split_validation(data, 0.25, seed=1)[1].examples] == [e.query for e in val.examples]
    assert [e.query for e in split_validation(data, 0.25, seed=2)[1].examples] != [e.query for e in val.examples]
    with pytest.raises(InputError, match="cannot be split"):
        split_validation(TrainData(ex[:3], "text", "jsonl"), 0.5, seed=0)  # one document: nothing to split


def test_explicit_validation_can_search_among_the_training_documents(tmp_path, data, tiny_hf_dir):
    """--eval-distractors: held-out queries meet every training document, as a carved validation's do."""
    from lsb_mm.data.splits import split_jsonl_by_document

    (train_part, held), = split_jsonl_by_document([data["text"]], str(tmp_path / "split"), 0.25, seed=0)
    kw = dict(model=f"hf:{tiny_hf_dir}", head="slr", pooling="mean", modality="text", train_data=train_part,
              eval_data=held, output=str(tmp_path / "o"), batch_size=8, max_steps=2, show_progress_bar=False)
    plain, among = Trainer(TrainConfig(**kw)), Trainer(TrainConfig(eval_distractors=True, **kw))
    docs = {p for e in among.data.examples for p in e.pos}
    assert plain.eval_distractors == [] and set(among.eval_distractors) == docs and docs
    assert not docs & {p for e in among.eval_data.examples for p in e.pos}  # held-out documents are apart
    with pytest.raises(InputError, match="eval_distractors applies to eval_data"):
        TrainConfig(**{**kw, "eval_data": None, "val_fraction": 0.2, "eval_distractors": True}).check()


def test_best_validation_model_is_kept_and_patience_stops(tmp_path, data, tiny_hf_dir):
    out = tmp_path / "run"
    base = dict(model=f"hf:{tiny_hf_dir}", head="slr", pooling="mean", modality="text", train_data=data["text"],
                batch_size=8, lr=0.3, head_lr=0.3, val_fraction=0.25, eval_steps=2, max_steps=40, log_steps=2,
                corpus_negatives=True, show_progress_bar=False)
    final = train(TrainConfig(output=str(out), patience=2, **base))  # a huge lr: validation soon gets worse
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    evals = [r for r in log if "eval" in r]
    best = max(evals, key=lambda r: r["eval"]["ndcg@10"])
    done = next(r["final"] for r in log if "final" in r)
    assert done["from_step"] == best["step"] and done["value"] == pytest.approx(best["eval"]["ndcg@10"])
    assert any("early_stop" in r for r in evals) and max(r["step"] for r in log if "loss" in r) < 40
    assert lsb_mm.load_model(final).fingerprint() == lsb_mm.load_model(out / "best").fingerprint()
    # the modulation strength is logged at log steps and evaluations
    mods = [r["modulation"] for r in log if "modulation" in r]
    assert mods and all(m["max_over_min"] >= 1 and 0 < m["entropy"] <= 1 + 1e-6 for m in mods)
    assert any(m["max_over_min"] > 1.01 for m in mods)  # the head left its uniform start
    # --no-keep-best: the last model
    last = train(TrainConfig(output=str(tmp_path / "last"), keep_best=False, **{**base, "max_steps": 6}))
    log = [json.loads(line) for line in open(tmp_path / "last" / "train_log.jsonl")]
    assert next(r["final"] for r in log if "final" in r)["from_step"] == 6 and not (tmp_path / "last" / "best").exists()
    assert os.path.isdir(last)


def test_adapter_control_head_trains_and_round_trips(tmp_path, data):
    out = tmp_path / "adapter"
    final = train(TrainConfig(model="open_clip:lsb-tiny-test", head="adapter", modality="text", train_data=data["text"],
                              output=str(out), batch_size=8, max_steps=5, lr=1e-2, show_progress_bar=False))
    m = lsb_mm.load_model(final)
    start = lsb_mm.create_model("open_clip:lsb-tiny-test", head="adapter").text_head.weight
    assert m.text_head.kind == "adapter" and not torch.allclose(m.text_head.weight, start)  # it moved from its init
    q = m.encode_text(["river anchor"], role="query")
    d = m.encode_text(["river anchor"], role="document")  # documents stay plain
    assert not np.allclose(q, d) and np.allclose(np.linalg.norm(q), 1, atol=1e-5)
    fresh = lsb_mm.create_model("open_clip:lsb-tiny-test", head="adapter")
    np.testing.assert_allclose(fresh.encode_text(["x y"], role="query"), fresh.encode_text(["x y"], role="document"), atol=1e-6)


def test_tower_caches_are_shared_between_runs_of_one_tower(tmp_path, data, tiny_hf_dir):
    base = dict(model=f"hf:{tiny_hf_dir}", pooling="mean", modality="text", train_data=data["text"], batch_size=8,
                max_steps=2, show_progress_bar=False)
    first = Trainer(TrainConfig(head="llr", output=str(tmp_path / "a"), **base))
    first.train()
    shared = first.tower_caches
    second = Trainer(TrainConfig(head="slr", output=str(tmp_path / "b"), **base), tower_caches=shared)
    second.train()
    assert second.tower_caches["text"] is shared["text"]
    other = Trainer(TrainConfig(head="slr", output=str(tmp_path / "c"), **{**base, "pooling": "cls"}), tower_caches=shared)
    with pytest.raises(InputError, match="does not serve this run"):  # a cls-pooled tower gives other outputs
        other.train()
    slr_only = Trainer(TrainConfig(head="slr", output=str(tmp_path / "d"), **base))
    slr_only._build_tower_caches()
    llr = Trainer(TrainConfig(head="llr", output=str(tmp_path / "e"), **base), tower_caches=slr_only.tower_caches)
    with pytest.raises(InputError, match="no hidden states for LLR"):
        llr.train()


def test_explain_names_tokens_of_the_query(tmp_path, data, tiny_hf_dir):
    from helpers import cli

    from lsb_mm.models.explain import explain

    out = tmp_path / "slr"
    final = train(TrainConfig(model=f"hf:{tiny_hf_dir}", head="slr", pooling="mean", train_data=data["text"],
                              output=str(out), batch_size=16, max_steps=15, lr=1e-2, corpus_negatives=True,
                              show_progress_bar=False))
    query = "copper canyon lantern"
    r = cli("explain", "--model", final, "--text", query, "--top", "5", "--json")
    res = json.loads(r.stdout)
    words = set(query.split())
    assert res["head"] == "slr" and 1 <= len(res["tokens"]) <= 5
    assert all(t["token"] in words for t in res["tokens"])  # WordPiece keeps these words whole
    assert res["modulation"]["max_over_min"] > 1 and len(res["tokens"][0]["raises_dims"]) == 3
    assert res["tokens"][0]["contribution"] >= res["tokens"][-1]["contribution"]
    table = cli("explain", "--model", final, "--text", query).stdout
    assert "modulation: max/min" in table and "copper" in table
    # LLR and CLR explain too; images name visual words with their patches
    for head in ("llr", "clr"):
        m = lsb_mm.create_model("open_clip:lsb-tiny-test", head=head, head_init="random")
        got = explain(m, text="a red bicycle on the wall", top=4)
        assert len(got["tokens"]) == 4
        if head == "llr":
            assert all(t["token"] in {"a", "red", "bicycle", "on", "the", "wall"} for t in got["tokens"])
    img = lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr", head_init="random", vocab_size=8)
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    got = explain(img, image=str(tmp_path / "red.png"), top=3)
    assert got["tokens"] and got["tokens"][0]["token"].startswith("visual word")
    r = cli("explain", "--model", "open_clip:lsb-tiny-test", "--head", "adapter", "--text", "x", check=False)
    assert r.returncode == 2 and "no token-aware modulation" in r.stderr


def test_frozen_batch_norm_statistics_stay_while_the_tower_trains(tmp_path, data, tiny_hf_dir):
    import torch.nn as nn

    for freeze in (True, False):
        t = _trainer(tmp_path, data, tiny_hf_dir, "image", "resnet", "none", {"model_options": {"img_size": 32}},
                     train="all", freeze_bn_stats=freeze, lr=1e-2)
        bns = [m for m in t.model.modules() if isinstance(m, nn.BatchNorm2d)]
        before = [m.running_mean.clone() for m in bns]
        weights = [m.weight.detach().clone() for m in bns]
        t._train_mode()
        assert bns and all(m.training != freeze for m in bns)
        t.compute_loss(t.micro_batch(0, 0)).backward()
        t.optimizer_step()
        assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns)) == freeze
        assert not all(torch.equal(w, m.weight) for w, m in zip(weights, bns))  # affine weights train either way
