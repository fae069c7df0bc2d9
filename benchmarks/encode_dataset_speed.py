"""encode-dataset throughput: a serial loop of `vae-deploy encode` against the local engine at each
worker/thread split, and the Ray engine against the local engine at equal workers, side by side in one run.

    .venv/bin/python benchmarks/encode_dataset_speed.py [--clips 8] [--frames 60] [--rounds 2]

The corpus is `--clips` clips cut from the packaged clip (carphone_pristine, 176x144), `--frames` frames
each, written with OpenCV; the model is the packaged default one. Every configuration is a whole process as
a user runs it (`vae-deploy encode` once per clip for the serial loop, one `vae-deploy encode-dataset` for
an engine), timed from start to exit, so start-up costs count where a user pays them. Configurations
alternate round by round so a burst of load from another process hits each alike; each row is the median
over rounds. Every run's files are compared with the serial loop's (they must be byte-identical).

Two Ray rows: `ray` starts a local Ray for the batch and stops it (its start-up counts, as it does for a
user without a cluster), and `ray --address` joins a Ray already running on this machine (`ray start
--head`, started once before the rounds and timed on its own), as a batch on a cluster does: the cluster's
start-up is paid once, not per batch.

The cluster table extrapolates videos/s per worker linearly, which assumes the corpus is large, workers
do not share cores, and storage keeps up: an estimate, labelled as one. No GPU is measured here.
Writes benchmarks/results/encode_dataset_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
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
RAY = str(Path(sys.executable).with_name("ray"))
RAY_PORT = 6391  # a port of its own, so a Ray the user already runs on 6379 is left alone
# `ray start` turns token authentication on for a local cluster (Ray >= 2.59) and writes the token to
# ~/.ray/auth_token; a driver reads it only in token mode, as any user joining that cluster must.
RAY_TOKEN_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}


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


def timed(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
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


@contextlib.contextmanager
def running_ray(cpus: int):
    """A Ray head on this machine for the `--address` row: yields (address, seconds `ray start` took)."""
    start = time.perf_counter()
    subprocess.run([RAY, "start", "--head", "--port", str(RAY_PORT), "--num-cpus", str(cpus),
                    "--include-dashboard", "false", "--disable-usage-stats"], check=True, capture_output=True,
                   env=RAY_TOKEN_ENV)
    try:
        yield f"127.0.0.1:{RAY_PORT}", time.perf_counter() - start
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True)


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a) for p in a.rglob("*.vaelat"))
    return names == sorted(p.relative_to(b) for p in b.rglob("*.vaelat")) and all(
        filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def run_rounds(args, configs: dict, work: Path, ray_address: str | None):
    """Every configuration once per round, in alternating order; seconds per config, and whether each
    config's files equal the serial loop's."""
    corpus = work / "corpus"
    clips = make_corpus(corpus, args.clips, args.frames)
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    identical: dict[str, bool] = {}
    load = [os.getloadavg()[0]]
    reference = work / "out-serial"
    for r in range(args.rounds):
        names = list(configs) if r % 2 == 0 else list(reversed(configs))
        for name in names:
            out = work / f"out-{r}-{abs(hash(name)) % 10**6}"
            spec = configs[name]
            if spec is None:
                s = serial(corpus, clips, out)
            else:
                engine, workers, threads = spec
                joins = engine == "ray-address"
                where = ["--engine", "ray", "--address", ray_address] if joins else ["--engine", engine]
                s = timed([*VD, "encode-dataset", str(corpus), "--out", str(out), *where,
                           "--workers", str(workers), "--threads", str(threads), "-q"],
                          env=RAY_TOKEN_ENV if joins else None)
            seconds[name].append(s)
            if spec is None and not reference.exists():
                shutil.copytree(out, reference)
            elif reference.exists():
                identical[name] = identical.get(name, True) and same_files(reference, out)
            shutil.rmtree(out, ignore_errors=True)
            print(f"round {r + 1} {name}: {s:.1f} s ({args.clips / s:.3f} videos/s)", flush=True)
    load.append(os.getloadavg()[0])
    return seconds, identical, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    parser.add_argument("--engines-only", action="store_true",
                        help="only the local engine at 2 workers and Ray starting its own, no serial loop (a "
                             "large corpus, to see how far Ray's start-up is amortized); written to "
                             "encode_dataset_speed_engines.{json,md}")
    args = parser.parse_args()
    cpus = os.cpu_count() or 2
    configs = {} if args.engines_only else {"serial loop of encode": None}
    splits = sorted({(w, max(1, cpus // w)) for w in (1, 2, cpus) if w <= cpus and not (
        args.engines_only and w != min(2, cpus))})
    for workers, threads in splits:
        configs[f"local, {workers} worker(s) x {threads} thread(s)"] = ("local", workers, threads)
    actors, actor_threads = min(2, cpus), max(1, cpus // min(2, cpus))
    if not args.no_ray:
        configs[f"ray, {actors} actor(s) x {actor_threads} thread(s)"] = ("ray", actors, actor_threads)
    if not (args.no_ray or args.engines_only):
        configs[f"ray --address (running Ray), {actors} actor(s) x {actor_threads} thread(s)"] = (
            "ray-address", actors, actor_threads)
    work = Path(tempfile.mkdtemp(prefix="encode-dataset-speed-"))
    try:
        with contextlib.ExitStack() as stack:
            joins = any(spec and spec[0] == "ray-address" for spec in configs.values())
            ray_address, ray_start_s = stack.enter_context(running_ray(cpus)) if joins else (None, None)
            seconds, identical, load = run_rounds(args, configs, work, ray_address)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    serial_s = seconds.get("serial loop of encode")
    base = float(np.median(serial_s)) if serial_s else None
    for name, spec in configs.items():
        med = float(np.median(seconds[name]))
        workers = 1 if spec is None else spec[1]
        rows.append({"config": name, "seconds": med, "per_round": seconds[name],
                     "videos_per_s": args.clips / med, "vs_serial": base / med if base else None,
                     "workers": workers,
                     "identical_to_serial": identical.get(name)})
    result = {"clips": args.clips, "frames": args.frames, "rounds": args.rounds, "cpus": cpus,
              "cpu": _cpu_model(), "load_average": load,
              "ray_start_seconds": ray_start_s, "python": platform.python_version(), "rows": rows,
              "command": " ".join(["benchmarks/encode_dataset_speed.py", *sys.argv[1:]])}
    results = RESULTS.with_name(RESULTS.name + "_engines") if args.engines_only else RESULTS
    results.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(results.with_suffix(".json"), result)
    write_text_atomic(results.with_suffix(".md"), render(result))
    print(render(result))


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def render(r: dict) -> str:
    local = [row for row in r["rows"] if row["config"].startswith("local")]
    best = max(local, key=lambda row: row["videos_per_s"])
    rays = [row for row in r["rows"] if row["config"].startswith("ray")]
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
        vs_serial = "-" if row["vs_serial"] is None else f"{row['vs_serial']:.2f}x"
        lines.append(f"| {row['config']} | {row['seconds']:.1f} | {row['videos_per_s']:.3f} | "
                     f"{vs_serial} | {same} |")
    lines.append("")
    if best["vs_serial"] is not None:
        lines.append(f"Best local split: {best['config']}, {best['vs_serial']:.2f}x the serial loop "
                     f"(floor >= 1.0x).")
    for ray in rays:
        same_workers = next((row for row in local if row["workers"] == ray["workers"]), None)
        if same_workers:
            lines.append(f"{ray['config']} vs local at {same_workers['workers']} workers: "
                         f"{ray['videos_per_s'] / same_workers['videos_per_s']:.2f}x the local engine's "
                         f"videos/s (floor: within 20%, i.e. >= 0.80x).")
    if r.get("ray_start_seconds") is not None:
        lines.append(f"`ray start --head` for the --address row took {r['ray_start_seconds']:.1f} s, once, "
                     "before the rounds (not in any row).")
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
