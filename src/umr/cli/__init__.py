"""``umr`` command line: one sub-module per command, each with ``add_parser`` and ``run`` (the
options and helpers they share are in :mod:`.common`).

Errors a user can fix (bad model name, bad input) print one line and exit non-zero;
tracebacks are kept for bugs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..core.devices import CpuSwitchError, cpu_bf16_setting
from ..core.items import ItemError
from ..models.registry import ModelNotAvailable
from .common import UsageError

#: sub-command modules, in the order ``umr --help`` lists them
COMMANDS = ["embed", "eval", "models", "index", "search", "train", "mine", "synth", "rerank", "serve", "verify"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a misuse is one line (``umr embed: error: ...``), exit 2, no usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
