"""``umr synth``: fused-modal training data from a collection of passages with images (GME's pipeline)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..synth import ClipScorer, Decoding, ImageCollection, OwnImages, SynthConfig, load_generator, synthesize
from .common import UsageError, load_model_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("synth", help="synthesise fused-modal training data (GME's Doc2Query pipeline)",
                       description="Write queries from passages with a generative model, keep those the retriever "
                                   "finds their passage for, rewrite them around an entity image, and write "
                                   "`umr train`'s JSONL. Resumable: run the same command again after a stop.")
    p.add_argument("--source", required=True, help="folder, items JSONL or M-BEIR pool of passages (with images)")
    p.add_argument("--generator", required=True, help="folder of a generative LLM/MLLM with a chat template")
    p.add_argument("--retriever", required=True, help="embedder for the consistency filter (see `umr models`)")
    p.add_argument("--output", required=True, help="training JSONL to write")
    p.add_argument("--kinds", default="t2it,it2t,it2it", help="example kinds (default: t2it,it2t,it2it)")
    p.add_argument("--limit", type=int, default=None, help="use the first N passages only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=20, help="consistency filter: passage within the top-k (GME: 20)")
    p.add_argument("--image-scorer", default=None, help="CLIP-style embedder scoring entity images "
                                                         "(default: the retriever)")
    p.add_argument("--image-threshold", type=float, default=0.2, help="least image-caption score kept (GME: 0.2)")
    p.add_argument("--image-collection", default=None,
                   help="folder of images searched by entity name (besides the passages' own images)")
    p.add_argument("--caption", default="a photo of {entity}", help="the entity caption images are scored against")
    p.add_argument("--max-attempts", type=int, default=3, help="replies per item before a malformed one is reported")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; above 0 samples (seeded)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch")
    p.add_argument("--cache", default=None, help="where finished work is kept (default: OUTPUT.cache)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = SynthConfig(source=args.source, output=args.output, kinds=[k.strip() for k in args.kinds.split(",")
                                                                            if k.strip()],
                             limit=args.limit, seed=args.seed, top_k=args.top_k, image_threshold=args.image_threshold,
                             caption=args.caption, max_attempts=args.max_attempts, batch_size=args.batch_size,
                             cache=args.cache, progress=not args.no_progress)
        decoding = Decoding(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not Path(args.source).exists():
        raise UsageError(f"no such source: {args.source}")
    generator = load_generator(args.generator, device=args.device, dtype=args.dtype, decoding=decoding)
    retriever = load_model_from_args(args, args.retriever, options={})
    scorer_model = retriever if args.image_scorer is None else load_model_from_args(args, args.image_scorer, options={})
    sources = [OwnImages(config.cache_folder / "own-images")]
    if args.image_collection:
        sources.append(ImageCollection(args.image_collection, scorer_model, config.cache_folder / "image-collection"))
    summary = synthesize(config, generator=generator, retriever=retriever, scorer=ClipScorer(scorer_model),
                         image_sources=sources)
    for line in summary.lines():
        print(line, file=sys.stderr)
    print(f"wrote {sum(summary.examples.values())} examples to {args.output}", file=sys.stderr)
    return 0
