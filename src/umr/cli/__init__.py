"""``umr`` command line: one sub-module per command, each with ``add_parser`` and ``run``.

Errors a user can fix (bad model name, bad input) print one line and exit non-zero;
tracebacks are kept for bugs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..models.registry import ModelNotAvailable
from ..types import ItemError

#: sub-command modules, in the order ``umr --help`` lists them
COMMANDS = ["embed", "eval", "models", "index", "search", "serve"]


class UsageError(RuntimeError):
    """A problem with what the user asked for, reported as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="umr", description="Universal multimodal retrieval.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (UsageError, ModelNotAvailable, ItemError, FileNotFoundError) as exc:
        print(f"umr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"umr {args.command}: interrupted", file=sys.stderr)
        return 130



def add_model_options(parser: argparse.ArgumentParser, *, model_required: bool = True,
                      model_help: str = "short name (see `umr models`), hub id or folder") -> None:
    """The model options every command that embeds shares."""
    parser.add_argument("--model", required=model_required, default=None, help=model_help)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="weights dtype (default: the model's own default)")
    parser.add_argument("--batch-size", type=int, default=None, help="items per forward pass at most")
    parser.add_argument("--min-image-tokens", type=int, default=None, help="MLLM models: fewest tokens per image")
    parser.add_argument("--max-image-tokens", type=int, default=None, help="MLLM models: most tokens per image")
    parser.add_argument("--max-length", type=int, default=None,
                        help="most tokens per sequence, longer ones cut as the model's reference cuts them "
                             "(families with a text length limit)")
    parser.add_argument("--dim", type=int, default=None,
                        help="keep the first N dimensions of every vector, renormalised (Matryoshka models "
                             "such as qwen3-vl-embedding-*)")


def model_options(args: argparse.Namespace) -> dict:
    """The loader options given on the command line (image token bounds, ...), as ``load_model`` takes them."""
    return {k: getattr(args, k) for k in ("min_image_tokens", "max_image_tokens", "max_length", "dim")
            if getattr(args, k, None) is not None}


def load_model_from_args(args: argparse.Namespace, name: str | None = None, options: dict | None = None):
    """Load ``name`` (default ``--model``) with ``options`` (default: those on the command line)."""
    from ..models.registry import load_model

    options = model_options(args) if options is None else options
    try:
        return load_model(name or args.model, device=args.device, dtype=args.dtype, **options)
    except ValueError as exc:  # a bad option value (e.g. --min-image-tokens above --max-image-tokens)
        raise UsageError(str(exc)) from None
    except TypeError as exc:  # an option this family does not take (e.g. --max-length for a text model)
        if "unexpected keyword argument" not in str(exc):
            raise
        option = str(exc).split("'")[-2] if str(exc).count("'") >= 2 else str(exc)
        raise UsageError(f"model {name or args.model!r} does not take --{option.replace('_', '-')}") from None
