"""The video VAEs' quality table: evaluates finished training runs and records them side by side.

    .venv/bin/python benchmarks/video_quality.py [RUN_DIR ...] [--notes NOTES.md] [--threads 1]

Default runs: runs/video_frame, runs/video_transformer, runs/video_causal3d (train/<name>.toml, real video,
measured on carphone_pristine: the recipes' test clip, which selects nothing; the runs recorded in
benchmarks/results/ validated on it instead, so it picked their best epochs and their numbers on it are
validation numbers) and runs/moving_mnist. Each run's best checkpoint goes through
`vae_deploy.training.evaluation.evaluate_run` (as `vae-deploy evaluate RUN_DIR` does: the whole test clip
streamed through the step form, mu, no sampling), one run after another in this process with the
same torch threads (--threads), so the frames/s figures share the machine's conditions. Training time
and steps come from each run's metrics.jsonl. The issue's floors are checked on the real-video runs:

    FrameVAE: PSNR >= 26 dB at a compression ratio >= 24
    each temporal design (temporal, causal3d) beats the FrameVAE of the same latent size in PSNR or flicker

Writes benchmarks/results/video_quality.{json,md}; --notes appends a markdown file (conditions of the runs).
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch

from vae_deploy.files import write_json_atomic, write_text_atomic
from vae_deploy.models.checkpoint import load_model
from vae_deploy.training.evaluation import evaluate_run
from vae_deploy.training.run_folder import RunFolder

RESULTS = Path(__file__).parent / "results"
DEFAULT_RUNS = ["runs/video_frame", "runs/video_transformer", "runs/video_causal3d", "runs/moving_mnist"]
FLOOR_PSNR = 26.0
FLOOR_RATIO = 24.0


def training_minutes(history: list[dict]) -> float:
    """The epochs' wall time of a run's metrics history (validation included, data loading not)."""
    return sum(r["seconds"] for r in history) / 60.0


def summarize(run_dir: Path, threads: int) -> dict:
    run = RunFolder(Path(run_dir))
    history = run.read_metrics()
    model, config = load_model(run.root)
    report = evaluate_run(run.root, device="cpu", threads=threads)
    recipe = config["recipe"]
    init_from = recipe["train"].get("init_from")
    return {
        "run": str(run.root),
        "recipe": f"train/{recipe['name']}.toml",
        "kind": config["kind"],
        "data": recipe["data"]["kind"],
        "params": sum(p.numel() for p in model.parameters()),
        "best_epoch": config.get("epoch"),
        "epochs": len(history),
        "steps": history[-1]["steps"] if history else config.get("steps"),
        "train_minutes": training_minutes(history),
        # train.init_from: the run this one started from, whose own training time comes on top
        "init_from": init_from,
        "init_minutes": training_minutes(RunFolder(Path(init_from)).read_metrics()) if init_from else 0.0,
        "max_minutes": recipe["train"].get("max_minutes"),
        "kl_weight": recipe["train"]["kl_weight"],
        "psnr": report["psnr"],
        "ssim": report["ssim"],
        "flicker": report["flicker"],
        "compression_ratio": report["compression_ratio"],
        "fps": report["fps"],
        "eval_threads": report["stream"]["threads"],
        "clips": report["clips"],
        "test_loss": report["test_loss"],
        "pictures": report["pictures"],
    }


def check_floors(rows: list[dict]) -> list[dict]:
    video = {r["kind"]: r for r in rows if r["data"] == "video"}
    checks = []
    frame = video.get("frame")
    if frame is not None:
        checks.append({"floor": f"FrameVAE PSNR >= {FLOOR_PSNR} dB at compression >= {FLOOR_RATIO}",
                       "value": f"{frame['psnr']:.2f} dB at {frame['compression_ratio']:.1f}",
                       "met": frame["psnr"] >= FLOOR_PSNR and frame["compression_ratio"] >= FLOOR_RATIO})
        for kind in ("temporal", "causal3d"):
            other = video.get(kind)
            if other is None:
                continue
            same_size = other["compression_ratio"] == frame["compression_ratio"]
            better_psnr, better_flicker = other["psnr"] > frame["psnr"], other["flicker"] < frame["flicker"]
            checks.append({
                "floor": f"{kind} beats the FrameVAE (same latent size) in PSNR or flicker",
                "value": (f"PSNR {other['psnr']:.3f} vs {frame['psnr']:.3f} dB, flicker "
                          f"{other['flicker']:.5f} vs {frame['flicker']:.5f}, compression "
                          f"{other['compression_ratio']:.1f} vs {frame['compression_ratio']:.1f}"),
                "met": same_size and (better_psnr or better_flicker)})
    return checks


def minutes_cell(row: dict) -> str:
    if not row.get("init_from"):
        return f"{row['train_minutes']:.1f}"
    return f"{row['train_minutes']:.1f} + {row['init_minutes']:.1f} ({row['init_from']})"


def markdown(rows: list[dict], checks: list[dict], notes: str) -> str:
    lines = ["# Video VAE quality: trained on this CPU, evaluated on clips never trained on", "",
             "Command: `.venv/bin/python benchmarks/video_quality.py` (evaluates each run's best checkpoint "
             "like `vae-deploy evaluate RUN_DIR`).",
             f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, torch {torch.__version__}, load "
             f"average {os.getloadavg()[0]:.1f} at the end (shared with other jobs).", "",
             "Real video: trained on bikes + bigbuckbunny, evaluated on all 120 frames of carphone_pristine "
             "(never trained on) at short side 128 (152x128), streamed through the step form in chunks, mu. "
             "carphone_pristine is the test clip of today's recipes (data.test; they validate on the "
             "held-out last 15% of their training clips), but the validation clip of a run whose recipe "
             "named it in data.valid: there it picked the best epoch, and the numbers are validation "
             "numbers. Moving MNIST: 8 20-frame test sequences (test-split digits, never trained on). "
             "Flicker: mean "
             "|(r_t - r_{t-1}) - (s_t - s_{t-1})| (vae_deploy.video.metrics); lower is steadier. "
             "Compression: uint8 source bytes over fp16 latent bytes. Frames/s: encode + decode, PyTorch "
             f"eager, {rows[0]['eval_threads'] if rows else 1} thread(s) for every run. Training time: the "
             "epochs' wall time (validation included, data loading not); a run started from another "
             "(train.init_from) shows its own minutes + those of the run it started from.", "",
             "| recipe | kind | params | PSNR dB | SSIM | flicker | compression | frames/s | steps | epochs "
             "(best) | training min |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['kind']} | {r['params']:,} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{r['flicker']:.5f} | {r['compression_ratio']:.1f} | {r['fps']:.1f} | {r['steps']} | "
                     f"{r['epochs']} ({r['best_epoch']}) | {minutes_cell(r)} |")
    lines += ["", "## Floors", ""]
    lines += [f"- {c['floor']}: {c['value']}: **{'met' if c['met'] else 'NOT met'}**" for c in checks]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", default=DEFAULT_RUNS)
    parser.add_argument("--notes", type=Path, help="markdown appended to the .md (run conditions)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every run's timed stream (the recipes' own may differ)")
    parser.add_argument("--out", type=Path, default=RESULTS / "video_quality")
    args = parser.parse_args()
    rows = [summarize(Path(run), args.threads) for run in args.runs]
    checks = check_floors(rows)
    notes = args.notes.read_text() if args.notes else ""
    write_json_atomic(args.out.with_suffix(".json"), {"runs": rows, "floors": checks, "notes": notes})
    write_text_atomic(args.out.with_suffix(".md"), markdown(rows, checks, notes))
    print(markdown(rows, checks, ""))


if __name__ == "__main__":
    main()
