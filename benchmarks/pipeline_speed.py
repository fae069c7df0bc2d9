"""The streaming pipeline's floors, measured side by side in one run on this CPU.

    .venv/bin/python benchmarks/pipeline_speed.py [--model DIR] [--rounds 5] [--long-frames 10000]

Model: the packaged default model (vae_deploy/assets/default_model) unless --model is given. Clip:
carphone_pristine (176x144, 120 frames), the default model's validation clip (never trained on, but it
selected the model's epochs and recipe, so its PSNR there is a validation number), fitted as `vae-deploy
run` fits it (working short side from the manifest). Sections:

1. parity: the exported streaming graphs on ort-cpu, fed in chunks of 1, 4 and 8 frames with the state
   carried, against the PyTorch reference's full-sequence output (the folder's reference/ checkpoint):
   max abs error of mu and of the decoded frames (floor: <= 1e-4, fp32).
2. backends: one chunk (8 frames) through encode -> fp16 latents -> decode (video/latent_codec.py, the
   pipeline's own code), ONNX Runtime CPU in several SessionOptions settings against PyTorch eager at 1 and 2
   threads.
   Rounds alternate over every case; each round keeps the median of `calls` timed calls after a warm-up;
   the figure is the median over rounds (floor: best ort-cpu >= 1.5x faster than best torch). The same
   model exported with export/cpu-int8.toml (ONNX Runtime static quantization, calibrated on the training
   clips) runs beside them: the fp32 graphs against eager fp32, and the int8 graphs against eager fp32,
   are reported as two rows of that floor; the int8 row counts as met only when the int8 model also
   keeps the PSNR floor on every carphone clip (speed bought with quality below the floor is no speed-up
   of the same model). The conv work per chunk (FLOPs of the PyTorch model's convolutions, counted by
   torch.utils.flop_counter) turns each time into GFLOP/s, which shows how close fp32 already is to this
   CPU's peak.
3. pipeline: `run_video` (the code behind `vae-deploy run --out --metrics`: reading, fitting, encoding,
   decoding, writing the mp4, PSNR/SSIM/flicker) on the whole clip, against pure inference of the same
   pre-fitted chunks in a loop, both on ort-cpu with the pipeline's default options (runner_options);
   alternating rounds, medians (floor: the pipeline adds <= 20%). Also the end-to-end frames/s and
   quality (floors: >= 25 frames/s, compression >= 24x), and one `vae-deploy run` process
   timed from the shell's point of view (model loading included).
4. quality on the validation clips: `run --metrics` on every sample clip no recipe trains on
   (HELD_OUT_CLIPS: carphone_pristine, which selected the default model's epochs and recipe, and
   carphone_distorted, the same scene after lossy compression); the PSNR floor (>= 26 dB) is checked on the
   worst (fp32 model); the int8 model's quality is reported beside it.
5. memory: the clip looped to `long_frames` frames through `run_video` with an mp4 and a latent file
   written; resident set size (psutil) at frame 1,000 and at the last frame (floor: grows < 50 MB).

Writes benchmarks/results/pipeline_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vae_deploy.files import write_json_atomic, write_text_atomic  # noqa: E402
from vae_deploy.runtime import load_runner, read_manifest  # noqa: E402
from vae_deploy.runtime.benchmark import time_calls  # noqa: E402
from vae_deploy.video.default_model import DEFAULT_MODEL_DIR, DEMO_CLIP  # noqa: E402
from vae_deploy.video.fit import plan_fit  # noqa: E402
from vae_deploy.video.latent_codec import LatentCodec, VideoModelInfo  # noqa: E402
from vae_deploy.video.model_open import runner_options  # noqa: E402
from vae_deploy.video.pipeline import StreamOptions, VideoOutputs, run_video  # noqa: E402
from vae_deploy.video.samples import sample_video_path  # noqa: E402
from vae_deploy.video.sources import FrameSource, open_source  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FLOORS = {"parity_max_abs": 1e-4, "ort_speedup": 1.5, "pipeline_overhead": 0.20, "frames_per_s": 25.0,
          "psnr": 26.0, "compression_ratio": 24.0, "rss_growth_mb": 50.0}
CHUNK = 8
# Sample clips no recipe trains on (train/video_*.toml and train/default_*.toml train on bikes +
# bigbuckbunny); the PSNR floor is checked on the worst of them. Not unseen in every sense: carphone_pristine
# is the default model's validation clip (it selected its epochs and recipe) and carphone_distorted is the
# same scene after lossy compression.
HELD_OUT_CLIPS = ("carphone_pristine", "carphone_distorted")
# name -> (backend, runner options). ORT: threads 0 is ORT's choice (one per core), the runtime's default.
BACKEND_CASES = {
    "ort-cpu (default: threads=0, spinning)": ("ort-cpu", {}),
    "ort-cpu threads=1": ("ort-cpu", {"threads": 1}),
    "ort-cpu threads=2, no spinning": ("ort-cpu", {"threads": 2, "spinning": False}),
    "ort-cpu threads=2, optimization=extended": ("ort-cpu", {"threads": 2, "optimization": "extended"}),
    "torch eager threads=1": ("torch", {"threads": 1}),
    "torch eager threads=2": ("torch", {"threads": 2}),
}
# The int8 export of the same checkpoint (export/cpu-int8.toml), timed in the same rounds.
INT8_CASES = {
    "ort-cpu int8 threads=1": ("ort-cpu", {"threads": 1}),
    "ort-cpu int8 threads=2, no spinning": ("ort-cpu", {"threads": 2, "spinning": False}),
}
INT8_PROFILE = ROOT / "export" / "cpu-int8.toml"
# For context, not a floor: the per-frame conv models run their eager convs channels-last (oneDNN's fast
# path, models/frame.py); this case times the plain NCHW eager path that a TAESD-style comparison uses.
NCHW_CASES = {f"torch eager threads={n}, plain NCHW (context)": n for n in (1, 2)}


class LoopedClip(FrameSource):
    """A real clip played again and again up to `total` frames: a long video without a long file."""

    def __init__(self, frames: np.ndarray, total: int, fps: float):
        self.frames, self.total = frames, total
        self.description, self.fps, self.frame_count = f"{DEMO_CLIP} looped", fps, total
        self.size = (frames.shape[2], frames.shape[1])

    def __iter__(self):
        for i in range(self.total):
            yield self.frames[i % len(self.frames)]


def fitted_clip(model_dir: Path, frames: np.ndarray) -> np.ndarray:
    """The clip as the pipeline feeds it: (T, C, H, W) float32 at the working resolution."""
    info = VideoModelInfo.from_manifest(read_manifest(model_dir))
    policy = plan_fit((frames.shape[2], frames.shape[1]), info.short_side, info.spatial_factor, info.channels)
    return np.stack([policy.fit(f) for f in frames])


def parity(model_dir: Path, clip: np.ndarray) -> dict:
    info = VideoModelInfo.from_manifest(read_manifest(model_dir))
    f = info.temporal_factor
    video = clip[None, :24 - 24 % f]
    with load_runner(model_dir, "torch") as ref:
        ref_mu, _ = ref.encode(video)
        ref_frames = ref.decode(ref_mu)
    rows = {}
    with load_runner(model_dir, "ort-cpu") as runner:
        for chunk in (1, 4, 8):
            row = {}
            if chunk % f == 0:
                stream = runner.open_stream()
                mu = np.concatenate([stream.encode(video[:, i:i + chunk])[0]
                                     for i in range(0, video.shape[1], chunk)], axis=1)
                row["encoder_mu_max_abs"] = float(np.abs(mu - ref_mu).max())
            stream = runner.open_stream()
            frames = np.concatenate([stream.decode(ref_mu[:, i:i + chunk])
                                     for i in range(0, ref_mu.shape[1], chunk)], axis=1)
            row["decoder_max_abs"] = float(np.abs(frames - ref_frames).max())
            rows[str(chunk)] = row
    worst = max(v for row in rows.values() for v in row.values())
    return {"frames": int(video.shape[1]), "chunks": rows, "max_abs": worst}


def export_int8(model_dir: Path, out_dir: Path) -> Path:
    """The model's reference checkpoint exported with export/cpu-int8.toml (parity judged on real frames)."""
    from vae_deploy.export import export_model, load_profile
    from vae_deploy.export.real_inputs import real_inputs_for

    manifest = read_manifest(model_dir)
    real = real_inputs_for(manifest.kind, 16, "auto", None, manifest.graph("encoder"))
    _, report = export_model(model_dir / "reference", out_dir, load_profile(INT8_PROFILE), real_inputs=real)
    if not report.passed:
        raise SystemExit(f"the int8 export failed its parity check: {report.failures()}")
    return out_dir


