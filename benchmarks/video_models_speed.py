"""Frames per second of every video VAE's encoder and decoder, PyTorch eager on the CPU, at 128x128.

    .venv/bin/python benchmarks/video_models_speed.py [--rounds 5] [--frames 16] [--size 128]

Input: one clip (batch 1) of `frames` frames, the full-sequence `encode` / `decode` (which are one streaming
step from the zero state), the configs of the recipes in train/ (the trained models' sizes) plus the 3D
VAE's temporal downsampling variants, untrained weights (speed does not depend on them), under
torch.inference_mode. Each case is timed at torch's default thread count and at 1 thread; rounds alternate
over every (model, graph, threads) case, each round times `calls` calls after warm-up and keeps their
median, and the reported figure is the median over rounds, so a burst of load from another process on this
shared machine hits every case alike. Frames/s = frames / median seconds.

The issue's floor: the FrameVAE decoder runs 128x128 frames at >= 30 frames/s on this 2-core CPU.
Writes benchmarks/results/video_models_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vae_deploy.config_io import to_dict
from vae_deploy.files import write_json_atomic, write_text_atomic
from vae_deploy.models import build_model
from vae_deploy.runtime.benchmark import time_calls
from vae_deploy.training.config import load_recipe

RESULTS = Path(__file__).parent / "results"
FLOOR_FPS = 30.0  # FrameVAE decoder at 128x128 (the edge-speed floor)

ROOT = Path(__file__).resolve().parents[1]


def recipe_model(stem: str, **changes) -> tuple[str, dict]:
    """(kind, config) of the model of train/<stem>.toml, with `changes` applied."""
    recipe = load_recipe(ROOT / "train" / f"{stem}.toml")
    return recipe.model_kind, {**to_dict(recipe.model), **changes}


# name -> (kind, config): the three real-video recipes' models, plus the 3D VAE's temporal downsampling
# variants at the same compression ratio (latent channels scaled with the temporal factor).
MODELS = {
    "frame (train/video_frame.toml)": recipe_model("video_frame"),
    "temporal (train/video_transformer.toml)": recipe_model("video_transformer"),
    "causal3d t x1 (train/video_causal3d.toml)": recipe_model("video_causal3d"),
    "causal3d t x2, 8 ch": recipe_model("video_causal3d", temporal_downsample=2, latent_channels=8),
    "causal3d t x4, 16 ch": recipe_model("video_causal3d", temporal_downsample=4, latent_channels=16),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per case and round")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS / "video_models_speed")
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    thread_counts = sorted({default_threads, 1}, reverse=True)
    torch.manual_seed(0)
    models, inputs, info = {}, {}, {}
    video = torch.rand(1, args.frames, 3, args.size, args.size)
    with torch.inference_mode():
        for name, (kind, config) in MODELS.items():
            model = build_model(kind, config).eval()
            mu, _ = model.encode(video)
            models[name] = model
            inputs[name] = {"encoder": video, "decoder": mu}
            info[name] = {
                "kind": kind, "config": to_dict(model.config),
                "parameters": sum(p.numel() for p in model.parameters()),
                "latent_shape": list(mu.shape),
                "compression_ratio": video.numel() / (mu.numel() * 2),  # uint8 RGB vs fp16 latents
                "encoder_state_tensors": len(model.encoder_state_shapes(1, args.size, args.size)),
                "decoder_state_tensors": len(model.decoder_state_shapes(1, mu.shape[3], mu.shape[4])),
            }

    cases = [(name, graph, threads) for name in MODELS for graph in ("encoder", "decoder")
             for threads in thread_counts]
    per_round: dict[tuple, list[float]] = {case: [] for case in cases}
    load_before = os.getloadavg()
    started = time.time()
    with torch.inference_mode():
        for r in range(args.rounds):
            for case in cases:
                name, graph, threads = case
                torch.set_num_threads(threads)
                fn = models[name].encode if graph == "encoder" else models[name].decode
                x = inputs[name][graph]
                seconds = time_calls(lambda fn=fn, x=x: fn(x), args.calls, warmup=1)
                per_round[case].append(float(np.median(seconds)))
            print(f"round {r + 1}/{args.rounds} done ({time.time() - started:.0f} s)", flush=True)
    torch.set_num_threads(default_threads)

    results = []
    for case, values in per_round.items():
        name, graph, threads = case
        median = float(np.median(values))
        results.append({"model": name, "graph": graph, "threads": threads, "median_ms": median * 1e3,
                        "best_round_ms": min(values) * 1e3, "fps": args.frames / median})
        print(f"{name:42s} {graph:8s} threads={threads}: {args.frames / median:7.1f} frames/s "
              f"({median * 1e3:.1f} ms per {args.frames} frames)")
    frame_decoder = max(r["fps"] for r in results
                        if r["model"].startswith("frame") and r["graph"] == "decoder")
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": {"torch": torch.__version__},
        "clip": {"batch": 1, "frames": args.frames, "height": args.size, "width": args.size},
        "rounds": args.rounds, "calls_per_round": args.calls, "seconds": time.time() - started,
        "models": info, "results": results,
        "floor": {"what": f"frame decoder >= {FLOOR_FPS} frames/s at {args.size}x{args.size}",
                  "fps": frame_decoder, "met": frame_decoder >= FLOOR_FPS},
    }
    write_json_atomic(args.out.with_suffix(".json"), result)
    write_text_atomic(args.out.with_suffix(".md"), render(result))
    verdict = "met" if frame_decoder >= FLOOR_FPS else "NOT met"
    print(f"frame decoder: {frame_decoder:.1f} frames/s (floor {FLOOR_FPS}: {verdict}); "
          f"wrote {args.out.with_suffix('.json')} and .md")


def render(result: dict) -> str:
    clip, machine = result["clip"], result["machine"]
    threads = sorted({r["threads"] for r in result["results"]}, reverse=True)
    lines = [
        f"# Video VAE speed: PyTorch eager CPU, {clip['height']}x{clip['width']}, one clip of "
        f"{clip['frames']} frames",
        "",
        f"Command: `.venv/bin/python benchmarks/video_models_speed.py` ({result['rounds']} alternating "
        f"rounds, median of per-round medians of {result['calls_per_round']} calls).",
        f"Machine: {machine['cpus']} CPUs, {machine['platform']}, load average "
        f"{machine['loadavg_before'][0]:.1f} before / {machine['loadavg_after'][0]:.1f} after (shared with "
        f"other jobs). torch {result['versions']['torch']}.",
        "",
        "| model | params | latent (N, t, C, h, w) | compression | "
        + " | ".join(f"encoder fps ({t} thr)" for t in threads) + " | "
        + " | ".join(f"decoder fps ({t} thr)" for t in threads) + " |",
        "|---|---:|---|---:|" + "---:|" * (2 * len(threads)),
    ]
    fps = {(r["model"], r["graph"], r["threads"]): r["fps"] for r in result["results"]}
    for name, info in result["models"].items():
        cells = [f"{fps[(name, g, t)]:.1f}" for g in ("encoder", "decoder") for t in threads]
        lines.append(f"| {name} | {info['parameters']:,} | {tuple(info['latent_shape'])} | "
                     f"{info['compression_ratio']:.0f} | " + " | ".join(cells) + " |")
    floor = result["floor"]
    lines += [
        "",
        "Frames/s = clip frames / median seconds of the full-sequence `encode` or `decode` (batch 1).",
        "Compression = uint8 RGB bytes / fp16 latent bytes.",
        f"Floor, {floor['what']}: **{'met' if floor['met'] else 'NOT met'}** ({floor['fps']:.1f} frames/s at "
        f"the faster thread setting).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
