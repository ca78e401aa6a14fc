"""Render docs/cli.md from the CLI's own `--help` output (run after changing a command).

    python scripts/gen_cli_docs.py           # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check   # exit 1 when docs/cli.md is out of date

The help text is rendered at a fixed width without colour, so the file only
changes when a command, option, env var or docstring changes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli.md"
WIDTH = 100
HEADER = """# CLI reference

Generated from `featurestream ... --help` by `scripts/gen_cli_docs.py`; do not edit by hand
(`tests/featurestream/test_demo_docs.py` fails when this file is out of date).
Every option that an environment variable can set shows it as `[env var: ...]`; all
settings are listed in the [README](../README.md#configuration).
"""


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path, depth first, in registration order."""
    for name, command in getattr(group, "commands", {}).items():
        if getattr(command, "hidden", False):
            continue
        yield (*path, name)
        yield from _commands(command, (*path, name))


def _help(args: list[str]) -> str:
    import typer.testing

    from featurestream.cli import app

    env = {"COLUMNS": str(WIDTH), "LINES": "200", "NO_COLOR": "1", "TERM": "dumb", "FORCE_COLOR": None}
    result = typer.testing.CliRunner().invoke(app, [*args, "--help"], env=env, terminal_width=WIDTH,
                                              prog_name="featurestream")
    if result.exit_code != 0:
        raise SystemExit(f"`featurestream {' '.join(args)} --help` failed: {result.output}")
    return "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())


def render() -> str:
    """The whole docs/cli.md text."""
    import typer

    from featurestream.cli import app

    os.environ.pop("FORCE_COLOR", None)
    parts = [HEADER, "## featurestream\n", "```text", _help([]), "```\n"]
    for path in _commands(typer.main.get_command(app)):
        parts += [f"## featurestream {' '.join(path)}\n", "```text", _help(list(path)), "```\n"]
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is out of date: run `python scripts/gen_cli_docs.py`", file=sys.stderr)
            return 1
        return 0
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1:]))
