"""One copy of the weights in memory: the ONNX Runtime sessions of a model folder whose graphs read their
tensors from one external-data file (export/shared_weights.py, `weights.bin`) get each tensor as the same
buffer, handed to every session with SessionOptions.add_initializer.

Why: left to itself, each session maps or reads its external tensors on its own, so the four graphs of a
Wan model counted the steady and the first-chunk copies of every weight in the process's resident memory.
add_initializer makes a session use the caller's OrtValue instead of deserializing that initializer
("useful when you want to share the same initializer across sessions", ONNX Runtime's C API docs); the
buffer must outlive the session, so each session keeps a reference to the `WeightsFile` its values view
(`attach`), and the mapping goes away with the last session. (add_external_initializers, the other API,
copies the data into the graph.)

The file is mapped read-only (numpy.memmap): its pages are the page cache's, read once however many
sessions use them. Measured on Wan 2.1 (benchmarks/results/shared_weights.md): ONNX Runtime also maps
external data itself, so without this the physical memory (PSS) already held one copy, but each session's
own mapping counts again in resident memory (RSS: ps, ru_maxrss, the OOM killer's score): peak RSS 1228 MB
with the sessions' own mappings, 772 MB with these shared values (1228 MB with inline graphs), at the
same speed. `ENABLED` is the switch that benchmark flips to measure the sessions without it.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path, PurePosixPath

import numpy as np

ENABLED = True
WEIGHTS_FILE = "weights.bin"  # the name export gives the shared file (export/shared_weights.py)
_OPEN: weakref.WeakValueDictionary[tuple, WeightsFile] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


class WeightsFile:
    """One external-data file mapped read-only, and the OrtValues made from it, one per (offset, length,
    dtype, dims): a tensor two graphs share is one OrtValue."""

    def __init__(self, path: Path):
        self.path = path
        self._data = np.memmap(path, dtype=np.uint8, mode="r")
        self._values: dict[tuple, object] = {}

    def value(self, ort, offset: int, length: int, dtype: np.dtype, dims: tuple[int, ...]):
        key = (offset, length, dtype.str, dims)
        if key not in self._values:
            array = self._data[offset:offset + length].view(dtype).reshape(dims)
            self._values[key] = ort.OrtValue.ortvalue_from_numpy(array)
        return self._values[key]


def _open(path: Path) -> WeightsFile:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _LOCK:
        weights = _OPEN.get(key)
        if weights is None:
            weights = WeightsFile(path)
            _OPEN[key] = weights
        return weights


def attach(ort, sess_options, model_path: Path) -> list[WeightsFile]:
    """Add every external initializer of the graph at `model_path` to `sess_options` as a shared OrtValue;
    returns the WeightsFiles the session must keep alive (empty: nothing shared, the graph loads as it is).
    The files were hash-checked with the folder (runtime/manifest.py) before any session is built."""
    model_path = Path(model_path)
    # Only a folder with the shared file is read here: parsing an inline graph (hundreds of MB for a large
    # frame VAE) just to find no external data would cost its size again in memory while loading.
    if not ENABLED or not (model_path.parent / WEIGHTS_FILE).is_file():
        return []
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(str(model_path), load_external_data=False).graph
    used: dict[str, WeightsFile] = {}
    for tensor in graph.initializer:
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        location = model_path.parent.joinpath(*PurePosixPath(info.location).parts)
        weights = used.get(info.location) or _open(location)
        used[info.location] = weights
        dtype = np.dtype(tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
        value = weights.value(ort, int(info.offset or 0), int(info.length), dtype, tuple(tensor.dims))
        sess_options.add_initializer(tensor.name, value)
    return list(used.values())
