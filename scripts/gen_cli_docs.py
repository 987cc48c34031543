"""Write docs/cli.md, the CLI reference, from ``umr.cli``'s argparse parsers.

    .venv/bin/python scripts/gen_cli_docs.py            # rewrite docs/cli.md
    .venv/bin/python scripts/gen_cli_docs.py --check    # exit 1 if docs/cli.md differs from the parsers

The page is generated so that it cannot drift from the parsers: tests/test_cli_docs.py renders
it again in memory and fails when the committed file differs. It renders the parsers' own
fields (names, metavars, choices, defaults, help) rather than ``format_help()``, whose layout
changes with the terminal width and the Python version.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "cli.md"
REFRESH = ".venv/bin/python scripts/gen_cli_docs.py"

HEADER = f"""# CLI reference

<!-- Generated from umr.cli's parsers by scripts/gen_cli_docs.py: do not edit by hand.
     Refresh with `{REFRESH}`; tests/test_cli_docs.py fails when this file is stale. -->

Every command prints the same with `umr COMMAND --help`. A misuse (an unknown option, a
missing value, a number out of range) is one line naming the command and exit status 2;
errors a user can fix (a model that is not on this machine, a bad input file) are one line too.
The guides show the commands at work: [embed](guides/embed.md), [index and
search](guides/index-search.md), [serve](guides/serve.md), [evaluate](guides/evaluate.md),
[train](guides/train.md), [mine](guides/mine.md), [synthesise](guides/synthesise.md),
[rerank](guides/rerank.md), [scale out](guides/scale-out.md).
"""


@contextmanager
def _without_umr_environment() -> Iterator[None]:
    """Options whose default comes from the environment (``UMR_SERVE_TOKEN``) are documented as
    on a machine where no ``UMR_*`` variable is set, so the page is the same everywhere."""
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("UMR_")}
    try:
        yield
    finally:
        os.environ.update(saved)


def build_parser() -> argparse.ArgumentParser:
    from umr.cli import build_parser as umr_parser

    with _without_umr_environment():
        return umr_parser()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """``name -> (parser, one-line help)`` in the order ``umr --help`` lists them.

    argparse has no public way to walk its sub-parsers: ``_actions`` is what every argparse
    documentation tool reads."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def _cell(text: str) -> str:
    """Plain help text fit for one Markdown table cell: one line, ``|`` escaped, and outside
    `code spans` the characters Markdown would read as HTML or emphasis (``NAME/<id>``)."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "`".join(parts)


def _help(action: argparse.Action, prog: str) -> str:
    """The help text as argparse prints it (``%(default)s`` and friends expanded)."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    params = dict(vars(action), prog=prog)
    if action.choices is not None:
        params["choices"] = ", ".join(map(str, action.choices))
    try:
        return action.help % params
    except (KeyError, TypeError, ValueError):
        return action.help


def _value(action: argparse.Action) -> str:
    """What the option takes: its choices, else its metavar, else nothing (a switch)."""
    if action.nargs == 0:
        return ""
    if action.choices is not None:
        shown = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
        shown = metavar
    if action.nargs in ("+", "*"):
        shown += " ..."
    elif isinstance(action.nargs, int) and action.nargs > 1:
        shown = " ".join([shown] * action.nargs)
    return shown


def _default(action: argparse.Action, help_text: str) -> str:
    """The default worth stating: not for switches or ``None``/empty values, nor where the help
    text already says it."""
    if action.required and action.option_strings:
        return "required"
    value = action.default
    if (action.nargs == 0 or value in (None, argparse.SUPPRESS) or value == [] or value is False
            or "default" in help_text):
        return ""
    return f"`{value}`"


def _synopsis(name: str, parser: argparse.ArgumentParser) -> str:
    """``umr NAME`` with its required options and positionals, then ``[options]``."""
    words = [f"umr {name}"]
    optional = False
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            shown = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
            words.append(f"[{shown}]" if action.nargs in ("?", "*") else shown)
        elif action.required:
            words.append(f"{action.option_strings[-1]} {_value(action)}".strip())
        else:
            optional = True
    if optional:
        words.append("[options]")
    return " ".join(words)


def _table(actions: list[argparse.Action], prog: str) -> list[str]:
    """Positionals as ``argument | description``, options as ``option | value | default | description``."""
    shown = [a for a in actions if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS]
    positionals = [a for a in shown if not a.option_strings]
    options = [a for a in shown if a.option_strings]
    rows = []
    if positionals:
        rows += ["| argument | description |", "|---|---|"]
        rows += [f"| `{_cell(_value(a))}` | {_cell(_help(a, prog))} |" for a in positionals]
        rows.append("")
    if options:
        rows += ["| option | value | default | description |", "|---|---|---|---|"]
        for action in options:
            names = ", ".join(f"`{flag}`" for flag in action.option_strings)
            value = _cell(_value(action))
            text = _cell(_help(action, prog))
            rows.append(f"| {names} | {value and f'`{value}`'} | {_default(action, text)} | {text} |")
        rows.append("")
    return rows


def render_command(name: str, parser: argparse.ArgumentParser, summary: str) -> list[str]:
    lines = [f"## umr {name}", ""]
    if summary:
        lines += [_cell(summary[0].upper() + summary[1:] + ("" if summary.endswith(".") else ".")), ""]
    if parser.description and parser.description.strip() != summary.strip():
        lines += [_cell(parser.description), ""]
    lines += ["```text", _synopsis(name, parser), "```", ""]
    for group in parser._action_groups:
        table = _table(group._group_actions, parser.prog)
        if not table:
            continue
        if group.title not in ("options", "optional arguments", "positional arguments"):
            title = _cell(group.title[0].upper() + group.title[1:])
            lines += [f"**{title}**" + (f": {_cell(group.description)}" if group.description else ""), ""]
        lines += table
    return lines


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole page for ``parser`` (default: ``umr``'s own)."""
    parser = parser or build_parser()
    commands = subcommands(parser)
    lines = [HEADER, "| command | what it does |", "|---|---|"]
    lines += [f"| [`umr {name}`](#umr-{name}) | {_cell(summary)} |" for name, (_, summary) in commands.items()]
    lines.append("")
    for name, (sub, summary) in commands.items():
        lines += render_command(name, sub, summary)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description="Write docs/cli.md from umr.cli's parsers.")
    cli.add_argument("--check", action="store_true", help="write nothing; exit 1 if docs/cli.md is stale")
    page = render()
    if cli.parse_args(argv).check:
        if not OUTPUT.is_file() or OUTPUT.read_text(encoding="utf-8") != page:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run `{REFRESH}`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(page, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))  # this checkout's umr, installed or not
    raise SystemExit(main())
