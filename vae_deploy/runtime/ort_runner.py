"""ONNX Runtime runners: `ort-cpu` (OrtCpuRunner) and what it shares with `ort-cuda` (OrtRunner).

One session per graph, built by runtime/ort_session.py (which imports onnxruntime, when one of these runners
is built, and documents the session options: threads, spinning, optimization). `ort-cuda`'s IO binding and
CUDA graphs are runtime/ort_cuda.py. Options handled here:
    fp16_guard      fp16 model folders: detect NaN/inf/out-of-range outputs and rerun that stage in fp32
                    from then on, with one warning (runtime/fp16_guard.py; default True)
    shrink_arena    hand the CPU arena's free memory back after every call (default False; with arena)
ort-cpu only (defaults: runtime/cpu_memory.py's CPU_MEMORY_DEFAULTS, chosen by measurement,
benchmarks/results/runtime_memory.md; arena, mem_pattern and prepacking are session options, ort_session.py):
    bind_state      streams keep their state in ORT buffers, written in place through IO binding
                    (runtime/ort_bound_state.py; default True)
    call_steps      a stream runs its stateful graphs at most this many steps of the stream axis per call
                    (its smallest multiple: a latent frame, or Wan's 4 frames); 0: the whole chunk in one
                    call. Default 1
    mmap_threshold  bytes from which glibc maps each allocation by itself and unmaps it when freed
                    (process-wide; 0: glibc's own). Default 1 MiB
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vae_deploy.errors import ConfigError, ParityError
from vae_deploy.runtime.cpu_features import cpu_problem
from vae_deploy.runtime.cpu_memory import CPU_MEMORY_DEFAULTS, set_mmap_threshold
from vae_deploy.runtime.fp16_guard import Fp16Guard, inspect_arrays, upcast_to_fp32
from vae_deploy.runtime.ort_bound_state import BoundStateStream, StateSlots, bound_call
from vae_deploy.runtime.ort_session import CPU, DEFAULT_ARENA, build_session, import_ort
from vae_deploy.runtime.runner import Runner, module_available
from vae_deploy.runtime.spec import GraphSpec


def run_options(ort, options: Mapping[str, Any]):
    """ORT RunOptions from runner options: `shrink_arena` hands the CPU arena's free chunks back after each
    call (its high-water mark is otherwise held for the session's life)."""
    run = ort.RunOptions()
    arena = options.get("arena", DEFAULT_ARENA)  # ORT refuses to shrink an arena that is not there
    if arena and options.get("shrink_arena", False):
        run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return run


class OrtRunner(Runner):
    """ONNX Runtime sessions on `execution_provider`, with the fp16 fallback. Subclasses change how a graph
    is loaded (`_load_graph`) and run; the session building and the fallback's fp32 graph are shared."""

    execution_provider = CPU  # ort_session.CPU or ort_session.CUDA
    OPTIONS = {"threads": int, "spinning": bool, "optimization": str, "fp16_guard": bool, "arena": bool,
               "mem_pattern": bool, "prepacking": bool, "shrink_arena": bool}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not module_available("onnxruntime"):
            return "onnxruntime is not installed"
        return None

    def _load(self) -> None:
        self._ort = import_ort()
        self._run_options = run_options(self._ort, self.options)
        self._guard = Fp16Guard(self.name, self.manifest.precision == "fp16"
                                and bool(self.options.get("fp16_guard", True)))
        self._sessions = {}
        self._output_names = {}
        self._fallback_sessions = {}
        # A graph split in parts is loaded whole; its parts (each weight a second time in memory) only
        # when a tiled stream first runs them
        self._unloaded = self.manifest.part_graphs
        for name, spec in self.manifest.graphs.items():
            if name not in self._unloaded:
                self._load_graph(name, str(self.model_dir / spec.file))

    def _loaded(self, graph: str) -> None:
        """Load `graph` now if it was left for its first use (a part of a split graph)."""
        if graph in self._unloaded:
            self._unloaded = self._unloaded - {graph}
            self._load_graph(graph, str(self.model_dir / self.manifest.graph(graph).file))

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

    def _session(self, graph: str):
        """The session `graph` runs on: its fp32 fallback once the fp16 guard chose it, else its own."""
        self._loaded(graph)
        return self._fallback_sessions.get(graph) or self._sessions[graph]

    def _fall_back_if_bad(self, graph: str, outputs: Mapping[str, np.ndarray]) -> bool:
        """After a call of `graph`: when the fp16 guard finds its outputs bad, switch the graph to its fp32
        fallback session (the caller reruns the call) and return True."""
        if not self._guard.watching(graph):
            return False
        reason = inspect_arrays(self.graph(graph), outputs)
        if not reason:
            return False
        self._guard.fall_back(graph, reason)
        self._fallback_sessions[graph] = self._make_session(graph, self._fallback_source(graph))
        return True

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._loaded(graph)
        names = self._output_names[graph]
        outputs = dict(zip(names, self._session(graph).run(names, feeds, self._run_options), strict=True))
        if self._fall_back_if_bad(graph, outputs):
            outputs = dict(zip(names, self._session(graph).run(names, feeds, self._run_options), strict=True))
        return outputs

    def _close(self) -> None:
        self._sessions.clear()
        self._fallback_sessions.clear()


class OrtCpuRunner(OrtRunner):
    name = "ort-cpu"
    install_hint = "onnxruntime (pip install onnxruntime)"
    stream_threads = True
    stream_options = {"spinning": False}
    OPTIONS = {**OrtRunner.OPTIONS, "bind_state": bool, "call_steps": int, "mmap_threshold": int}

    def open_stream(self):
        """A stream whose state stays in ORT buffers between chunks (runtime/ort_bound_state.py), unless
        bind_state=False: then each chunk's present_i come back as numpy and are fed back as past_i."""
        if self.options["bind_state"]:
            return BoundStateStream(self)
        return super().open_stream()

    def call_limit(self, spec: GraphSpec) -> int | None:
        steps = self.options["call_steps"]
        if not steps or not spec.state or not spec.stream_axis:
            return None
        return steps * spec.dim_multiples.get(spec.stream_axis, 1)

    def _bound_call(self, spec, arrays: dict[str, np.ndarray], slots: StateSlots) -> dict[str, np.ndarray]:
        """One bound call of a stateful graph (BoundStateStream), with the fp16 guard's fallback."""
        outputs = bound_call(self._session(spec.name), spec, arrays, slots, self._run_options)
        if self._fall_back_if_bad(spec.name, outputs):
            outputs = bound_call(self._session(spec.name), spec, arrays, slots, self._run_options)
        return outputs

    def _load(self) -> None:
        # An int8 graph whose products saturate on this CPU runs, but out of parity: refuse it up front,
        # naming the cause (runtime/cpu_features.py), rather than stream wrong frames.
        problem = cpu_problem(self.manifest)
        if problem:
            raise ParityError(problem)
        self.options = {**CPU_MEMORY_DEFAULTS, **self.options}
        for name in ("call_steps", "mmap_threshold"):
            if self.options[name] < 0:
                raise ConfigError(f"{self.name}: option {name!r} must be 0 or more, got {self.options[name]}")
        set_mmap_threshold(self.options["mmap_threshold"])
        super()._load()
