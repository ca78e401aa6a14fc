"""`featurestream apply [REPO]`: show what a feature repo changes in the registry, then apply it."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from feature_store.settings import load_settings

if TYPE_CHECKING:
    from rich.console import Console

    from feature_store.registry import Plan

__all__ = ["apply"]


def apply(
    repo: Annotated[
        Path, typer.Argument(help="Feature repo: a .py file, or a folder holding features.py.")
    ] = Path("."),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan and change nothing.")] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Apply breaking changes and removals without asking.")
    ] = False,
    registry: Annotated[
        Path | None,
        typer.Option(envvar="FEATURESTREAM_REGISTRY", help="Registry file (SQLite) to apply to."),
    ] = None,
) -> None:
    """Validate every definition in REPO, print the plan (+ add, ~ change, - remove), then apply it.

    A breaking change (a view's window, hop, function, transform, fields,
    entity or key) becomes a new view version with new online keys; backfill
    it with `featurestream materialize`. Nothing is applied when any
    definition is invalid or a schema change is not compatible.
    """
    from rich.console import Console

    from feature_store.registry import Registry
    from feature_store.repo import load_repo

    settings = load_settings(**({"registry": registry} if registry is not None else {}))
    console = Console(highlight=False, soft_wrap=True)  # status lines stay whole; the table still fits
    features = load_repo(repo)
    store = Registry(settings.registry)
    plan = store.plan(features)
    print_plan(console, plan)
    if plan.is_empty:
        console.print(f"No changes: {settings.registry} already holds this repo.")
        return
    if dry_run:
        console.print(f"Dry run: {plan.summary()}; nothing applied.")
        return
    risky = len(plan.breaking) + len(plan.removed)
    if risky and not yes:
        typer.confirm(f"Apply {len(plan.breaking)} breaking change(s) and {len(plan.removed)} removal(s)?",
                      abort=True)
    done = store.apply(features, applied_by=_user(), expected=plan)
    console.print(f"Applied to {settings.registry}: {len(done.added)} added, {len(done.changed)} changed "
                  f"({len(done.breaking)} breaking), {len(done.removed)} removed.")
    if done.breaking:
        console.print("Backfill the new view versions with `featurestream materialize`.")


def print_plan(console: Console, plan: Plan) -> None:
    """The plan as a table: one row per definition, changed fields and BREAKING reasons underneath."""
    from rich.table import Table
    from rich.text import Text

    for warning in plan.warnings:
        console.print(Text(f"warning: {warning}", style="yellow"))
    if plan.is_empty:
        return
    table = Table(title=f"Plan: {plan.summary()}", title_justify="left", show_lines=False)
    for column in ("", "kind", "name", "version", "details"):
        table.add_column(column, overflow="fold")
    colors = {"add": "green", "change": "yellow", "remove": "red"}
    for change in plan.changes:
        before = f"v{change.old_version} -> " if change.old_version else ""
        details = Text()
        for line in change.diff:
            details.append(f"{line}\n")
        if change.breaking:
            details.append("BREAKING", style="bold red")
            details.append(f": {change.reason}\n")
        elif change.reason:
            details.append(f"{change.reason}\n")
        if change.action == "add" and change.state_fingerprint:
            details.append(f"online state {change.state_fingerprint}\n")
        details.rstrip()
        table.add_row(Text(change.symbol, style=colors[change.action]), change.kind, change.name,
                      f"{before}v{change.new_version}", details)
    console.print(table)


def _user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (OSError, KeyError):  # no passwd entry (containers)
        return "unknown"
