"""``umr models``: the short names and what they load."""

from __future__ import annotations


def add_parser(sub) -> None:
    parser = sub.add_parser("models", help="list the short model and reranker names")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..models.registry import list_models
    from ..rerank.registry import list_rerankers

    for spec in list_models():
        source = "(bundled package)" if callable(spec.source) else spec.source
        print(f"{spec.name:<16} {spec.family:<8} {source:<44} {spec.description}")
    print("\nrerankers (--rerank MODEL, umr rerank --model MODEL):")
    for spec in list_rerankers():
        print(f"{spec.name:<24} {spec.family:<18} {spec.resolve_source():<40} {spec.description}")
    return 0
