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

The reference's results are cases (`reference_cases`: inputs and the reference's outputs); `compare_cases`
judges a backend against them. Where PyTorch is not installed (an edge device), the cases stored in the
model folder at export (export/golden.py) stand in for the live reference, judged by the same rules.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from vae_deploy.errors import ConfigError, ParityError
from vae_deploy.export.quantize import INT8_NEEDS_REAL_INPUTS
from vae_deploy.runtime.runner import Runner
from vae_deploy.runtime.spec import GraphSpec, TensorSpec, random_inputs
from vae_deploy.video.metrics import psnr_from_mse

REPORTED = "reported"  # the limit of a comparison that is measured but not judged
STATE_OUTPUT = re.compile(r"present_\d+")  # a streaming state output (runtime/spec.py StateSpec)
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

    def merged(self) -> list[Comparison]:
        """The comparisons with each graph's state outputs (present_<i>) merged into one "present_*" row per
        case, the worst over them: a Wan decoder has dozens of state tensors, and a table wants a few rows."""
        rows: list[Comparison] = []
        merged: dict[tuple, Comparison] = {}
        for c in self.comparisons:
            if not STATE_OUTPUT.fullmatch(c.output):
                rows.append(c)
                continue
            key = (c.graph, c.case, c.batch, c.chunk, c.limit)
            m = merged.get(key)
            if m is None:
                merged[key] = m = replace(c, output="present_*")
                rows.append(m)
            else:
                m.max_abs, m.max_rel = max(m.max_abs, c.max_abs), max(m.max_rel, c.max_rel)
                m.psnr_db, m.passed = min(m.psnr_db, c.psnr_db), m.passed and c.passed
        return rows

    def worst(self, comparisons: list[Comparison] | None = None) -> dict[str, dict[str, float]]:
        """Per graph/output: the largest errors and smallest PSNR over the judged cases (int8's random and
        stream cases are only reported: REPORTED), of `comparisons` (default: all of them)."""
        out: dict[str, dict[str, float]] = {}
        for c in self.comparisons if comparisons is None else comparisons:
            if c.limit == REPORTED:
                continue
            w = out.setdefault(f"{c.graph}/{c.output}",
                               {"max_abs": 0.0, "max_rel": 0.0, "min_psnr_db": math.inf})
            w["max_abs"] = max(w["max_abs"], c.max_abs)
            w["max_rel"] = max(w["max_rel"], c.max_rel)
            w["min_psnr_db"] = min(w["min_psnr_db"], c.psnr_db)
        return out

    def error(self) -> ParityError:
        """The one-line error of a failed report: how many comparisons failed and the worst of them."""
        worst = max(self.failures(), key=lambda c: c.max_abs)
        measured = ("NaN or inf values" if math.isinf(worst.max_abs) else  # compare()'s mark for them
                    f"max abs {worst.max_abs:.2e}, PSNR {worst.psnr_db:.1f} dB")
        return ParityError(
            f"parity failed: {len(self.failures())} of {len(self.comparisons)} comparisons over tolerance "
            f"(worst {worst.graph}/{worst.output}, {worst.case} batch {worst.batch}: {measured}, needs "
            f"{worst.limit})")

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
    if not (np.isfinite(a).all() and np.isfinite(r).all()):
        # NaN or inf from either side is a broken output, the worst there is: NaN errors would print as
        # "PSNR nan" and drop out of max()/min() (a failing output shown with error 0 and PSNR inf)
        return math.inf, math.inf, -math.inf
    diff = np.abs(a - r)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(r), REL_FLOOR)).max()) if diff.size else 0.0
    if spec.value_range is not None:
        peak = spec.value_range[1] - spec.value_range[0]
    else:
        peak = float(np.abs(r).max()) if r.size else 1.0
    return max_abs, max_rel, psnr_from_mse(float(np.mean(diff**2)) if diff.size else 0.0, peak or 1.0)


@dataclass
class Case:
    """One reference result to compare a backend with: the graph, the case label ("real", "random" or
    "stream"), the inputs, and the reference's outputs for them (for "stream": its one-call, full-sequence
    result, which the backend must reproduce chunk by chunk)."""

    graph: str
    case: str
    inputs: list[np.ndarray]
    outputs: dict[str, np.ndarray]


class _Checker:
    def __init__(self, backend: Runner, reference: str, precision: str):
        self.backend, self.precision = backend, precision
        self.report = ParityReport(backend.name, reference, precision)

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

    def check(self, case: Case) -> None:
        if case.case == "stream":
            self.stream(case.graph, case.inputs, case.outputs)
        else:
            self.whole(case.graph, case.case, case.inputs, case.outputs)

    def whole(self, graph: str, case: str, inputs: list[np.ndarray], ref: dict) -> None:
        spec = self.backend.graph(graph)
        # A real clip is a whole clip (a first-rule model: first rule, then steps); random inputs of a
        # steady graph check that graph alone, from the zero state, like every other graph.
        if case == "real" and spec.stream_axis:
            got = self.backend.full_sequence(graph, inputs)
        else:
            got = self.backend.run(graph, inputs)
        self.add(spec, case, inputs[0].shape[0], 0, got, ref)

    def stream(self, graph: str, inputs: list[np.ndarray], ref: dict) -> None:
        """Chunked backend stream vs the reference's whole-sequence result."""
        spec = self.backend.graph(graph)
        axis = spec.input_stream_axis(spec.inputs[0])
        for chunk in spec.stream_chunks:
            session = self.backend.open_stream()
            parts = stream_chunks(inputs, axis, chunk, spec.first_length)
            pieces = [session.step(graph, part) for part in parts]
            got = {t.name: np.concatenate([p[t.name] for p in pieces], axis=spec.output_stream_axis(t))
                   for t in spec.outputs}
            self.add(spec, "stream", inputs[0].shape[0], chunk, got, ref)


