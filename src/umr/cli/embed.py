"""``umr embed``: items JSONL in, an ``(N, dim)`` float32 ``.npy`` out, in input order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.items import ItemError
from ..data.items import read_items_jsonl
from ..index.embedding import embed_in_chunks
from .common import UsageError, add_model_options, load_model_from_args
from .ray_options import add_ray_options, ray_embedder


def add_parser(sub) -> None:
    parser = sub.add_parser("embed", help="embed the items of a JSONL file into a .npy matrix")
    add_model_options(parser)
    parser.add_argument("--input", required=True, type=Path, help="items JSONL (id, text, image, video, fps, max_frames, instruction, is_query)")
    parser.add_argument("--output", required=True, type=Path, help="where to write the (N, dim) float32 .npy")
    parser.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                        help="stop at the first bad item (default), or skip bad items and write "
                             "OUTPUT.errors.jsonl plus OUTPUT.ids.json naming the rows")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_ray_options(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    if not args.input.is_file():
        raise UsageError(f"no such input file: {args.input}")
    items, lines, errors = [], [], []
    for line_no, parsed in read_items_jsonl(args.input):
        if isinstance(parsed, ItemError):
            if args.on_error == "stop":
                raise parsed
            errors.append(parsed)
        else:
            items.append(parsed)
            lines.append(line_no)

    model = load_model_from_args(args)
    try:
        result = _embed(args, model, items)
    except ItemError as exc:  # name the input line of the item that stopped the run
        raise exc.at(line=lines[exc.index]) if exc.index is not None else exc from None
    errors += [err.at(line=lines[err.index]) for err in result.errors]
    errors.sort(key=lambda err: err.line or 0)

    output = npy_path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.save(output, result.vectors.astype(np.float32, copy=False))
    written = [items[i].id for i in result.indices]
    if args.on_error == "skip":
        write_errors(output, errors, written)
    print(f"umr embed: wrote {len(written)} vectors of dim {model.dim} to {output}"
          + (f"; {len(errors)} item(s) skipped, see {sidecar(output, '.errors.jsonl')}" if errors else ""))
    return 0


def _embed(args, model, items):
    """Here, or with --ray on Ray workers (each loads the model as given here)."""
    embedder = ray_embedder(args, args.model)
    if embedder is None:
        return model.embed(items, batch_size=args.batch_size, show_progress_bar=not args.no_progress,
                           on_error="raise" if args.on_error == "stop" else "skip")
    with embedder:
        result = embed_in_chunks(embedder, items, batch_size=args.batch_size)
    if result.errors and args.on_error == "stop":
        raise min(result.errors, key=lambda err: err.index)
    result.vectors = result.vectors.reshape(-1, model.dim)
    return result


def npy_path(output: Path) -> Path:
    """Where ``np.save`` really writes: it appends ``.npy`` to any other name."""
    return output if output.suffix == ".npy" else Path(f"{output}.npy")


def sidecar(output: Path, suffix: str) -> Path:
    """``vectors.npy`` -> ``vectors<suffix>``; distinct outputs never share a sidecar."""
    return output.with_name(output.name[: -len(".npy")] + suffix)


def write_errors(output: Path, errors, written_ids) -> None:
    """``OUTPUT.errors.jsonl`` (one line per bad item) and ``OUTPUT.ids.json`` (the rows' ids)."""
    with sidecar(output, ".errors.jsonl").open("w", encoding="utf-8") as handle:
        for err in errors:
            handle.write(json.dumps(err.to_dict()) + "\n")
    sidecar(output, ".ids.json").write_text(json.dumps(written_ids))
