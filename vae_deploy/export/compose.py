"""A graph exported in parts, joined into one ONNX graph: what export writes for a graph whose spec names
`parts` (a LatentSplit model's, export/specs.py), so that the whole graph and its parts are traced once.

The parts run in order, each one's data output (`features`) the next one's data input. Joined, the graph
has the first part's data inputs, every part's state inputs and outputs, and the last part's data outputs,
in the whole graph's spec order; the nodes are the parts' nodes, the later parts' internal names prefixed so
that none clashes. Nothing is recomputed or reordered, so the joined graph computes exactly what running
the parts one after the other does. Intermediate shape annotations (value_info) are dropped: each part's
exporter named its symbolic dims on its own, and the same name may mean two sizes in two parts.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from vae_deploy.errors import ModelFormatError
from vae_deploy.files import atomic_path
from vae_deploy.runtime.spec import GraphSpec


def compose_parts(parts: list[Path], spec: GraphSpec, out: Path) -> None:
    """Join the part graphs `parts` (files, in the order they run) into `out`, with `spec`'s inputs and
    outputs; written atomically."""
    models = [onnx.load(str(p)) for p in parts]
    first = models[0]
    nodes = list(first.graph.node)
    initializers = list(first.graph.initializer)
    inputs = {i.name: i for i in first.graph.input}
    outputs = {o.name: o for o in first.graph.output}
    functions = {(f.domain, f.name): f for f in first.functions}
    for index, model in enumerate(models[1:], start=1):
        link = model.graph.input[0].name  # its data input: the previous part's data output of that name
        if link not in outputs:
            raise ModelFormatError(f"{spec.name}: part {parts[index].name} reads {link!r}, which the part "
                                   f"before it does not give")
        public = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
        renamed = _prefixed(model.graph, f"{spec.name}.part{index}/", keep=public)
        nodes += renamed.node
        initializers += renamed.initializer
        inputs.update({i.name: i for i in renamed.input if i.name != link})
        outputs.pop(link)
        outputs.update({o.name: o for o in renamed.output})
        functions.update({(f.domain, f.name): f for f in model.functions})
    missing = [n for n in spec.input_names if n not in inputs] + [n for n in spec.output_names
                                                                  if n not in outputs]
    if missing:
        raise ModelFormatError(f"{spec.name}: its parts give no {', '.join(missing)}")
    graph = onnx.helper.make_graph(nodes, spec.name, [inputs[n] for n in spec.input_names],
                                   [outputs[n] for n in spec.output_names], initializer=initializers)
    opsets = {}
    for model in models:
        for opset in model.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
    joined = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v)
                                                          for d, v in sorted(opsets.items())],
                                    functions=list(functions.values()), ir_version=first.ir_version,
                                    producer_name=first.producer_name,
                                    producer_version=first.producer_version)
    with atomic_path(out) as tmp:
        onnx.save(joined, str(tmp))


def _prefixed(graph: onnx.GraphProto, prefix: str, keep: set[str]) -> onnx.GraphProto:
    """A copy of `graph` whose tensor and node names, except those in `keep`, start with `prefix`."""
    copy = onnx.GraphProto()
    copy.CopyFrom(graph)

    def name(n: str) -> str:
        return n if not n or n in keep else prefix + n

    for node in copy.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            # a subgraph reads outer names implicitly; no exported part has one, so none is renamed here
            raise ModelFormatError(f"{graph.name}: node {node.name} ({node.op_type}) holds a subgraph, which "
                                   f"joining parts does not handle")
        node.name = prefix + node.name
        node.input[:] = [name(n) for n in node.input]
        node.output[:] = [name(n) for n in node.output]
    for tensor in copy.initializer:
        tensor.name = name(tensor.name)
    del copy.value_info[:]
    return copy


__all__ = ["compose_parts"]
