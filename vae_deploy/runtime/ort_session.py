"""ONNX Runtime sessions for the `ort-cpu` and `ort-cuda` backends: the loader half of those backends
(Polygraphy splits loaders from runners the same way). The runners are runtime/ort_runner.py (`ort-cpu`
and what both share) and runtime/ort_cuda.py (`ort-cuda`); both build every session through
`build_session` here.

onnxruntime is imported here only (`import_ort`), when a session is built. Session settings are runner
options:
    threads         intra-op threads (CPU EP); default 0 = ORT's choice, one per physical core
    spinning        idle intra-op threads spin briefly before sleeping (ORT's default; default True)
    optimization    graph optimization level: "disable" | "basic" | "extended" | "all" (default "all")
    arena           ORT's CPU memory arena (enable_cpu_mem_arena)
    mem_pattern     ORT's memory patterns (enable_mem_pattern)
    prepacking      weights prepacked for the kernels at load (off: session.disable_prepacking)
                    (these three default to ORT's own, True, here and on ort-cuda; ort-cpu passes its
                    measured defaults, runtime/cpu_memory.py)
CPU defaults chosen by measurement (benchmarks/results/runtime_speed.md, MLP VAE on the shared 2-core
machine): one thread per core with spinning was fastest or tied at batch 1 and 128, and clearly fastest at
batch 128 when the cores were free; at batch 8192 on cores busy with other processes, spinning lost to
threads=1 or spinning=False, which are options for that case.

CUDA EP options for conv nets, as runner options of `ort-cuda`. Defaults depend on the folder's precision
and were chosen by measurement (benchmarks/results/gpu_check_h200.md: FrameVAE, 256x256, 16 frames per
call, H200, onnxruntime-gpu 1.31.1, decoder ms): fp16 NHWC+heuristic 1.34 (+bias fusion 1.23, +CUDA graph
1.07) against NCHW+exhaustive 1.79 and NHWC+exhaustive 4.30 (cuDNN's frontend finds no plan for some NHWC
convs and exhaustive search then lands on slow ones); fp32 NCHW+exhaustive 2.56 against NCHW+heuristic
3.33, NHWC+exhaustive 3.46, NHWC+heuristic 5.32.
    prefer_nhwc       NHWC convolutions; default True for fp16 folders, False for fp32
    conv_algo_search  cuDNN algorithm choice: "EXHAUSTIVE" (time each conv once) | "HEURISTIC" | "DEFAULT";
                      default "HEURISTIC" for fp16, "EXHAUSTIVE" for fp32
    fuse_conv_bias    let cuDNN's frontend fuse the bias add into NHWC convs; default True for fp16 NHWC
                      (with NCHW fp16 it failed at run time on the H200: cuDNN found no plan)
    tf32              TF32 convolutions/matmuls for fp32 graphs; default False (fp32 parity comes first)
    device_id         CUDA device; default 0
A session asked for on the CUDA EP never falls back to the CPU silently: one that does not run there is a
MissingBackendError.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vae_deploy.errors import ConfigError, MissingBackendError, ModelFormatError
from vae_deploy.runtime import shared_initializers
from vae_deploy.runtime.spec import GraphSpec

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DEFAULT_CPU_THREADS = 0  # 0: ORT picks one per physical core
DEFAULT_SPINNING = True
# ORT's own memory defaults, which ort-cuda keeps; ort-cpu's are runtime/cpu_memory.py's (measured)
DEFAULT_ARENA = True
DEFAULT_MEM_PATTERN = True
DEFAULT_PREPACKING = True
CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
_PRELOADED: list[bool] = []  # preload_dlls() once per process


def import_ort():
    """The onnxruntime module (imported on first use, so that listing backends does not load it)."""
    import onnxruntime

    return onnxruntime


def first_line(exc: Exception) -> str:
    """The first line of an exception's message (ORT's pybind errors carry long multi-line texts)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def session_options(options: Mapping[str, Any], overrides: Mapping[str, int] | None = None):
    """ORT SessionOptions from runner options (module docstring); `overrides` fix symbolic dims by name."""
    ort = import_ort()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    level = options.get("optimization", "all")
    if level not in levels:
        raise ConfigError(f"unknown optimization level {level!r} (known: {', '.join(levels)})")
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[level]
    so.intra_op_num_threads = int(options.get("threads", DEFAULT_CPU_THREADS))
    so.inter_op_num_threads = 1  # graphs are chains of ops: no parallel branches to run
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Errors only: ORT's warnings (e.g. nodes placed on the CPU EP) are not actionable by our users.
    so.log_severity_level = 3
    spinning = bool(options.get("spinning", DEFAULT_SPINNING))
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.enable_cpu_mem_arena = bool(options.get("arena", DEFAULT_ARENA))
    so.enable_mem_pattern = bool(options.get("mem_pattern", DEFAULT_MEM_PATTERN))
    if not options.get("prepacking", DEFAULT_PREPACKING):
        so.add_session_config_entry("session.disable_prepacking", "1")
    for name, value in (overrides or {}).items():
        # Fixed dims let ORT fold the shape arithmetic into constants (a static graph to capture).
        so.add_free_dimension_override_by_name(name, int(value))
    return so