def conv_gflop_per_chunk(model_dir: Path, chunk: np.ndarray) -> float:
    """GFLOP of the convolutions of one encode + decode of `chunk` by the reference PyTorch model, as
    torch.utils.flop_counter counts them (2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vae_deploy.models.checkpoint import load_model

    model, _ = load_model(model_dir / "reference")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.decode(model.encode(torch.from_numpy(chunk[None]))[0])
    counts = counter.get_flop_counts()["Global"]  # aten op -> FLOPs (2 per multiply-add)
    return sum(n for op, n in counts.items() if "convolution" in str(op)) / 1e9


def backends(model_dir: Path, clip: np.ndarray, rounds: int, calls: int, int8_dir: Path | None) -> dict:
    import torch

    from vae_deploy.models.frame import eager_channels_last

    chunk = clip[:CHUNK]
    cases = {name: (model_dir, backend, opts) for name, (backend, opts) in BACKEND_CASES.items()}
    if read_manifest(model_dir).kind in ("frame", "temporal"):
        cases.update({name: (model_dir, "torch", {"threads": n}) for name, n in NCHW_CASES.items()})
    if int8_dir is not None:
        cases.update({name: (int8_dir, backend, opts) for name, (backend, opts) in INT8_CASES.items()})
    per_round: dict[str, list[float]] = {name: [] for name in cases}
    with contextlib.ExitStack() as stack:
        runners = {name: stack.enter_context(load_runner(folder, backend, **opts))
                   for name, (folder, backend, opts) in cases.items()}
        for _ in range(rounds):
            for name, runner in runners.items():
                if runner.name == "torch":
                    torch.set_num_threads(cases[name][2]["threads"])  # a global: set before each case
                with eager_channels_last(name not in NCHW_CASES):
                    latent_codec = LatentCodec(runner)
                    seconds = time_calls(lambda c=latent_codec: c.decode(c.encode(chunk)), calls, warmup=1)
                per_round[name].append(float(np.median(seconds)))
    ms = {name: float(np.median(v)) * 1e3 for name, v in per_round.items()}
    ort = {k: v for k, v in ms.items() if k.startswith("ort") and k not in INT8_CASES}
    int8 = {k: v for k, v in ms.items() if k in INT8_CASES}
    eager = {k: v for k, v in ms.items() if k.startswith("torch") and k not in NCHW_CASES}
    nchw = {k: v for k, v in ms.items() if k in NCHW_CASES}
    best_ort, best_torch = min(ort, key=ort.get), min(eager, key=eager.get)
    best_int8 = min(int8, key=int8.get) if int8 else None
    gflop = conv_gflop_per_chunk(model_dir, chunk)
    return {"chunk_frames": CHUNK, "frame_size": [int(clip.shape[3]), int(clip.shape[2])],
            "ms_per_chunk": ms, "frames_per_s": {k: CHUNK / (v / 1e3) for k, v in ms.items()},
            "conv_gflop_per_chunk": gflop, "conv_gflop_per_s": {k: gflop / (v / 1e3) for k, v in ms.items()},
            "best_ort": best_ort, "best_torch": best_torch, "speedup": eager[best_torch] / ort[best_ort],
            "best_int8": best_int8,
            "speedup_int8": eager[best_torch] / int8[best_int8] if int8 else None,
            # best against best, as for the floor's ratio (threads chosen per side)
            "speedup_vs_nchw_eager": min(nchw.values()) / ort[best_ort] if nchw else None,
            "speedup_default_ort": eager[best_torch] / ms["ort-cpu (default: threads=0, spinning)"]}


def pipeline(model_dir: Path, clip_path: Path, clip: np.ndarray, rounds: int, out_dir: Path) -> dict:
    """Rounds alternate: pure inference, `run --out` and `run --out --metrics` (quality measured)."""
    seconds: dict[str, list[float]] = {"pure": [], "out": [], "out+metrics": []}
    reports = {}
    with load_runner(model_dir, "ort-cpu", **runner_options("ort-cpu")) as runner:
        latent_codec = LatentCodec(runner)
        latent_codec.decode(latent_codec.encode(clip[:CHUNK]))  # warm-up: first-call allocations
        for _ in range(rounds):
            latent_codec = LatentCodec(runner)
            start = time.perf_counter()
            for i in range(0, clip.shape[0], CHUNK):
                latent_codec.decode(latent_codec.encode(clip[i:i + CHUNK]))
            seconds["pure"].append(time.perf_counter() - start)
            for name, measure in (("out", False), ("out+metrics", True)):
                with open_source(clip_path) as source:
                    report = run_video(runner, source, StreamOptions(chunk=CHUNK, measure=measure),
                                       VideoOutputs(video=out_dir / "recon.mp4"))
                seconds[name].append(report.seconds)
                reports[name] = report.to_dict()
    median = {k: float(np.median(v)) for k, v in seconds.items()}
    frames = reports["out"]["frames"]
    return {"frames": frames, "median_seconds": median, "rounds_seconds": seconds,
            "frames_per_s": {k: frames / v for k, v in median.items()},
            "overhead": median["out"] / median["pure"] - 1.0,
            "overhead_with_metrics": median["out+metrics"] / median["pure"] - 1.0,
            "report": reports["out+metrics"]}


def held_out_quality(model_dir: Path) -> dict:
    """`run --metrics` quality (working resolution) on every sample clip no recipe trains on."""
    rows = {}
    with load_runner(model_dir, "ort-cpu", **runner_options("ort-cpu")) as runner:
        for name in HELD_OUT_CLIPS:
            with open_source(sample_video_path(name)) as source:
                report = run_video(runner, source, StreamOptions(chunk=CHUNK, measure=True), VideoOutputs())
            measured = report.to_dict()
            rows[name] = {k: measured[k] for k in ("frames", "psnr", "ssim", "flicker", "psnr_source")}
    return rows


def cli_run(model_dir: Path, clip_path: Path, out_dir: Path) -> dict:
    metrics = out_dir / "cli_metrics.json"
    start = time.perf_counter()
    command = [sys.executable, "-m", "vae_deploy", "run", str(clip_path), "--model", str(model_dir),
               "--out", str(out_dir / "cli.mp4"), "--metrics", str(metrics), "-q"]
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"vae-deploy run failed: {result.stderr}")
    data = json.loads(metrics.read_text())
    return {"process_seconds": wall, "frames": data["frames"], "frames_per_s": data["frames_per_s"],
            "process_frames_per_s": data["frames"] / wall, "psnr": data["psnr"], "ssim": data["ssim"],
            "stdout": result.stdout.strip().splitlines()}


def memory(model_dir: Path, frames: np.ndarray, fps: float, total: int, out_dir: Path) -> dict:
    import psutil

    process = psutil.Process()
    marks = {1000: None, total: None}
    samples = []

    def progress(done: int) -> None:
        if done % 500 < CHUNK or done == total:
            samples.append((done, process.memory_info().rss))
        for mark in marks:
            if marks[mark] is None and done >= mark:
                marks[mark] = process.memory_info().rss

    with load_runner(model_dir, "ort-cpu", **runner_options("ort-cpu")) as runner:
        outputs = VideoOutputs(video=out_dir / "long.mp4", latents=out_dir / "long.vaelat")
        report = run_video(runner, LoopedClip(frames, total, fps), StreamOptions(chunk=CHUNK), outputs,
                           progress)
    growth = (marks[total] - marks[1000]) / 2**20
    return {"frames": report.frames, "seconds": report.seconds, "frames_per_s": report.frames_per_s,
            "rss_mb_at_1000": marks[1000] / 2**20, f"rss_mb_at_{total}": marks[total] / 2**20,
            "rss_growth_mb": growth, "samples_mb": [(d, r / 2**20) for d, r in samples]}


def markdown(r: dict) -> str:
    b, p, m, par, c = r["backends"], r["pipeline"], r.get("memory"), r["parity"], r["cli"]
    rep = p["report"]
    met = r["floors_met"]

    def ok(key):
        return "**met**" if met[key] else "**NOT met**"

    lines = [
        "# Streaming pipeline: parity, speed, overhead, memory (benchmarks/pipeline_speed.py)",
        "",
        f"Command: `{r['command']}`. Model: `{r['model']}` ({r['model_kind']}, fingerprint "
        f"{r['model_fingerprint'][:12]}...), "
        f"clip {DEMO_CLIP} (the validation clip: selected the default model's epochs and recipe, never "
        f"trained on) at {rep['working_size'][0]}x{rep['working_size'][1]}.",
        f"Machine: {r['machine']['cpus']} CPUs, {r['machine']['platform']}, load average "
        f"{r['machine']['load_before'][0]:.1f} before / {r['machine']['load_after'][0]:.1f} after "
        f"(shared with other jobs). onnxruntime {r['machine']['onnxruntime']}, "
        f"torch {r['machine']['torch']}.",
        "",
        "## Floors",
        "",
        "| floor | measured | |",
        "|---|---:|---|",
        f"| parity, ort-cpu streamed (chunks 1/4/8) vs PyTorch full sequence, max abs <= 1e-4 | "
        f"{par['max_abs']:.2e} | {ok('parity_max_abs')} |",
        f"| `vae-deploy run` end to end >= 25 frames/s (with --out and --metrics) | "
        f"{p['frames_per_s']['out+metrics']:.1f} | {ok('frames_per_s')} |",
        f"| PSNR >= 26 dB on the carphone clips (validation: carphone_pristine selected the default model's "
        f"epochs and recipe; working resolution; the worst of "
        f"{len(r['held_out'])}) | {min(q['psnr'] for q in r['held_out'].values()):.2f} dB | {ok('psnr')} |",
        f"| latents >= 24x smaller than raw RGB | {rep['compression_ratio']:.1f}x | "
        f"{ok('compression_ratio')} |",
        f"| ort-cpu >= 1.5x faster than PyTorch eager (same model, chunk of {b['chunk_frames']}): fp32 "
        f"graphs vs eager fp32 | {b['speedup']:.2f}x | {ok('ort_speedup')} |",
        *([f"| the same, int8 graphs (export/cpu-int8.toml; met only if their worst PSNR on those clips, "
           f"{min(q['psnr'] for q in r['held_out_int8'].values()):.2f} dB, is >= 26 too) vs eager fp32 | "
           f"{b['speedup_int8']:.2f}x | {ok('ort_speedup_int8')} |"]
          if b["speedup_int8"] is not None else []),
        f"| pipeline (`run --out`) adds <= 20% over pure inference | {100 * p['overhead']:+.1f}% | "
        f"{ok('pipeline_overhead')} |",
    ]
    if m:
        lines.append(f"| RSS grows < 50 MB from frame 1,000 to frame {m['frames']:,} | "
                     f"{m['rss_growth_mb']:+.1f} MB | {ok('rss_growth_mb')} |")
    lines += [
        "",
        f"## Backends: one chunk of {b['chunk_frames']} frames at {b['frame_size'][0]}x{b['frame_size'][1]}, "
        "encode -> fp16 -> decode",
        "",
        "| backend | ms / chunk | frames/s | conv GFLOP/s |",
        "|---|---:|---:|---:|",
    ]
    for name, ms in b["ms_per_chunk"].items():
        lines.append(f"| {name} | {ms:.1f} | {b['frames_per_s'][name]:.1f} | "
                     f"{b['conv_gflop_per_s'][name]:.0f} |")
    lines += [
        "",
        f"Best ort-cpu fp32 ({b['best_ort']}) vs best PyTorch eager ({b['best_torch']}): "
        f"{b['speedup']:.2f}x; ort-cpu with the runtime's default settings: {b['speedup_default_ort']:.2f}x."
        + (f" Against the best plain-NCHW eager case (context): {b['speedup_vs_nchw_eager']:.2f}x."
           if b["speedup_vs_nchw_eager"] else "")
        + (f" Best int8 ({b['best_int8']}) vs best eager fp32: {b['speedup_int8']:.2f}x."
           if b["best_int8"] else ""),
        f"Conv work: {b['conv_gflop_per_chunk']:.1f} GFLOP per chunk (encode + decode, counted on the "
        f"PyTorch model), nearly all of the model's arithmetic; GFLOP/s is that over the time per chunk.",
        "",
        f"## Pipeline against pure inference (whole clip, ort-cpu with the pipeline's default "
        f"{r['pipeline_runner_options']}, median of {len(p['rounds_seconds']['pure'])} rounds)",
        "",
        "| | seconds | frames/s | vs pure inference |",
        "|---|---:|---:|---:|",
        f"| pure inference (encode -> fp16 -> decode of pre-fitted chunks) | "
        f"{p['median_seconds']['pure']:.3f} | {p['frames_per_s']['pure']:.1f} | |",
        f"| `run --out recon.mp4` (read, fit, infer, write) | {p['median_seconds']['out']:.3f} | "
        f"{p['frames_per_s']['out']:.1f} | {100 * p['overhead']:+.1f}% |",
        f"| `run --out recon.mp4 --metrics m.json` (+ PSNR, SSIM, flicker) | "
        f"{p['median_seconds']['out+metrics']:.3f} | {p['frames_per_s']['out+metrics']:.1f} | "
        f"{100 * p['overhead_with_metrics']:+.1f}% |",
        "",
        f"Quality at the working resolution: PSNR {rep['psnr']:.2f} dB, SSIM {rep['ssim']:.4f}, flicker "
        f"{rep['flicker']:.4f}; PSNR at the source resolution {rep['psnr_source']:.2f} dB. Chunk latency "
        f"(model time per chunk of {CHUNK}): p50 {rep['chunk_latency_ms']['p50']:.1f} ms, p95 "
        f"{rep['chunk_latency_ms']['p95']:.1f} ms.",
        f"- one `vae-deploy run --out --metrics` process: {c['frames_per_s']:.1f} frames/s as it reports, "
        f"{c['process_seconds']:.2f} s wall for the process including start-up and model loading",
        "",
        "## Quality on the clips no recipe trains on (`run --metrics`, working resolution): "
        "carphone_pristine is the validation clip (selected the default model's epochs and recipe), "
        "carphone_distorted the same scene after lossy compression",
        "",
        "| clip | frames | PSNR dB | SSIM | flicker | PSNR at the source size dB |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {name} | {q['frames']} | {q['psnr']:.2f} | {q['ssim']:.4f} | {q['flicker']:.4f} | "
          f"{q['psnr_source']:.2f} |" for name, q in r["held_out"].items()),
        *(f"| {name}, int8 graphs | {q['frames']} | {q['psnr']:.2f} | {q['ssim']:.4f} | "
          f"{q['flicker']:.4f} | {q['psnr_source']:.2f} |" for name, q in r.get("held_out_int8", {}).items()),
        "",
        "## Parity (max abs error, fp32)",
        "",
        "| chunk | encoder mu | decoder frames |",
        "|---:|---:|---:|",
    ]
    for chunk, row in par["chunks"].items():
        enc = f"{row['encoder_mu_max_abs']:.2e}" if "encoder_mu_max_abs" in row else "-"
        lines.append(f"| {chunk} | {enc} | {row['decoder_max_abs']:.2e} |")
    if m:
        lines += ["", f"## Memory over {m['frames']:,} frames (looped clip, mp4 + latents written)", "",
                  f"RSS at frame 1,000: {m['rss_mb_at_1000']:.1f} MB; at frame {m['frames']:,}: "
                  f"{m['rss_mb_at_1000'] + m['rss_growth_mb']:.1f} MB; {m['frames_per_s']:.1f} frames/s "
                  f"over the long run."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5, help="timed chunks per backend case and round")
    parser.add_argument("--long-frames", type=int, default=10_000, help="0 skips the memory section")
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline_speed")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 export and its cases")
    args = parser.parse_args()

    import onnxruntime
    import torch

    manifest = read_manifest(args.model)
    clip_path = sample_video_path(DEMO_CLIP)
    with open_source(clip_path) as source:
        frames, fps = source.read(), source.fps
    clip = fitted_clip(args.model, frames)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        int8_dir = None if args.no_int8 else export_int8(args.model, out_dir / "int8")
        result = {
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "model": str(args.model), "model_kind": manifest.kind, "model_fingerprint": manifest.fingerprint,
            "parity": parity(args.model, clip),
            "backends": backends(args.model, clip, args.rounds, args.calls, int8_dir),
            "pipeline_runner_options": runner_options("ort-cpu"),
            "pipeline": pipeline(args.model, clip_path, clip, args.rounds, out_dir),
            "cli": cli_run(args.model, clip_path, out_dir),
            "held_out": held_out_quality(args.model),
            "held_out_int8": held_out_quality(int8_dir) if int8_dir else {},
        }
        if args.long_frames:
            result["memory"] = memory(args.model, frames, fps, args.long_frames, out_dir)
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "load_before": load_before,
                         "load_after": os.getloadavg(), "onnxruntime": onnxruntime.__version__,
                         "torch": torch.__version__}
    rep = result["pipeline"]["report"]
    met = {"parity_max_abs": result["parity"]["max_abs"] <= FLOORS["parity_max_abs"],
           "ort_speedup": result["backends"]["speedup"] >= FLOORS["ort_speedup"],
           "ort_speedup_int8": ((result["backends"]["speedup_int8"] or 0) >= FLOORS["ort_speedup"]
                                and min(q["psnr"] for q in result["held_out_int8"].values())
                                >= FLOORS["psnr"]),
           "pipeline_overhead": result["pipeline"]["overhead"] <= FLOORS["pipeline_overhead"],
           "frames_per_s": result["pipeline"]["frames_per_s"]["out+metrics"] >= FLOORS["frames_per_s"],
           "psnr": min(q["psnr"] for q in result["held_out"].values()) >= FLOORS["psnr"],
           "compression_ratio": rep["compression_ratio"] >= FLOORS["compression_ratio"] - 1e-9}
    if "memory" in result:
        met["rss_growth_mb"] = result["memory"]["rss_growth_mb"] < FLOORS["rss_growth_mb"]
    result["floors"], result["floors_met"] = FLOORS, met
    write_json_atomic(args.out.with_suffix(".json"), result)
    text = markdown(result)
    write_text_atomic(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
