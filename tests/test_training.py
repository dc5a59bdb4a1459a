"""The contrastive trainer: it learns, DDP equals one process, resume is exact, bad data is named."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lsb_mm
from lsb_mm.errors import InputError
from lsb_mm.training.config import TrainConfig
from lsb_mm.training.trainer import Trainer, train

sys.path.insert(0, os.path.dirname(__file__))
import helpers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")


def read_log(out):
    with open(os.path.join(out, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Held-out queries of a known corpus (text), colour/shape classes (image), captions (cross)."""
    root = tmp_path_factory.mktemp("train_sets")
    text_train, text_dev = helpers.passage_queries(200, per_passage=4, dev=60, seed=0)
    rs = np.random.RandomState(5)
    dev_img = []  # unseen images; relevant: the unseen images of the same class
    (root / "imgdev").mkdir()
    for c in helpers.COLORS:
        for s in helpers.SHAPES:
            same = [str(root / "imgdev" / f"{c}_{s}_{k}b.png") for k in range(3)]
            for path in same:
                helpers.draw(c, s, rs, noise=True).save(path)
            for k in range(3):
                query = root / "imgdev" / f"{c}_{s}_{k}a.png"
                helpers.draw(c, s, rs, noise=True).save(query)
                dev_img.append({"query": str(query), "pos": same})
    cap_train = helpers.caption_items(root / "cap_train", 360, seed=0)
    cap_dev = helpers.caption_items(root / "cap_dev", 54, seed=1)  # caption -> every unseen image it describes
    cap_dev = [{"query": c, "pos": [p for c2, p in cap_dev if c2 == c]} for c in dict.fromkeys(c for c, _ in cap_dev)]
    return {
        "text": (helpers.write_jsonl(root / "text_train.jsonl", text_train),
                 helpers.write_jsonl(root / "text_dev.jsonl", text_dev)),
        "image": (helpers.labelled_folder(root / "labelled", per_class=8, seed=0, noise=True),
                  helpers.write_jsonl(root / "img_dev.jsonl", dev_img)),
        "cross": (helpers.write_jsonl(root / "cap_train.jsonl", [{"query": c, "pos": [p]} for c, p in cap_train]),
                  helpers.write_jsonl(root / "cap_dev.jsonl", cap_dev)),
    }


@pytest.mark.parametrize("modality", ["text", "image", "cross"])
@pytest.mark.parametrize("head", ["none", "slr"])
@pytest.mark.slow
def test_training_improves_held_out_recall(modality, head, sets, tmp_path, tiny_hf_dir):
    train_data, dev = sets[modality]
    model = f"hf:{tiny_hf_dir}" if modality == "text" else "open_clip:lsb-tiny-test"
    out = str(tmp_path / "run")
    final = train(TrainConfig(model=model, head=head, pooling="mean" if modality == "text" else None, modality=modality,
                              train_data=train_data, eval_data=dev, eval_steps=60, output=out, max_steps=60,
                              batch_size=16, lr=3e-3, head_lr=1e-2, train="all", temperature=0.05, log_steps=5,
                              show_progress_bar=False))
    log = read_log(out)
    losses = [r["loss"] for r in log if "loss" in r]
    evals = [r["eval"]["recall@1"] for r in log if "eval" in r]
    assert losses[-1] < 0.8 * losses[0], losses
    assert len(evals) == 2 and evals[-1] > evals[0], evals
    m = lsb_mm.load_model(final)
    assert (m.text_head if modality == "text" else m.image_head).kind == head


