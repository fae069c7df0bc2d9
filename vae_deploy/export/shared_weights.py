"""One copy of the weights on disk: the graphs of a model folder that share tensors read them from one ONNX
external-data file, `weights.bin`, each tensor stored once.

Why: a causal model with a first-chunk rule (Wan) exports four graphs, and encoder/encoder_first (and
decoder/decoder_first) hold the same weights; inline, each .onnx carried its own copy (Wan 2.1: 1,007 MB of
ONNX for 485 MB of weights). External data also lifts protobuf's 2 GB limit on one graph file.

How: once every graph is final (after fp16 conversion or int8 quantization, which want the tensors inline),
each initializer of at least MIN_EXTERNAL_BYTES moves to weights.bin, deduplicated by content (data type,
dims and bytes: the same weight under two names in two graphs is still stored once), and the graph keeps
an ONNX external-data reference to it (location, offset, length). Smaller tensors stay in the graph: ONNX
Runtime reads shape tensors (a Reshape's target) while it loads the graph, and they cost nothing. Tensors of
LARGE_TENSOR_BYTES and more start on a page boundary, so a reader may map them straight from the file; the
rest are 64-byte aligned (what numpy and ONNX Runtime's kernels like), which keeps the padding small.

Export does this for models with first-chunk graphs (`uses_shared_weights`). The others stay inline: an
encoder and a decoder share no weights, and one .onnx per graph is the simplest folder to inspect. The
manifest hashes weights.bin like any file (runtime/manifest.py external_data_files finds it from the
graphs), so a tampered weights file is refused when the folder is loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper

from vae_deploy.files import atomic_path
from vae_deploy.runtime.shared_initializers import WEIGHTS_FILE

MIN_EXTERNAL_BYTES = 1024  # onnx's own default threshold for external data
LARGE_TENSOR_BYTES = 64 * 1024
PAGE = 4096
SMALL_ALIGN = 64


def uses_shared_weights(specs) -> bool:
    """Whether export stores the graphs `specs` (GraphSpecs) with one weights file: a model with a first-chunk
    graph, whose weights are those of the steady graph it hands its state to."""
    return any(spec.first_graph for spec in specs)


@dataclass(frozen=True)
class SharedWeights:
    """What share_weights wrote: the file, its size, and how many tensor references it serves."""

    file: str
    file_bytes: int
    tensors: int  # distinct tensors stored
    references: int  # initializers (over all graphs) pointing into the file


def _initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every initializer of `graph` and of its subgraphs (If/Loop bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _initializers(sub)


def _raw(tensor: onnx.TensorProto) -> bytes:
    """The tensor's little-endian bytes, moving typed fields (float_data, int32_data...) to raw_data."""
    if not tensor.HasField("raw_data"):
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    return tensor.raw_data


def _content_key(tensor: onnx.TensorProto, raw: bytes) -> tuple:
    return tensor.data_type, tuple(tensor.dims), hashlib.sha256(raw).digest()


def _movable(tensor: onnx.TensorProto) -> bool:
    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type == onnx.TensorProto.STRING:
        return False
    return len(_raw(tensor)) >= MIN_EXTERNAL_BYTES


def _aligned(offset: int, size: int) -> int:
    step = PAGE if size >= LARGE_TENSOR_BYTES else SMALL_ALIGN
    return -(-offset // step) * step


def share_weights(folder: Path, graph_files: list[str], location: str = WEIGHTS_FILE) -> SharedWeights:
    """Move the tensors of the inline graphs `graph_files` (relative to `folder`) into `folder/location`,
    each distinct tensor once, and rewrite the graphs to reference it. Returns what was written."""
    folder = Path(folder)
    models = [onnx.load(str(folder / name)) for name in graph_files]
    offsets: dict[tuple, tuple[int, int]] = {}
    references = 0
    target = folder / location
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        end = 0
        for model in models:
            for tensor in _initializers(model.graph):
                if not _movable(tensor):
                    continue
                raw = tensor.raw_data
                key = _content_key(tensor, raw)
                if key not in offsets:
                    start = _aligned(end, len(raw))
                    out.write(b"\0" * (start - end))
                    out.write(raw)
                    offsets[key] = (start, len(raw))
                    end = start + len(raw)
                _point_to(tensor, location, *offsets[key])
                references += 1
    for name, model in zip(graph_files, models, strict=True):
        with atomic_path(folder / name) as tmp:
            onnx.save(model, str(tmp))
    return SharedWeights(location, target.stat().st_size, len(offsets), references)


def _point_to(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
