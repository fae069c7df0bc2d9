"""ONNX Runtime backends: `ort-cpu` and `ort-cuda` (one session per graph).

onnxruntime is imported here only, when one of these runners is built. Session settings are options:
    threads         intra-op threads (CPU EP); default 0 = ORT's choice, one per physical core
    spinning        idle intra-op threads spin briefly before sleeping (ORT's default; default True)
    optimization    graph optimization level: "disable" | "basic" | "extended" | "all" (default "all")
Defaults chosen by measurement (benchmarks/results/runtime_speed.md, MLP VAE on the shared 2-core machine):
one thread per core with spinning was fastest or tied at batch 1 and 128, and clearly fastest at batch 128
when the cores were free (spinning threads pick up the next op without a wake-up); at batch 8192 on cores
busy with other processes, spinning lost to threads=1 or spinning=False, which are options for that case.
ort-cuda's GPU tuning (IO binding, CUDA graphs, fp16 NHWC) comes with the GPU issue; here it runs the same
numpy-in/numpy-out contract on the CUDA execution provider and refuses to fall back to CPU silently.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vae_deploy.errors import ConfigError, MissingBackendError, ModelFormatError
from vae_deploy.runtime.runner import Runner, module_available

DEFAULT_CPU_THREADS = 0  # 0: ORT picks one per physical core
DEFAULT_SPINNING = True


def _ort():
    import onnxruntime

    return onnxruntime


class OrtRunner(Runner):
    providers: list[Any] = ["CPUExecutionProvider"]
    # The files were hash-checked before this, so a session that will not build is a broken export on the
    # CPU provider, but most likely a missing CUDA library on the GPU one.
    session_error: type[Exception] = ModelFormatError

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not module_available("onnxruntime"):
            return "onnxruntime is not installed"
        return None

    def _session_options(self):
        ort = _ort()
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        level = self.options.get("optimization", "all")
        if level not in levels:
            raise ConfigError(f"unknown optimization level {level!r} (known: {', '.join(levels)})")
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[level]
        so.intra_op_num_threads = int(self.options.get("threads", DEFAULT_CPU_THREADS))
        so.inter_op_num_threads = 1  # graphs are chains of ops: no parallel branches to run
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Errors only: ORT's warnings (e.g. nodes placed on the CPU EP) are not actionable by our users.
        so.log_severity_level = 3
        spinning = bool(self.options.get("spinning", DEFAULT_SPINNING))
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        return so

    def _load(self) -> None:
        ort = _ort()
        so = self._session_options()
        self._sessions = {}
        self._output_names = {}
        for name, spec in self.manifest.graphs.items():
            path = self.model_dir / spec.file
            try:
                session = ort.InferenceSession(str(path), sess_options=so, providers=self._providers())
            except Exception as exc:  # onnxruntime raises its own pybind exception types
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise self.session_error(f"onnxruntime ({self.name}) cannot load {path}: {first}") from None
            self._check_session(name, spec, session)
            self._sessions[name] = session
            self._output_names[name] = [o.name for o in session.get_outputs()]

    def _providers(self) -> list[Any]:
        return list(self.providers)

    def _check_session(self, name, spec, session) -> None:
        """The ONNX file must have exactly the spec's names, in order: a swapped file fails here."""
        got_in = [i.name for i in session.get_inputs()]
        got_out = [o.name for o in session.get_outputs()]
        if got_in != spec.input_names or got_out != spec.output_names:
            raise ModelFormatError(f"{self.model_dir / spec.file} has inputs {got_in} and outputs {got_out}, "
                                   f"the manifest says {spec.input_names} and {spec.output_names}")

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self._output_names[graph]
        return dict(zip(names, self._sessions[graph].run(names, feeds), strict=True))

    def _close(self) -> None:
        self._sessions.clear()


class OrtCpuRunner(OrtRunner):
    name = "ort-cpu"
    install_hint = "onnxruntime"


class OrtCudaRunner(OrtRunner):
    name = "ort-cuda"
    install_hint = "onnxruntime-gpu"
    session_error = MissingBackendError

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = super().unavailable_reason()
        if reason:
            return reason
        ort = _ort()
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime build has no CUDAExecutionProvider (the CPU-only package is installed)"
        return None

    def _providers(self) -> list[Any]:
        ort = _ort()
        if hasattr(ort, "preload_dlls"):
            # Loads the CUDA/cuDNN libraries shipped as pip packages (or with torch) before the first session.
            ort.preload_dlls()
        # TF32 would trade fp32 parity (1e-5) for speed: off, the reference contract comes first.
        options = {"device_id": int(self.options.get("device_id", 0)), "use_tf32": 0}
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]

    def _check_session(self, name, spec, session) -> None:
        super()._check_session(name, spec, session)
        if "CUDAExecutionProvider" not in session.get_providers():
            # ORT falls back to CPU when the CUDA libraries fail to load; a CUDA backend must not.
            raise MissingBackendError(
                "backend 'ort-cuda' could not start the CUDA execution provider (no GPU, or CUDA/cuDNN "
                "libraries not found); use --backend ort-cpu, or install onnxruntime-gpu with its CUDA "
                "libraries")