@pytest.mark.slow
def test_cli_train_quickstart(tmp_path):
    data = helpers.write_jsonl(tmp_path / "pairs.jsonl", helpers.passage_queries(40, per_passage=2, dev=0)[0])
    out = tmp_path / "OUT"
    r = subprocess.run([sys.executable, "-m", "lsb_mm", "train", "--model", "open_clip:lsb-tiny-test", "--head", "slr",
                        "--modality", "text", "--train-data", data, "--output", str(out), "--max-steps", "20",
                        "--batch-size", "8", "-q"], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["final"].endswith("final")
    m = lsb_mm.load_model(out / "final")
    assert m.text_head.kind == "slr" and m.text_head.proj_weight.abs().sum() > 0  # it trained
    info = json.loads((out / "run_info.json").read_text())
    assert info["total_steps"] == 20 and info["examples"] == 80
    assert [r["step"] for r in read_log(out) if "loss" in r] == [1, 10, 20]
    assert os.path.isdir(out / "checkpoint-000020")
    h = subprocess.run([sys.executable, "-m", "lsb_mm", "train", "--help"], capture_output=True, text=True, env=ENV)
    for flag in ("--train-group-size", "--mine-negatives", "--cross-device-negatives", "--resume", "--lock-text",
                 "--precision", "--grad-accum", "--csv-img-key", "--skip-bad", "--symmetric", "--eval-data"):
        assert flag in h.stdout


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(tmp_path):
    """Cross-device negatives: 2 ranks x 4 queries give the loss and gradients of 1 process x 8."""
    data = helpers.write_jsonl(tmp_path / "d.jsonl", helpers.passage_queries(30, per_passage=1, dev=0, negatives=1)[0])
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        os.path.join(HERE, "ddp_check.py"), data, str(tmp_path), "4"],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    subprocess.run([sys.executable, os.path.join(HERE, "ddp_check.py"), data, str(tmp_path), "8"], check=True, env=ENV,
                   timeout=600, capture_output=True)
    two, one = load_file(tmp_path / "step_world2.safetensors"), load_file(tmp_path / "step_world1.safetensors")
    assert set(two) == set(one) and len(two) > 10
    assert abs(float(two["loss"]) - float(one["loss"])) <= 1e-5
    for k in one:
        assert torch.allclose(two[k], one[k], atol=1e-5, rtol=1e-4), k

    # a whole 2-process run through the CLI: both ranks end with the same weights
    out = tmp_path / "ddp_run"
    r = subprocess.run([sys.executable, "-m", "lsb_mm", "train", "--nproc", "2", "--model", "open_clip:lsb-tiny-test",
                        "--head", "llr", "--train-data", data, "--output", str(out), "--max-steps", "3",
                        "--batch-size", "4", "--cross-device-negatives", "--train", "all", "-q"],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    prints = [rec["weights_fingerprint_per_rank"] for rec in read_log(out) if "weights_fingerprint_per_rank" in rec]
    assert len(prints) == 1 and len(prints[0]) == 2 and prints[0][0] == prints[0][1]
    assert lsb_mm.load_model(out / "final").fingerprint() == prints[0][0]


@pytest.mark.parametrize("modality, head", [("image", "llr"), ("cross", "llr")])
@pytest.mark.slow
def test_two_process_image_training_ends_with_one_model(modality, head, tmp_path, sets):
    """A fresh codebook shrinks the visual vocabulary and re-creates the image head: every rank
    must end with rank 0's head (LLR's token weights start random). ``--nproc=2`` form of the flag."""
    data = sets[modality][0]
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "lsb_mm", "train", "--nproc=2", "--model", "open_clip:lsb-tiny-test",
                        "--head", head, "--modality", modality, "--train-data", data, "--output", str(out),
                        "--max-steps", "2", "--batch-size", "4", "--fit-codebook", "16", "--cross-device-negatives", "-q"],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.load(open(out / "run_info.json"))
    assert info["world_size"] == 2
    prints = [rec["weights_fingerprint_per_rank"] for rec in read_log(out) if "weights_fingerprint_per_rank" in rec]
    assert len(prints) == 1 and prints[0][0] == prints[0][1]
    model = lsb_mm.load_model(out / "final")
    assert model.visual_words.vocab_size < 1024 and model.fingerprint() == prints[0][0]


