"""Options several commands share, declared once so their help and env vars agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["DataDirOption", "RegistryOption", "RepoOption"]

RepoOption = Annotated[
    Path | None, typer.Option(help="Feature repo file/folder, used when the registry holds no definitions.")
]
DataDirOption = Annotated[
    Path | None, typer.Option(envvar="FEATURESTREAM_DATA_DIR", help="Offline store root (event log, sources).")
]
RegistryOption = Annotated[
    Path | None, typer.Option(envvar="FEATURESTREAM_REGISTRY", help="Registry file holding the definitions.")
]
