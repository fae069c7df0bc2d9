"""Typer CLI (top layer). The root only registers commands; one module per command."""
