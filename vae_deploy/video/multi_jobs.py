"""`vae-deploy run SRC1 SRC2 ... --out-dir DIR` as a function: several sources through one model in one
batched pipeline (video/multi_source.py), each source's outputs in a folder of its own under DIR.

    DIR/<name>/reconstruction.mp4    each source's reconstruction (.mkv with --codec ffv1, ...)
    DIR/<name>/latents.vaelat        its latents, when asked (`latents=True`)
    DIR/<name>/metrics.json          its report: the JSON `run --metrics` writes for one source
    DIR/metrics.json                 the aggregate: totals, the aggregate frames/s, each source's status,
                                     frames, rate and error (`metrics` puts it elsewhere)

Names come from the sources: a file's stem, a folder's name, `camera0` for camera 0, a URL made safe for
a file name; a name met again gets -2, -3, ... A source path that does not exist is refused before any
work, in one line; a source that exists but cannot be opened (a corrupt file, an unreachable stream) fails
alone and the others run. Outputs are checked as `run` checks its own (none may be an input, lie in the
model folder or be another output) before any work. No torch: this runs on the edge install.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from vae_deploy.errors import DataError, VaeDeployError
from vae_deploy.files import removing_new_folders, write_json_atomic
from vae_deploy.video.default_model import resolve_model
from vae_deploy.video.model_open import DEFAULT_MODEL, ModelChoice, open_model
from vae_deploy.video.multi_source import FAILED, MultiReport, SourceResult, SourceRun, run_videos
from vae_deploy.video.outputs import check_distinct_outputs, check_output_path
from vae_deploy.video.pipeline import StreamOptions, VideoOutputs, progress_total
from vae_deploy.video.sources import SOURCE_KINDS, open_source
from vae_deploy.video.writers import suffix_for

VIDEO_NAME = "reconstruction"  # DIR/<name>/reconstruction.<suffix>
LATENTS_NAME = "latents.vaelat"
METRICS_NAME = "metrics.json"  # per source, and the aggregate's default in DIR
MAX_NAME = 64  # characters of a name made from a URL or a pipeline

JobProgress = Callable[[int, int | None], None]  # (frames finished, total frames or None)


def _kind(spec: str) -> str:
    return next(kind for kind, matches, _ in SOURCE_KINDS if matches(spec))


def _base_name(spec: str) -> str:
    kind = _kind(spec)
    if kind == "camera":
        return f"camera{int(spec)}"
    if kind == "stream":
        text = re.sub(r"^[a-z][a-z0-9+.-]*://", "", spec.strip(), flags=re.IGNORECASE)  # rtsp://, http://
    else:
        path = Path(spec).expanduser()
        text = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:MAX_NAME].rstrip("._-")
    return name or "source"


def source_names(specs: Sequence[str]) -> list[str]:
    """One output folder name per source, in order (module docstring); a repeated name gets -2, -3, ...
    (compared without case, for file systems that ignore it; `metrics.json` is the aggregate's)."""
    taken = {METRICS_NAME}
    names = []
    for spec in specs:
        base = name = _base_name(spec)
        n = 1
        while name.lower() in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name.lower())
        names.append(name)
    return names


def _check_sources_exist(specs: Sequence[str]) -> None:
    """A path that names nothing is a mistake in the command, refused before any work (a camera or a URL is
    tried when the run opens it, and fails alone)."""
    for spec in specs:
        if _kind(spec) == "path" and not Path(spec).expanduser().exists():
            raise DataError(f"no such file or folder: {spec}")


def run_many_job(sources: Sequence[str], out_dir: Path, *, options: StreamOptions | None = None,
                 model: ModelChoice = DEFAULT_MODEL, metrics: Path | None = None, codec: str | None = None,
                 latents: bool = False, progress: JobProgress | None = None) -> MultiReport:
    """Run every source through `model` in one batched pipeline, outputs under `out_dir` (module
    docstring); `metrics`: where the aggregate goes (default DIR/metrics.json). Each source's result is in
    the report: a failed source is listed with its error, and the others' outputs are complete."""
    options = options or StreamOptions()
    sources = [str(s) for s in sources]
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out-dir {out_dir} is a file; give a folder")
    _check_sources_exist(sources)
    names = source_names(sources)
    suffix = suffix_for(codec, ".mp4")
    layout = {name: VideoOutputs(video=out_dir / name / f"{VIDEO_NAME}{suffix}",
                                 latents=out_dir / name / LATENTS_NAME if latents else None, codec=codec)
              for name in names}
    aggregate = Path(metrics) if metrics is not None else out_dir / METRICS_NAME
    outputs = {f"{name}'s {what}": path for name, out in layout.items()
               for what, path in (("video", out.video), ("latents", out.latents),
                                  ("metrics", out_dir / name / METRICS_NAME))}
    check_distinct_outputs({"--metrics": aggregate, **outputs},
                           {f"source {spec}": spec for spec in sources},
                           {"the model folder": resolve_model(model.folder)})
    # the source folders this run makes: one that ends empty (its source failed) is removed again
    new = [out_dir / name for name in names if not (out_dir / name).exists()]
    with removing_new_folders(out_dir), _removing_empty(new):  # a failed run leaves no empty folder
        check_output_path(aggregate, "the metrics")
        with open_model(model) as runner, contextlib.ExitStack() as opened:
            runs, failed = [], []
            for name, spec in zip(names, sources, strict=True):
                try:
                    runs.append(SourceRun(name, spec, opened.enter_context(open_source(spec)), layout[name]))
                except VaeDeployError as exc:  # exists, but cannot be read: this source fails alone
                    failed.append(SourceResult(name, spec, FAILED, str(exc)))
            counts = [progress_total(run.source, options) for run in runs]
            total = None if None in counts else sum(counts)
            report = run_videos(runner, runs, options,
                                None if progress is None else (lambda done: progress(done, total)), failed)
        order = {name: i for i, name in enumerate(names)}
        report.sources.sort(key=lambda s: order[s.name])
        for result in report.sources:
            if result.report is not None and result.status != FAILED:
                path = out_dir / result.name / METRICS_NAME
                result.report.outputs["metrics"] = str(path)
                write_json_atomic(path, result.report.to_dict())
        _remove_empty(new)
        report.outputs["metrics"] = str(aggregate)
        write_json_atomic(aggregate, report.to_dict())
    return report


def _remove_empty(folders: list[Path]) -> None:
    """The folders this run made that hold nothing (a failed source's): rmdir removes only empty ones."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def _removing_empty(folders: list[Path]):
    try:
        yield
    except BaseException:
        _remove_empty(folders)
        raise
