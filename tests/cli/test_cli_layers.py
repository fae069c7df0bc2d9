"""The CLI is the top layer and thin: nothing below it imports it, and the options every command shares are
defined once (cli/options.py), so a backend option always offers every registered backend and the same
default. The layer rule for every other layer is tests/test_layers.py; this file also covers benchmarks/
and scripts/, which must not import the CLI either."""

from __future__ import annotations

import ast
from pathlib import Path

import typer

from vae_deploy.cli.app import app
from vae_deploy.runtime.registry import BACKENDS, DEFAULT_BACKEND

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_nothing_below_or_beside_the_cli_imports_it():
    files = [p for folder in ("vae_deploy", "benchmarks", "scripts") for p in (ROOT / folder).rglob("*.py")]
    outside = [p for p in files if (ROOT / "vae_deploy" / "cli") not in p.parents
               and p != ROOT / "vae_deploy" / "__main__.py"]  # the entry point runs the CLI
    assert len(outside) > 50  # the scan sees the package, not an empty folder
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in _imported_modules(p)
                                                  if m == "vae_deploy.cli" or m.startswith("vae_deploy.cli."))
                 for p in outside}
    assert {path: mods for path, mods in offenders.items() if mods} == {}


def test_every_backend_option_offers_every_backend_with_one_default():
    command = typer.main.get_command(app)
    options = [(name, param) for name, sub in command.commands.items() for param in sub.params
               if param.name in ("backend", "parity_backend")]
    assert {name for name, _ in options} >= {"run", "encode", "decode", "demo", "verify", "sample", "bench",
                                             "export"}
    for name, param in options:
        assert param.default == DEFAULT_BACKEND, name
        assert f"{', '.join(BACKENDS)} (default {DEFAULT_BACKEND}" in param.help, (name, param.help)
