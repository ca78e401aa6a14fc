"""One module per CLI subcommand; `featurestream/cli.py` registers each on the app.

Keep module-level imports light (typer, settings): import heavy libraries
(faust, duckdb, uvicorn, ...) inside the command function so `--help` stays fast.
"""
