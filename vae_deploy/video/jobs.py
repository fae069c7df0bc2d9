"""The streaming commands as functions, from paths to a report: `run`, `encode`, `decode` and `demo`; and
`bench`, which times a model the way these commands use it.

Each job checks what it is asked to write before any work (an output that is an input, lies in the model
folder or is shared by two outputs is refused), opens the model with a backend and the source, streams it
through the pipeline (video/pipeline.py) and writes the metrics JSON when asked. The CLI only parses
options, calls one of these and prints the report; a program embedding vae-deploy can call them the same way.

Progress: `progress(done, total)` is called with the frames finished so far and the total when the source
knows it (None for a camera or a stream). An interrupt (Ctrl-C, SIGTERM) before the first frame is finished
propagates as KeyboardInterrupt and nothing is written; after it, the job returns a report with
`interrupted` set and every output holds the frames done. No torch: this runs on the edge install.

`server`: the model runs on a `vae-deploy serve` server instead of a local folder (`--server`): the CLI hands
the job a ModelServer (serve/remote_codec.py's RemoteServer; this layer sits below serve), and the job
streams through the same pipeline with the server's sessions as its codec, so its outputs are the local
command's (docs/serve.md says when bytes match). A server excludes a local model choice and spatial tiles.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vae_deploy.errors import ConfigError
from vae_deploy.files import removing_new_folders, write_json_atomic
from vae_deploy.runtime.benchmark import Timing, bench_runner, bench_stream
from vae_deploy.runtime.latent_space import NORMALIZED, RAW
from vae_deploy.runtime.latents import LatentReader
from vae_deploy.runtime.manifest import Manifest, read_manifest
from vae_deploy.runtime.registry import DEFAULT_BACKEND, load_runner
from vae_deploy.runtime.runner import Runner
from vae_deploy.runtime.tile_plan import TileRequest
from vae_deploy.video.default_model import DEMO_CLIP, default_model_dir, resolve_model
from vae_deploy.video.fit import plan_fit
from vae_deploy.video.latent_codec import VideoModelInfo
from vae_deploy.video.model_open import (
    DEFAULT_MODEL,
    CodecProvider,
    ModelChoice,
    ModelServer,
    open_model,
    runner_options,
)
from vae_deploy.video.outputs import check_distinct_outputs, check_output_path
from vae_deploy.video.pipeline import (
    DEFAULT_CHUNK,
    StreamOptions,
    StreamReport,
    VideoOutputs,
    decode_latents,
    encode_video,
    progress_total,
    run_video,
)
from vae_deploy.video.report import DECODED_VIDEO, SOURCE_VIDEO, check_report_dir, model_summary, write_report
from vae_deploy.video.samples import sample_video_path
from vae_deploy.video.sources import open_source
from vae_deploy.video.writers import suffix_for

JobProgress = Callable[[int, int | None], None]  # (frames finished, total frames or None)

DEMO_OUTPUTS = VideoOutputs(video=Path("reconstruction.mp4"), side_by_side=Path("side_by_side.mp4"),
                            latents=Path("carphone.vaelat"))
DEMO_METRICS = Path("metrics.json")
# The source aspect the frame size of a video model's bench stands for: 16:9, the shape of most video.
BENCH_SOURCE_SIZE = (1920, 1080)


def check_outputs(inputs: dict[str, Path | str | None], model: Path | None,
                  outputs: dict[str, Path | None]) -> None:
    """Refuse, before any work, outputs that destroy an input, the model or each other (named for the user,
    e.g. "--out"); and a metrics path that cannot be written."""
    check_distinct_outputs(outputs, inputs, {"the model folder": resolve_model(model)})
    if outputs.get("--metrics") is not None:
        check_output_path(outputs["--metrics"], "the metrics")


def _bound(progress: JobProgress | None, total: int | None) -> Callable[[int], None] | None:
    return None if progress is None else (lambda done: progress(done, total))


def _check_server(server: ModelServer | None, model: ModelChoice, tile: TileRequest | None) -> None:
    """A job on a server: no local model choice beside it, and only what the server can do (no tiles)."""
    if server is None:
        return
    if model != DEFAULT_MODEL:
        raise ConfigError("--server runs the server's model: --model, --backend and --threads choose a local "
                          "one; give one or the other")
    server.check_options(tile)


def _open_model(model: ModelChoice, server: ModelServer | None, modes: tuple[str, ...], *,
                fingerprint: str | None = None, latent_space: str = NORMALIZED) -> Runner | CodecProvider:
    """The local runner, or the server's sessions for `modes` (a context manager either way)."""
    if server is None:
        return open_model(model)
    return server.connect(modes, fingerprint=fingerprint, latent_space=latent_space)