@pytest.mark.slow
def test_bad_settings_exit_2_before_any_process_starts(tmp_path):
    data = helpers.write_jsonl(tmp_path / "d.jsonl", helpers.passage_queries(20, per_passage=1, dev=0)[0])
    base = ["--model", "open_clip:lsb-tiny-test", "--train-data", data, "--max-steps", "1", "--batch-size", "4"]
    cases = [(["--log-steps", "0"], "log_steps must be >= 1"), (["--save-steps", "-1"], "save_steps must be >= 0"),
             (["--eval-steps", "-2"], "eval_steps must be >= 0"), (["--nproc=0"], "--nproc must be >= 1"),
             (["--nproc=2", "--log-steps", "0"], "log_steps must be >= 1"), (["--keep-checkpoints", "-1"], "keep_checkpoints"),
             (["--workers", "-1"], "workers must be >= 0"), (["--vocab-size", "1"], "vocab_size must be >= 2"),
             (["--fit-codebook", "-5"], "fit_codebook must be")]
    for extra, msg in cases:
        r = subprocess.run(_cli_train(base + extra, tmp_path / "o"), capture_output=True, text=True, env=ENV, timeout=600)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr[-2000:])
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o").exists()


def _cli_train(args, out):
    return [sys.executable, "-m", "lsb_mm", "train", *args, "--output", str(out), "-q"]


