"""ONNX Runtime CPU vs PyTorch eager CPU on the MLP VAE's encoder and decoder, side by side in one run.

    .venv/bin/python benchmarks/runtime_speed.py [--model MODEL_DIR] [--rounds 7]

Without --model it exports the seed configuration (784-256-2) to a temporary folder. Each case (graph x
batch 1, 128, 8192) alternates the configurations round by round, times `calls` calls per round after
warm-up, takes each round's median and reports the median over rounds, so a burst of load from another
process hits every configuration alike. Timed is each runner's public `run(graph, inputs)` (numpy in,
numpy out), what an application calls: the input validation it includes is the same code for every
configuration, so the differences between columns are ORT's and PyTorch's own.

PyTorch is timed at its default thread count and at 1 thread (on a loaded 2-core machine its default can
be far slower: OpenMP threads wait for a core); the ratio is taken against the faster of the two.
Writes benchmarks/results/runtime_speed.{json,md}.

--device-check FILE adds the summary of a GPU check (the gpu_check.json that benchmarks/gpu_check.py run
writes: ort-cuda parity, and ort-cuda vs ort-cpu timings of the same model on that machine); without it, a
device-check section already in the results JSON is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from vae_deploy.export import ExportProfile, export_model
from vae_deploy.files import write_json_atomic, write_text_atomic
from vae_deploy.models import MLPVAE, MLPVAEConfig
from vae_deploy.models.checkpoint import save_model
from vae_deploy.runtime.benchmark import time_calls
from vae_deploy.runtime.ort_session import DEFAULT_CPU_THREADS, DEFAULT_SPINNING
from vae_deploy.runtime.registry import load_runner
from vae_deploy.runtime.spec import random_inputs

BATCHES = (1, 128, 8192)
CALLS = {1: 200, 128: 50, 8192: 4}  # calls per round: enough to make a round last tens of ms or more
RESULTS = Path(__file__).parent / "results"


def make_model(folder: Path) -> Path:
    torch.manual_seed(0)
    save_model(folder / "ckpt", MLPVAE(MLPVAEConfig()))
    export_model(folder / "ckpt", folder / "model", ExportProfile(parity_batch_sizes=(1, 7)))
    return folder / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the seed MLP, in a tmp dir)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "runtime_speed")
    parser.add_argument("--device-check", type=Path, help="gpu_check.json from a run on the lent GPU")
    parser.add_argument("--device-name", default="NVIDIA H200")
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md from the existing .json")
    args = parser.parse_args()
    if args.render_only:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        write_text_atomic(args.out.with_suffix(".md"), render(saved))
        return

    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        model_dir = args.model or make_model(Path(tmp))
        # the runner's defaults (ort_session.py), what users get
        ours = stack.enter_context(load_runner(model_dir, "ort-cpu"))
        one_thread = stack.enter_context(load_runner(model_dir, "ort-cpu", threads=1, spinning=False))
        no_spin = stack.enter_context(load_runner(model_dir, "ort-cpu", spinning=False))
        reference = stack.enter_context(load_runner(model_dir, "torch"))

        def with_threads(n: int):
            def run(graph, inputs):
                torch.set_num_threads(n)  # a process-wide setting: set before every call of this config
                return reference.run(graph, inputs)
            return run

        configs = {
            f"ort-cpu ours (threads={DEFAULT_CPU_THREADS or 'cores'}, spinning={DEFAULT_SPINNING})": ours.run,
            "ort-cpu threads=1": one_thread.run,
            "ort-cpu threads=cores, no spinning": no_spin.run,
            f"torch eager (threads={default_threads}, default)": with_threads(default_threads),
            "torch eager (threads=1)": with_threads(1),
        }
        names = list(configs)
        load_before = os.getloadavg()
        started = time.time()
        cases = []
        for graph in ("encoder", "decoder"):
            spec = reference.graph(graph)
            for batch in BATCHES:
                inputs = random_inputs(spec, batch, np.random.default_rng(batch))
                per_round: dict[str, list[float]] = {n: [] for n in names}
                for _ in range(args.rounds):
                    for name in names:
                        fn = configs[name]
                        seconds = time_calls(lambda f=fn, g=graph, x=inputs: f(g, x), CALLS[batch], warmup=2)
                        per_round[name].append(float(np.median(seconds)))
                medians = {n: float(np.median(v)) * 1e3 for n, v in per_round.items()}
                ort_ms = medians[names[0]]
                torch_best = min(medians[names[3]], medians[names[4]])
                case = {"graph": graph, "batch": batch, "median_ms": medians,
                        "speedup_vs_torch_best": torch_best / ort_ms,
                        "speedup_vs_torch_default": medians[names[3]] / ort_ms}
                cases.append(case)
                timings = ", ".join(f"{n}: {v:.4f} ms" for n, v in medians.items())
                print(f"{graph:8s} batch {batch:5d}: {timings}"
                      + f" | ORT {case['speedup_vs_torch_best']:.2f}x faster than the best torch", flush=True)
        torch.set_num_threads(default_threads)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "model": "MLPVAE 784-256-2 (seed config)" if args.model is None else str(args.model),
        "rounds": args.rounds, "calls_per_round": CALLS, "seconds": time.time() - started,
        "configs": names, "cases": cases,
    }
    previous = args.out.with_suffix(".json")
    if args.device_check is not None:
        result["device_check"] = summarize_device_check(json.loads(args.device_check.read_text()),
                                                        args.device_name)
    elif previous.is_file() and "device_check" in json.loads(previous.read_text()):
        result["device_check"] = json.loads(previous.read_text())["device_check"]
    write_json_atomic(args.out.with_suffix(".json"), result)
    write_text_atomic(args.out.with_suffix(".md"), render(result))
    print(f"wrote {args.out.with_suffix('.json')} and .md")


def summarize_device_check(check: dict, device: str) -> dict:
    parity = {}
    for name, value in check["checks"].items():
        if isinstance(value, dict):
            parity[name] = {"passed": value["passed"], "stream_rows": value["stream_rows"],
                            "worst": {k: v for k, v in value["worst"].items() if "present" not in k}}
        else:
            parity[name] = value
    return {"device": device, "onnxruntime": check["onnxruntime"], "parity": parity, "bench": check["bench"]}


def render_device_check(dc: dict) -> list[str]:
    lines = ["", f"## ort-cuda on the lent GPU ({dc['device']}, onnxruntime-gpu {dc['onnxruntime']})", "",
             "Parity of ort-cuda against the PyTorch reference (tests/runtime/test_gpu_backends.py and "
             "export/validate.py), the 100-epoch seed model and a tiny causal3d video model:", ""]
    for name, value in dc["parity"].items():
        if isinstance(value, dict):
            worst = ", ".join(f"{k} max abs {v['max_abs']:.1e} / PSNR {v['min_psnr_db']:.1f} dB"
                              for k, v in value["worst"].items())
            streams = f", {value['stream_rows']} stream rows" if value["stream_rows"] else ""
            lines.append(f"- {name}: {'passed' if value['passed'] else 'FAILED'}{streams}: {worst}")
        else:
            lines.append(f"- {name}: {value.splitlines()[0]}")
    lines += ["", "Runner timings there (public encode/decode calls, numpy in and out, ms median / p95; "
              "no IO binding yet):", "", "| model | graph | batch | ort-cuda | ort-cpu (16 cores) |",
              "|---|---|---:|---:|---:|"]
    rows = {(b["model"], b["backend"], b["graph"], b["batch"]): b for b in dc["bench"] if "graph" in b}
    labels = {"model": "mlp fp32", "model16": "mlp gpu-fp16"}  # the check's folder names
    for (model, backend, graph, batch), b in rows.items():
        if backend != "ort-cuda":
            continue
        cpu = rows.get((model, "ort-cpu", graph, batch))
        cpu_text = f"{cpu['median_ms']:.3f} / {cpu['p95_ms']:.3f}" if cpu else "-"
        gpu_text = f"{b['median_ms']:.3f} / {b['p95_ms']:.3f}"
        lines.append(f"| {labels.get(model, model)} | {graph} | {batch} | {gpu_text} | {cpu_text} |")
    return lines


def render(result: dict) -> str:
    names = result["configs"]
    lines = [
        "# Runtime speed: ONNX Runtime CPU vs PyTorch eager CPU (MLP VAE)",
        "",
        f"Command: `.venv/bin/python benchmarks/runtime_speed.py` ({result['rounds']} alternating rounds, "
        f"median of per-round medians; calls per round {result['calls_per_round']}).",
        f"Machine: {result['machine']['cpus']} CPUs, {result['machine']['platform']}, load average "
        f"{result['machine']['loadavg_before'][0]:.1f} before / "
        f"{result['machine']['loadavg_after'][0]:.1f} after "
        f"(shared with other jobs). torch {result['versions']['torch']}, onnxruntime "
        f"{result['versions']['onnxruntime']}.",
        "",
        "| graph | batch | " + " | ".join(f"{n} ms" for n in names)
        + " | ORT speed-up vs best torch | vs default torch |",
        "|---|---:|" + "---:|" * len(names) + "---:|---:|",
    ]
    for c in result["cases"]:
        cells = " | ".join(f"{c['median_ms'][n]:.4f}" for n in names)
        lines.append(f"| {c['graph']} | {c['batch']} | {cells}"
                     + f" | {c['speedup_vs_torch_best']:.2f}x | {c['speedup_vs_torch_default']:.2f}x |")
    small = [c for c in result["cases"] if c["batch"] in (1, 128)]
    holds = all(c["speedup_vs_torch_best"] >= 1.0 for c in small)
    lines += [
        "",
        "Timed: each runner's public `run(graph, inputs)` (numpy in and out), what an application calls; the",
        "input validation it includes is the same code in every column.",
        "Speed-up = torch median / ORT (ours) median; above 1 means ONNX Runtime is faster. Best torch is",
        "the faster of its default thread count and 1 thread, case by case.",
        f"ORT (ours) not slower than the best PyTorch at batch 1 and 128: **{'yes' if holds else 'NO'}** "
        f"(worst ratio {min(c['speedup_vs_torch_best'] for c in small):.2f}x).",
        "",
        "ORT session settings (vae_deploy/runtime/ort_session.py): graph optimization ORT_ENABLE_ALL,",
        "sequential execution, one inter-op thread; intra-op threads and spinning as in the first column.",
        "The other ORT columns are the alternatives measured in the same run.",
    ]
    if "device_check" in result:
        lines += render_device_check(result["device_check"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