def _space(options: StreamOptions) -> str:
    return RAW if options.raw_latents else NORMALIZED


def _finish(report: StreamReport, metrics: Path | None) -> StreamReport:
    if metrics is not None:
        write_json_atomic(metrics, report.to_dict())
        report.outputs["metrics"] = str(metrics)
    return report


def run_job(source: str | Path, outputs: VideoOutputs, *, options: StreamOptions | None = None,
            model: ModelChoice = DEFAULT_MODEL, metrics: Path | None = None,
            progress: JobProgress | None = None, report_dir: Path | None = None,
            server: ModelServer | None = None) -> StreamReport:
    """`vae-deploy run`: encode and decode SOURCE with `model` (or on `server`), writing the outputs asked
    for and the metrics; with `report_dir`, also the report page and its two videos there (video/report.py;
    quality is measured)."""
    options = options or StreamOptions()
    _check_server(server, model, options.tile)
    if report_dir is not None:
        options = dataclasses.replace(options, measure=True)
        outputs = dataclasses.replace(outputs, model_input=Path(report_dir) / SOURCE_VIDEO,
                                      model_output=Path(report_dir) / DECODED_VIDEO)
    check_outputs({"the input": source}, model.folder, {"--out": outputs.video, "--side-by-side":
                                                 outputs.side_by_side, "--latents": outputs.latents,
                                                 "--metrics": metrics, "the report's source video":
                                                 outputs.model_input, "the report's decoded video":
                                                 outputs.model_output})
    # a run that fails before the report's first video is written leaves no empty report folder
    with removing_new_folders(report_dir) if report_dir is not None else contextlib.nullcontext():
        if report_dir is not None:
            check_report_dir(report_dir)  # after the checks above: never a folder where it must not be
        with _open_model(model, server, ("encode", "decode"), latent_space=_space(options)) as runner, \
                open_source(source) as frames:
            report = run_video(runner, frames, options, outputs,
                               _bound(progress, progress_total(frames, options)))
        report = _finish(report, metrics)
        if report_dir is not None:
            summary = (model_summary(resolve_model(model.folder), report) if server is None else
                       {"name": server.url, "kind": report.model_kind,
                        "fingerprint": report.model_fingerprint})
            page = write_report(report_dir, report, summary)
            report.outputs["report"] = str(page)
    return report


def encode_job(source: str | Path, out: Path, *, options: StreamOptions | None = None,
               model: ModelChoice = DEFAULT_MODEL, metrics: Path | None = None,
               progress: JobProgress | None = None, server: ModelServer | None = None) -> StreamReport:
    """`vae-deploy encode`: SOURCE's latents with `model` (or on `server`) into the .vaelat file `out`."""
    options = options or StreamOptions(measure=False)
    _check_server(server, model, options.tile)
    check_outputs({"the input": source}, model.folder, {"--out": out, "--metrics": metrics})
    with _open_model(model, server, ("encode",), latent_space=_space(options)) as runner, \
            open_source(source) as frames:
        report = encode_video(runner, frames, out, options, _bound(progress, progress_total(frames, options)))
    return _finish(report, metrics)


def decode_job(latents: Path, out: Path, *, model: ModelChoice = DEFAULT_MODEL, fps: float | None = None,
               metrics: Path | None = None, progress: JobProgress | None = None,
               codec: str | None = None, tile: TileRequest | None = None,
               server: ModelServer | None = None) -> StreamReport:
    """`vae-deploy decode`: a .vaelat file back to video with `model` (or on `server`, which must serve
    the model that encoded it), at the source's size and frame rate (`codec`: None for the suffix's,
    video/writers.py; `tile`: spatial tiles, None for auto)."""
    options = StreamOptions(fps=fps, tile=tile or TileRequest())
    _check_server(server, model, tile)
    check_outputs({"the input": latents}, model.folder, {"--out": out, "--metrics": metrics})
    reader = LatentReader(latents)  # refuses a damaged file (its checksum is read once) before loading
    header = reader.header
    with _open_model(model, server, ("decode",), fingerprint=header.model_fingerprint,
                     latent_space=header.latent_space) as runner:
        report = decode_latents(runner, reader, VideoOutputs(video=out, codec=codec), options,
                                _bound(progress, reader.header.frame_count))
    return _finish(report, metrics)


def demo_job(out_dir: Path, *, backend: str = DEFAULT_BACKEND, threads: int | None = None,
             progress: JobProgress | None = None,
             log: Callable[[str], None] = lambda line: None, codec: str | None = None) -> StreamReport:
    """`vae-deploy demo`: the packaged model on the packaged clip, every output in `out_dir` (`codec`: the
    videos' codec, None for H.264; one .mp4 cannot hold, ffv1, makes them .mkv files)."""
    clip, model = sample_video_path(DEMO_CLIP), default_model_dir()
    out_dir = Path(out_dir)
    suffix = suffix_for(codec, DEMO_OUTPUTS.video.suffix)
    outputs = VideoOutputs(*(out_dir / p for p in (DEMO_OUTPUTS.video.with_suffix(suffix),
                                                   DEMO_OUTPUTS.side_by_side.with_suffix(suffix),
                                                   DEMO_OUTPUTS.latents)), codec=codec)
    log(f"demo: the packaged model ({model}) on {clip.name}, its validation clip (it chose the model's "
        f"epochs and recipe; never trained on)")
    with removing_new_folders(out_dir):  # a demo that fails writing its first file leaves no empty folder
        return run_job(clip, outputs, options=StreamOptions(), model=ModelChoice(None, backend, threads),
                       metrics=out_dir / DEMO_METRICS, progress=progress, report_dir=out_dir)


@dataclass
class BenchResult:
    kind: str  # the model kind
    video: bool  # timed as streamed chunks (True) or as batches of images
    timed: str  # a sentence saying what was timed
    runner_options: dict
    timings: list[Timing]


def _video_case(manifest: Manifest, chunk: int | None, size: int | None
                ) -> tuple[tuple[int, ...], str]:
    """The encoder input timed for a video model, (1, T, C, H, W), and a sentence saying what it is."""
    info = VideoModelInfo.from_manifest(manifest)
    frames = DEFAULT_CHUNK if chunk is None else chunk
    info.check_chunk(frames)
    short = info.short_side if size is None else size
    policy = plan_fit(BENCH_SOURCE_SIZE, short, info.spatial_factor, info.channels, "snap")
    w, h = policy.model_size
    source = "" if size is not None else ", the model's working size"
    what = (f"streamed chunks of {frames} frames at {w}x{h} (a 16:9 source at short side {short}{source}, "
            f"fitted like `run`), state carried")
    return (1, frames, info.channels, h, w), what


def bench_job(model_dir: Path, *, backend: str = DEFAULT_BACKEND, batch_sizes: tuple[int, ...] | None = None,
              chunk: int | None = None, size: int | None = None, repeats: int = 50, warmup: int = 5,
              threads: int | None = None) -> BenchResult:
    """`vae-deploy bench`: a video model timed as `run` streams it (batch 1, chunks of `chunk` frames at
    short side `size`, the state carried); an image model per batch size (default 1 and 128)."""
    manifest = read_manifest(model_dir)
    video = bool(manifest.graph("encoder").stream_axis)
    if video and batch_sizes is not None:
        raise ConfigError("--batch-sizes is for image models; a video model is timed as `run` streams it "
                          "(batch 1, chunks of --chunk frames at --size)")
    if not video and (chunk is not None or size is not None):
        raise ConfigError(f"--chunk and --size are for video models; this {manifest.kind!r} model takes "
                          f"batches of images (--batch-sizes)")
    if video:
        shape, what = _video_case(manifest, chunk, size)
        options = runner_options(backend, threads)
        with load_runner(model_dir, backend, manifest=manifest, **options) as runner:
            timings = bench_stream(runner, shape, repeats=repeats, warmup=warmup)
    else:
        what = "one call per batch size, random inputs at the model's example size"
        options = {} if threads is None else {"threads": threads}
        with load_runner(model_dir, backend, manifest=manifest, **options) as runner:
            timings = bench_runner(runner, list(batch_sizes or (1, 128)), repeats=repeats, warmup=warmup)
    return BenchResult(manifest.kind, video, what, options, timings)
