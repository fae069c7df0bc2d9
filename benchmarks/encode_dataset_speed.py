"""encode-dataset throughput: a serial loop of `vae-deploy encode` against the local engine at each
worker/thread split, and the Ray engine against the local engine at equal workers, side by side in one run.

    .venv/bin/python benchmarks/encode_dataset_speed.py [--clips 8] [--frames 60] [--rounds 2]

The corpus is `--clips` clips cut from the packaged clip (carphone_pristine, 176x144), `--frames` frames
each, written with OpenCV; the model is the packaged default one. Every configuration is a whole process as
a user runs it (`vae-deploy encode` once per clip for the serial loop, one `vae-deploy encode-dataset` for
an engine), timed from start to exit, so start-up costs count where a user pays them. Configurations
alternate round by round so a burst of load from another process hits each alike; each row is the median
over rounds. Every run's files are compared with the serial loop's (they must be byte-identical).

The cluster table extrapolates videos/s per worker linearly, which assumes the corpus is large, workers
do not share cores, and storage keeps up: an estimate, labelled as one. No GPU is measured here.
Writes benchmarks/results/encode_dataset_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from vae_deploy.files import write_json_atomic, write_text_atomic
from vae_deploy.video.samples import sample_video_path

RESULTS = Path(__file__).parent / "results" / "encode_dataset_speed"
VD = [sys.executable, "-m", "vae_deploy"]


def make_corpus(folder: Path, clips: int, frames: int) -> list[Path]:
    """`clips` clips of `frames` frames from the packaged clip (each from its own start, wrapping)."""
    cap = cv2.VideoCapture(str(sample_video_path("carphone_pristine")))
    source = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        source.append(frame)
    paths = []
    for i in range(clips):
        path = folder / f"part{i % 2}" / f"clip{i:02d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (176, 144))
        start = (i * 13) % len(source)
        for k in range(frames):
            writer.write(source[(start + k) % len(source)])
        writer.release()
        paths.append(path)
    return paths


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return seconds


def serial(corpus: Path, clips: list[Path], out: Path) -> float:
    start = time.perf_counter()
    for clip in clips:
        target = out / clip.relative_to(corpus).with_suffix(".vaelat")
        target.parent.mkdir(parents=True, exist_ok=True)
        timed([*VD, "encode", str(clip), "-o", str(target), "-q"])
    return time.perf_counter() - start


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a) for p in a.rglob("*.vaelat"))
    return names == sorted(p.relative_to(b) for p in b.rglob("*.vaelat")) and all(
        filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    args = parser.parse_args()
    cpus = os.cpu_count() or 2
    configs = {"serial loop of encode": None}
    splits = sorted({(w, max(1, cpus // w)) for w in (1, 2, cpus) if w <= cpus})
    for workers, threads in splits:
        configs[f"local, {workers} worker(s) x {threads} thread(s)"] = ("local", workers, threads)
    if not args.no_ray:
        configs[f"ray, {min(2, cpus)} actor(s) x {max(1, cpus // min(2, cpus))} thread(s)"] = (
            "ray", min(2, cpus), max(1, cpus // min(2, cpus)))
    work = Path(tempfile.mkdtemp(prefix="encode-dataset-speed-"))
    try:
        corpus = work / "corpus"
        clips = make_corpus(corpus, args.clips, args.frames)
        seconds: dict[str, list[float]] = {name: [] for name in configs}
        identical: dict[str, bool] = {}
        load = [os.getloadavg()[0]]
        for r in range(args.rounds):
            names = list(configs) if r % 2 == 0 else list(reversed(configs))
            for name in names:
                out = work / f"out-{r}-{len(seconds[name])}-{abs(hash(name)) % 10**6}"
                spec = configs[name]
                if spec is None:
                    s = serial(corpus, clips, out)
                else:
                    engine, workers, threads = spec
                    s = timed([*VD, "encode-dataset", str(corpus), "--out", str(out), "--engine", engine,
                               "--workers", str(workers), "--threads", str(threads), "-q"])
                seconds[name].append(s)
                reference = work / "out-0-0-serial"
                if spec is None and not reference.exists():
                    shutil.copytree(out, reference)
                elif reference.exists():
                    identical[name] = identical.get(name, True) and same_files(reference, out)
                print(f"round {r + 1} {name}: {s:.1f} s ({args.clips / s:.3f} videos/s)", flush=True)
        load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    base = float(np.median(seconds["serial loop of encode"]))
    for name, spec in configs.items():
        med = float(np.median(seconds[name]))
        workers = 1 if spec is None else spec[1]
        rows.append({"config": name, "seconds": med, "per_round": seconds[name],
                     "videos_per_s": args.clips / med, "vs_serial": base / med, "workers": workers,
                     "identical_to_serial": identical.get(name)})
    result = {"clips": args.clips, "frames": args.frames, "rounds": args.rounds, "cpus": cpus,
              "cpu": _cpu_model(), "load_average": load, "python": platform.python_version(), "rows": rows,
              "command": " ".join(["benchmarks/encode_dataset_speed.py", *sys.argv[1:]])}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS.with_suffix(".json"), result)
    write_text_atomic(RESULTS.with_suffix(".md"), render(result))
    print(render(result))


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def render(r: dict) -> str:
    local = [row for row in r["rows"] if row["config"].startswith("local")]
    best = max(local, key=lambda row: row["videos_per_s"])
    ray = next((row for row in r["rows"] if row["config"].startswith("ray")), None)
    same_workers = next((row for row in local if ray and row["workers"] == ray["workers"]), None)
    lines = [
        "# encode-dataset throughput: serial encode loop, local engine, Ray engine",
        "",
        f"Command: `.venv/bin/python {r['command']}`. Machine: {r['cpus']} CPUs ({r['cpu']}), Python "
        f"{r['python']}, load average {r['load_average'][0]:.1f} before / {r['load_average'][1]:.1f} after "
        "(a shared machine: the configurations alternate round by round).",
        f"Corpus: {r['clips']} clips of {r['frames']} frames cut from carphone_pristine (176x144), the "
        f"packaged default model, ort-cpu. Each row: a whole process (or, for the serial loop, one "
        f"`vae-deploy encode` process per clip) timed start to exit; median over {r['rounds']} rounds.",
        "",
        "| configuration | seconds | videos/s | vs serial loop | files identical to the serial loop |",
        "|---|---:|---:|---:|---|",
    ]
    for row in r["rows"]:
        same = "-" if row["identical_to_serial"] is None else ("yes" if row["identical_to_serial"] else "NO")
        lines.append(f"| {row['config']} | {row['seconds']:.1f} | {row['videos_per_s']:.3f} | "
                     f"{row['vs_serial']:.2f}x | {same} |")
    lines += ["", f"Best local split: {best['config']}, {best['vs_serial']:.2f}x the serial loop "
                  f"(floor >= 1.0x)."]
    if ray and same_workers:
        lines.append(f"Ray at {ray['workers']} actors vs local at {same_workers['workers']} workers: "
                     f"{ray['videos_per_s'] / same_workers['videos_per_s']:.2f}x the local engine's videos/s "
                     f"(floor: within 20%, i.e. >= 0.80x).")
    per_worker = best["videos_per_s"] / best["workers"]
    lines += ["", "## Extrapolation (not measured): videos/s at this per-worker rate, linear in workers", "",
              f"Per worker here: {per_worker:.3f} videos/s ({r['frames']}-frame 176x144 clips, CPU, "
              f"{best['config']}). No GPU was measured.", "",
              "| workers | videos/s | videos/hour |", "|---:|---:|---:|"]
    for n in (1, 8, 64, 512):
        lines.append(f"| {n} | {per_worker * n:.2f} | {per_worker * n * 3600:,.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
