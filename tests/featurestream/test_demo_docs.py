"""The docs that are generated or linked stay true: docs/cli.md matches `--help`, README links resolve."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == _generator().render(), "docs/cli.md is out of date: run `python scripts/gen_cli_docs.py`"


def test_cli_reference_covers_every_command() -> None:
    import typer

    from featurestream.cli import app

    text = (ROOT / "docs" / "cli.md").read_text()
    for name in typer.main.get_command(app).commands:
        assert f"## featurestream {name}\n" in text


def test_doc_links_resolve() -> None:
    """Every relative link in README.md and docs/*.md points at a file that exists."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        if not page.exists():
            continue
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
