"""The layer rule of docs/architecture.md, checked for every module of every layer (issue 23, item 6): a
module imports only from its own layer or the ones below, lazy imports inside functions included (they
are how the edge install avoids torch, not a way around the order). Also: a layer's `jobs` module (its
commands as functions) is imported by the CLI only, and a package's modules do not import names back from
their own package's `__init__` (the table that gathers them sits above them).

The project's own AST scan (no import-linter): it reads each file once and runs in well under a second.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vae_deploy"

# Top to bottom, as docs/architecture.md lists them; one entry may hold several names of one level.
LAYERS = [
    ("__main__",),  # the entry point runs the CLI
    ("cli",),
    ("serve",),  # `vae-deploy serve`: above video/ and runtime/, whose codec and batched streams it uses
    ("training",),
    ("export",),
    ("data",),
    ("batch",),
    ("video",),
    ("runtime",),
    ("models",),
    ("files", "interrupts", "config_io", "lazy_names", ""),  # "": the package root (its __version__)
    ("errors",),
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """The vae_deploy modules `path` imports anywhere in it: `from pkg import submodule` counts as the
    submodule, `from pkg import name` as the package (its __init__)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if _is_module(sub) else node.module)
    return {m for m in found if m == "vae_deploy" or m.startswith("vae_deploy.")}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 100  # the scan sees the package, not an empty folder
    return {_module_name(p): _imports(p) for p in files}


def test_every_layer_imports_only_its_own_layer_or_below():
    graph = _graph()
    assert set(map(_layer, graph)) <= set(LEVEL), set(map(_layer, graph)) - set(LEVEL)  # every layer placed
    upward = sorted(f"{src} imports {dst} ({_layer(dst) or 'root'} is above {_layer(src) or 'root'})"
                    for src, targets in graph.items() for dst in targets
                    if LEVEL[_layer(dst)] < LEVEL[_layer(src)])
    assert upward == []


def test_commands_as_functions_are_imported_by_the_cli_only():
    """video/jobs.py, export/jobs.py, batch/jobs.py, training/jobs.py sit on top of their layers: what
    FrameStream or a batch worker needs from them lives below (e.g. video/model_open.py's open_model)."""
    graph = _graph()
    jobs = {m for m in graph if m.endswith(".jobs")}
    assert {"vae_deploy.video.jobs", "vae_deploy.export.jobs", "vae_deploy.batch.jobs"} <= jobs
    offenders = sorted(f"{src} imports {dst}" for src, targets in graph.items() for dst in targets & jobs
                       if _layer(src) != "cli")
    assert offenders == []


def test_no_module_imports_back_from_its_own_package_init():
    graph = _graph()
    back = {(src, dst) for src, targets in graph.items() for dst in targets
            if dst != "vae_deploy" and src.startswith(dst + ".") and not _is_init(src)}
    # A module that imports a name back from its own package's __init__ makes a cycle: the package imports
    # it in turn (the adapters' family table and the training tasks' registry have modules of their own).
    assert not back, sorted(back)


def _is_init(module: str) -> bool:
    return (PACKAGE.parent.joinpath(*module.split(".")) / "__init__.py").is_file()