@pytest.mark.slow
def test_sigkill_then_resume_is_exact(tmp_path, tiny_hf_dir):
    """Dropout on (tiny BERT, --train all), hard negatives sampled: resume must restore RNG and data position."""
    data = helpers.write_jsonl(tmp_path / "d.jsonl", helpers.passage_queries(120, per_passage=2, dev=0, negatives=3)[0])
    args = ["--model", f"hf:{tiny_hf_dir}", "--pooling", "mean", "--head", "llr", "--train-data", data, "--train", "all",
            "--train-group-size", "3", "--batch-size", "8", "--max-steps", "60", "--save-steps", "3", "--lr", "1e-3",
            "--seed", "7", "--log-steps", "1", "--keep-checkpoints", "0"]
    full = tmp_path / "full"
    subprocess.run(_cli_train(args, full), check=True, env=ENV, timeout=600, capture_output=True)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_cli_train(args, cut), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (cut / "checkpoint-000006" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its second checkpoint"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "final").exists(), "the kill came too late to test anything"
    r = subprocess.run(_cli_train(args + ["--resume"], cut), capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = lsb_mm.load_model(full / "final").state_dict(), lsb_mm.load_model(cut / "final").state_dict()
    for k in a:
        assert (a[k].float() - b[k].float()).abs().max() <= 1e-6, k
    # the resumed log has each step once, as the uninterrupted one
    steps = [r["step"] for r in read_log(cut) if "loss" in r]
    assert steps == list(range(1, 61))


def test_resume_refuses_changed_settings(tmp_path):
    data = helpers.write_jsonl(tmp_path / "d.jsonl", helpers.passage_queries(40, per_passage=1, dev=0)[0])
    cfg = dict(model="open_clip:lsb-tiny-test", head="slr", train_data=data, output=str(tmp_path / "o"), max_steps=2,
               batch_size=8, show_progress_bar=False)
    train(TrainConfig(**cfg))
    with pytest.raises(InputError, match="batch_size was 8, now 4"):
        Trainer(TrainConfig(**{**cfg, "batch_size": 4, "resume": "latest"}))
    # every setting that changes the result must match too
    for key, value in (("max_grad_norm", 0.5), ("mine_top_k", 5), ("precision", "fp32"), ("temperature", 0.05)):
        with pytest.raises(InputError, match=f"{key} was .*, now {value!r}"):
            Trainer(TrainConfig(**{**cfg, key: value, "resume": "latest"}))
    Trainer(TrainConfig(**{**cfg, "log_steps": 3, "resume": "latest"}))  # logging does not change the result
    with pytest.raises(InputError, match="no complete checkpoint"):
        Trainer(TrainConfig(**{**cfg, "output": str(tmp_path / "empty"), "resume": "latest"}))


def _bad(tmp_path, lines, **kw):
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    cfg = dict(model="open_clip:lsb-tiny-test", head="slr", train_data=str(p), output=str(tmp_path / "o"), max_steps=1,
               batch_size=2, show_progress_bar=False)
    cfg.update(kw)
    return cfg


GOOD = json.dumps({"query": "apple", "pos": ["apple river"], "neg": ["stone cloud"]})


def test_bad_training_data_is_named(tmp_path, image_files):
    cases = [
        ([GOOD, "{not json"], {}, r"bad.jsonl:2: not valid JSON"),
        ([GOOD, json.dumps({"query": "", "pos": ["x"]})], {}, r"bad.jsonl:2: query is empty"),
        ([GOOD, json.dumps({"query": "q"})], {}, r"bad.jsonl:2: field 'pos' must be a non-empty list"),
        ([GOOD, json.dumps({"query": "q", "pos": [3]})], {}, r"bad.jsonl:2: pos\[0\] must be a string"),
        ([GOOD, json.dumps({"query": "red", "pos": ["missing.png"]})], {"modality": "cross"},
         r"bad.jsonl:1: pos\[0\]: image file .*apple river not found"),
        ([GOOD, json.dumps({"query": "q", "pos": ["p"]})], {"batch_size": 1},
         r"bad.jsonl:2: a group with no negatives in a batch of one"),
    ]
    for lines, kw, msg in cases:
        with pytest.raises(InputError, match=msg):
            Trainer(TrainConfig(**_bad(tmp_path, lines, **kw)))
    # missing image named, in cross-modal data
    rec = json.dumps({"query": "a cat", "pos": [str(tmp_path / "nope.png")]})
    with pytest.raises(InputError, match=r"bad.jsonl:2: pos\[0\]: image file .*nope.png not found"):
        Trainer(TrainConfig(**_bad(tmp_path, [json.dumps({"query": "x", "pos": [image_files[0]]}), rec], modality="cross")))
    # CSV without the named column
    csv = tmp_path / "pairs.csv"
    csv.write_text("path,text\nimg_0.png,a cat\n")
    with pytest.raises(InputError, match=r"pairs.csv:1: no column 'filepath' \(--csv-img-key\); the columns are \['path', 'text'\]"):
        Trainer(TrainConfig(model="open_clip:lsb-tiny-test", train_data=str(csv), modality="cross", output=str(tmp_path / "o")))


def test_skip_bad_writes_a_report(tmp_path):
    lines = [GOOD, "{oops", json.dumps({"query": "", "pos": ["x"]}), GOOD, GOOD]
    out = tmp_path / "o"
    train(TrainConfig(**{**_bad(tmp_path, lines), "skip_bad": True, "output": str(out)}))
    report = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert [r["source"].rsplit(":", 1)[1] for r in report] == ["2", "3"]
    assert "not valid JSON" in report[0]["reason"] and "query is empty" in report[1]["reason"]
    assert json.loads((out / "run_info.json").read_text())["skipped"] == 2


def test_csv_and_caption_folder_and_labelled_folder(tmp_path):
    items = helpers.caption_items(tmp_path / "caps", 12, seed=0)
    for caption, path in items:
        with open(os.path.splitext(path)[0] + ".txt", "w") as f:
            f.write(caption + "\nsecond line ignored\n")
    from lsb_mm.data.training_data import load_train_data

    folder = load_train_data(str(tmp_path / "caps"), "cross")
    assert folder.fmt == "captions" and len(folder) == 12 and folder.examples[0].query == items[0][0]
    csv = tmp_path / "pairs.tsv"
    csv.write_text("filepath\tcaption\n" + "".join(f"{os.path.basename(p)}\t{c}\n" for c, p in items))
    t = load_train_data(str(csv), "cross", image_root=str(tmp_path / "caps"))
    assert t.fmt == "csv" and len(t) == 12
    lab = load_train_data(helpers.labelled_folder(tmp_path / "lab", per_class=3), "image")
    assert lab.fmt == "labelled" and len(lab) == 3 * len(helpers.COLORS) * len(helpers.SHAPES)
    e = lab.examples[0]
    assert len(e.pos) == 2 and all(os.path.dirname(p) == os.path.dirname(e.query) for p in e.pos)
    assert all(os.path.dirname(n) != os.path.dirname(e.query) for n in e.neg)
    with pytest.raises(InputError, match="serves --modality cross"):
        load_train_data(str(csv), "text")


def test_one_caption_folder_layout_for_every_command(tmp_path, capsys):
    """Images with caption sidecars in category sub-folders: train --modality cross reads what build-tasks --captions reads."""
    import shutil

    from lsb_mm.cli import main
    from lsb_mm.data.tasks import read_task
    from lsb_mm.data.training_data import load_train_data

    items = helpers.caption_items(tmp_path / "flat", 12, seed=0)
    nested = tmp_path / "nested"
    for n, (caption, path) in enumerate(items):
        folder = nested / f"category{n % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / os.path.basename(path))
        (folder / os.path.basename(path)).with_suffix(".txt").write_text(caption + "\n")
    data = load_train_data(str(nested), "cross")
    assert data.fmt == "captions" and len(data) == 12
    assert main(["build-tasks", "--captions", str(nested), "--output", str(tmp_path / "tasks")]) == 0
    capsys.readouterr()
    assert len(read_task(str(tmp_path / "tasks" / "caption2image")).queries) == len(data) == 12
    with pytest.raises(InputError, match="serves --modality image, not 'text'"):
        load_train_data(str(nested), "text")


def test_mining_symmetric_accumulation_and_locks(tmp_path, sets):
    """Mined negatives exclude the positives; symmetric cross loss, grad accumulation, a locked tower, workers."""
    train_data, dev = sets["cross"]
    t = Trainer(TrainConfig(model="open_clip:lsb-tiny-test", head="slr", modality="cross", train_data=train_data,
                            output=str(tmp_path / "o"), max_steps=3, batch_size=8, grad_accum=2, mine_negatives=True,
                            mine_top_k=5, train_group_size=3, symmetric=True, train="all", lock_image=True, num_workers=1,
                            show_progress_bar=False))
    assert not any(p.requires_grad for n, p in t.model.named_parameters() if n.startswith("backbone.model.visual."))
    assert any(p.requires_grad for n, p in t.model.named_parameters() if n.startswith("backbone.model.transformer."))
    visual_before = {n: p.detach().clone() for n, p in t.model.named_parameters() if n.startswith("backbone.model.visual.")}
    t.train()
    assert len(t.batches.mined) == len(t.data) and all(len(v) == 5 for v in t.batches.mined.values())
    for i, ex in enumerate(t.data.examples):
        assert not set(t.batches.mined[i]) & set(ex.pos)
    after = dict(t.model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in visual_before.items())  # the locked tower did not move
    batch = t.micro_batch(0, 0)
    assert len(batch["passages"]) == 8 * 3  # positive + 2 mined negatives per query (cached paths: not decoded)
    log = read_log(tmp_path / "o")
    assert [r["step"] for r in log if "loss" in r] == [1, 3] and all(np.isfinite(r["loss"]) for r in log if "loss" in r)


def test_train_mode_keeps_dropout_of_trained_modules_and_freezes_locked_ones(tiny_hf_dir):
    """Dropout (no parameters) follows the module that holds it; a fully frozen module stays in eval."""
    from types import SimpleNamespace

    trained = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    locked = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    locked.requires_grad_(False)
    toy = torch.nn.Sequential(trained, locked, torch.nn.Dropout(0.1)).eval()
    Trainer._train_mode(SimpleNamespace(model=toy, cfg=SimpleNamespace(freeze_bn_stats=False)))
    assert trained.training and trained[1].training and toy[2].training and toy.training
    assert not locked.training and not locked[1].training

    m = lsb_mm.create_model(f"hf:{tiny_hf_dir}", head="llr").eval()  # --train all: every dropout trains
    Trainer._train_mode(SimpleNamespace(model=m, cfg=SimpleNamespace(freeze_bn_stats=False)))
    drops = [mod for mod in m.modules() if isinstance(mod, torch.nn.Dropout)]
    assert drops and all(d.training for d in drops)
