"""``umr rerank``: a JSONL of (query, document) pairs in, a float32 ``.npy`` of scores out, in input order.

One pair per line: ``{"id", "query": {"text", "image"}, "document": {"text", "image"}, "instruction",
"task"}`` (image paths relative to the file; ``instruction`` applies to the query, ``task`` picks a
zero-shot reranker's question). Errors are reported as ``umr embed`` reports them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.items import ItemError
from ..data.files import jsonl_records
from ..data.items import parse_item_line
from ..index.pipeline import RERANK_K
from ..rerank import load_reranker
from ..rerank.base import Pair
from .common import UsageError, call_loader
from .embed import npy_path, sidecar, write_errors

FAMILY_CHOICES = ["qwen3-vl-reranker", "zero-shot", "cross-encoder"]


def add_parser(sub) -> None:
    parser = sub.add_parser("rerank", help="score (query, document) pairs with a reranker into a .npy")
    parser.add_argument("--model", required=True, help="reranker: short name (qwen3-vl-reranker-2b, ...), hub id "
                                                        "or folder")
    parser.add_argument("--family", choices=FAMILY_CHOICES, default=None,
                        help="reranker family, when the folder does not say")
    parser.add_argument("--prompts", type=Path, default=None,
                        help="zero-shot rerankers: JSON of task name or 'qmod->cmod' -> True/False question")
    parser.add_argument("--min-image-tokens", type=int, default=None, help="fewest tokens per image")
    parser.add_argument("--max-image-tokens", type=int, default=None, help="most tokens per image")
    parser.add_argument("--max-length", type=int, default=None,
                        help="most tokens per pair (Qwen3-VL-Reranker: cut as its reference cuts) or per "
                             "text (zero-shot, cross-encoders)")
    parser.add_argument("--input", required=True, type=Path, help="pairs JSONL (id, query, document, instruction)")
    parser.add_argument("--output", required=True, type=Path, help="where to write the (N,) float32 .npy")
    parser.add_argument("--instruction", default=None, help="instruction for pairs that carry none")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="weights dtype (default: float32 on CPU, bfloat16 on a GPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per forward pass at most")
    parser.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                        help="stop at the first bad pair (default), or skip bad pairs and write "
                             "OUTPUT.errors.jsonl plus OUTPUT.ids.json naming the rows")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run)


def add_rerank_flags(parser) -> None:
    """``--rerank MODEL [--rerank-k N] [--rerank-family F] [--rerank-prompts FILE]``: rerank a
    ranking's head (search, eval); load it with :func:`load_rerank_flag`."""
    parser.add_argument("--rerank", default=None, metavar="MODEL",
                        help="rerank the top results with this reranker (short name, hub id or folder)")
    parser.add_argument("--rerank-k", type=int, default=RERANK_K,
                        help=f"how many top results to rerank (default {RERANK_K})")
    parser.add_argument("--rerank-family", choices=FAMILY_CHOICES, default=None,
                        help="the reranker's family, when its folder does not say")
    parser.add_argument("--rerank-prompts", type=Path, default=None,
                        help="zero-shot rerankers: JSON of task name or 'qmod->cmod' -> True/False question")


def load_reranker_from_args(args, name: str, *, family: str | None = None, prompts: Path | None = None,
                            options: dict | None = None):
    """Load the reranker ``name`` with ``options``, a ``prompts`` file, device and dtype."""
    options = dict(options or {})
    if prompts is not None:
        if not prompts.is_file():
            raise UsageError(f"no such prompts file: {prompts}")
        options["prompts"] = prompts
    return call_loader(load_reranker, name, family=family, device=args.device, dtype=getattr(args, "dtype", None),
                       **options)


def check_rerank_flags(args) -> None:
    """Refuse a bad ``--rerank-k`` or a missing ``--rerank-prompts`` file before any work."""
    if args.rerank and args.rerank_k < 1:
        raise UsageError(f"--rerank-k must be at least 1, not {args.rerank_k}")
    if args.rerank and args.rerank_prompts is not None and not args.rerank_prompts.is_file():
        raise UsageError(f"no such prompts file: {args.rerank_prompts}")


def load_rerank_flag(args):
    """The reranker of ``--rerank`` (None without it), with its own defaults: the embedder's image
    and length options are not the reranker's."""
    if not args.rerank:
        return None
    check_rerank_flags(args)
    return load_reranker_from_args(args, args.rerank, family=args.rerank_family, prompts=args.rerank_prompts)


def read_pairs_jsonl(path: Path):
    """Yield ``(line_number, Pair or ItemError)`` for every non-blank line."""
    base = path.parent.resolve()
    for line_no, record in jsonl_records(path):
        if isinstance(record, ItemError):
            yield line_no, record
            continue
        pair_id = None if record.get("id") is None else str(record["id"])
        sides = []
        for role in ("query", "document"):
            side = record.get(role)
            if not isinstance(side, dict):
                sides.append(ItemError(pair_id, f"field {role!r} must be an object with text and/or image",
                                       line=line_no))
                continue
            fields = {"id": pair_id, "text": side.get("text"), "image": side.get("image"),
                      "is_query": role == "query"}
            if role == "query":
                fields["instruction"] = record.get("instruction")
            sides.append(parse_item_line(json.dumps(fields), line_no=line_no, base=base))
        bad = [s for s in sides if isinstance(s, ItemError)]
        task = record.get("task")
        yield line_no, bad[0] if bad else Pair(sides[0], sides[1], None if task is None else str(task))


def run(args) -> int:
    if not args.input.is_file():
        raise UsageError(f"no such input file: {args.input}")
    pairs, lines, errors = [], [], []
    for line_no, parsed in read_pairs_jsonl(args.input):
        if isinstance(parsed, ItemError):
            if args.on_error == "stop":
                raise parsed
            errors.append(parsed)
        else:
            if parsed.query.instruction is None:
                parsed.query.instruction = args.instruction
            pairs.append(parsed)
            lines.append(line_no)

    options = {key: getattr(args, key) for key in ("min_image_tokens", "max_image_tokens", "max_length")
               if getattr(args, key) is not None}
    reranker = load_reranker_from_args(args, args.model, family=args.family, prompts=args.prompts, options=options)
    try:
        result = reranker.score_pairs(pairs, batch_size=args.batch_size, show_progress_bar=not args.no_progress,
                                      on_error="raise" if args.on_error == "stop" else "skip")
    except ItemError as exc:  # name the input line of the pair that stopped the run
        raise exc.at(line=lines[exc.index]) if exc.index is not None else exc from None
    errors += [err.at(line=lines[err.index]) for err in result.errors]
    errors.sort(key=lambda err: err.line or 0)

    output = npy_path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.save(output, result.scores.astype(np.float32, copy=False))
    written = [pairs[i].candidate.id for i in result.indices]
    if args.on_error == "skip":
        write_errors(output, errors, written)
    print(f"umr rerank: wrote {len(written)} scores to {output}"
          + (f"; {len(errors)} pair(s) skipped, see {sidecar(output, '.errors.jsonl')}" if errors else ""))
    return 0
