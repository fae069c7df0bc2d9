"""`evaluate` for video models: whole test clips (never trained on) streamed through the model's step form.

Each clip (1, T, C, H, W) goes through `StreamEncoder` / `StreamDecoder` (vae_deploy.models.streaming) in
chunks of `chunk` frames, exactly as a deployed stream would run, so memory stays bounded by the chunk and
the model's state, whatever the clip length. Reconstructions decode mu (no sampling). Per clip:

    psnr, ssim, flicker   vae_deploy.video.metrics.VideoMetrics over the whole clip (flicker is defined there)
    compression_ratio     raw uint8 bytes of a frame over the fp16 bytes of its latent; a causal3d model's
                          latent frame stands for temporal_factor frames, so it counts 1/temporal_factor
    fps                   frames / seconds spent in encode + decode (PyTorch eager, this process's threads)
    side_by_side          an mp4, source left and reconstruction right (VideoSink: written atomically)
    strip                 a PNG of evenly spaced frames: the source row above the reconstruction row
    report_<name>/        report.html (video/report.py) beside source.mp4 and decoded.mp4: the two playing
                          together, the metrics and PSNR / SSIM / flicker per frame (also in the JSON,
                          "per_frame")
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae_deploy.models.streaming import StreamDecoder, StreamEncoder, VideoVAE
from vae_deploy.training import plots
from vae_deploy.video.metrics import VideoMetrics, compression_ratio
from vae_deploy.video.report import DECODED_VIDEO, SOURCE_VIDEO, write_report
from vae_deploy.video.sinks import VideoSink

STRIP_FRAMES = 8  # frames in the PNG strip


@dataclass
class EvalClip:
    name: str  # names the output files: side_by_side_<name>.mp4, strip_<name>.png
    video: torch.Tensor  # (1, T, C, H, W) float32 in [0, 1], H and W multiples of the spatial factor
    fps: float  # frame rate of the side-by-side video
    media: bool = True  # write the side-by-side video and the strip (metrics are measured either way)


@torch.no_grad()
def stream_reconstruct(model: VideoVAE, video: torch.Tensor, chunk: int
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """Feed `video` (1, T, C, H, W) through the step form `chunk` frames at a time.

    Yields (source frames, reconstructed frames, model seconds) as they complete, each (t, C, H, W), in order
    and together covering the T frames exactly (the frames a causal3d stream pads at the end are dropped).
    """
    model.eval()
    _, frames, _, height, width = video.shape
    s = model.spatial_factor
    encoder = StreamEncoder(model, 1, height, width)
    decoder = StreamDecoder(model, 1, height // s, width // s)
    done = 0  # source frames already matched with a reconstruction

    def run(step) -> tuple[torch.Tensor, float]:
        started = time.perf_counter()
        mu, _ = step()
        recon = decoder.push(mu)[0]
        return recon, time.perf_counter() - started

    device = next(model.parameters()).device
    for start in range(0, frames, chunk):
        recon, seconds = run(lambda start=start: encoder.push(video[:, start:start + chunk].to(device)))
        yield video[0, done:done + recon.shape[0]], recon, seconds
        done += recon.shape[0]
    recon, seconds = run(encoder.flush)
    recon = recon[:frames - done]  # drop the frames that only padded the last temporal group
    yield video[0, done:], recon, seconds


def _hwc(frames: torch.Tensor) -> np.ndarray:
    """(t, C, H, W) tensor -> (t, H, W, C) float32 numpy."""
    return frames.permute(0, 2, 3, 1).cpu().numpy()


def _rgb(frames: np.ndarray) -> np.ndarray:
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def latent_compression(model: VideoVAE, height: int, width: int) -> float:
    """compression_ratio for frames of this size: latent elements per frame = C * h * w / temporal_factor."""
    s = model.spatial_factor
    latent_per_frame = model.latent_channels * (height // s) * (width // s) / model.temporal_factor
    return compression_ratio((height, width, model.in_channels), latent_per_frame)


def evaluate_clip(model: VideoVAE, clip: EvalClip, out_dir: Path, chunk: int = 8,
                  strip_frames: int = STRIP_FRAMES) -> tuple[dict[str, Any], dict[str, Path]]:
    """Stream one clip through the model; returns (its metrics, {file name: path})."""
    _, frames, channels, height, width = clip.video.shape
    picks = set(np.linspace(0, frames - 1, min(strip_frames, frames)).round().astype(int).tolist())
    metrics = VideoMetrics()
    seconds = 0.0
    strip_src, strip_rec = [], []
    video_path = Path(out_dir) / f"side_by_side_{clip.name}.mp4"
    report_dir = Path(out_dir) / f"report_{clip.name}"
    index = 0
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(VideoSink(video_path, fps=clip.fps)) if clip.media else None
        pages = None
        if clip.media:
            report_dir.mkdir(exist_ok=True)
            pages = [stack.enter_context(VideoSink(report_dir / name, fps=clip.fps))
                     for name in (SOURCE_VIDEO, DECODED_VIDEO)]
        for source, recon, spent in stream_reconstruct(model, clip.video, chunk):
            seconds += spent
            if source.shape[0] == 0:  # a causal3d stream still filling its first temporal group
                continue
            src, rec = _hwc(source), _hwc(recon)
            metrics.update(src, rec)
            if sink is not None:
                sink.write_all(_rgb(np.concatenate([src, rec], axis=2)))
            if pages is not None:
                pages[0].write_all(_rgb(src))
                pages[1].write_all(_rgb(rec))
            for i in range(source.shape[0]):
                if index + i in picks:
                    strip_src.append(source[i].cpu())
                    strip_rec.append(recon[i].cpu())
            index += source.shape[0]
    summary = metrics.summary()
    report = {"name": clip.name, "frames": summary["frames"], "height": height, "width": width,
              "channels": channels, "psnr": summary["psnr"], "ssim": summary["ssim"],
              "flicker": summary["flicker"], "compression_ratio": latent_compression(model, height, width),
              "fps": frames / seconds if seconds > 0 else float("inf"), "model_seconds": seconds,
              "per_frame": metrics.per_frame()}
    if not clip.media:
        return report, {}
    strip_path = plots.save_reconstructions(Path(out_dir) / f"strip_{clip.name}.png", torch.stack(strip_src),
                                            torch.stack(strip_rec), per_row=len(strip_src))
    page = write_report(report_dir, _page_metrics(model, clip, report),
                        {"name": type(model).__name__, "kind": getattr(model, "kind", None)},
                        title=f"vae-deploy evaluate: {clip.name}")
    return report, {f"side_by_side_{clip.name}": video_path, f"strip_{clip.name}": strip_path,
                    f"report_{clip.name}": page}


def _page_metrics(model: VideoVAE, clip: EvalClip, report: dict[str, Any]) -> dict[str, Any]:
    """A clip's numbers under the keys of `run`'s metrics JSON, which the report page reads."""
    s = model.spatial_factor
    size = [report["width"], report["height"]]
    return {"source": f"test clip {clip.name} (never trained on)", "frames": report["frames"],
            "psnr": report["psnr"], "ssim": report["ssim"], "flicker": report["flicker"],
            "compression_ratio": report["compression_ratio"], "frames_per_s": report["fps"],
            "per_frame": report["per_frame"], "backend": f"torch eager ({torch.get_num_threads()} threads)",
            "model_kind": getattr(model, "kind", None), "fps": clip.fps, "source_size": size,
            "working_size": size, "model_size": size,
            "latent_shape": [model.latent_channels, report["height"] // s, report["width"] // s]}


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` torch threads (None: leave as is), then restore the previous count."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def evaluate_clips(model: VideoVAE, clips: list[EvalClip], out_dir: Path, chunk: int = 8,
                   threads: int | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """Every clip through `evaluate_clip`: (report entries, files written). Entries: psnr, ssim, flicker,
    compression_ratio, fps over all clips, "clips" (one dict per clip) and "stream" (how it was run).

    threads: torch threads while streaming (the recipe's train.threads: the speed is measured with the
    setting the run was tuned for); None keeps the process's setting.
    """
    reports, files = [], {}
    with torch_threads(threads):
        used_threads = torch.get_num_threads()
        for clip in clips:
            report, written = evaluate_clip(model, clip, out_dir, chunk)
            reports.append(report)
            files.update(written)
    frames = sum(r["frames"] for r in reports)
    seconds = sum(r["model_seconds"] for r in reports)
    # Top-level numbers (the evaluate command prints each as a row): frame-weighted means over the clips.
    report = {
        "psnr": sum(r["psnr"] * r["frames"] for r in reports) / frames,
        "ssim": sum(r["ssim"] * r["frames"] for r in reports) / frames,
        "flicker": sum(r["flicker"] * r["frames"] for r in reports) / frames,
        "compression_ratio": min(r["compression_ratio"] for r in reports),
        "fps": frames / seconds if seconds > 0 else float("inf"),
        "clips": reports,
        "stream": {"chunk": chunk, "threads": used_threads, "latent_channels": model.latent_channels,
                   "spatial_factor": model.spatial_factor, "temporal_factor": model.temporal_factor},
    }
    return report, files
