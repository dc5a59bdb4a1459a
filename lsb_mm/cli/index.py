"""``lsb-mm index``: a thin layer over :func:`lsb_mm.build_index`."""
from __future__ import annotations

import argparse
import json

from lsb_mm.cli.common import (_add_model_args, _model_spec)


def cmd_index(args) -> int:
    from lsb_mm.retrieval.pipeline import build_index

    kind = next(k for k in ("images", "corpus", "csv", "parquet", "tar") if getattr(args, k) is not None)
    spec = _model_spec(args)
    index = build_index(spec.pop("name"), getattr(args, kind), args.output, kind=kind, engine=args.engine,
                        factory=args.factory, bm25=args.bm25, max_memory=args.max_index_memory,
                        target_recall=args.target_recall, device=args.index_device, batch_size=args.batch_size,
                        num_workers=args.workers, shard_size=args.shard_size, embeddings=args.embeddings,
                        embedding_dtype=args.embedding_dtype, replicas=args.replicas, address=args.address,
                        overwrite=args.overwrite, shard=args.shard, skip_bad=args.skip_bad, image_root=args.image_root,
                        csv_img_key=args.csv_img_key, csv_caption_key=args.csv_caption_key, model_options=spec,
                        model_device=args.device, show_progress_bar=not args.quiet)
    print(json.dumps(index.build_report))
    return 0


def add_parser(sub) -> None:
    """Add this module's command(s) to the ``lsb-mm`` sub-parsers."""
    ix = sub.add_parser("index", help="encode documents (images, JSONL/BEIR, CSV, Parquet, WebDataset tar) into a FAISS index folder",
                        description="Encode documents with role=document and write an index folder (manifest.json, "
                                    "index.faiss, ids.jsonl, metadata.jsonl) atomically.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  lsb-mm index --model runs/m/final --images photos/ --output photos.index\n"
                               "  lsb-mm index --model hf:/path/MiniLM --corpus beir/scifact --factory HNSW32 --output sf.index\n"
                               "  lsb-mm index ... --shard 2/4 --output part2.index   (then search --index part1.index part2.index ...)\n"
                               "  lsb-mm index --model minilm --tar 'shards/*.tar' --engine ray --factory auto --max-index-memory 4G \\\n"
                               "      --output big.index   (shards in big.index.embeddings: rerun to resume)")
    _add_model_args(ix)
    srcs = ix.add_mutually_exclusive_group(required=True)
    srcs.add_argument("--images", help="a folder of images (recursive; x.txt sidecars become captions)")
    srcs.add_argument("--corpus", help="a JSONL corpus ({_id, text|image}) or a BEIR folder")
    srcs.add_argument("--csv", help="a CSV/TSV of images (--csv-img-key) with captions (--csv-caption-key)")
    srcs.add_argument("--parquet", help="Parquet file(s): a file, a folder or a glob; columns _id (or id) and text, "
                                        "or image (bytes or a path) with an optional caption")
    srcs.add_argument("--tar", help="tar shards in the WebDataset layout (KEY.jpg + KEY.txt caption + KEY.json, or "
                                    "KEY.txt alone for text): a file, a folder or a glob such as 'shards/*.tar'")
    ix.add_argument("--csv-img-key", default="filepath")
    ix.add_argument("--csv-caption-key", default="caption")
    ix.add_argument("--image-root", default=None, help="folder that relative image paths start from")
    ix.add_argument("--output", required=True, help="index folder to write")
    ix.add_argument("--factory", default="Flat",
                    help="FAISS index factory string: Flat (exact), HNSW32, IVF1024,Flat, IVF1024,SQ8, IVF1024,PQ32 ...; "
                         "binary codes (1 bit per dimension): BFlat, BIVF1024, BHNSW32, with ,Rescore4 to reorder 4k "
                         "Hamming candidates by the float query; or auto: chosen from the corpus size, dimension and "
                         "--max-index-memory (Flat, HNSW32, IVF-Flat, IVF-SQ8, IVF-PQ)")
    ix.add_argument("--max-index-memory", default=None, metavar="SIZE",
                    help="memory budget of the index for --factory auto, e.g. 512M, 4G (default: none)")
    ix.add_argument("--target-recall", type=float, default=None,
                    help="tune nprobe / efSearch to this Recall@10 against exact search on 1,000 of the documents "
                         "as queries (default with --factory auto: 0.95)")
    ix.add_argument("--index-device", default="auto", choices=["auto", "cpu", "gpu"], help="where the index lives (auto: all GPUs when FAISS sees one)")
    ix.add_argument("--bm25", action="store_true",
                    help="also index each document's text (images: its caption) with BM25, for search --hybrid")
    ix.add_argument("--engine", default="memory", choices=["memory", "local", "ray"],
                    help="memory (default): encode everything in this process, then index. local / ray: encode "
                         "into resumable embedding shards (--embeddings), in this process or on Ray Data actors, "
                         "then build the index from the shards a block at a time (for corpora bigger than memory)")
    ix.add_argument("--embeddings", default=None, metavar="FOLDER",
                    help="where --engine local|ray writes its shards (default: OUTPUT.embeddings); a rerun skips "
                         "finished shards")
    ix.add_argument("--shard-size", type=int, default=8192,
                    help="documents per embedding shard (default 8192; Parquet: whole row groups up to about that "
                         "many rows, a larger group in slices; tar: one shard per file)")
    ix.add_argument("--embedding-dtype", default="float32", choices=["float32", "float16"],
                    help="dtype of the shard files (float16 halves the disk; vectors are re-normalised when read)")
    ix.add_argument("--replicas", type=int, default=2,
                    help="--engine ray: model replicas (actors) when Ray sees no GPU; with GPUs, one per GPU (default 2)")
    ix.add_argument("--address", default=None,
                    help="--engine ray: join the Ray cluster at this address (default: start Ray on this machine)")
    ix.add_argument("--overwrite", action="store_true",
                    help="--engine local|ray: start over, discarding every shard in --embeddings (needed when they "
                         "belong to an earlier, different job)")
    ix.add_argument("--shard", default=None, help="index only slice i/n of the documents (e.g. 2/4)")
    ix.add_argument("--skip-bad", action="store_true", help="skip unreadable images and list them in OUTPUT.skipped.jsonl")
    ix.add_argument("--batch-size", type=int, default=64)
    ix.add_argument("--workers", type=int, default=2, help="image decoding worker processes (default: 2)")
    ix.add_argument("-q", "--quiet", action="store_true")
    ix.set_defaults(func=cmd_index)
