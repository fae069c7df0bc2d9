"""Graph I/O as data: one `GraphSpec` per exported graph (names, shapes, dtypes, state, tolerance).

The same spec drives export (input/output names, dynamic axes), validation at the runtime API (shapes,
dtypes, NaN), the streaming state (past/present tensors) and TensorRT optimization profiles
(`GraphSpec.profile_shapes`; Optimum's OnnxConfig is the model for this). Specs live in the runtime layer,
not in export, because the manifest that carries them is read here without torch; export/specs.py builds
them per model kind.

Dimensions are ints (fixed) or strings (symbolic). A string that is a plain identifier ("batch", "frames",
"height") is bound from the arrays handed to a graph; any other string is an integer expression over those
identifiers ("height//8", "frames*4", "(height+1)//2") that is evaluated, so state shapes that are functions
of the batch and spatial size can be written down once and resolved for each stream.
"""

from __future__ import annotations

import ast
import functools
import operator
from dataclasses import dataclass, field

import numpy as np

from vae_deploy.errors import ConfigError, InputShapeError

Dim = int | str

# Integer arithmetic only: enough for conv/stride shape formulas, nothing that can run code.
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv}


@functools.lru_cache(maxsize=1024)  # every call checks shapes: parse each formula once
def _parse(expr: str) -> ast.expr:
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise ConfigError(f"dimension {expr!r} is not an integer expression") from None
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.USub, *_BINOPS)) or (
            isinstance(node, ast.Constant) and type(node.value) is int)
        if not ok:
            raise ConfigError(f"dimension {expr!r} may only use identifiers, integers and + - * //")
    return tree


def dim_symbols(dim: Dim) -> set[str]:
    """Identifiers a dimension depends on (empty for a fixed dimension)."""
    if isinstance(dim, int):
        return set()
    return {n.id for n in ast.walk(_parse(dim)) if isinstance(n, ast.Name)}


def is_identifier(dim: Dim) -> bool:
    return isinstance(dim, str) and dim.isidentifier()


def eval_dim(dim: Dim, env: dict[str, int]) -> int:
    """Value of `dim` given symbol values; KeyError names a missing symbol."""
    if isinstance(dim, int):
        return dim

    def walk(node: ast.expr) -> int:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.UnaryOp):
            return -walk(node.operand)
        return _BINOPS[type(node.op)](walk(node.left), walk(node.right))

    return int(walk(_parse(dim)))


