"""ONNX Runtime runners: `ort-cpu` (OrtCpuRunner) and what it shares with `ort-cuda` (OrtRunner).

One session per graph, built by runtime/ort_session.py (which imports onnxruntime, when one of these runners
is built, and documents the session options: threads, spinning, optimization). `ort-cuda`'s IO binding and
CUDA graphs are runtime/ort_cuda.py. Options handled here:
    fp16_guard      fp16 model folders: detect NaN/inf/out-of-range outputs and rerun that stage in fp32
                    from then on, with one warning (runtime/fp16_guard.py; default True)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vae_deploy.errors import ParityError
from vae_deploy.runtime.cpu_features import cpu_problem
from vae_deploy.runtime.fp16_guard import Fp16Guard, inspect_arrays, upcast_to_fp32
from vae_deploy.runtime.ort_session import CPU, build_session
from vae_deploy.runtime.runner import Runner, module_available


class OrtRunner(Runner):
    """ONNX Runtime sessions on `execution_provider`, with the fp16 fallback. Subclasses change how a graph
    is loaded (`_load_graph`) and run; the session building and the fallback's fp32 graph are shared."""

    execution_provider = CPU  # ort_session.CPU or ort_session.CUDA
    OPTIONS = {"threads": int, "spinning": bool, "optimization": str, "fp16_guard": bool}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not module_available("onnxruntime"):
            return "onnxruntime is not installed"
        return None

    def _load(self) -> None:
        self._guard = Fp16Guard(self.name, self.manifest.precision == "fp16"
                                and bool(self.options.get("fp16_guard", True)))
        self._sessions = {}
        self._output_names = {}
        self._fallback_sessions = {}
        for name, spec in self.manifest.graphs.items():
            self._load_graph(name, str(self.model_dir / spec.file))

    def _load_graph(self, graph: str, path: str) -> None:
        session = self._make_session(graph, path)
        self._sessions[graph] = session
        self._output_names[graph] = [o.name for o in session.get_outputs()]

    def _make_session(self, graph: str, source: str | bytes, overrides: Mapping[str, int] | None = None,
                      provider_extra: Mapping[str, str] | None = None, wrap_errors: bool = True):
        """A checked session for `graph` from a file path or serialized model bytes (ort_session.build_session
        with this runner's provider, options and folder)."""
        spec = self.manifest.graph(graph)
        return build_session(source, spec, self.model_dir / spec.file, backend=self.name,
                             provider=self.execution_provider, options=self.options,
                             precision=self.manifest.precision, overrides=overrides,
                             provider_extra=provider_extra, wrap_errors=wrap_errors)

    def _fallback_source(self, graph: str) -> bytes:
        """The fp32 version of an fp16 graph (fp16_guard.upcast_to_fp32), serialized for a session."""
        import onnx

        spec = self.manifest.graph(graph)
        return upcast_to_fp32(onnx.load(str(self.model_dir / spec.file))).SerializeToString()

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self._output_names[graph]
        session = self._fallback_sessions.get(graph) or self._sessions[graph]
        outputs = dict(zip(names, session.run(names, feeds), strict=True))
        if self._guard.watching(graph):
            reason = inspect_arrays(self.graph(graph), outputs)
            if reason:
                self._guard.fall_back(graph, reason)
                session = self._make_session(graph, self._fallback_source(graph))
                self._fallback_sessions[graph] = session
                outputs = dict(zip(names, session.run(names, feeds), strict=True))
        return outputs

    def _close(self) -> None:
        self._sessions.clear()
        self._fallback_sessions.clear()


class OrtCpuRunner(OrtRunner):
    name = "ort-cpu"
    install_hint = "onnxruntime (pip install onnxruntime)"
    stream_threads = True

    def _load(self) -> None:
        # An int8 graph whose products saturate on this CPU runs, but out of parity: refuse it up front,
        # naming the cause (runtime/cpu_features.py), rather than stream wrong frames.
        problem = cpu_problem(self.manifest)
        if problem:
            raise ParityError(problem)
        super()._load()
