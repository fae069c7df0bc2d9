"""The streaming commands' default ort-cpu thread count, chosen by measurement (issue 24 item 2).

    .venv/bin/python benchmarks/stream_threads.py --wan M [--rounds 2] [--wan-frames 17] [--wan-size 256]

Two models, side by side in one run, every case its own process, the cases alternating round by round so
that a burst of load from other jobs hits them all:
- the packaged video VAE (small: reading and writing weigh as much as inference): `vae-deploy run` on its
  packaged clip (read, encode, decode, write H.264), the whole clip;
- Wan 2.1 widths (the model folder M; inference dwarfs reading and writing): `vae-deploy decode` of a .vaelat
  encoded once from the packaged clip at --wan-size (its first --wan-frames frames), written as H.264.
Cases: the runner options the streaming commands would give ort-cpu (video/model_open.py's runner_options
replaced in the worker): 1 thread (the old default on 2 CPUs: one fewer than the CPUs), all CPUs with
ORT's spinning threads, and all CPUs with spinning off (idle threads sleep, leaving the core to reading and
writing). Timed: the job call, model loading included (what a user waits for).
Writes benchmarks/results/stream_threads.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / "vae_deploy" / "assets" / "clips" / "carphone_pristine.mp4"


def cases(cpus: int) -> dict[str, dict]:
    return {"1 thread": {"threads": 1}, f"{cpus} threads": {"threads": cpus},
            f"{cpus} threads, no spinning": {"threads": cpus, "spinning": False}}


def worker(task: dict) -> None:
    from vae_deploy.video import model_open
    from vae_deploy.video.jobs import ModelChoice, VideoOutputs, decode_job, run_job

    options = task["options"]
    model_open.runner_options = lambda backend, threads=None: dict(options)  # the case's options
    model = ModelChoice(Path(task["model"]) if task["model"] else None)
    started = time.perf_counter()
    if task["job"] == "run":
        report = run_job(CLIP, VideoOutputs(video=Path(task["out"])), model=model)
    else:
        report = decode_job(Path(task["latents"]), Path(task["out"]), model=model)
    seconds = time.perf_counter() - started
    print("RESULT " + json.dumps({"seconds": seconds, "frames": report.frames}), flush=True)


def measure(task: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(task)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker")
    parser.add_argument("--wan", type=Path, help="model folder of Wan 2.1 widths")
    parser.add_argument("--wan-frames", type=int, default=17)
    parser.add_argument("--wan-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "stream_threads")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    started, load_before = time.time(), os.getloadavg()[0]
    cpus = os.cpu_count() or 2
    work = Path(tempfile.mkdtemp(prefix="stream_threads_"))
    models = {"packaged video VAE, `run` on the packaged clip": {"job": "run", "model": None}}
    if args.wan:
        from vae_deploy.video.jobs import ModelChoice, StreamOptions, encode_job

        latents = work / "wan.vaelat"
        encode_job(CLIP, latents, model=ModelChoice(args.wan, threads=cpus),
                   options=StreamOptions(short_side=args.wan_size, max_frames=args.wan_frames, measure=False))
        models[f"Wan 2.1 widths, `decode` of {args.wan_frames} frames at short side {args.wan_size}"] = {
            "job": "decode", "model": str(args.wan), "latents": str(latents)}
    results: dict[str, dict[str, list[dict]]] = {m: {c: [] for c in cases(cpus)} for m in models}
    for round_ in range(args.rounds):
        for model, job in models.items():
            for name, options in cases(cpus).items():
                result = measure({**job, "options": options, "out": str(work / "out.mp4")})
                results[model][name].append(result)
                print(f"round {round_ + 1} {model[:40]:40s} {name:26s} {result['seconds']:7.2f} s",
                      flush=True)
    lines = ["# Streaming thread count for ort-cpu: measured side by side", "",
             f"Command: `{' '.join(['.venv/bin/python', *sys.argv])}` "
             f"({(time.time() - started) / 60:.1f} min; benchmarks/stream_threads.py). {cpus} CPUs; load "
             f"average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after (the cores are shared with "
             f"other jobs).",
             f"Each number: one job in its own process, model loading included; median of {args.rounds} "
             f"rounds, the cases alternating.", "",
             "| model and job | case | median s | each round s | vs 1 thread |", "|---|---|---:|---|---:|"]
    for model, by_case in results.items():
        base = statistics.median(r["seconds"] for r in by_case["1 thread"])
        for name, runs in by_case.items():
            median = statistics.median(r["seconds"] for r in runs)
            each = ", ".join(f"{r['seconds']:.2f}" for r in runs)
            lines.append(f"| {model} | {name} | {median:.2f} | {each} | {base / median:.2f}x faster |")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
