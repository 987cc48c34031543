"""docs/cli.md is generated from umr.cli's parsers (scripts/gen_cli_docs.py) and must match them."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest

from umr.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "cli.md"


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_cli_reference_matches_the_parsers(generator):
    committed = PAGE.read_text(encoding="utf-8")
    fresh = generator.render()
    if fresh != committed:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True),
                                                 "docs/cli.md (committed)", "docs/cli.md (from the parsers)"))[:60])
        pytest.fail(f"docs/cli.md is stale: run `{generator.REFRESH}` and commit it\n{diff}")


def test_every_command_and_option_is_on_the_page(generator):
    page = generator.render()
    commands = generator.subcommands(generator.build_parser())
    assert list(commands) == COMMANDS  # every command, in `umr --help`'s order
    for name, (parser, _) in commands.items():
        section = page.split(f"\n## umr {name}\n", 1)[1].split("\n## umr ", 1)[0]
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in section, f"umr {name} {flag} is missing from its section"


def test_a_parser_change_makes_the_page_stale(generator):
    parser = generator.build_parser()
    search = generator.subcommands(parser)["search"][0]
    search.add_argument("--brand-new", type=int, default=7, help="an option the page has never seen")
    page = generator.render(parser)
    assert page != PAGE.read_text(encoding="utf-8")
    assert "| `--brand-new` | `BRAND_NEW` | `7` | an option the page has never seen |" in page


def test_the_page_does_not_depend_on_the_environment(generator, monkeypatch):
    # --token's default is read from UMR_SERVE_TOKEN when the parser is built
    monkeypatch.setenv("UMR_SERVE_TOKEN", "a-secret-of-this-machine")
    monkeypatch.setenv("COLUMNS", "40")
    page = generator.render()
    assert "a-secret-of-this-machine" not in page
    assert page == PAGE.read_text(encoding="utf-8")


def test_check_mode_reports_a_stale_page(generator, monkeypatch, tmp_path, capsys):
    stale = tmp_path / "cli.md"
    stale.write_text("# CLI reference\n", encoding="utf-8")
    monkeypatch.setattr(generator, "OUTPUT", stale)
    monkeypatch.setattr(generator, "ROOT", tmp_path)
    assert generator.main(["--check"]) == 1
    assert f"cli.md is stale: run `{generator.REFRESH}`" in capsys.readouterr().err
    assert generator.main([]) == 0 and generator.main(["--check"]) == 0
    assert stale.read_text(encoding="utf-8") == generator.render()
