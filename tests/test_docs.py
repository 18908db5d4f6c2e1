"""The documentation's structure, without Sphinx (``make docs`` builds it strictly in CI): the README
stays short, every subcommand has a page whose reference is generated from its parser, every page is
in a table of contents, the API page lists every stage, and the README's links point at files."""

from __future__ import annotations

import importlib.util
import pkgutil
import re
from pathlib import Path

import cass_deploy
from cass_deploy.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _toctree_entries(page: Path) -> set[str]:
    entries = set()
    for block in re.findall(r"```\{toctree\}\n(.*?)```", page.read_text(), flags=re.S):
        entries |= {ln.strip() for ln in block.splitlines() if ln.strip() and not ln.startswith(":")}
    return entries


def test_readme_fits_in_200_lines():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines"


def test_every_subcommand_has_a_page_generated_from_its_parser():
    listed = _toctree_entries(DOCS / "commands" / "index.md")
    for name in COMMANDS:
        page = DOCS / "commands" / f"{name}.md"
        assert page.is_file(), f"no docs page for `cass-deploy {name}`"
        text = page.read_text()
        assert "```{argparse}" in text, page
        assert f":func: {name}\n" in text and f":path: {name}\n" in text, page
        assert name in listed, f"{page} is not in docs/commands/index.md's toctree"
    pages = {p.stem for p in (DOCS / "commands").glob("*.md")} - {"index"}
    assert pages == set(COMMANDS), pages ^ set(COMMANDS)


def test_the_generated_reference_comes_from_the_cli_parser():
    spec = importlib.util.spec_from_file_location("cli_parsers", DOCS / "_ext" / "cli_parsers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(COMMANDS) <= set(vars(module))
    parser = module.export()  # export's module imports no torch: cheap to build
    sub = next(a for a in parser._actions if a.dest == "command").choices["export"]
    flags = {opt for action in sub._actions for opt in action.option_strings}
    assert {"--out", "--precision", "--engine", "--profile"} <= flags


def test_every_page_is_in_a_table_of_contents():
    listed = set()
    for page in [DOCS / "index.md", DOCS / "commands" / "index.md"]:
        base = page.parent.relative_to(DOCS)
        listed |= {str(base / e) if str(base) != "." else e for e in _toctree_entries(page)}
    pages = {str(p.relative_to(DOCS).with_suffix("")) for p in DOCS.rglob("*.md") if "_build" not in p.parts}
    assert pages - {"index"} <= listed, sorted(pages - {"index"} - listed)


def test_the_api_page_lists_every_stage():
    text = (DOCS / "api.md").read_text()
    names = {m.name for m in pkgutil.iter_modules(cass_deploy.__path__)} - {"__main__", "commands"}
    missing = {n for n in names if f"   cass_deploy.{n}\n" not in text}
    assert not missing, f"docs/api.md does not list {sorted(missing)}"


def test_the_readme_links_point_at_files():
    links = re.findall(r"\]\(([^)#:]+)\)", (ROOT / "README.md").read_text())
    assert links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing
