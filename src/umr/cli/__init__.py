"""``umr`` command line: one sub-module per command, each with ``add_parser`` and ``run``.

Errors a user can fix (bad model name, bad input) print one line and exit non-zero;
tracebacks are kept for bugs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..core.devices import CpuSwitchError, cpu_bf16_setting
from ..models.registry import ModelNotAvailable
from ..core.items import ItemError

#: sub-command modules, in the order ``umr --help`` lists them
COMMANDS = ["embed", "eval", "models", "index", "search", "train", "mine", "synth", "rerank", "serve"]


class UsageError(RuntimeError):
    """A problem with what the user asked for, reported as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a misuse is one line (``umr embed: error: ...``), exit 2, no usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An ``int`` option that must be at least 1 (a batch size, a token bound, ``-k``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="umr", description="Universal multimodal retrieval.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # a file name that is not UTF-8 holds lone surrogates: print them as escapes, never crash on them
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        cpu_bf16_setting()  # a bad UMR_CPU_BF16 is one line before any work, not a failure deep in a load
        return int(args.run(args) or 0)
    except (UsageError, ModelNotAvailable, ItemError, FileNotFoundError, CpuSwitchError) as exc:
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
    parser.add_argument("--batch-size", type=positive_int, default=None, help="items per forward pass at most")
    parser.add_argument("--min-image-tokens", type=positive_int, default=None,
                        help="MLLM models: fewest tokens per image")
    parser.add_argument("--max-image-tokens", type=positive_int, default=None,
                        help="MLLM models: most tokens per image")
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help="most tokens per sequence, longer ones cut as the model's reference cuts them "
                             "(families with a text length limit)")
    parser.add_argument("--dim", type=positive_int, default=None,
                        help="keep the first N dimensions of every vector, renormalised (Matryoshka models "
                             "such as qwen3-vl-embedding-*)")


def model_options(args: argparse.Namespace) -> dict:
    """The loader options given on the command line (image token bounds, ...), as ``load_model`` takes them."""
    return {k: getattr(args, k) for k in ("min_image_tokens", "max_image_tokens", "max_length", "dim")
            if getattr(args, k, None) is not None}


def load_options(args: argparse.Namespace) -> dict:
    """Every ``load_model`` option the command line gives, ``--dtype`` included (what an index
    records, and what Ray workers load with)."""
    options = model_options(args)
    if getattr(args, "dtype", None) is not None:
        options["dtype"] = args.dtype
    return options


def load_model_from_args(args: argparse.Namespace, name: str | None = None, options: dict | None = None):
    """Load ``name`` (default ``--model``) with ``options`` (default: those on the command line)."""
    from ..models.registry import load_model

    options = model_options(args) if options is None else options
    return call_loader(load_model, name or args.model, device=args.device, dtype=args.dtype, **options)


def call_loader(loader, name: str, **options):
    """``loader(name, **options)`` (``load_model``, ``load_reranker``), an option the family does not
    take or a bad option value reported as a :class:`UsageError` with the flags the user typed."""
    from ..models.registry import UnsupportedOption

    try:
        return loader(name, **options)
    except UnsupportedOption as exc:  # say it with the flags the user typed
        given = ", ".join("--" + option.replace("_", "-") for option in exc.options)
        raise UsageError(f"model {exc.model!r} ({exc.family} family) does not take {given}") from None
    except ValueError as exc:  # a bad option value or device (--device cuda on a CPU-only torch)
        raise UsageError(str(exc)) from None
