"""``umr search``: ranked results from an index for a text and/or image query.

The index's recorded model is loaded from where it was recorded, so any working directory
will do; ``--model`` (any spelling of the same model) is checked against it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..data.video_segments import format_span
from ..index import Index, IndexStoreError, Unrepresentable
from ..index.base import check_search_args
from ..index.pipeline import query_text
from .common import UsageError, nonnegative_int
from .rerank import add_rerank_flags, load_rerank_flag


def add_parser(sub) -> None:
    parser = sub.add_parser("search", help="search an index with text and/or an image")
    parser.add_argument("text", nargs="?", default=None, help="query text")
    parser.add_argument("--index", required=True, type=Path, dest="index_dir", help="index folder")
    parser.add_argument("--image", type=Path, default=None, help="query image")
    parser.add_argument("--instruction", default=None, help="task instruction for the query")
    parser.add_argument("--modality", default=None,
                        help="only return candidates of this modality: text, image or image,text "
                             "(several: text+image)")
    parser.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                        help="only candidates whose metadata FIELD equals VALUE, or is a list holding it "
                             "(repeatable, all must hold). "
                             "Plain VALUE matches the stored text (folder=2020 matches \"2020\"), and also "
                             "the number, true/false or null it spells (null: null or missing; true is not 1); "
                             "'\"...\"' is one JSON string only; "
                             "'[\"a\", 2]' (a JSON list) any of its values; '{...}' an equal JSON object "
                             "(FAISS indexes only)")
    parser.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    parser.add_argument("--model", default=None, help="must match the model that built the index (default: that one)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="load the model in this dtype instead of the index's own (queries then "
                             "differ slightly from the index's dtype)")
    parser.add_argument("--ef-search", type=int, default=None,
                        help="HNSW: candidates explored per query; MUVERA (late interaction): candidates "
                             "reranked by exact MaxSim per query (default 200)")
    parser.add_argument("--rescore-k", type=nonnegative_int, default=None, metavar="N",
                        help="quantised index: candidates rescored with the float32 vectors (default: the "
                             "index's, else max(20k, 200); 0: the compact codes' ranking as it is)")
    parser.add_argument("--exact", action="store_true",
                        help="exact search even if the index is HNSW (or exact MaxSim on a MUVERA index)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    add_rerank_flags(parser)
    parser.set_defaults(run=run)


def _parse_where(pairs: list[str]) -> dict:
    """``--where FIELD=VALUE`` pairs as the ``where=`` of :meth:`Index.search` (see ``--help``).

    The CLI cannot know how a field was stored, so plain text stands for itself and for the
    number / boolean it spells (``2020`` -> ``["2020", 2020]``: any of); JSON is only parsed
    from a quoted string, a list or an object.
    """
    where = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--where {pair!r}: expected FIELD=VALUE")
        key, text = pair.split("=", 1)
        if not key:
            raise UsageError(f"--where {pair!r}: expected FIELD=VALUE")
        where[key] = _where_value(text)
    return where


def _where_value(text: str):
    stripped = text.strip()
    if stripped[:1] in ('"', "[", "{"):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            return text
        if isinstance(value, list):
            accepted = []
            for v in value:
                for option in _spellings(v):
                    if option not in accepted:
                        accepted.append(option)
            return accepted
        return value
    return _one_of(_spellings(text))


def _spellings(value) -> list:
    """A plain text value and the JSON number/boolean it spells; a number and its text."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value.strip())
        except json.JSONDecodeError:
            return [value]
        if parsed is None or isinstance(parsed, (bool, int)) or isinstance(parsed, float) and math.isfinite(parsed):
            return [value, parsed]  # null also matches a field that is null or missing
        return [value]
    if isinstance(value, (int, float)):
        return [value, json.dumps(value)]
    return [value]


def _one_of(options: list):
    return options[0] if len(options) == 1 else options


def run(args) -> int:
    if args.text is None and args.image is None:
        raise UsageError("give query text, --image PATH, or both")
    try:
        query_text(args.text, args.image)
        check_search_args(args.k, args.ef_search)
    except ValueError as exc:
        raise UsageError(f"{exc} (-k and --ef-search take numbers of at least 1)"
                         if "k must" in str(exc) or "ef_search" in str(exc) else str(exc)) from None
    if args.image is not None and not args.image.is_file():
        raise UsageError(f"no such image: {args.image}")
    reranker = load_rerank_flag(args)
    modality = None
    if args.modality:
        modality = [m for m in args.modality.replace("+", ";").split(";") if m]
    try:
        index = Index.open(args.index_dir, model=args.model, device=args.device, dtype=args.dtype)
    except (IndexStoreError, ValueError) as exc:
        raise UsageError(" ".join(str(exc).split())) from None
    with index:
        where = _parse_where(args.where)
        try:
            results = index.search(args.text, str(args.image) if args.image else None,
                                   instruction=args.instruction, modality=modality,
                                   where=where, k=args.k,
                                   method="exact" if args.exact else None, ef_search=args.ef_search,
                                   rerank=reranker, rerank_k=args.rerank_k, rescore_k=args.rescore_k)
        except Unrepresentable:
            raise UsageError(f"the query image has no readable text, and {index.model_name} is a text-only "
                             f"model that cannot see pixels; add query text or use an MLLM index") from None
        except (ValueError, IndexStoreError) as exc:  # a bad query, or a filter the backend refused
            raise UsageError(" ".join(str(exc).split())) from None
        if not results and where:
            _hint_unknown_fields(index.store.metadata_fields(), where)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=1))
        return 0
    if not results:
        print("no results")
        return 0
    for r in results:
        shown = _display_path(r.path) if r.path else ""
        snippet = " ".join((r.text or "").split())
        if snippet:
            snippet = snippet[:100] + ("..." if len(snippet) > 100 else "")
            shown = f"{shown}  \"{snippet}\"" if shown else f"\"{snippet}\""
        if r.start is not None:  # a video segment: where in the file
            shown = f"{shown}  {format_span(r.start, r.end)}"
        print(f"{r.rank:>3}  {r.score:7.4f}  {r.id}  [{r.modality}]  {shown}")
    return 0


def _hint_unknown_fields(known: set[str], where: dict) -> None:
    """A --where field that no item has is most likely a typo: say so, with the fields there are."""
    import sys

    unknown = [field for field in where if field not in known]
    if unknown:
        fields = ", ".join(sorted(known)[:20]) or "none"
        print(f"umr search: no item has metadata field {', '.join(map(repr, unknown))} "
              f"(fields: {fields})", file=sys.stderr)


def _display_path(path: str) -> str:
    import os

    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel
