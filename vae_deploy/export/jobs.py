"""The model-folder commands as functions, from paths to a result: `export` and `verify`.

`export_job`: checkpoint (or run folder) -> model folder with the export-time parity report, and, when
asked and parity passed, TensorRT engines (export/tensorrt_build.py). Whatever can be refused without
work is refused first: an existing --out without `force`, and with `engine` an unknown engine precision or
a missing TensorRT. A failed parity check still leaves the folder written (its manifest says so), so
`verify` can show the details; the caller decides what a failure means (the CLI exits 1).

`verify_job`: a backend of a model folder against a reference, `choose_reference`'s pick: the PyTorch
model in reference/ (the default where torch is installed) or the golden outputs stored at export (the edge
install), judged by the same rules (export/validate.py).

The CLI only parses options, calls one of these and prints; a program can call them the same way. Torch is
imported only by what needs it (the export itself, the torch reference), so verify runs on an edge install.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_deploy.errors import ConfigError, MissingBackendError, ModelFormatError
from vae_deploy.export.golden import GOLDEN_FILE, has_golden, read_golden
from vae_deploy.export.profile import ExportProfile
from vae_deploy.export.publish import check_apart, check_target
from vae_deploy.export.real_inputs import real_inputs_for
from vae_deploy.export.reprofile import is_model_folder
from vae_deploy.export.validate import ParityReport, check_golden, check_parity
from vae_deploy.runtime.manifest import Manifest, has_reference, read_manifest
from vae_deploy.runtime.registry import DEFAULT_BACKEND, get_backend
from vae_deploy.runtime.runner import module_available

ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
ENTRY_POINT_KIND = "entry-point"  # models/adapters/contract.py's, without importing torch here
REFERENCES = ("auto", "torch", "golden")


class StepLog:
    """The export log with seconds: each line is a step, and when the next step starts (or `finish`), the
    step before gets a line with the seconds it took, so a large model's export (minutes inside
    torch.onnx.export per graph, then the parity check) shows where it is. Indented lines are details of
    the current step (the parity check's cases, with their own seconds) and pass through."""

    def __init__(self, log: Callable[[str], None]):
        self._log = log
        self._step: str | None = None
        self._started = 0.0

    def __call__(self, message: str) -> None:
        if message[:1].isspace():
            self._log(message)
            return
        self.finish()
        self._log(message)
        self._step, self._started = message, time.perf_counter()

    def finish(self) -> None:
        if self._step is not None:
            self._log(f"  done in {time.perf_counter() - self._started:.1f} s")
            self._step = None


@dataclass
class ExportResult:
    manifest: Manifest
    report: ParityReport  # the export-time parity check (also in manifest.parity)
    profile: str  # the export profile's name
    engines: list[Any] | None = None  # TensorRT builds (tensorrt_build.EngineBuild), when asked and passed


def check_engine_request(precision: str | None) -> None:
    """Refuse an engine build that cannot happen here, before anything is exported: an unknown precision,
    or no TensorRT (the error names what to install and which backends run here)."""
    from vae_deploy.export.tensorrt_build import require_tensorrt

    if precision not in (None, *ENGINE_PRECISIONS):
        raise ConfigError(f"--engine-precision must be fp32, fp16 or int8, got {precision!r}")
    require_tensorrt()


def export_job(source: Path | None, out: Path, *, profile: str | Path | None = None,
               entry_point: str | None = None, real: int = 1000,
               data_source: str = "auto", data_dir: Path | None = None, parity_backend: str = DEFAULT_BACKEND,
               force: bool = False, engine: bool = False, engine_precision: str | None = None,
               log: Callable[[str], None] = lambda msg: None,
               on_exported: Callable[[ExportResult], None] | None = None) -> ExportResult:
    """Export `source` (a run folder, a diffusers model folder, a model folder to re-profile without
    tracing (export/reprofile.py), or, with `entry_point` "package.module:factory", no source:
    export/sources.py) to the model folder `out` with `profile` (a
    packaged profile's name or a TOML path; None: the defaults), parity checked on `parity_backend` with
    `real` real inputs (real_inputs.py; 0: random only). `force` replaces an existing model folder.
    `engine` then builds TensorRT engines of `engine_precision` (None: the profile's default), only when
    parity passed.

    `log` gets one line per step as it starts and one with its seconds when it ends (StepLog);
    `on_exported` is called with the result once the folder is written and its parity known, before any
    engine is built (the CLI prints the parity table there)."""
    if source is not None and is_model_folder(source):  # re-profiling: SOURCE is only read
        check_apart(source, out, "the re-profiled folder")
    check_target(out, overwrite=force)  # before any work: refusing later would waste the export
    if engine:  # before the export too: a missing TensorRT should not cost an export first
        check_engine_request(engine_precision)
    from vae_deploy.export.onnx_export import export_model  # torch from here on
    from vae_deploy.export.profile import load_profile
    from vae_deploy.export.sources import open_model_source
    from vae_deploy.export.specs import graph_specs

    log = StepLog(log)
    chosen = load_profile(profile)
    model_source = open_model_source(source, entry_point)
    log(f"{'re-profiling' if model_source.graphs else 'exporting'} {model_source.kind} from "
        f"{model_source.description}")
    module = model_source.module
    encoder = graph_specs(model_source.kind, module.config, module)["encoder"]
    inputs = real_inputs_for(model_source.kind, real, data_source, data_dir, encoder)
    manifest, report = export_model(model_source, out, chosen, real_inputs=inputs,
                                    parity_backend=parity_backend, log=log, overwrite=force)
    log.finish()
    result = ExportResult(manifest, report, chosen.name)
    if on_exported is not None:
        on_exported(result)
    if engine and report.passed:
        from vae_deploy.export.tensorrt_build import build_engines

        # int8 engines come from the folder's Q/DQ graphs (export/tensorrt_build.py): nothing to calibrate.
        result.engines = build_engines(out, engine_precision, log=log)
        log.finish()
    return result


@dataclass
class VerifyResult:
    report: ParityReport
    reference: str  # "torch" | "golden"
    note: str  # one line saying which reference was used and why


def choose_reference(choice: str, model_dir: Path, manifest: Manifest,
                     entry_point: str | None = None) -> tuple[str, str]:
    """("torch" | "golden", the line saying so) for the reference `choice` (one of REFERENCES): auto is
    torch where it is installed (and diffusers, for a diffusers model), else the folder's golden outputs.
    A model exported with --from is rebuilt by its factory, which is imported only when the user names it
    (`entry_point`): without it, auto takes the golden outputs."""
    from vae_deploy.runtime.torch_runner import TorchRunner

    if choice not in REFERENCES:
        raise ConfigError(f"--reference must be one of {', '.join(REFERENCES)}, got {choice!r}")
    torch_missing = TorchRunner.unavailable_reason()
    if not has_reference(manifest):  # a folder `vae-deploy slim` wrote: no PyTorch model in it
        if choice == "torch":
            raise ConfigError(f"{model_dir} has no PyTorch reference (reference/: a slim folder): verify it "
                              f"against its golden outputs (--reference golden)")
        torch_missing = "a slim folder, without reference/"
    if torch_missing is None and "diffusers" in manifest.producer and not module_available("diffusers"):
        torch_missing = "diffusers is not installed"  # the reference of a diffusers model is built with it
    if torch_missing is None and manifest.kind == ENTRY_POINT_KIND and not entry_point:
        torch_missing = "the factory of a --from model is imported only when named: verify --from"
    if choice == "torch" or (choice == "auto" and torch_missing is None):
        return "torch", "reference: PyTorch (the folder's reference/ checkpoint)"
    if not has_golden(manifest):
        if choice == "golden":
            raise ModelFormatError(f"{model_dir} has no golden outputs ({GOLDEN_FILE}): re-export it with "
                                   f"this vae-deploy version, or verify against PyTorch (--reference torch)")
        raise MissingBackendError(
            f"cannot verify {model_dir} here: the PyTorch reference needs torch ({torch_missing}) and the "
            f"folder has no golden outputs ({GOLDEN_FILE}); install the train extra (pip install "
            f"'vae-deploy[train]') or re-export the model with this vae-deploy version")
    why = torch_missing.replace(" is not installed", " not installed") if choice == "auto" else \
        "--reference golden"
    return "golden", f"reference: golden outputs stored at export ({why})"


def verify_job(model_dir: Path, *, backend: str = DEFAULT_BACKEND, reference: str = "auto",
               batch_sizes: tuple[int, ...] | None = None, real: int = 1000, data_source: str = "auto",
               data_dir: Path | None = None, seed: int = 0, entry_point: str | None = None) -> VerifyResult:
    """Compare `backend` with the reference `choose_reference` picks. Against torch: `real` real inputs
    and random inputs at `batch_sizes` (None: the export profile's) drawn with `seed`; against the golden
    outputs: the inputs stored with them. `entry_point`: the --from factory the user names, the only code
    the torch reference of a --from model may import. Writes nothing."""
    manifest = read_manifest(model_dir)
    sizes = batch_sizes or tuple(manifest.export_profile.get("parity_batch_sizes",
                                                             ExportProfile().parity_batch_sizes))
    source, note = choose_reference(reference, model_dir, manifest, entry_point)
    caps = [g.max_parity_batch for g in manifest.graphs.values() if g.max_parity_batch]
    if batch_sizes and caps and max(batch_sizes) > min(caps):  # silently checking batch 2 instead misleads
        raise ConfigError(f"--batch-sizes {max(batch_sizes)} is over what this model's graphs are checked "
                          f"at: at most {min(caps)} (video graphs run a batch of whole clips)")
    if source == "golden":
        cases = read_golden(model_dir, manifest)
        with get_backend(backend)(model_dir, manifest=manifest) as runner:
            report = check_golden(runner, cases)
    else:
        inputs = real_inputs_for(manifest.kind, real, data_source, data_dir, manifest.graph("encoder"))
        reference_options = {"entry_point": entry_point} if entry_point else {}
        with get_backend(backend)(model_dir, manifest=manifest) as runner, \
                get_backend("torch")(model_dir, manifest=manifest, **reference_options) as torch_reference:
            report = check_parity(runner, torch_reference, inputs, sizes, seed=seed)
    return VerifyResult(report, source, note)
