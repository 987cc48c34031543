"""``umr models``: the short names, what they load, and which are on this machine."""

from __future__ import annotations

from ..models.registry import list_models, local_copy
from ..rerank.registry import list_rerankers


def add_parser(sub) -> None:
    parser = sub.add_parser("models", help="list the short model and reranker names and which are available locally")
    parser.set_defaults(run=run)


def run(args) -> int:
    _print_table(list_models())
    print("\nrerankers (umr rerank --model NAME; --rerank NAME for search and eval):")
    _print_table(list_rerankers())
    print("\nLOCAL = the weights are on this machine (bundled, a folder, or the Hugging Face cache). "
          "Others need a download where the hub is reachable; any local folder works as --model too.")
    return 0


def _print_table(specs) -> None:
    rows = []
    for spec in specs:
        source = "(bundled package)" if callable(spec.source) else spec.source
        rows.append((spec.name, spec.family, "yes" if local_copy(spec) else "no", source, spec.description))
    header = ("NAME", "FAMILY", "LOCAL", "WEIGHTS", "DESCRIPTION")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4])
