"""``umr mine``: hard negatives for a training JSONL or M-BEIR's training queries (MM-Embed's
modality-aware mining, or plain ANCE-style), written as a training JSONL ``umr train`` reads."""

from __future__ import annotations

import sys
from pathlib import Path

from ..index import IndexStoreError
from ..train.mine import MineSettings, errors_path, mine_file, provenance_path
from .common import UsageError, add_model_options, load_model_from_args, model_options


def add_parser(sub) -> None:
    parser = sub.add_parser("mine", help="mine (modality-aware) hard negatives for training")
    add_model_options(parser, model_help="the retriever that ranks the pool (e.g. one trained with random negatives)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a training JSONL (query, positive, negatives, source)")
    source.add_argument("--mbeir", type=Path, help="an M-BEIR folder: its query/<split>/ training queries")
    parser.add_argument("--pool", type=Path, required=True,
                        help="the candidates: items JSONL, M-BEIR pool JSONL or folder (as `umr index` reads)")
    parser.add_argument("--output", type=Path, required=True, help="the mined training JSONL to write")
    parser.add_argument("--top-k", type=int, default=50, help="candidates retrieved per query (default 50)")
    parser.add_argument("--skip", type=int, default=45,
                        help="same-modality / plain negatives are ranked beyond this (default 45)")
    parser.add_argument("--negatives", type=int, default=None,
                        help="keep at most this many negatives of each kind, best-ranked first (default: all)")
    parser.add_argument("--target-modality", default=None,
                        help="text, image or image,text (default: the M-BEIR task's, else the positive's)")
    parser.add_argument("--plain", action="store_true",
                        help="ANCE-style: any non-positive ranked beyond --skip, modality ignored")
    parser.add_argument("--instruction", default=None,
                        help="the instruction of queries that carry none (M-BEIR: instead of UniIR's)")
    parser.add_argument("--split", default="train", help="M-BEIR: the query split (default train)")
    parser.add_argument("--tasks", nargs="+", default=None, help="M-BEIR: these tasks only (e.g. mscoco_task0)")
    parser.add_argument("--seed", type=int, default=0, help="M-BEIR: seeds UniIR's instruction pick (default 0)")
    parser.add_argument("--index", type=Path, default=None, dest="index_dir",
                        help="where the pool's index lives (default OUTPUT.index; reused and resumed)")
    parser.add_argument("--method", choices=["exact", "hnsw"], default="exact",
                        help="search of a new pool index (hnsw for pools of millions)")
    parser.add_argument("--image-root", type=Path, default=None, help="M-BEIR pools: folder img_path is relative to")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(run=run)


def run(args) -> int:
    for name, path in (("--data", args.data), ("--mbeir", args.mbeir), ("--pool", args.pool)):
        if path is not None and not path.exists():
            raise UsageError(f"{name}: no such file or folder: {path}")
    try:
        settings = MineSettings(top_k=args.top_k, skip=args.skip, negatives=args.negatives,
                                target_modality=args.target_modality, plain=args.plain,
                                instruction=args.instruction)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options = model_options(args)
    model = load_model_from_args(args, args.model, options)
    try:
        summary = mine_file(model, pool=args.pool, output=args.output, settings=settings, data=args.data,
                            mbeir=args.mbeir, split=args.split, tasks=args.tasks, seed=args.seed,
                            index_dir=args.index_dir, method=args.method, image_root=args.image_root,
                            batch_size=args.batch_size, model_options=options,
                            show_progress=not args.no_progress)
    except (IndexStoreError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(f"umr mine: {summary.line()} in {summary.seconds:.1f}s -> {args.output} "
          f"(provenance: {provenance_path(args.output)})")
    if summary.positives_not_in_pool:
        print(f"  {summary.positives_not_in_pool} example(s) have no positive in the pool: "
              f"nothing of theirs could be excluded by id", file=sys.stderr)
    if summary.errors:
        print(f"  {len(summary.errors)} example(s) could not be mined:", file=sys.stderr)
        for entry in summary.errors[:20]:
            where = f"line {entry['line']}" if entry["line"] is not None else entry["example"]
            print(f"    {where}: {entry['error']}", file=sys.stderr)
        if len(summary.errors) > 20:
            print(f"    ... and {len(summary.errors) - 20} more", file=sys.stderr)
        print(f"  details: {errors_path(args.output)}", file=sys.stderr)
    return 0
