"""Peak memory of the sparse SLR / LLR heads (forward + backward) vs the reference's dense formulation.

    python3 scripts/bench_memory.py [--out bench_results] [--batch 64] [--length 64] [--vocab 30522]
                                    [--hidden 384] [--dim 384] [--repeats 3] [--device auto]

The dense formulation (the reference's LLR) builds a ``[B, L, V]`` tensor holding ``u_j`` at
``(b, j, t_j)``, takes the max over ``L`` to get ``w [B, V]``, then ``w @ W_p``; it lives here
only, ours never uses it. SLR (``u_j = s``) is measured both ways as well. Each variant runs in its own fresh subprocess on the same seeded
inputs (repeats interleaved, median): on CPU the peak RSS of the step above the RSS after
set-up (``VmHWM`` reset through ``/proc/self/clear_refs``, else ``ru_maxrss``), on CUDA
``torch.cuda.max_memory_allocated`` above the allocation after set-up. The outputs and
gradients of every variant are checked against ours (allclose). Writes ``memory.json`` and ``memory.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List

import torch

from lsb_mm_experiments.benchmarking import write_benchmark

VARIANTS = {"llr": ("llr", False), "llr-dense": ("llr", True), "slr": ("slr", False), "slr-dense": ("slr", True)}
SHAPE = {"batch": 64, "length": 64, "vocab": 30522, "hidden": 384, "dim": 384}  # B, L, V, hidden, d
SPECIAL = (0, 101, 102)  # PAD, CLS, SEP (WordPiece)


class DenseMax:
    """Mixin: the reference's dense ``w @ W_p`` in place of the sparse segment max of :class:`LSBHead`."""

    def _sparse_max_project(self, ids: torch.Tensor, keep: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        b, l = ids.shape
        u = (values * keep).unsqueeze(-1)  # values >= 0, so zeros elsewhere do not change the max
        dense = torch.zeros(b, l, self.vocab_size, dtype=u.dtype, device=ids.device).scatter(2, ids.unsqueeze(-1), u)
        w = dense.max(dim=1).values  # [B, V]
        return w.to(self.proj_weight.dtype) @ self.proj_weight


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(variant: str, a: argparse.Namespace) -> Dict[str, float]:
    """One forward + backward of ``variant``; writes output and gradients to ``a.dump``, returns MiB."""
    from lsb_mm.models.heads import HEADS
    from lsb_mm.models.stream import TokenStream

    kind, dense = VARIANTS[variant]
    cls = type(f"Dense{kind.upper()}", (DenseMax, HEADS[kind]), {}) if dense else HEADS[kind]
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    head = cls(a.vocab, a.dim, a.hidden, init="random").to(dev)
    ids = torch.randint(len(SPECIAL), a.vocab, (a.batch, a.length), generator=g)
    ids[:, 0], ids[:, -1] = SPECIAL[1], SPECIAL[2]
    mask = torch.arange(a.length).unsqueeze(0) < torch.randint(a.length // 2, a.length + 1, (a.batch, 1), generator=g)
    ids = ids.masked_fill(~mask, SPECIAL[0])
    hidden = torch.randn(a.batch, a.length, a.hidden, generator=g).to(dev).requires_grad_()
    pooled = torch.randn(a.batch, a.dim, generator=g).to(dev)
    target = torch.randn(a.batch, a.dim, generator=g).to(dev)

    def step(n: int, h: torch.Tensor):
        stream = TokenStream(ids=ids[:n].to(dev), mask=mask[:n].to(dev), hidden=h, pooled=pooled[:n], summary=pooled[:n],
                             vocab_size=a.vocab, special_ids=torch.tensor(SPECIAL, device=dev))
        out = head(stream)
        (out * target[:n]).sum().backward()
        return out, stream

    step(2, hidden.detach()[:2].requires_grad_())  # warm-up: loads code pages and autograd threads before the baseline
    head.zero_grad(set_to_none=True)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset = _reset_peak()
        base = _status_kib("VmRSS") * 1024
    out, stream = step(a.batch, hidden)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:  # ru_maxrss (KiB on Linux) is not reset by clear_refs: only a fallback
        peak = _status_kib("VmHWM") * 1024 if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.no_grad():
        result = {"projected": head.projected(stream), "out": out, "hidden.grad": hidden.grad,
                  **{f"{n}.grad": p.grad for n, p in head.named_parameters()}}
    torch.save({k: v.detach().cpu() for k, v in result.items() if v is not None}, a.dump)
    return {"peak_mib": (peak - base) / 2**20, "measure": "cuda_max_allocated" if cuda else ("VmHWM" if reset else "ru_maxrss")}


def run_child(variant: str, args: argparse.Namespace, dump: str) -> Dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--dump", dump, "--device", args.device,
           *(f"--{k}={getattr(args, k)}" for k in SHAPE)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{variant} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def agree(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Largest absolute difference of every shared tensor, and whether all are allclose."""
    diffs = {k: (a[k] - b[k]).abs().max().item() for k in a if k in b}
    return {"allclose": all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in diffs),
            "max_abs_diff": max(diffs.values())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_results")
    for k, v in SHAPE.items():
        ap.add_argument(f"--{k}", type=int, default=v)
    ap.add_argument("--repeats", type=int, default=3, help="fresh subprocesses per variant, interleaved")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    ap.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--dump", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        print(json.dumps(child(args.child, args)))
        return 0
    peaks: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        dumps = {v: os.path.join(tmp, f"{v}.pt") for v in VARIANTS}
        for _ in range(args.repeats):
            for v in VARIANTS:
                res = run_child(v, args, dumps[v])
                peaks[v].append(res["peak_mib"])
        tensors = {v: torch.load(p, weights_only=True) for v, p in dumps.items()}
    rows = []
    for v, (kind, dense) in VARIANTS.items():
        mib = statistics.median(peaks[v])
        sparse = statistics.median(peaks[kind])
        rows.append({"variant": v, "head": kind, "dense": dense, "peak_mib": round(mib, 2),
                     "ratio_vs_sparse": round(mib / sparse, 2) if sparse > 0 else None, **agree(tensors[v], tensors[kind])})
    shape = {k: getattr(args, k) for k in SHAPE}
    lines = [f"Peak memory of one forward + backward of the head ({res['measure']} on {args.device}, above the set-up), "
             f"B={args.batch}, L={args.length}, V={args.vocab}, hidden {args.hidden}, d={args.dim}, fp32; "
             f"median of {args.repeats} fresh subprocesses per variant, interleaved.", "",
             "| head | formulation | peak MiB | vs sparse | same output and gradients |", "|---|---|---:|---:|---|"]
    lines += [f"| {r['head']} | {'dense [B, L, V] (reference)' if r['dense'] else 'sparse (lsb_mm)'} | {r['peak_mib']:.1f} | "
              f"{r['ratio_vs_sparse'] or 'n/a'} | {r['allclose']} (max diff {r['max_abs_diff']:.1e}) |" for r in rows]
    lines += ["", f"Every variant includes the dense gradient of W_p ({args.vocab} x {args.dim} fp32 = "
                  f"{args.vocab * args.dim * 4 / 2**20:.1f} MiB), as training allocates it."]
    write_benchmark(args.out, "memory", {**shape, "device": args.device, "measure": res["measure"], "repeats": args.repeats,
                                         "samples_mib": peaks, "results": rows}, lines)
    return 0 if all(r["allclose"] for r in rows) else 1

if __name__ == "__main__":
    raise SystemExit(main())
