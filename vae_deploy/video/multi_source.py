"""Several sources through one model in shared calls: `run_videos`, the batched form of pipeline.run_video.

Each source is a lane: its own fitting, chunks (video/chunker.py), LatentRules (video/latent_codec.py:
the first chunk's rule, the last chunk's padding, the latent space, the fp16 rounding), outputs, metrics
and report, and one slot of a single BatchedStreams (runtime/batched_stream.py). A round reads the next
chunk of every live lane, encodes them in shared calls, rounds each lane's latents to fp16 exactly as
LatentCodec does, decodes those rounded latents in shared calls and writes each lane's frames to its own
outputs. Reading (one thread, round-robin over the lanes), the model (the main thread) and writing (one
thread) overlap as in run_video (video/stages.py), so memory stays flat however long the sources.

Lanes end on their own. A source that ends (a shorter clip, a truncated file) frees its slot and publishes
its outputs while the others go on. A lane whose reading, rounding or writing fails is marked failed and its
outputs are discarded, as run_video discards a failed run's; the others go on. A failed shared call (the
model itself) ends every lane still running, as an error ends run_video. Ctrl-C / SIGTERM: every lane with
frames done keeps them as complete outputs (reported `interrupted`); when no lane has any, nothing is
written and the interrupt propagates, as in run_video.

Per source, the frames equal run_video's on that source alone: the same chunks, padding and fp16 latents,
and the batched calls compute each row as alone (bit for bit on ort-cpu with one intra-op thread;
docs/architecture.md, "Batched streams"; tests/video/test_multi_source.py measures it).

Spatial tiles (--tile, --tile-budget) combine with it: when the request tiles, the slots are those of a
TiledBatchedStreams (runtime/tiled_batched_streams.py), each (source, tile) pair a slot with its own
state, each source planned at its first chunk from its own frame size, as `run` plans one source. A call
stacks at most one row per source, as untiled (tiles of equal shape of several sources share it), so
`--tile auto` counts every source sharing a call against --tile-budget; a budget too small for that is
refused before any frame is read. With --tile N each source's frames and latents equal `run SRC --tile N`
alone, bit for bit with --threads 1 (its tiles are cut and joined by TiledStream's own code); `auto` may
choose smaller tiles than one source alone would (its calls hold more rows), which for an exact model
gives the same output within float rounding, and for a blended one another blend.
No torch: this runs on the edge install.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vae_deploy.errors import ConfigError, VaeDeployError
from vae_deploy.runtime.batched_stream import BatchedStreams
from vae_deploy.runtime.runner import Runner
from vae_deploy.runtime.tile_plan import OFF, TilePlanner
from vae_deploy.runtime.tiled_batched_streams import TiledBatchedStreams
from vae_deploy.runtime.tiled_stream import call_steps
from vae_deploy.video.fit import FitPolicy
from vae_deploy.video.latent_codec import LatentRules, VideoModelInfo, note_once
from vae_deploy.video.outputs import check_output_path, latent_output, video_output

# The pipeline's own stage parts, shared so that a lane reads, fits, writes and reports exactly as run_video
# does for one source (this module is its batched sibling, not a second implementation).
from vae_deploy.video.pipeline import (
    FrameWriter,
    ReadChunk,
    StageResult,
    StreamOptions,
    StreamReport,
    VideoOutputs,
    expected_frames,
    fill_common,
    finish_outputs,
    finish_source,
    json_number,
    latent_header,
    latent_space_of,
    output_fps,
    plan_source_fit,
    read_chunks,
    source_path,
    stream_model_info,
)
from vae_deploy.video.sources import FrameSource
from vae_deploy.video.stages import run_stages

FINISHED, FAILED, INTERRUPTED = "finished", "failed", "interrupted"  # a source's status
Progress = Callable[[int], None]  # called with the frames finished so far, all sources together
# what the aggregate metrics repeat of each source's report (the whole report is in its own metrics.json)
SUMMARY_FIELDS = ("frames", "seconds", "frames_per_s", "expected_frames", "truncated", "psnr", "ssim",
                  "flicker", "psnr_source", "source_size", "working_size", "outputs")


@dataclass
class SourceRun:
    """One source of a run: its name (its output folder's), what the user gave, the opened source, and
    where its outputs go (video and, optionally, latents; the others are single-source options)."""

    name: str
    spec: str
    source: FrameSource
    outputs: VideoOutputs


@dataclass
class SourceResult:
    """What became of one source: `report` is its StreamReport (None when it failed before any frame)."""

    name: str
    spec: str
    status: str = FINISHED
    error: str | None = None
    report: StreamReport | None = None

    def to_dict(self) -> dict:
        report = self.report
        summary = {"name": self.name, "source": self.spec, "status": self.status, "error": self.error}
        if report is not None:
            summary |= {k: getattr(report, k) for k in SUMMARY_FIELDS}
        return summary


@dataclass
class MultiReport:
    """A multi-source run: each source's result and the totals; `to_dict` is the aggregate metrics JSON."""

    sources: list[SourceResult]
    frames: int = 0  # all sources together
    seconds: float = 0.0  # wall time from the first frame read to the last frame written, of any source
    frames_per_s: float = 0.0  # frames / seconds: the aggregate rate
    backend: str = ""
    model_kind: str = ""
    model_fingerprint: str = ""
    chunk: int = 0
    interrupted: bool = False
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[SourceResult]:
        return [s for s in self.sources if s.status == FAILED]

    def to_dict(self) -> dict:
        return json_number({
            "sources_total": len(self.sources), "sources_finished": sum(s.status == FINISHED for s in
                                                                        self.sources),
            "sources_failed": len(self.failed), "frames": self.frames, "seconds": self.seconds,
            "frames_per_s": self.frames_per_s, "backend": self.backend, "model_kind": self.model_kind,
            "model_fingerprint": self.model_fingerprint, "chunk": self.chunk, "interrupted": self.interrupted,
            "sources": [s.to_dict() for s in self.sources], "outputs": self.outputs})


# ---------------------------------------------------------------- a lane


class _Lane:
    """One source's part of the run: what run_video holds for its one source, plus its slot and state."""

    def __init__(self, index: int, run: SourceRun, info: VideoModelInfo, policy: FitPolicy,
                 options: StreamOptions, runner: Runner, progress: Callable[[], None]):
        self.index, self.run, self.policy = index, run, policy
        source, outputs = run.source, run.outputs
        self.fps = output_fps(options.fps, source.fps, source.description)
        self.rules = LatentRules(info, latent_space_of(options))
        self.report = StreamReport(source=source.description, source_path=source_path(source))
        fill_common(self.report, runner, info, policy, options.chunk, self.fps)
        self.stack = contextlib.ExitStack()  # its outputs: published when the lane ends, or discarded
        self.writer: FrameWriter | None = None
        self.count = [0]  # frames read
        self.chunks: Iterator[ReadChunk] = iter(())
        self.stream: int | None = None  # its slot in the BatchedStreams
        self.error: str | None = None  # set once, by whichever stage found the failure
        self.closed = False
        self.interrupted = False  # still open when the run was interrupted: keeps its frames
        self._progress = progress
        self._open(info, options, outputs)

    def _open(self, info: VideoModelInfo, options: StreamOptions, outputs: VideoOutputs) -> None:
        source, (w, h) = self.run.source, self.policy.source_size
        try:
            video = latents = None
            if outputs.video is not None:
                video = self.stack.enter_context(video_output(
                    outputs.video, self.fps, (w, h), expected_frames(source, options), source.description,
                    codec=outputs.codec))
            if outputs.latents is not None:
                header = latent_header(info, self.policy, self.fps, options.chunk, self.rules)
                latents = self.stack.enter_context(latent_output(outputs.latents, header))
        except BaseException as exc:
            self.discard(exc)
            raise
        self.writer = FrameWriter(self.policy, video, None, latents, options.measure, None,
                                   lambda done: self._progress())
        self.chunks = read_chunks(source, self.policy, options.chunk, options.max_frames, options.measure,
                                   self.count, info.first_frames)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = _error_line(exc)

    def publish(self) -> None:
        """Close the outputs normally: each is published (the sinks check what they hold)."""
        if not self.closed:
            self.closed = True
            self.stack.close()

    def discard(self, exc: BaseException) -> None:
        """Close the outputs as after `exc`: nothing is published under their names."""
        if not self.closed:
            self.closed = True
            self.stack.__exit__(type(exc), exc, exc.__traceback__)


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, VaeDeployError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"unexpected {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- the stage items


@dataclass
class _Round:
    """What the reading stage hands on: the next chunk of each lane read, and the lanes that ended or
    failed while being read."""

    chunks: dict[int, ReadChunk] = field(default_factory=dict)
    ended: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


@dataclass
class _CodedRound:
    coded: dict[int, StageResult] = field(default_factory=dict)
    ended: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def _rounds(lanes: list[_Lane]) -> Iterator[_Round]:
    """Round-robin reading: one chunk of every live lane per round, until every lane has ended."""
    live = list(lanes)
    try:
        while live:
            batch = _Round()
            for lane in list(live):
                if lane.error is not None:  # failed downstream: read no more of it
                    live.remove(lane)
                    continue
                try:
                    batch.chunks[lane.index] = next(lane.chunks)
                except StopIteration:
                    batch.ended.append(lane.index)
                    live.remove(lane)
                except Exception as exc:  # noqa: BLE001 - this source fails; the others go on
                    lane.fail(exc)
                    batch.failed.append(lane.index)
                    live.remove(lane)
            yield batch
    finally:
        for lane in lanes:  # release the captures in this (the reading) thread, as run_stages does
            close = getattr(lane.chunks, "close", None)
            if close is not None:
                close()


class _Model:
    """The middle stage: a round's chunks through the shared encoder and decoder calls."""

    def __init__(self, lanes: list[_Lane], streams: BatchedStreams | TiledBatchedStreams):
        self.lanes, self.streams = lanes, streams

    def _drop(self, lane: _Lane) -> None:
        if lane.stream is not None and lane.stream in self.streams:
            self.streams.remove(lane.stream)  # its state is freed; the other slots are untouched

    def __call__(self, batch: _Round) -> _CodedRound:
        start = time.perf_counter()
        out = _CodedRound(ended=list(batch.ended), failed=list(batch.failed))
        for lane in self.lanes:
            if lane.index in batch.ended or lane.error is not None:
                self._drop(lane)
        chunks = {i: c for i, c in batch.chunks.items() if self.lanes[i].error is None}
        frames = {}
        for i, chunk in chunks.items():
            frames[self.lanes[i].stream] = self.lanes[i].rules.pad(chunk.fitted)[None]
        means = self.streams.encode(frames) if frames else {}
        latents = {}
        for i in chunks:
            lane = self.lanes[i]
            try:
                latents[i] = lane.rules.store(means[lane.stream][0][0])  # the mean: never sampled
            except VaeDeployError as exc:  # e.g. latents beyond fp16: this source fails, not the others
                lane.fail(exc)
                out.failed.append(i)
                self._drop(lane)
        decoded = self.streams.decode({self.lanes[i].stream: self.lanes[i].rules.unstore(z)[None]
                                       for i, z in latents.items()}) if latents else {}
        seconds = time.perf_counter() - start  # a chunk's latency is its round's
        for i, z in latents.items():
            recon = decoded[self.lanes[i].stream][0][:chunks[i].fitted.shape[0]]  # drop padding's frames
            out.coded[i] = StageResult(chunks[i], z, recon, seconds)
        return out


def _write(lanes: list[_Lane]) -> Callable[[_CodedRound], None]:
    """The writing stage: each lane's frames to its own outputs; a lane's end publishes them, its failure
    discards them, and a failed write fails that lane alone."""

    def consume(batch: _CodedRound) -> None:
        for i, coded in batch.coded.items():
            lane = lanes[i]
            if lane.closed:
                continue
            try:
                lane.writer(coded)
            except Exception as exc:  # noqa: BLE001 - a full disk, a writer error: this source fails
                lane.fail(exc)
                lane.discard(exc)
        for i in batch.failed:
            lanes[i].discard(_Failed(lanes[i].error))
        for i in batch.ended:
            lane = lanes[i]
            try:
                lane.publish()
            except Exception as exc:  # noqa: BLE001 - its sink refused to publish (an incomplete file)
                lane.fail(exc)

    return consume


class _Failed(Exception):
    """Handed to a lane's outputs when its source failed upstream, so that they discard what they hold."""


# ---------------------------------------------------------------- tiling


def tile_planner(runner: Runner, info: VideoModelInfo, options: StreamOptions,
                 sizes: dict[str, tuple[int, int]]) -> TilePlanner | None:
    """The planner of a run's tiles (None: nothing is tiled), checked before any frame is read: a bad
    request is refused as for one source, and `auto` with a budget too small for a call of every source's
    tile (each call stacks one row per source; a first chunk of --chunk frames, as long as any) in one
    line. `sizes`: source name -> model frame (width, height)."""
    request = options.tile
    if request.tile == OFF:
        return None
    planner = TilePlanner(runner.manifest, request, note_once)
    if not planner.active:
        return None
    frames = info.encoder_frames(options.chunk, first_chunk=True)  # the longest call: as LatentRules pads
    lengths = {"encoder": frames, "decoder": info.latent_count(frames)}
    for w, h in sizes.values():
        for graph, group in planner.groups.items():
            steps = call_steps(runner, runner.graph(graph), lengths.get(graph, 1))
            try:
                planner.plan(graph, h // group.unit, w // group.unit, steps * len(sizes), announce=False)
            except ConfigError as err:
                if len(sizes) == 1:
                    raise
                raise ConfigError(f"{err} ({len(sizes)} sources share each call, a tile of each; give a "
                                  f"larger --tile-budget or run fewer sources together)") from err
    return planner


# ---------------------------------------------------------------- the entry point


def run_videos(runner: Runner, runs: list[SourceRun], options: StreamOptions | None = None,
               progress: Progress | None = None, failed: list[SourceResult] | None = None) -> MultiReport:
    """Encode and decode every source of `runs` in shared calls of `runner` (module docstring); `failed`:
    sources that failed before this (could not be opened), listed in the report in their place. The
    results keep the order of `runs` then `failed`; the caller orders them as the user gave them."""
    options = options or StreamOptions()
    info = stream_model_info(runner, options)
    for run in runs:
        for path, what in ((run.outputs.video, "the video"), (run.outputs.latents, "the latents")):
            if path is not None:
                check_output_path(path, f"{what} of {run.name}", video=path is run.outputs.video)
    policies = [plan_source_fit(info, run.source, options) for run in runs]
    planner = tile_planner(runner, info, options, {run.name: p.model_size for run, p in zip(runs, policies,
                                                                                             strict=True)})
    report = MultiReport(sources=[], backend=runner.name, model_kind=info.kind,
                         model_fingerprint=info.fingerprint, chunk=options.chunk)
    lanes: list[_Lane] = []

    def done() -> None:
        if progress is not None:
            progress(sum(lane.writer.frames for lane in lanes if lane.writer is not None))

    results = [SourceResult(run.name, run.spec) for run in runs]
    try:
        for run, policy in zip(runs, policies, strict=True):
            lanes.append(_Lane(len(lanes), run, info, policy, options, runner, done))
        # tiles: one row per source per call, as untiled (the budget counted them so)
        streams = runner.open_batched_streams() if planner is None else \
            TiledBatchedStreams(runner, planner, rows=len(lanes))
        for lane in lanes:
            lane.stream = streams.add()
        started = time.perf_counter()
        try:
            run_stages(_rounds(lanes), _Model(lanes, streams), _write(lanes), options.queue_chunks)
        except KeyboardInterrupt:
            report.interrupted = True
    except BaseException as exc:  # a failed shared call, or a setup error: no lane still open publishes
        for lane in lanes:
            lane.discard(exc)
        raise
    if report.interrupted:
        if not any(lane.writer.frames for lane in lanes):  # nothing done anywhere: nothing is written
            for lane in lanes:
                lane.discard(KeyboardInterrupt())
            raise KeyboardInterrupt
        for lane in lanes:
            if not lane.closed:
                _keep_interrupted(lane)
    ends = []
    for lane, result in zip(lanes, results, strict=True):
        result.report = lane.report
        lane.writer.fill(lane.report, started)
        ends.append(lane.writer.last_frame_at or started)
        lane.report.interrupted = lane.interrupted and lane.error is None
        finish_source(lane.report, lane.run.source, lane.count[0], options)
        if lane.error is not None:
            result.status, result.error = FAILED, lane.error
        else:
            result.status = INTERRUPTED if lane.interrupted else FINISHED
            finish_outputs(lane.report, lane.run.outputs)
    report.sources = results + list(failed or [])
    report.frames = sum(lane.writer.frames for lane in lanes if lane.error is None)
    report.seconds = max(ends, default=started) - started
    report.frames_per_s = report.frames / report.seconds if report.seconds > 0 else 0.0
    return report


def _keep_interrupted(lane: _Lane) -> None:
    """A lane still open when the run was interrupted keeps the frames it finished, as run_video does; one
    with none writes nothing and counts as failed."""
    lane.interrupted = True
    if lane.writer.frames:
        try:
            lane.publish()
        except Exception as exc:  # noqa: BLE001 - its sink refused to publish
            lane.fail(exc)
    else:
        lane.discard(KeyboardInterrupt())
        lane.fail(VaeDeployError("interrupted before its first frame was finished; nothing was written"))


__all__ = ["FAILED", "FINISHED", "INTERRUPTED", "MultiReport", "SourceResult", "SourceRun", "run_videos",
           "tile_planner"]
