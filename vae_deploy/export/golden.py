"""Golden data: the PyTorch reference's inputs and outputs, stored in the model folder at export (golden.npz).

On an edge device (no torch) the question `vae-deploy verify` answers is "does this backend on this device
reproduce the reference?". export stores a small set of the reference's cases (export/validate.py
`reference_cases`): the real inputs it was given (at most GOLDEN_MAX_ITEMS along the batch axis, and of a
clip the first GOLDEN_MAX_FRAMES frames, their centre GOLDEN_MAX_SIDE px square; int8 folders keep them all)
through the encoder and the reference mu of them through the decoder, else none; seeded random inputs at
GOLDEN_BATCH_SIZES for each graph; and, for graphs with streaming state, one random clip fed in chunks.
`verify` judges a backend against them with the same comparison and tolerances as against the live
reference (validate.compare_cases).

The file is one compressed .npz (no pickles): "meta" holds a JSON description, each array its own entry
("case<i>.input<j>", "case<i>.output<k>"). manifest.json lists it in `files` with its sha256 like every other
file, so a tampered golden file is refused when the folder is read. Numpy only: readable without torch.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from vae_deploy.errors import ModelFormatError
from vae_deploy.export.validate import Case, reference_cases
from vae_deploy.files import atomic_path
from vae_deploy.runtime.manifest import Manifest
from vae_deploy.runtime.runner import Runner
from vae_deploy.runtime.spec import GraphSpec, is_identifier

GOLDEN_FILE = "golden.npz"
GOLDEN_FORMAT = "vae-deploy-golden"
GOLDEN_VERSION = 1
GOLDEN_BATCH_SIZES = (1, 7)  # each graph's cap (max_parity_batch) applies, as in the export check
GOLDEN_SEED = 0
GOLDEN_MAX_ITEMS = 100  # real inputs kept along the batch axis (a few hundred kB for MNIST)
GOLDEN_MAX_FRAMES = 8  # frames of a real clip kept: a multiple of every temporal stride
GOLDEN_MAX_SIDE = 48  # pixels kept of each spatial side of real frames (their centre): the file stays < 1 MB


def golden_real_inputs(real_inputs: np.ndarray | None, encoder: GraphSpec,
                       precision: str = "fp32") -> np.ndarray | None:
    """The part of the export's real inputs that is stored: the first items, the first frames of a clip,
    and the centre of frames larger than GOLDEN_MAX_SIDE (each kept size a multiple of the graph's stride
    for that axis), so the file stays small next to the graphs.

    int8 keeps them all: its rule is one PSNR over the real inputs as a whole, and a part of them can
    score on either side of the floor (the centre of the default model's clip scores 1 dB lower than the
    whole), so only the inputs export judged give the verdict export gave."""
    if real_inputs is None or precision == "int8":
        return real_inputs
    x = real_inputs[:GOLDEN_MAX_ITEMS]
    shape = list(encoder.inputs[0].shape)
    for axis, dim in enumerate(shape):
        if axis == 0 or not is_identifier(dim):
            continue  # the batch axis (done above) and fixed dims
        limit = GOLDEN_MAX_FRAMES if dim == encoder.stream_axis else GOLDEN_MAX_SIDE
        multiple = encoder.dim_multiples.get(dim, 1)
        keep = min(x.shape[axis], limit)
        keep = encoder.whole_length(keep) if dim == encoder.stream_axis else keep - keep % multiple
        if 0 < keep < x.shape[axis]:  # else too short to cut at a stride's multiple: kept whole, as checked
            start = 0 if dim == encoder.stream_axis else (x.shape[axis] - keep) // 2 // multiple * multiple
            x = np.take(x, range(start, start + keep), axis=axis)
    return np.ascontiguousarray(x)


def write_golden(folder: Path, reference: Runner, real_inputs: np.ndarray | None = None) -> str:
    """Run `reference` on the golden cases and write them to folder/golden.npz (atomically); returns the
    file's name, for the manifest's `files`."""
    real = golden_real_inputs(real_inputs, reference.graph("encoder"), reference.manifest.precision)
    arrays: dict[str, np.ndarray] = {}
    index = []
    for i, case in enumerate(reference_cases(reference, real, GOLDEN_BATCH_SIZES, GOLDEN_SEED)):
        for j, array in enumerate(case.inputs):
            arrays[f"case{i}.input{j}"] = np.ascontiguousarray(array)
        names = list(case.outputs)
        for k, name in enumerate(names):
            arrays[f"case{i}.output{k}"] = np.ascontiguousarray(case.outputs[name])
        index.append({"graph": case.graph, "case": case.case, "inputs": len(case.inputs), "outputs": names})
    meta = {"format": GOLDEN_FORMAT, "version": GOLDEN_VERSION, "reference": reference.name,
            "seed": GOLDEN_SEED, "batch_sizes": list(GOLDEN_BATCH_SIZES), "cases": index}
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_path(Path(folder) / GOLDEN_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return GOLDEN_FILE


def has_golden(manifest: Manifest) -> bool:
    """Whether the folder's manifest vouches for golden data (folders exported before it existed do not)."""
    return GOLDEN_FILE in manifest.files


def read_golden(folder: Path, manifest: Manifest) -> list[Case]:
    """The stored cases of a model folder whose manifest (and so the file's sha256) was already checked."""
    path = Path(folder) / GOLDEN_FILE
    if not has_golden(manifest):
        raise ModelFormatError(f"{folder} has no golden outputs ({GOLDEN_FILE} is not in its manifest): "
                               f"re-export the model with this vae-deploy version")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != GOLDEN_FORMAT or meta.get("version") != GOLDEN_VERSION:
                raise ModelFormatError(f"{path} is golden data of format {meta.get('format')!r} version "
                                       f"{meta.get('version')!r}; this vae-deploy reads {GOLDEN_FORMAT!r} "
                                       f"version {GOLDEN_VERSION}: re-export the model")
            cases = []
            for i, entry in enumerate(meta["cases"]):
                manifest.graph(entry["graph"])  # a graph the manifest lacks is a mismatched file
                inputs = [data[f"case{i}.input{j}"] for j in range(entry["inputs"])]
                outputs = {name: data[f"case{i}.output{k}"] for k, name in enumerate(entry["outputs"])}
                cases.append(Case(entry["graph"], entry["case"], inputs, outputs))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise ModelFormatError(f"{path} is not readable golden data ({type(exc).__name__}: {exc}): "
                               f"re-export the model") from exc
    if not cases:
        raise ModelFormatError(f"{path} holds no cases: re-export the model")
    return cases