def format_shape(shape: tuple[Dim, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


class SymDim:
    """A symbolic dimension that records arithmetic as an expression string.

    Lets a model's own shape function (e.g. `encoder_state_shapes(batch, height, width)`) be called with
    symbols instead of numbers, so the manifest gets the formula, not one example's value.
    """

    def __init__(self, expr: str | int):
        self.expr = str(expr)

    def _op(self, other: object, op: str, reflected: bool = False) -> SymDim:
        if not isinstance(other, (SymDim, int)) or isinstance(other, bool):
            return NotImplemented
        # Identities keep the recorded formulas readable: x*1, x//1, x+0, x-0 are x.
        identity = {"*": 1, "+": 0} if reflected else {"*": 1, "//": 1, "+": 0, "-": 0}
        if isinstance(other, int) and identity.get(op) == other:
            return self
        left, right = (other, self) if reflected else (self, other)
        text = f"({_text(left)}){op}({_text(right)})"
        return SymDim(ast.unparse(ast.parse(text, mode="eval")).replace(" ", ""))

    def __add__(self, o): return self._op(o, "+")
    def __radd__(self, o): return self._op(o, "+", True)
    def __sub__(self, o): return self._op(o, "-")
    def __rsub__(self, o): return self._op(o, "-", True)
    def __mul__(self, o): return self._op(o, "*")
    def __rmul__(self, o): return self._op(o, "*", True)
    def __floordiv__(self, o): return self._op(o, "//")
    def __rfloordiv__(self, o): return self._op(o, "//", True)
    def __neg__(self): return SymDim(ast.unparse(ast.parse(f"-({self.expr})", mode="eval")).replace(" ", ""))

    def __repr__(self) -> str:
        return f"SymDim({self.expr!r})"


def _text(value: SymDim | int) -> str:
    return value.expr if isinstance(value, SymDim) else str(value)


def as_dim(value: SymDim | int | str) -> Dim:
    """SymDim -> its expression string; ints and strings pass through."""
    return value.expr if isinstance(value, SymDim) else value


@dataclass
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # ints are fixed, strings symbolic (see the module docstring)
    dtype: str = "float32"  # numpy dtype name at the graph boundary
    layout: str = ""  # e.g. "NCHW" images, "NTCHW" video, "NC" latents; "" when not meaningful
    value_range: tuple[float, float] | None = None  # (0, 1) for images; None for unbounded (latents)

    def __post_init__(self):
        self.shape = tuple(as_dim(d) for d in self.shape)
        for d in self.shape:
            dim_symbols(d)  # refuses a malformed expression now, not at the first run
        if self.layout and len(self.layout) != len(self.shape):
            raise ConfigError(f"tensor {self.name}: layout {self.layout} does not match shape {self.shape}")

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Axis index -> symbolic name, as torch.onnx.export's dynamic_axes wants it."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def resolve(self, env: dict[str, int]) -> tuple[int, ...]:
        return tuple(eval_dim(d, env) for d in self.shape)


@dataclass
class StateSpec:
    """One streaming state tensor: fed as `input` (past_i), returned updated as `output` (present_i)."""

    input: str
    output: str
    shape: tuple[int | str, ...]  # a function of the graph inputs' symbols (batch, height, ...)
    dtype: str = "float32"
    initial: str = "zeros"  # the value before the first chunk; the streaming contract fixes zeros

    def __post_init__(self):
        self.shape = tuple(as_dim(d) for d in self.shape)
        if self.initial != "zeros":
            raise ConfigError(f"state {self.input}: initial value must be 'zeros', got {self.initial!r}")

    def as_input(self) -> TensorSpec:
        return TensorSpec(self.input, self.shape, self.dtype)

    def as_output(self) -> TensorSpec:
        return TensorSpec(self.output, self.shape, self.dtype)


@dataclass
class Tolerance:
    max_abs: float = 1e-5  # fp32 graphs: max |backend - torch| on every output (the floor)
    min_psnr_db: float = 50.0  # reduced precision (fp16): PSNR of every output vs the fp32 reference


@dataclass
class GraphSpec:
    name: str  # "encoder" / "decoder"; the graph file is <name>.onnx
    inputs: list[TensorSpec]  # data inputs, in graph order (state inputs follow them)
    outputs: list[TensorSpec]  # results, in graph order (state outputs follow them)
    state: list[StateSpec] = field(default_factory=list)  # empty for stateless models (the MLP)
    tolerance: Tolerance = field(default_factory=Tolerance)
    method: str = ""  # model method computing the graph: method(*inputs, *past) -> (*outputs, *present)
    example_dims: dict[str, int] = field(default_factory=dict)  # symbol values for tracing and random inputs
    stream_axis: str = ""  # symbol of the axis a stream is chunked along ("frames"); "" if not streamable
    stream_chunks: tuple[int, ...] = ()  # chunk sizes the parity check feeds through a stream
    dim_multiples: dict[str, int] = field(default_factory=dict)  # e.g. {"height": 8}: strided convs need it
    # Symbols of this graph as formulas of a profile's symbols, for TensorRT ranges given per video
    # frame size: a decoder's {"latent_h": "height//8"}.
    derived_dims: dict[str, str] = field(default_factory=dict)
    # Largest random batch the parity check feeds (0: no cap): 1000 video clips would take minutes on a
    # CPU and prove nothing more than 2; bigger requested batches are clamped to this.
    max_parity_batch: int = 0
    # A stream's first chunk with its own rule (Wan: the first latent frame comes from 1 frame, later ones
    # from 4): the graph that computes it and how many steps along stream_axis it takes. That graph has no
    # state inputs; its outputs are this graph's data outputs followed by this graph's present_i, which the
    # stream then carries into this graph. "" / 0: every chunk, the first included, runs this graph.
    first_graph: str = ""
    first_length: int = 0
    # The ONNX exporter that wrote the graph file, recorded at export (export/onnx_export.py): "dynamo"
    # (torch.export-based) or "torchscript" (the legacy tracer); "" in manifests written before it was recorded
    # (the legacy exporter made every graph then). Informational: nothing at run time depends on it.
    exporter: str = ""
    # Graphs this one is the composition of, in the order they run (a LatentSplit model's parts, e.g.
    # decoder = decoder_latents then decoder_pixels): the first's data output is the second's data input,
    # and this graph's state is theirs, in order. Export joins their files into this one; the tiled stream
    # runs the parts (runtime/tiled_stream.py). Empty for a graph exported whole.
    parts: tuple[str, ...] = ()

    def __post_init__(self):
        names = self.input_names + self.output_names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"graph {self.name}: tensor names used twice: {', '.join(dupes)}")
        bound = self.bound_symbols
        for st in self.state:
            missing = set().union(*(dim_symbols(d) for d in st.shape)) - bound
            if missing:
                raise ConfigError(f"graph {self.name}: state {st.input} uses {', '.join(sorted(missing))}, "
                                  f"which no input dimension defines")

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs] + [s.input for s in self.state]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs] + [s.output for s in self.state]

    @property
    def all_inputs(self) -> list[TensorSpec]:
        return list(self.inputs) + [s.as_input() for s in self.state]

    @property
    def all_outputs(self) -> list[TensorSpec]:
        return list(self.outputs) + [s.as_output() for s in self.state]

    @property
    def bound_symbols(self) -> set[str]:
        """Symbols fixed by the data inputs' plain-identifier dimensions."""
        return {d for t in self.inputs for d in t.shape if is_identifier(d)}

    def whole_length(self, n: int) -> int:
        """The longest whole clip of at most `n` steps along the stream axis this graph takes: a multiple of
        its stride, after the first rule's steps when it has one (Wan: 1 + 4k frames); 0 if none fits."""
        step = self.dim_multiples.get(self.stream_axis, 1)
        first = self.first_length
        if n < first:
            return 0
        return first + (n - first) // step * step

    def input_stream_axis(self, tensor: TensorSpec) -> int:
        """The axis of a data input that `stream_axis` names."""
        return list(tensor.shape).index(self.stream_axis)

    def output_stream_axis(self, tensor: TensorSpec) -> int:
        """The axis of an output that grows with the stream axis (e.g. "latent_frames*4"): where the
        results of successive chunks are concatenated."""
        for axis, d in enumerate(tensor.shape):
            if self.stream_axis in dim_symbols(d):
                return axis
        raise ConfigError(f"output {tensor.name} of {self.name} has no {self.stream_axis} axis to "
                          f"concatenate stream chunks along")

    def expected(self, tensor: TensorSpec) -> str:
        return f"{tensor.dtype} {format_shape(tensor.shape)}"

    def bind(self, arrays: dict[str, np.ndarray]) -> dict[str, int]:
        """Check the data inputs against the spec and return the symbol values they fix.

        Order of checks (each error names the expected shape): presence, dtype, rank, fixed dims,
        consistent symbols, derived expressions, then NaN/inf values.
        """
        missing = [t.name for t in self.inputs if t.name not in arrays]
        if missing:
            raise InputShapeError(f"{self.name}: missing input {', '.join(missing)} "
                                  f"(expects {', '.join(t.name for t in self.inputs)})")
        env: dict[str, int] = {}
        where: dict[str, str] = {}
        for t in self.inputs:
            a = arrays[t.name]
            what = f"{self.name} input '{t.name}' must be {self.expected(t)}"
            if not isinstance(a, np.ndarray):
                raise InputShapeError(f"{what}, got a {type(a).__name__}, not a numpy array")
            if a.dtype != np.dtype(t.dtype):
                raise InputShapeError(f"{what}, got dtype {a.dtype}")
            if a.ndim != len(t.shape):
                raise InputShapeError(f"{what}, got shape {a.shape} ({a.ndim} dims instead of "
                                      f"{len(t.shape)})")
            for axis, (d, n) in enumerate(zip(t.shape, a.shape, strict=True)):
                if isinstance(d, int) and d != n:
                    raise InputShapeError(f"{what}, got shape {a.shape} (axis {axis} is {n}, not {d})")
                if is_identifier(d):
                    if n < 1:
                        raise InputShapeError(f"{what}, got shape {a.shape} (empty axis {axis})")
                    if d in env and env[d] != n:
                        raise InputShapeError(f"{what}, got shape {a.shape}: {d} is {n} here but {env[d]} in "
                                              f"'{where[d]}'")
                    env[d], where[d] = n, t.name
        for t in self.inputs:
            a = arrays[t.name]
            for axis, (d, n) in enumerate(zip(t.shape, a.shape, strict=True)):
                if isinstance(d, str) and not is_identifier(d) and eval_dim(d, env) != n:
                    raise InputShapeError(f"{self.name} input '{t.name}' must be {self.expected(t)}, got "
                                          f"shape {a.shape} (axis {axis} must be {d} = {eval_dim(d, env)})")
        for symbol, multiple in self.dim_multiples.items():
            if symbol in env and env[symbol] % multiple:
                t = next(t for t in self.inputs if symbol in t.shape)
                raise InputShapeError(f"{self.name} input '{t.name}' must be {self.expected(t)} with "
                                      f"{symbol} a multiple of {multiple}, got shape {arrays[t.name].shape}")
        for t in self.inputs:
            check_finite(arrays[t.name], f"{self.name} input '{t.name}'")
        return env

    def state_shapes(self, env: dict[str, int]) -> list[tuple[int, ...]]:
        return [tuple(eval_dim(d, env) for d in st.shape) for st in self.state]

    def zero_state(self, env: dict[str, int]) -> dict[str, np.ndarray]:
        """The initial state: zeros, shaped for the batch/spatial size in `env`."""
        shapes = self.state_shapes(env)
        return {st.input: np.zeros(shape, dtype=st.dtype)
                for st, shape in zip(self.state, shapes, strict=True)}

    def example_env(self, batch: int | None = None) -> dict[str, int]:
        """Symbol values for a made-up input: example_dims, batch overridden; missing ones default to 2."""
        env = {s: 2 for s in self.bound_symbols}
        env.update(self.example_dims)
        if batch is not None:
            env["batch"] = batch
        return env

    def profile_shapes(self, ranges: dict[str, tuple[int, int, int]]
                       ) -> dict[str, tuple[tuple[int, ...], ...]]:
        """(min, opt, max) shape of every graph input (state included) for a TensorRT optimization profile.

        `ranges` maps each symbol to (min, opt, max); symbols without a range use example_dims for all three.
        """
        env3 = []
        for i in range(3):
            env = self.example_env()
            env.update({k: v[i] for k, v in ranges.items()})
            for symbol, formula in self.derived_dims.items():
                if symbol not in ranges and dim_symbols(formula) <= set(ranges):
                    env[symbol] = max(1, eval_dim(formula, env))
            env3.append(env)
        return {t.name: tuple(t.resolve(env) for env in env3) for t in self.all_inputs}


def random_inputs(spec: GraphSpec, batch: int, rng: np.random.Generator, **dims: int) -> list[np.ndarray]:
    """Made-up data inputs for `spec` at `batch` (other symbols from example_dims, overridden by `dims`):
    uniform in the tensor's value range (images), else standard normal (latents, as drawn from the prior)."""
    env = spec.example_env(batch)
    env.update(dims)
    arrays = []
    for t in spec.inputs:
        shape = t.resolve(env)
        if t.value_range is not None:
            a = rng.uniform(*t.value_range, size=shape)
        else:
            a = rng.standard_normal(shape)
        arrays.append(a.astype(t.dtype))
    return arrays


def check_finite(array: np.ndarray, what: str) -> None:
    """Refuse NaN/inf in a float array, saying how many and where the first one is."""
    if array.dtype.kind != "f" or np.isfinite(array).all():
        return
    nan = int(np.isnan(array).sum())
    inf = int(np.isinf(array).sum())
    first = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
    parts = [f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else ""]
    raise InputShapeError(f"{what} contains {' and '.join(p for p in parts if p)} value(s) (first at index "
                          f"{first}); refusing to propagate them")
