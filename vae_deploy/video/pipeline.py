"""Streaming a video through an exported model: read -> fit -> encode -> fp16 latents -> decode -> write.

Layout: source frames RGB uint8 (H, W, 3); model frames (T, C, H', W') float32 in [0, 1] (video/fit.py);
latents (t, C_lat, h, w) float16 (video/latent_codec.py).

Three entry points, one per command, built from the same parts so their results agree exactly:

    run_video(runner, source, options, outputs)      frames -> latents -> frames (`vae-deploy run`)
    encode_video(runner, source, options, path)      frames -> .vaelat           (`vae-deploy encode`)
    decode_latents(runner, path, outputs)            .vaelat -> frames           (`vae-deploy decode`)

`run` decodes the fp16-rounded latents, exactly what a .vaelat file stores, in the same chunks, so
`encode` then `decode` gives bit-identical frames. Reading, inference and writing overlap in three threads
joined by bounded queues (video/stages.py): memory stays flat however long the video.

Outputs are published atomically (video/outputs.py): each is written under a temporary name and renamed when
the run ends.
When the run fails (an unreadable frame, a full disk) nothing is published; when it is interrupted
(Ctrl-C) every output holds the frames done so far, as a complete, playable file, and the report says
`interrupted`. A source that ends early (a truncated file) is not an error: what decodes is processed and
the report gives the count the container promised (`expected_frames`, `truncated`).

Quality (PSNR, SSIM, flicker) and compression are measured at the model's working resolution: fitted frames
against their reconstruction, raw uint8 bytes of a working frame over the fp16 latent bytes per frame;
`psnr_source` compares the source frames with the output frames at the source resolution.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from vae_deploy.errors import ConfigError, DataError, VaeDeployError
from vae_deploy.runtime.latent_space import NORMALIZED, RAW
from vae_deploy.runtime.latents import LatentHeader, LatentReader, LatentWriter
from vae_deploy.runtime.runner import Runner
from vae_deploy.runtime.tile_plan import TileRequest
from vae_deploy.video.chunker import Chunker
from vae_deploy.video.fit import FitPolicy, plan_fit
from vae_deploy.video.latent_codec import LatentCodec, VideoModelInfo
from vae_deploy.video.metrics import VideoMetrics, compression_ratio, psnr_from_mse
from vae_deploy.video.model_open import CodecProvider, model_info, open_codec
from vae_deploy.video.outputs import check_output_path, latent_output, video_output
from vae_deploy.video.sinks import MIN_OUTPUT_FPS, VideoSink, check_output_fps
from vae_deploy.video.sources import FrameSource
from vae_deploy.video.writers import note

DEFAULT_CHUNK = 8  # frames per model call: long enough to amortize a call, short enough for low latency
DEFAULT_FPS = 25.0  # output frame rate when the source does not say (an image folder)
Progress = Callable[[int], None]  # called with the number of frames finished so far


@dataclass
class StreamOptions:
    chunk: int = DEFAULT_CHUNK  # frames per model call; a multiple of the model's temporal factor
    short_side: int | None = None  # working short side in pixels; None: the model's, 0: the source's size
    fit: str = "snap"  # how frames reach the model's multiple: "snap" or "pad" (video/fit.py)
    max_frames: int | None = None  # stop after this many frames (None: the whole source)
    fps: float | None = None  # output frame rate; None: the source's (DEFAULT_FPS when unknown)
    queue_chunks: int = 2  # chunks waiting between two stages: bounds memory, enough to keep all busy
    measure: bool = True  # quality metrics (PSNR, SSIM, flicker): about 2.5 ms per 160x128 frame here
    raw_latents: bool = False  # store the encoder's raw latents, not the diffusion model's normalized ones
    # spatial tiles (--tile, --tile-budget; runtime/tile_plan.py): auto tiles a frame only when one step of
    # it would not fit the budget; exact models give the untiled result within float rounding
    tile: TileRequest = field(default_factory=TileRequest)

    def __post_init__(self):
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"--max-frames must be at least 1, got {self.max_frames}")
        if self.fps is not None:
            check_output_fps(self.fps)


@dataclass
class VideoOutputs:
    video: Path | None = None  # the reconstruction at the source resolution
    side_by_side: Path | None = None  # source | reconstruction, side by side
    latents: Path | None = None  # the .vaelat container
    # The report page's videos (video/report.py): the frames the model saw (fitted, its working size, cropped
    # to the content) and its reconstruction at that same size, where the metrics are measured.
    model_input: Path | None = None
    model_output: Path | None = None
    # The codec of video and side_by_side: h264, hevc, av1 or ffv1; None: by suffix (video/writers.py).
    codec: str | None = None

    def paths(self) -> list[Path]:
        return [p for p in (self.video, self.side_by_side, self.latents, self.model_input, self.model_output)
                if p is not None]


@dataclass
class StreamReport:
    """What a run did; `to_dict` is the --metrics JSON."""

    source: str  # what was read, in words ("video clips/a.mp4", "camera 0")
    source_path: str | None = None  # the file or folder read (None: a camera or a stream)
    frames: int = 0
    seconds: float = 0.0  # wall time from the first frame read to the last frame written
    frames_per_s: float = 0.0
    chunk: int = DEFAULT_CHUNK
    chunk_latency_ms: dict[str, float] = field(default_factory=dict)  # model time per chunk: p50, p95
    psnr: float | None = None  # dB, working resolution
    ssim: float | None = None  # working resolution
    flicker: float | None = None  # working resolution (video/metrics.py)
    psnr_source: float | None = None  # dB, source frames vs output frames at the source resolution
    per_frame: dict[str, list] = field(default_factory=dict)  # psnr, ssim, flicker per frame (VideoMetrics)
    compression_ratio: float | None = None  # raw uint8 bytes of a working frame / fp16 latent bytes
    latent_bytes: int = 0
    backend: str = ""
    model_kind: str = ""
    model_fingerprint: str = ""  # Manifest.fingerprint: sha256 over the model files' "path:sha256" lines
    fps: float = DEFAULT_FPS
    source_size: list[int] = field(default_factory=list)  # (width, height)
    working_size: list[int] = field(default_factory=list)  # (width, height) of the working frame
    model_size: list[int] = field(default_factory=list)  # (width, height) fed to the model
    latent_shape: list[int] = field(default_factory=list)  # (C, h, w) of one latent frame
    fit: str = ""
    expected_frames: int | None = None  # what the container promised (file sources)
    truncated: bool = False  # the source ended before expected_frames
    interrupted: bool = False  # stopped by Ctrl-C: outputs hold the frames done
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: json_number(v) for k, v in asdict(self).items()}


def json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf (PSNR of identical frames) or nan
    if isinstance(value, dict):
        return {k: json_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_number(v) for v in value]
    return value


# ---------------------------------------------------------------- the stage items


@dataclass
class ReadChunk:
    fitted: np.ndarray  # (T, C, H, W) float32, the model's input
    sources: list[np.ndarray] | None  # the source frames, when an output or a metric needs them


@dataclass
class StageResult:
    chunk: ReadChunk | None  # None when decoding a file (no source frames)
    latents: np.ndarray | None  # fp16 (t, C_lat, h, w)
    recon: np.ndarray | None  # (T, C, H, W) float32, real frames only
    seconds: float  # model time for this chunk


def read_chunks(source: FrameSource, policy: FitPolicy, chunk: int, max_frames: int | None,
                 keep_sources: bool, count: list[int], first: int = 0) -> Iterator[ReadChunk]:
    """Fitted chunks of `chunk` frames, the first `first` frames longer (a model's first rule), the last
    maybe shorter (video/chunker.py); count[0] tracks frames read."""
    chunker: Chunker[tuple[np.ndarray, np.ndarray | None]] = Chunker(chunk, first)
    for frame in source:
        if max_frames is not None and count[0] >= max_frames:
            break
        count[0] += 1
        done = chunker.push((policy.fit(frame), frame if keep_sources else None))
        if done is not None:
            yield _as_chunk(done, keep_sources)
    rest = chunker.flush()
    if rest is not None:
        yield _as_chunk(rest, keep_sources)


def _as_chunk(frames: list[tuple[np.ndarray, np.ndarray | None]], keep_sources: bool) -> ReadChunk:
    """(fitted, source) pairs as one stage item."""
    return ReadChunk(np.stack([fitted for fitted, _ in frames]),
                  [source for _, source in frames] if keep_sources else None)


class _Latencies:
    def __init__(self):
        self.seconds: list[float] = []

    def summary(self) -> dict[str, float]:
        if not self.seconds:
            return {}
        ms = np.array(self.seconds) * 1e3
        return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "chunks": len(ms)}


# ---------------------------------------------------------------- writing results


class FrameWriter:
    """The consuming stage: output videos, latents and metrics, in stream order."""

    def __init__(self, policy: FitPolicy, video: VideoSink | None, side: VideoSink | None,
                 latents: LatentWriter | None, measure: bool, total_frames: int | None,
                 progress: Progress | None):
        self.policy, self.video, self.side, self.latents = policy, video, side, latents
        self.metrics = VideoMetrics() if measure else None
        self.total_frames = total_frames  # known only when decoding a file: trims the padded tail
        self.progress = progress
        self.frames = 0
        self.source_sq_err = 0.0
        self.source_values = 0
        self.latency = _Latencies()
        self.last_frame_at: float | None = None
        self.working: tuple[VideoSink | None, VideoSink | None] = (None, None)  # model input, output

    def __call__(self, coded: StageResult) -> None:
        self.latency.seconds.append(coded.seconds)
        if self.latents is not None and coded.latents is not None:
            self.latents.write(coded.latents)
        recon = coded.recon
        if recon is not None:
            if self.total_frames is not None:
                recon = recon[:max(0, self.total_frames - self.frames)]
            self._frames(coded.chunk, recon)
            n = recon.shape[0]
        else:
            n = coded.chunk.fitted.shape[0]
        self.frames += n
        if self.latents is not None:
            self.latents.header.frame_count = self.frames
        self.last_frame_at = time.perf_counter()
        if self.progress is not None:
            self.progress(self.frames)

    def _frames(self, chunk: ReadChunk | None, recon: np.ndarray) -> None:
        policy = self.policy
        if self.metrics is not None and chunk is not None:
            w, h = policy.content_size
            fitted = chunk.fitted[:, :, :h, :w].transpose(0, 2, 3, 1)
            self.metrics.update(fitted, recon[:, :, :h, :w].transpose(0, 2, 3, 1))
        self._working(chunk, recon)
        need_out = self.video is not None or self.side is not None or (
            self.metrics is not None and chunk is not None and chunk.sources is not None)
        if not need_out:
            return
        for i in range(recon.shape[0]):
            out = policy.unfit(recon[i])
            source = chunk.sources[i] if chunk is not None and chunk.sources is not None else None
            if self.video is not None:
                self.video.write(out)
            if self.side is not None and source is not None:
                self.side.write(np.concatenate([source, out], axis=1))
            if self.metrics is not None and source is not None:
                diff = source.astype(np.float32) - out.astype(np.float32)
                self.source_sq_err += float(np.dot(diff.ravel(), diff.ravel()))
                self.source_values += diff.size

    def _working(self, chunk: ReadChunk | None, recon: np.ndarray) -> None:
        """The model's input and output at its working size, as the metrics see them (the report's videos)."""
        w, h = self.policy.content_size
        for sink, frames in zip(self.working, (None if chunk is None else chunk.fitted, recon), strict=True):
            if sink is not None and frames is not None:
                sink.write_all(_rgb_hwc(frames[:, :, :h, :w]))

    def fill(self, report: StreamReport, started: float) -> None:
        report.frames = self.frames
        end = self.last_frame_at or started
        report.seconds = end - started
        report.frames_per_s = self.frames / report.seconds if report.seconds > 0 else 0.0
        report.chunk_latency_ms = self.latency.summary()
        if self.metrics is not None and self.metrics.frames:
            report.psnr, report.ssim = self.metrics.psnr, self.metrics.ssim
            report.flicker = self.metrics.flicker
            report.per_frame = self.metrics.per_frame()
        if self.source_values:
            report.psnr_source = psnr_from_mse(self.source_sq_err / self.source_values / 255.0**2)


def _rgb_hwc(frames: np.ndarray) -> np.ndarray:
    """(T, C, H, W) float32 in [0, 1] -> (T, H, W, 3) uint8 (a one-channel model's frames as grey)."""
    frames = np.clip(frames.transpose(0, 2, 3, 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


class _Interrupted(Exception):
    """Raised inside the outputs' block when an interrupt left nothing worth keeping."""


def _run_stream_stages(produce: Iterator, transform: Callable, writer: FrameWriter,
                       depth: int) -> tuple[bool, float]:
    """Run the stages; (interrupted, start time). An interrupt before any frame is written discards."""
    from vae_deploy.video.stages import run_stages

    started = time.perf_counter()
    try:
        run_stages(produce, transform, writer, depth)
    except KeyboardInterrupt:
        if writer.frames == 0:
            raise _Interrupted() from None
        return True, started
    return False, started


# ---------------------------------------------------------------- the three entry points


def stream_model_info(runner: Runner | CodecProvider, options: StreamOptions) -> VideoModelInfo:
    info = model_info(runner)
    info.check_chunk(options.chunk)
    return info


def plan_source_fit(info: VideoModelInfo, source: FrameSource, options: StreamOptions) -> FitPolicy:
    short = info.short_side if options.short_side is None else options.short_side
    return plan_fit(source.size, short, info.spatial_factor, info.channels, options.fit)


def fill_common(report: StreamReport, runner: Runner | CodecProvider, info: VideoModelInfo,
                 policy: FitPolicy, chunk: int, fps: float) -> None:
    report.backend, report.model_kind, report.model_fingerprint = runner.name, info.kind, info.fingerprint
    report.chunk, report.fps, report.fit = chunk, fps, policy.mode
    report.source_size, report.working_size = list(policy.source_size), list(policy.content_size)
    report.model_size = list(policy.model_size)
    lc, lh, lw = info.latent_shape(policy.model_size)
    report.latent_shape = [lc, lh, lw]
    w, h = policy.content_size
    report.compression_ratio = compression_ratio((h, w, info.channels), lc * lh * lw / info.temporal_factor)


def expected_frames(source: FrameSource, options: StreamOptions) -> int | None:
    """The frames a run will read: what the source says it holds (None when it does not say), capped by
    --max-frames."""
    expected = source.frame_count
    if expected is not None and options.max_frames is not None:
        expected = min(expected, options.max_frames)
    return expected


def progress_total(source: FrameSource, options: StreamOptions) -> int | None:
    """The total a progress bar counts to: the frames the source says it holds, capped by --max-frames
    (--max-frames alone when the source does not say; None when neither does)."""
    total = source.frame_count
    if options.max_frames is not None:
        total = min(total or options.max_frames, options.max_frames)
    return total


def finish_source(report: StreamReport, source: FrameSource, count: int, options: StreamOptions) -> None:
    expected = expected_frames(source, options)
    report.expected_frames = expected
    report.truncated = bool(expected is not None and count < expected and not report.interrupted)


def latent_header(info: VideoModelInfo, policy: FitPolicy, fps: float, chunk: int,
            latent_codec: LatentCodec) -> LatentHeader:
    return LatentHeader(model_fingerprint=info.fingerprint, model_kind=info.kind,
                        latent_shape=list(info.latent_shape(policy.model_size)), fps=fps, frame_count=0,
                        source_size=list(policy.source_size), working_size=list(policy.content_size),
                        fit=policy.to_dict(), chunk=chunk, latent_space=latent_codec.latent_space)


def output_fps(given: float | None, found: float | None, what: str) -> float:
    """The frame rate outputs are written at: --fps (checked by StreamOptions), else the source's or the
    latent file's, else DEFAULT_FPS. A found rate below what a video file holds (MIN_OUTPUT_FPS) counts as
    unknown, with one note line: FFmpeg would otherwise store 24 frames/s without a word."""
    if given is not None:
        return given
    if found is not None and found < MIN_OUTPUT_FPS:
        note(f"{what} gives a frame rate of {found:g}, below the {MIN_OUTPUT_FPS:g} frames/s a video file "
             f"holds: writing {DEFAULT_FPS:g} frames/s (--fps sets another)")
        return DEFAULT_FPS
    return found or DEFAULT_FPS


def source_path(source: FrameSource) -> str | None:
    return None if source.path is None else str(source.path)


def _for(tile: TileRequest, graph: str) -> TileRequest:
    """A command's tile request for the one graph it runs (encode: the encoder; decode: the decoder)."""
    return replace(tile, graphs=(graph,))


def latent_space_of(options: StreamOptions) -> str:
    return RAW if options.raw_latents else NORMALIZED


def run_video(runner: Runner | CodecProvider, source: FrameSource, options: StreamOptions | None = None,
              outputs: VideoOutputs | None = None, progress: Progress | None = None) -> StreamReport:
    """Encode and decode `source` chunk by chunk, carrying the state; write the outputs asked for."""
    options, outputs = options or StreamOptions(), outputs or VideoOutputs()
    info = stream_model_info(runner, options)
    for path, what in ((outputs.video, "the video"), (outputs.side_by_side, "the side-by-side video"),
                       (outputs.latents, "the latents"), (outputs.model_input, "the model's input video"),
                       (outputs.model_output, "the model's output video")):
        if path is not None:
            check_output_path(path, what, video=path is not outputs.latents)
    policy = plan_source_fit(info, source, options)
    fps = output_fps(options.fps, source.fps, source.description)
    latent_codec = open_codec(runner, info, latent_space_of(options), options.tile, policy.model_size)
    report = StreamReport(source=source.description, source_path=source_path(source))
    fill_common(report, runner, info, policy, options.chunk, fps)
    keep_sources = outputs.side_by_side is not None or options.measure
    count = [0]

    def transform(chunk: ReadChunk) -> StageResult:
        start = time.perf_counter()
        latents = latent_codec.encode(chunk.fitted)
        recon = latent_codec.decode(latents)[:chunk.fitted.shape[0]]  # drop frames decoded from padding
        return StageResult(chunk, latents, recon, time.perf_counter() - start)

    w, h = policy.source_size
    known = expected_frames(source, options)  # an image output refuses a longer source before any work
    with contextlib.ExitStack() as stack:
        video = side = latents = None
        if outputs.video is not None:
            video = stack.enter_context(video_output(outputs.video, fps, (w, h), known, source.description,
                                                      codec=outputs.codec))
        if outputs.side_by_side is not None:
            side = stack.enter_context(video_output(outputs.side_by_side, fps, (2 * w, h), known,
                                                     source.description, codec=outputs.codec))
        if outputs.latents is not None:
            header = latent_header(info, policy, fps, options.chunk, latent_codec)
            latents = stack.enter_context(latent_output(outputs.latents, header))
        writer = FrameWriter(policy, video, side, latents, options.measure, None, progress)
        writer.working = tuple(  # type: ignore[assignment]
            None if path is None else stack.enter_context(video_output(path, fps, policy.content_size))
            for path in (outputs.model_input, outputs.model_output))
        produce = read_chunks(source, policy, options.chunk, options.max_frames, keep_sources, count,
                               info.first_frames)
        try:
            report.interrupted, started = _run_stream_stages(produce, transform, writer, options.queue_chunks)
        except _Interrupted:
            raise KeyboardInterrupt from None
    writer.fill(report, started)
    finish_source(report, source, count[0], options)
    finish_outputs(report, outputs)
    return report


def encode_video(runner: Runner | CodecProvider, source: FrameSource, path: Path,
                 options: StreamOptions | None = None, progress: Progress | None = None) -> StreamReport:
    """Encode `source` into a .vaelat file at `path` (what `run` encodes, chunk for chunk)."""
    options = options or StreamOptions()
    info = stream_model_info(runner, options)
    check_output_path(path, "the latents")
    policy = plan_source_fit(info, source, options)
    fps = output_fps(options.fps, source.fps, source.description)
    latent_codec = open_codec(runner, info, latent_space_of(options), _for(options.tile, "encoder"),
                              policy.model_size)
    report = StreamReport(source=source.description, source_path=source_path(source))
    fill_common(report, runner, info, policy, options.chunk, fps)
    count = [0]

    def transform(chunk: ReadChunk) -> StageResult:
        start = time.perf_counter()
        latents = latent_codec.encode(chunk.fitted)
        return StageResult(chunk, latents, None, time.perf_counter() - start)

    with latent_output(path, latent_header(info, policy, fps, options.chunk, latent_codec)) as latents:
        writer = FrameWriter(policy, None, None, latents, False, None, progress)
        produce = read_chunks(source, policy, options.chunk, options.max_frames, False, count,
                               info.first_frames)
        try:
            report.interrupted, started = _run_stream_stages(produce, transform, writer, options.queue_chunks)
        except _Interrupted:
            raise KeyboardInterrupt from None
    writer.fill(report, started)
    finish_source(report, source, count[0], options)
    report.outputs = {"latents": str(path)}
    report.latent_bytes = Path(path).stat().st_size
    return report


def open_latents(path: Path | LatentReader, info: VideoModelInfo) -> LatentReader:
    """Open a .vaelat file made by this model (else one line saying which model made it), checked against
    what this model needs: a fit it knows, its channels, whole encoder chunks, one latent frame per
    temporal_factor source frames. An open LatentReader is checked as it is (not read again)."""
    reader = path if isinstance(path, LatentReader) else LatentReader(Path(path))
    path = reader.path
    header = reader.header
    if header.model_fingerprint != info.fingerprint:
        raise DataError(f"{path} was encoded by another model ({header.model_kind}, fingerprint "
                        f"{header.model_fingerprint[:12]}...); this {info.kind} model is "
                        f"{info.fingerprint[:12]}...: decode with the model that encoded it (--model)")
    try:
        policy = FitPolicy.from_dict(header.fit)
    except DataError as exc:
        raise DataError(f"{path} has a bad header: fit: {exc}") from exc
    if policy.channels != info.channels:
        raise DataError(f"{path} has a bad header: fit.channels is {policy.channels}, this model takes "
                        f"{info.channels}")
    f = info.temporal_factor
    if header.chunk % f:
        raise DataError(f"{path} has a bad header: chunk {header.chunk} is not a multiple of the model's "
                        f"temporal factor {f}")
    if header.latent_frames != info.latent_count(header.frame_count):
        raise DataError(f"{path} has a bad header: frame_count {header.frame_count} needs "
                        f"{info.latent_count(header.frame_count)} latent frames for this model, the file "
                        f"holds {header.latent_frames}")
    if header.latent_space == NORMALIZED and info.normalization is None:
        raise DataError(f"{path} has a bad header: its latents are normalized, but this model has no latent "
                        f"normalization")
    _check_sizes(path, header, policy, info)
    return reader


def _check_sizes(path: Path, header: LatentHeader, policy: FitPolicy, info: VideoModelInfo) -> None:
    """The sizes a header claims must be the ones `encode` would have recorded: its source size fitted by
    its own fit record (mode, short side) with this model's multiple gives its working and model sizes, and
    those give its latent shape. The checksum covers only the latents, so without this a 22 KB file could
    claim any output size (a 15000x15000 claim took 10 GB to decode); checked before anything is
    allocated."""
    w, h = header.source_size
    try:
        planned = plan_fit((w, h), policy.short_side, info.spatial_factor, info.channels, policy.mode)
    except VaeDeployError as exc:
        raise DataError(f"{path} has a bad header: {exc}") from exc
    if (planned.content_size, planned.model_size) != (policy.content_size, policy.model_size):
        asked = f"short side {policy.short_side}" if policy.short_side else "the source's own size"
        raise DataError(f"{path} has a bad header: a {w}x{h} source at {asked} ({policy.mode}) is fitted to "
                        f"{_size(planned.content_size)} ({_size(planned.model_size)} for the model), not the "
                        f"{_size(policy.content_size)} ({_size(policy.model_size)}) its fit record claims")
    if list(info.latent_shape(policy.model_size)) != list(header.latent_shape):
        raise DataError(f"{path} holds latents of shape {header.latent_shape}, but its fit record implies "
                        f"{list(info.latent_shape(policy.model_size))}: the file is inconsistent")


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def decode_latents(runner: Runner | CodecProvider, path: Path | LatentReader, outputs: VideoOutputs,
                   options: StreamOptions | None = None, progress: Progress | None = None) -> StreamReport:
    """Decode a .vaelat file (or an open LatentReader of one) to video; the frames equal what `run` writes
    for the same source."""
    options = options or StreamOptions()
    info = model_info(runner)
    if outputs.video is not None:
        check_output_path(outputs.video, "the video", video=True)
    reader = open_latents(path, info)
    path, header = reader.path, reader.header
    policy = FitPolicy.from_dict(header.fit)
    chunk = header.chunk or options.chunk
    info.check_chunk(chunk)
    fps = output_fps(options.fps, header.fps, str(path))
    latent_codec = open_codec(runner, info, header.latent_space, _for(options.tile, "decoder"),
                              policy.model_size)
    report = StreamReport(source=str(path), source_path=str(path))
    fill_common(report, runner, info, policy, chunk, fps)

    def transform(latents: np.ndarray) -> StageResult:
        start = time.perf_counter()
        recon = latent_codec.decode(latents)
        return StageResult(None, None, recon, time.perf_counter() - start)

    with contextlib.ExitStack() as stack:
        video = None
        if outputs.video is not None:
            video = stack.enter_context(video_output(outputs.video, fps, policy.source_size,
                                                      header.frame_count, str(path), hint="",
                                                      codec=outputs.codec))
        writer = FrameWriter(policy, video, None, None, False, header.frame_count, progress)
        try:
            chunks = reader.chunks(chunk // info.temporal_factor, info.first_latents)
            report.interrupted, started = _run_stream_stages(chunks, transform, writer, options.queue_chunks)
        except _Interrupted:
            raise KeyboardInterrupt from None
    writer.fill(report, started)
    report.expected_frames = header.frame_count
    report.latent_bytes = Path(path).stat().st_size
    finish_outputs(report, VideoOutputs(video=outputs.video))
    return report


def finish_outputs(report: StreamReport, outputs: VideoOutputs) -> None:
    named = {"video": outputs.video, "side_by_side": outputs.side_by_side, "latents": outputs.latents,
             "model_input": outputs.model_input, "model_output": outputs.model_output}
    report.outputs = {k: str(v) for k, v in named.items() if v is not None}
    if outputs.latents is not None and Path(outputs.latents).is_file():
        report.latent_bytes = Path(outputs.latents).stat().st_size
