"""``umr models``: the short names and what they load."""

from __future__ import annotations


def add_parser(sub) -> None:
    parser = sub.add_parser("models", help="list the short model names")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..models.registry import list_models

    for spec in list_models():
        source = "(bundled package)" if callable(spec.source) else spec.source
        print(f"{spec.name:<16} {spec.family:<8} {source:<44} {spec.description}")
    return 0
