"""``umr embed``: items JSONL in, an ``(N, dim)`` float32 ``.npy`` out, in input order; for a
late-interaction (multi-vector) model a ``.npz`` with one ``(n_tokens, dim)`` float32 array per id."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_path
from ..core.items import ItemError
from ..data.items import read_items_jsonl
from ..index.embedding import embed_in_chunks
from ..models.multivector import MultiVectorEmbedder
from .common import UsageError, add_model_options, load_model_from_args
from .ray_options import add_ray_options, ray_embedder


def add_parser(sub) -> None:
    parser = sub.add_parser("embed", help="embed the items of a JSONL file into a .npy matrix (multi-vector "
                                          "models: a .npz of one token matrix per id)")
    add_model_options(parser)
    parser.add_argument("--input", required=True, type=Path, help="items JSONL (id, text, image, video, fps, max_frames, instruction, is_query)")
    parser.add_argument("--output", required=True, type=Path,
                        help="where to write the (N, dim) float32 .npy; for a multi-vector model (colqwen*) "
                             "a .npz holding one (n_tokens, dim) float32 array per item id")
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

    model = load_model_from_args(args, multi_vector=True)
    if model.multi_vector:
        return _run_multi_vector(args, model, items, lines, errors)
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


def _run_multi_vector(args, model: MultiVectorEmbedder, items, lines: list[int], errors: list[ItemError]) -> int:
    """A late-interaction model: ``OUTPUT.npz``, one ``(n_tokens, dim)`` float32 array per item
    id (an item without an id is ``line-N``), in input order, written whole or not at all."""
    if args.output.suffix == ".npy":
        raise UsageError(f"model {args.model!r} is a late-interaction (multi-vector) model: its output is a .npz "
                         f"of one (n_tokens, dim) array per id; give --output {args.output.with_suffix('.npz')}")
    if getattr(args, "ray", False):
        raise UsageError("--ray does not take late-interaction (multi-vector) models yet; embed here")
    keys = [item.id if item.id is not None else f"line-{line}" for item, line in zip(items, lines)]
    seen: set[str] = set()
    for key, line in zip(keys, lines):
        if key in seen:
            raise UsageError(f"{args.input}:{line}: id {key!r} appears twice; a .npz holds one array per id")
        seen.add(key)
    try:
        result = model.embed(items, batch_size=args.batch_size, show_progress_bar=not args.no_progress,
                             on_error="raise" if args.on_error == "stop" else "skip")
    except ItemError as exc:
        raise exc.at(line=lines[exc.index]) if exc.index is not None else exc from None
    errors = sorted(errors + [err.at(line=lines[err.index]) for err in result.errors], key=lambda e: e.line or 0)
    output = args.output if args.output.suffix == ".npz" else Path(f"{args.output}.npz")
    output.parent.mkdir(parents=True, exist_ok=True)
    written = [keys[i] for i in result.indices]
    write_token_vectors(output, written, result.vectors)
    if args.on_error == "skip":
        write_errors(output, errors, written)
    tokens = sum(len(v) for v in result.vectors)
    print(f"umr embed: wrote {len(written)} token matrices ({tokens} vectors of dim {model.dim}) to {output}"
          + (f"; {len(errors)} item(s) skipped, see {sidecar(output, '.errors.jsonl')}" if errors else ""))
    return 0


def write_token_vectors(path: Path, ids: list[str], vectors: list[np.ndarray]) -> None:
    """A ``.npz`` (``np.load(path)[id]``) of one float32 array per id, written atomically.

    Written entry by entry as ``np.savez`` lays it out (``<id>.npy`` members, stored), so that ids
    such as ``file`` cannot collide with ``np.savez``'s own keyword arguments."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, matrix in zip(ids, vectors):
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(matrix, dtype=np.float32), allow_pickle=False)


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
    """``vectors.npy`` (or ``.npz``) -> ``vectors<suffix>``; distinct outputs never share a sidecar."""
    return output.with_name(output.name[: -len(output.suffix)] + suffix)


def write_errors(output: Path, errors, written_ids) -> None:
    """``OUTPUT.errors.jsonl`` (one line per bad item) and ``OUTPUT.ids.json`` (the rows' ids)."""
    with sidecar(output, ".errors.jsonl").open("w", encoding="utf-8") as handle:
        for err in errors:
            handle.write(json.dumps(err.to_dict()) + "\n")
    sidecar(output, ".ids.json").write_text(json.dumps(written_ids))
