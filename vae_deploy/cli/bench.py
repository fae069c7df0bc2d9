"""`vae-deploy bench MODEL_DIR [--backend NAME] [--json]`: encode/decode latency per batch size.

Times the runner's public calls (input validation included, as an application pays it), warm-up calls
excluded, and reports the median and 95th percentile. benchmarks/runtime_speed.py compares backends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def bench(
    model_dir: Annotated[Path, typer.Argument(help="Model folder.")],
    backend: Annotated[str, typer.Option("--backend", "-b", help="Backend to time.")] = "ort-cpu",
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,128",
    repeats: Annotated[int, typer.Option("--repeats", help="Timed calls per case.", min=1)] = 50,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls before timing.", min=0)] = 5,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Backend intra-op threads.")] = None,
) -> None:
    """Time encode and decode: median and p95 milliseconds per call, warm-up excluded."""
    from vae_deploy.cli.verify import parse_sizes
    from vae_deploy.runtime.benchmark import bench_runner
    from vae_deploy.runtime.registry import load_runner

    sizes = parse_sizes(batch_sizes, "--batch-sizes")
    options = {} if threads is None else {"threads": threads}
    with load_runner(model_dir, backend, **options) as runner:
        results = bench_runner(runner, list(sizes), repeats=repeats, warmup=warmup)
    if json_out:
        typer.echo(json.dumps({"backend": backend, "model_dir": str(model_dir),
                               "results": [r.to_dict() for r in results]}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model_dir} on {backend} ({repeats} calls, {warmup} warm-up)", title_justify="left")
    for column in ("graph", "batch", "median ms", "p95 ms", "items/s"):
        table.add_column(column, justify="left" if column == "graph" else "right")
    for r in results:
        table.add_row(r.graph, str(r.batch), f"{r.median_ms:.3f}", f"{r.p95_ms:.3f}", f"{r.items_per_s:,.0f}")
    Console().print(table)
