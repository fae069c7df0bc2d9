"""Export time and graph size, legacy TorchScript exporter (opset 17) against torch's dynamo exporter (opset
18), per graph, for a model source (issue 23).

    .venv/bin/python benchmarks/exporter_migration.py vae_deploy/assets/default_model/reference \
        [--wan-tiny] [--repeat 1] [--json out.json]

SOURCE is anything `vae-deploy export` takes (a run or checkpoint folder, a diffusers folder); --wan-tiny
builds a tiny AutoencoderKLWan folder first (tests/external_zoo.py's "wan2.1" config) and measures it too.
Each graph is exported by export_graph alone (no parity check, no golden data), then checked against its
spec; the numbers are the export call's wall time, the file size, the node count, and the largest difference
between the two files' outputs on the exporter's example inputs under onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _wan_folder(root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import diffusers
    import torch
    from external_zoo import CONFIGS

    cls, config = CONFIGS["wan2.1"]
    torch.manual_seed(0)
    getattr(diffusers, cls)(**config).save_pretrained(str(root / "wan2.1"))
    return root / "wan2.1"


def measure(source: Path, work: Path, repeat: int) -> list[dict]:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from vae_deploy.export.onnx_export import (
        DYNAMO,
        TORCHSCRIPT,
        check_graph,
        declare_io_shapes,
        export_env,
        export_graph,
        trace_inputs,
    )
    from vae_deploy.export.sources import open_model_source
    from vae_deploy.export.specs import graph_specs

    torch.set_num_threads(1)
    src = open_model_source(source)
    model = src.module.eval()
    rows = []
    for name, spec in graph_specs(src.config["kind"], model.config, model).items():
        row = {"source": str(source), "graph": name}
        outs = {}
        feeds = {n: t.numpy() for n, t in zip(spec.input_names, trace_inputs(spec, env=export_env(spec)),
                                               strict=True)}
        for exporter, opset in ((TORCHSCRIPT, 17), (DYNAMO, 18)):
            path = work / f"{exporter}_{name}.onnx"
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                export_graph(model, spec, path, opset, exporter)
                times.append(time.perf_counter() - t0)
            declare_io_shapes(path, spec)
            check_graph(path, spec)
            graph = onnx.load(str(path))
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            outs[exporter] = session.run(None, feeds)
            row[exporter] = {"seconds": round(min(times), 2), "bytes": path.stat().st_size,
                             "nodes": len(graph.graph.node), "initializers": len(graph.graph.initializer)}
        row["max_abs_diff"] = float(max(np.abs(a - b).max() for a, b in
                                        zip(outs[TORCHSCRIPT], outs[DYNAMO], strict=True)))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", type=Path)
    parser.add_argument("--wan-tiny", action="store_true")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sources = list(args.sources) + ([_wan_folder(Path(tmp))] if args.wan_tiny else [])
        rows = []
        for i, source in enumerate(sources):
            work = Path(tmp) / f"graphs{i}"
            work.mkdir()
            rows += measure(source, work, args.repeat)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
