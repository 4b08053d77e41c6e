"""Typer CLI: a thin layer over the stage modules (one file per command group)."""
