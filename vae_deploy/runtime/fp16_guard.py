"""fp16 safety: detect non-finite or out-of-range outputs of an fp16 graph and fall back to fp32.

The most common complaint about deployed VAE decoders is an fp16 decoder that overflows (65504 is fp16's
largest value) on some input and returns NaN or black frames. Every backend that runs fp16 graphs checks
each call's data outputs (`Fp16Guard.inspect`); on a bad result the affected stage (encoder or decoder)
reruns that call in fp32 and stays in fp32 from then on, with one warning per stage (`Fp16FallbackWarning`).

What counts as bad:
- any NaN or infinity;
- for outputs with a value range (images in [0, 1]): a value outside the range by more than RANGE_SLACK;
- for unbounded outputs (latents): a magnitude of FP16_SATURATION or more, i.e. at fp16's overflow edge,
  where the next layer of the graph would have produced inf.
The check is a min and a max per output (NaN propagates through both), cheap next to the graph itself.

Where the fp32 graph comes from (ONNX Runtime): `upcast_to_fp32` turns the fp16 ONNX graph back into an
fp32 one (fp16 weights widened exactly, every compute op in fp32) with the same inputs and outputs, so the
fallback needs no second model folder and accepts the same state tensors mid-stream. Its weights are the
fp16-rounded ones: the fallback fixes the overflow of activations, which is what breaks fp16 graphs, and
its results differ from the fp32 export only by weight rounding (well above the fp16 PSNR floor).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from vae_deploy.runtime.spec import GraphSpec, TensorSpec

FP16_MAX = 65504.0
FP16_SATURATION = 0.5 * FP16_MAX  # one more doubling (a residual add, a 2x gain) and fp16 overflows
RANGE_SLACK = 1e-3  # fp16 rounding of a value at the range's edge (1.0 is exact; sigmoid can't leave [0, 1])


class Fp16FallbackWarning(UserWarning):
    """An fp16 stage produced bad values and now runs in fp32."""


def bad_values(tensor: TensorSpec, lo: float, hi: float) -> str | None:
    """Why an output whose min is `lo` and max is `hi` is bad, or None. NaN in either means NaN present."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "non-finite values (NaN or inf)"
    if tensor.value_range is not None:
        low, high = tensor.value_range
        if lo < low - RANGE_SLACK or hi > high + RANGE_SLACK:
            return f"values in [{lo:.4g}, {hi:.4g}], outside its range [{low:g}, {high:g}]"
        return None
    if max(abs(lo), abs(hi)) >= FP16_SATURATION:
        return f"magnitudes up to {max(abs(lo), abs(hi)):.4g}, at fp16's overflow edge ({FP16_MAX:g})"
    return None


def inspect_arrays(spec: GraphSpec, outputs: Mapping[str, np.ndarray]) -> str | None:
    """First bad data output of a call, as "output 'video' has ...", or None when all are fine."""
    for t in spec.outputs:
        a = outputs.get(t.name)
        if a is None or a.size == 0 or a.dtype.kind != "f":
            continue
        reason = bad_values(t, float(np.min(a)), float(np.max(a)))
        if reason:
            return f"output '{t.name}' has {reason}"
    return None


class Fp16Guard:
    """Per-runner bookkeeping: which stages fell back, one warning each."""

    def __init__(self, backend: str, enabled: bool):
        self.backend = backend
        self.enabled = enabled
        self.fallen_back: dict[str, str] = {}  # graph -> the reason it fell back

    def watching(self, graph: str) -> bool:
        return self.enabled and graph not in self.fallen_back

    def fall_back(self, graph: str, reason: str) -> None:
        self.fallen_back[graph] = reason
        warnings.warn(f"{self.backend}: the fp16 {graph} produced bad values ({reason}); the {graph} runs in "
                      f"fp32 from now on", Fp16FallbackWarning, stacklevel=4)


# ---------------------------------------------------------------- fp16 ONNX -> fp32 ONNX


def upcast_to_fp32(model):
    """An fp16 ONNX model (onnx.ModelProto) -> the same model computing in fp32, inputs/outputs unchanged.

    Initializers, Constant/ConstantOfShape values and other tensor attributes are widened to float32; Casts
    to float16 become Casts to float32; a float16 graph input gets a Cast to float32 in front of its uses,
    and a float16 graph output a Cast back to float16 after its producer, so callers see the same I/O types.
    Intermediate type annotations are dropped and re-inferred by the runtime.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy: the caller's model is kept
    graph = model.graph
    fp16, fp32 = TensorProto.FLOAT16, TensorProto.FLOAT

    def widen(tensor):
        if tensor.data_type == fp16:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32),
                                                    tensor.name))

    def walk(g):
        for init in g.initializer:
            widen(init)
        del g.value_info[:]
        for node in g.node:
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i == fp16:
                    attr.i = fp32
                if attr.type == onnx.AttributeProto.TENSOR:
                    widen(attr.t)
                elif attr.type == onnx.AttributeProto.TENSORS:
                    for t in attr.tensors:
                        widen(t)
                elif attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                    _retype_io(attr.g, fp16, fp32)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        walk(sub)
                        _retype_io(sub, fp16, fp32)

    walk(graph)
    head, tail = [], []
    for inp in graph.input:
        if inp.type.tensor_type.elem_type == fp16:
            wide = f"{inp.name}__fp32"
            _rename_uses(graph, inp.name, wide)
            head.append(helper.make_node("Cast", [inp.name], [wide], to=fp32, name=f"{wide}_cast"))
    for out in graph.output:
        if out.type.tensor_type.elem_type == fp16:
            wide = f"{out.name}__fp32"
            _rename_uses(graph, out.name, wide, outputs_too=True)
            tail.append(helper.make_node("Cast", [wide], [out.name], to=fp16, name=f"{out.name}_cast"))
    nodes = head + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _retype_io(graph, old: int, new: int) -> None:
    for v in list(graph.input) + list(graph.output):
        if v.type.tensor_type.elem_type == old:
            v.type.tensor_type.elem_type = new


def _rename_uses(graph, name: str, new: str, outputs_too: bool = False) -> None:
    """Rename a value where nodes use it (and produce it); subgraphs may read outer values by name."""
    for node in graph.node:
        for i, x in enumerate(node.input):
            if x == name:
                node.input[i] = new
        if outputs_too:
            for i, x in enumerate(node.output):
                if x == name:
                    node.output[i] = new
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_uses(sub, name, new)
