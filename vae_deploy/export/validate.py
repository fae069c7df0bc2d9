"""Parity of a backend against the PyTorch reference: the code behind `vae-deploy verify` and the report
export stores in the manifest.

For each graph and output: max abs error, max relative error and PSNR between backend and reference, on
real inputs (when the caller supplies them), on random inputs at several batch sizes, and, for graphs with
streaming state, on a clip fed in chunks to the backend against the reference's full-sequence result.
Pass rule (the graph spec's tolerance): fp32 graphs need max abs <= tolerance.max_abs on every output;
fp16 graphs need PSNR >= tolerance.min_psnr_db (the reference is always the fp32 PyTorch model). int8
graphs need PSNR >= tolerance.min_psnr_db on the real inputs, which they must be given: their activation
ranges were calibrated on real frames, and uniform noise lies outside them, so their random and stream
cases are measured and reported but not judged (limit "reported").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from vae_deploy.errors import ConfigError
from vae_deploy.export.quantize import INT8_NEEDS_REAL_INPUTS
from vae_deploy.runtime.runner import Runner
from vae_deploy.runtime.spec import GraphSpec, TensorSpec, dim_symbols, random_inputs
from vae_deploy.video.metrics import psnr_from_mse

REPORTED = "reported"  # the limit of a comparison that is measured but not judged
REL_FLOOR = 1e-6  # relative errors divide by max(|reference|, this), so exact zeros do not explode


@dataclass
class Comparison:
    graph: str
    output: str
    case: str  # "real", "random", "stream"
    batch: int
    chunk: int  # stream chunk length along the stream axis; 0 for whole-input calls
    max_abs: float
    max_rel: float
    psnr_db: float
    limit: str  # the rule applied: "abs<=1e-05" (max abs error) or "psnr>=50dB"
    passed: bool


@dataclass
class ParityReport:
    backend: str
    reference: str
    precision: str
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.passed]

    def worst(self) -> dict[str, dict[str, float]]:
        """Per graph/output: the largest errors and smallest PSNR over the judged cases (int8's random and
        stream cases are only reported: REPORTED)."""
        out: dict[str, dict[str, float]] = {}
        for c in self.comparisons:
            if c.limit == REPORTED:
                continue
            w = out.setdefault(f"{c.graph}/{c.output}",
                               {"max_abs": 0.0, "max_rel": 0.0, "min_psnr_db": math.inf})
            w["max_abs"] = max(w["max_abs"], c.max_abs)
            w["max_rel"] = max(w["max_rel"], c.max_rel)
            w["min_psnr_db"] = min(w["min_psnr_db"], c.psnr_db)
        return out

    def to_dict(self) -> dict:
        return {"backend": self.backend, "reference": self.reference, "precision": self.precision,
                "passed": self.passed, "worst": self.worst(),
                "comparisons": [asdict(c) for c in self.comparisons]}


def compare(spec: TensorSpec, got: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(max abs, max rel, PSNR dB) of `got` against `ref`.

    PSNR's peak is the tensor's value range when the spec gives one (images: 1), else the reference's peak
    magnitude max|ref| (peak signal over error power; the data range would be unstable for a batch of one
    2-d latent, where two nearby values make a tiny "range")."""
    a, r = got.astype(np.float64), ref.astype(np.float64)
    if a.shape != r.shape:
        raise ValueError(f"{spec.name}: backend shape {a.shape} vs reference {r.shape}")
    diff = np.abs(a - r)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(r), REL_FLOOR)).max()) if diff.size else 0.0
    if spec.value_range is not None:
        peak = spec.value_range[1] - spec.value_range[0]
    else:
        peak = float(np.abs(r).max()) if r.size else 1.0
    return max_abs, max_rel, psnr_from_mse(float(np.mean(diff**2)) if diff.size else 0.0, peak or 1.0)


class _Checker:
    def __init__(self, backend: Runner, reference: Runner, precision: str):
        self.backend, self.reference, self.precision = backend, reference, precision
        self.report = ParityReport(backend.name, reference.name, precision)

    def judge(self, spec: GraphSpec, case: str, max_abs: float, psnr: float) -> tuple[str, bool]:
        if self.precision == "fp32":
            return f"abs<={spec.tolerance.max_abs:g}", max_abs <= spec.tolerance.max_abs
        if self.precision == "int8" and case != "real":
            return REPORTED, True
        return f"psnr>={spec.tolerance.min_psnr_db:g}dB", psnr >= spec.tolerance.min_psnr_db

    def add(self, spec: GraphSpec, case: str, batch: int, chunk: int, got: dict, ref: dict) -> None:
        for t in spec.all_outputs:
            if t.name not in got:
                continue  # stream results carry no state outputs
            max_abs, max_rel, psnr = compare(t, got[t.name], ref[t.name])
            limit, ok = self.judge(spec, case, max_abs, psnr)
            self.report.comparisons.append(Comparison(spec.name, t.name, case, batch, chunk, max_abs, max_rel,
                                                      psnr, limit, bool(ok)))

    def whole(self, graph: str, case: str, inputs: list[np.ndarray]) -> dict:
        spec = self.backend.graph(graph)
        got = self.backend.run(graph, inputs)
        ref = self.reference.run(graph, inputs)
        self.add(spec, case, inputs[0].shape[0], 0, got, ref)
        return ref

    def stream(self, graph: str, inputs: list[np.ndarray]) -> None:
        """Chunked backend stream vs the reference's one-call (full-sequence) result."""
        spec = self.backend.graph(graph)
        axis = _stream_axis(spec)
        ref = self.reference.run(graph, inputs)
        for chunk in spec.stream_chunks:
            session = self.backend.open_stream()
            total = inputs[0].shape[axis]
            pieces = []
            for start in range(0, total, chunk):
                part = [np.take(x, range(start, min(start + chunk, total)), axis=axis) for x in inputs]
                pieces.append(session.step(graph, part))
            got = {t.name: np.concatenate([p[t.name] for p in pieces], axis=_output_axis(t, spec.stream_axis))
                   for t in spec.outputs}
            self.add(spec, "stream", inputs[0].shape[0], chunk, got, ref)


def _stream_axis(spec: GraphSpec) -> int:
    return list(spec.inputs[0].shape).index(spec.stream_axis)


def _output_axis(t: TensorSpec, symbol: str) -> int:
    for axis, d in enumerate(t.shape):
        if symbol in dim_symbols(d):
            return axis
    raise ValueError(f"output {t.name} has no {symbol} axis to concatenate stream chunks along")


def check_parity(backend: Runner, reference: Runner, real_inputs: np.ndarray | None = None,
                 batch_sizes: tuple[int, ...] = (1, 7, 128, 1000), seed: int = 0) -> ParityReport:
    """Compare `backend` with `reference` (the torch runner) on every graph; see the module docstring.

    real_inputs: a batch of real encoder inputs (e.g. MNIST test images, float32 NCHW in [0, 1]); the
    decoder's real case decodes the reference encoder's mu of the same batch.
    """
    precision = backend.manifest.precision
    if precision == "int8" and real_inputs is None:
        raise ConfigError(INT8_NEEDS_REAL_INPUTS)
    checker = _Checker(backend, reference, precision)
    rng = np.random.default_rng(seed)
    encoder, decoder = backend.graph("encoder"), backend.graph("decoder")
    if real_inputs is not None:
        real = real_inputs.astype(encoder.inputs[0].dtype)
        ref = checker.whole("encoder", "real", [real])
        mu = ref[encoder.outputs[0].name].astype(decoder.inputs[0].dtype)
        checker.whole("decoder", "real", [mu])
    for graph in (encoder, decoder):
        cap = graph.max_parity_batch or max(batch_sizes)
        for batch in sorted({min(b, cap) for b in batch_sizes}):
            checker.whole(graph.name, "random", random_inputs(graph, batch, rng))
        if graph.state and graph.stream_axis and graph.stream_chunks:
            # Several chunks of each size plus a shorter last one; chunk sizes are multiples of any stride.
            frames = 4 * max(graph.stream_chunks) + min(graph.stream_chunks)
            dims = {graph.stream_axis: frames}
            checker.stream(graph.name, random_inputs(graph, graph.example_env()["batch"], rng, **dims))
    return checker.report