def stream_chunks(inputs: list[np.ndarray], axis: int, chunk: int,
                  first: int = 0) -> Iterator[list[np.ndarray]]:
    """`inputs` cut along `axis` into chunks of `chunk` (the last may be shorter); a first rule of `first`
    steps makes the first chunk `first` longer, so every later chunk is a whole one."""
    total = inputs[0].shape[axis]
    start, end = 0, min(total, first + chunk)
    while start < total:
        yield [np.take(x, range(start, end), axis=axis) for x in inputs]
        start, end = end, min(total, end + chunk)


def reference_cases(reference: Runner, real_inputs: np.ndarray | None = None,
                    batch_sizes: tuple[int, ...] = (1, 7, 128, 1000), seed: int = 0) -> Iterator[Case]:
    """The reference's results on every case `check_parity` judges, one at a time (lazily, so a large
    batch is held only while it is compared); export/golden.py stores a small set of them.

    Cases: the real inputs (when given) through the encoder, and the reference encoder's mu of them through
    the decoder; then per graph seeded random inputs at each batch size (capped at the graph's
    max_parity_batch), and, for graphs with streaming state, one random clip of several chunks.
    """
    rng = np.random.default_rng(seed)
    encoder, decoder = reference.graph("encoder"), reference.graph("decoder")

    def case(graph: str, label: str, inputs: list[np.ndarray]) -> Case:
        return Case(graph, label, inputs, reference.run(graph, inputs))

    def whole_clip(graph: str, label: str, inputs: list[np.ndarray]) -> Case:
        return Case(graph, label, inputs, reference.full_sequence(graph, inputs))

    # A real clip is a whole clip (real_inputs.py cuts it to a length the model takes): its reference is the
    # model's own whole-clip computation where it has one (an adapted diffusers model's vae.encode/decode).
    real_case = whole_clip if encoder.stream_axis else case
    if real_inputs is not None:
        real = real_case("encoder", "real", [real_inputs.astype(encoder.inputs[0].dtype)])
        yield real
        latents = real.outputs[encoder.outputs[0].name].astype(decoder.inputs[0].dtype)
        yield real_case("decoder", "real", [latents])
    firsts = [reference.graph(g.first_graph) for g in (encoder, decoder) if g.first_graph]
    # the parts of graphs split for tiling (what a tiled stream runs), in the manifest's order
    split = reference.manifest.part_graphs
    parts = [spec for name, spec in reference.manifest.graphs.items() if name in split]
    for graph in (encoder, decoder, *firsts, *parts):
        cap = graph.max_parity_batch or max(batch_sizes)
        for batch in sorted({min(b, cap) for b in batch_sizes}):
            yield case(graph.name, "random", random_inputs(graph, batch, rng))
        if graph.state and graph.stream_axis and graph.stream_chunks:
            # Several chunks of each size plus a shorter last one (after the first rule's steps, if any);
            # chunk sizes are multiples of any stride. The reference computes the whole clip at once.
            frames = graph.first_length + 4 * max(graph.stream_chunks) + min(graph.stream_chunks)
            dims = {graph.stream_axis: frames}
            yield whole_clip(graph.name, "stream",
                             random_inputs(graph, graph.example_env()["batch"], rng, **dims))


def compare_cases(backend: Runner, cases: Iterable[Case], reference: str,
                  log: Callable[[str], None] | None = None) -> ParityReport:
    """Run `backend` on each case's inputs and judge it against the case's reference outputs (the module
    docstring's rules); `reference` names where those outputs came from ("torch", "golden"). `log` gets one
    indented line per case with the seconds the reference and the backend took (a large model's parity
    check runs for minutes)."""
    precision = backend.manifest.precision
    checker = _Checker(backend, reference, precision)
    cases = iter(cases)
    while True:
        started = time.perf_counter()
        case = next(cases, None)  # a live reference computes the case here
        if case is None:
            return checker.report
        computed = time.perf_counter()
        checker.check(case)
        if log is not None:
            log(f"  parity {case.graph} {case.case} (batch {case.inputs[0].shape[0]}): {reference} "
                f"{computed - started:.1f} s, {backend.name} {time.perf_counter() - computed:.1f} s")


def check_parity(backend: Runner, reference: Runner, real_inputs: np.ndarray | None = None,
                 batch_sizes: tuple[int, ...] = (1, 7, 128, 1000), seed: int = 0,
                 log: Callable[[str], None] | None = None) -> ParityReport:
    """Compare `backend` with `reference` (the torch runner) on every graph; see the module docstring.

    real_inputs: a batch of real encoder inputs (e.g. MNIST test images, float32 NCHW in [0, 1]); the
    decoder's real case decodes the reference encoder's mu of the same batch.
    """
    if backend.manifest.precision == "int8" and real_inputs is None:
        raise ConfigError(INT8_NEEDS_REAL_INPUTS)
    return compare_cases(backend, reference_cases(reference, real_inputs, batch_sizes, seed), reference.name,
                         log)


def check_golden(backend: Runner, cases: list[Case]) -> ParityReport:
    """Compare `backend` with reference outputs stored at export (export/golden.py), by the same rules as
    check_parity; the report's reference is "golden"."""
    if backend.manifest.precision == "int8" and not any(c.case == "real" for c in cases):
        raise ConfigError(INT8_NEEDS_REAL_INPUTS)
    return compare_cases(backend, cases, "golden")