def conv_defaults(precision: str) -> tuple[bool, str]:
    """(prefer_nhwc, conv_algo_search) by model precision, as measured (module docstring)."""
    return (True, "HEURISTIC") if precision == "fp16" else (False, "EXHAUSTIVE")


def cuda_provider_options(options: Mapping[str, Any], extra: Mapping[str, str] | None = None,
                          precision: str = "fp32") -> dict[str, str]:
    """CUDA EP provider options from runner options (validated; values as the strings ORT takes)."""
    nhwc, search = conv_defaults(precision)
    nhwc = bool(options.get("prefer_nhwc", nhwc))
    search = str(options.get("conv_algo_search", search)).upper()
    if search not in CONV_ALGO_SEARCH:
        raise ConfigError(f"conv_algo_search must be one of {', '.join(CONV_ALGO_SEARCH)}, got {search!r}")
    provider = {
        "device_id": str(int(options.get("device_id", 0))),
        # TF32 would trade fp32 parity (1e-5) for speed: off unless asked for.
        "use_tf32": "1" if options.get("tf32", False) else "0",
        "prefer_nhwc": "1" if nhwc else "0",
        "cudnn_conv_algo_search": search,
        "cudnn_conv_use_max_workspace": "1",  # lets cuDNN pick its fastest algorithms (ORT's default too)
        # Measured with NHWC fp16 only; with NCHW fp16 convs cuDNN's frontend found no plan (an error).
        "fuse_conv_bias": "1" if options.get("fuse_conv_bias", nhwc and precision == "fp16") else "0",
    }
    provider.update(extra or {})
    return provider


def providers(provider: str, options: Mapping[str, Any], precision: str = "fp32",
              extra: Mapping[str, str] | None = None) -> list[Any]:
    """The provider list for a session on `provider` (CPU or CUDA); `extra` adds CUDA EP options."""
    if provider == CPU:
        return [CPU]
    return [(CUDA, cuda_provider_options(options, extra, precision)), CPU]


def preload_cuda_libraries() -> None:
    """Load the CUDA/cuDNN libraries shipped as pip packages (or with torch) before the first CUDA session
    (once per process, where this onnxruntime has preload_dlls)."""
    ort = import_ort()
    if hasattr(ort, "preload_dlls") and not _PRELOADED:
        ort.preload_dlls()
        _PRELOADED.append(True)


def build_session(source: str | bytes, spec: GraphSpec, model_file: Path, *, backend: str, provider: str,
                  options: Mapping[str, Any], precision: str = "fp32",
                  overrides: Mapping[str, int] | None = None, provider_extra: Mapping[str, str] | None = None,
                  wrap_errors: bool = True):
    """A checked session for graph `spec` from a file path or serialized model bytes (`model_file` is the
    folder's file, named in errors), on `provider`, with the runner's `options`.

    The files were hash-checked before this, so a session that will not build is a broken export on the
    CPU provider (ModelFormatError), but most likely a missing CUDA library on the GPU one
    (MissingBackendError). wrap_errors=False lets ORT's own exception through (a caller that has a way
    around it)."""
    ort = import_ort()
    where = source if isinstance(source, str) else f"{model_file} (fp32 fallback)"
    # Bad options are the user's ConfigError, raised as such, not as a model that will not load.
    sess_options = session_options(options, overrides)
    chosen = providers(provider, options, precision, provider_extra)
    try:
        # the graphs of a folder with shared weights (weights.bin) share one buffer per tensor on the CPU
        weights = shared_initializers.attach(ort, sess_options, Path(source)) \
            if provider == CPU and isinstance(source, str) else []
        if provider == CUDA:
            preload_cuda_libraries()
        session = ort.InferenceSession(source, sess_options=sess_options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        if not wrap_errors:
            raise
        error = MissingBackendError if provider == CUDA else ModelFormatError
        raise error(f"onnxruntime ({backend}) cannot load {where}: {first_line(exc)}") from exc
    session._vae_deploy_weights = weights  # the shared buffers must outlive the session
    check_names(spec, model_file, session)
    if provider == CUDA and CUDA not in session.get_providers():
        # ORT falls back to CPU when the CUDA libraries fail to load; a CUDA backend must not.
        raise MissingBackendError(
            "backend 'ort-cuda' could not start the CUDA execution provider (no GPU, or CUDA/cuDNN "
            "libraries not found); use --backend ort-cpu, or install onnxruntime-gpu with its CUDA "
            "libraries")
    return session


def check_names(spec: GraphSpec, model_file: Path, session) -> None:
    """The ONNX file must have exactly the spec's names, in order: a swapped file fails here."""
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if got_in != spec.input_names or got_out != spec.output_names:
        raise ModelFormatError(f"{model_file} has inputs {got_in} and outputs {got_out}, "
                               f"the manifest says {spec.input_names} and {spec.output_names}")
