"""The `.vaelat` latent container: a video's latents as fp16 plus the metadata needed to decode them.

Layout (little-endian), written front to back so encoding streams in constant memory:

    b"VAELAT01"                      8-byte magic
    latent data                      float16, C order, frames concatenated: (latent_frames, C, h, w)
    header                           UTF-8 JSON (see LatentHeader)
    uint64 header length, b"VAELAT01" trailer

The header sits at the end because the frame count is only known when the stream ends. Files are written to
a temporary name of their own (files.AtomicFile) and renamed on close, so a reader never sees a half-written
container, and two processes writing the same path each publish a whole file (the last rename wins).

Header fields (version 2):

    model_fingerprint   the encoding model's identity, Manifest.fingerprint: sha256 over the sorted
                        "relative/path:sha256" lines of the files its manifest.json lists (the ONNX
                        graphs, the reference checkpoint), one line per file joined by newlines. It is not
                        the hash of any one file: recompute it from a model folder's manifest "files" table.
                        Decode refuses a file made by another model.
    payload_sha256      sha256 of the latent data bytes (everything between the magic and the header),
                        computed while the chunks are written; checked on open, before any frame decodes.
    model_kind, latent_shape (C, h, w), fps, frame_count (source frames), latent_frames, source_size and
    working_size (width, height), fit (how frames were fitted to the model), chunk, dtype, format, version.

Version 1 files (no checksum, the fingerprint under the older name `model_sha256`) are still read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vae_deploy.errors import DataError, InputShapeError
from vae_deploy.files import AtomicFile, writing
from vae_deploy.runtime.latent_space import LATENT_SPACES, RAW

MAGIC = b"VAELAT01"
FORMAT = "vae-deploy-latents"
VERSION = 2
READABLE_VERSIONS = (1, 2)
# Pixels per side of a source or working frame a header may claim: the limit `run` applies to the frames
# it reads and feeds the model (video/fit.py MAX_MODEL_SIDE). A header is not covered by the checksum, so
# a forged one claiming 15000x15000 output frames made `decode` of a 22 KB file take 10 GB.
MAX_FRAME_SIDE = 8192
_TRAILER = struct.Struct("<Q8s")
_HASH_BLOCK = 1 << 20


@dataclass
class LatentHeader:
    model_fingerprint: str  # Manifest.fingerprint of the model that encoded (module docstring)
    model_kind: str
    latent_shape: list[int]  # (C, h, w) of one latent frame
    fps: float
    frame_count: int  # source frames encoded
    latent_frames: int = 0  # latent frames stored (frame_count / temporal factor, rounded up)
    source_size: list[int] = field(default_factory=list)  # (width, height) of the source frames
    working_size: list[int] = field(default_factory=list)  # (width, height) the model ran at
    fit: dict = field(default_factory=dict)  # how frames were fitted to the model; undone on decode
    chunk: int = 0  # frames per encoder call; decode uses the same chunks, so its frames equal `run`'s
    payload_sha256: str = ""  # sha256 of the latent data; set by LatentWriter.close, "" in version 1 files
    # "raw" (the encoder's mean) or "normalized" (the diffusion model's space: runtime/latent_space.py)
    latent_space: str = RAW
    dtype: str = "float16"
    format: str = FORMAT
    version: int = VERSION


class LatentWriter:
    """Append latent chunks (T, C, h, w) and close to publish the file atomically."""

    def __init__(self, path: Path, header: LatentHeader):
        self.path = Path(path)
        self.header = header
        self._out = AtomicFile(self.path)
        self._digest = hashlib.sha256()
        self._fh = open(self._out.tmp, "wb")
        self._fh.write(MAGIC)

    def write(self, latents: np.ndarray) -> None:
        shape = tuple(self.header.latent_shape)
        if latents.ndim != 4 or tuple(latents.shape[1:]) != shape:
            raise InputShapeError(f"latent chunk must be (T, {', '.join(map(str, shape))}), "
                                  f"got {latents.shape}")
        with np.errstate(over="ignore"):  # refused just below, in one line
            data = np.ascontiguousarray(latents, dtype=np.float16)
        if not np.isfinite(data).all():  # beyond fp16's 65504, or NaN: a file that decodes to garbage
            raise DataError(f"latents overflow fp16 (or are NaN): {self.path} would hold non-finite "
                            f"latents; nothing is written")
        data = data.tobytes()
        with writing(self.path):
            self._fh.write(data)
        self._digest.update(data)
        self.header.latent_frames += latents.shape[0]

    def close(self) -> None:
        """Write the header and trailer and rename into place (also after an interruption: what was encoded
        so far becomes a complete, decodable file)."""
        if self._fh.closed:
            return
        self.header.payload_sha256 = self._digest.hexdigest()
        self.header.format, self.header.version = FORMAT, VERSION  # the layout written is this version's
        header = json.dumps(asdict(self.header)).encode("utf-8")
        try:
            with writing(self.path):
                self._fh.write(header)
                self._fh.write(_TRAILER.pack(len(header), MAGIC))
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
                self._out.publish()
        except BaseException:
            self.abort()  # a full disk at the very end: no temporary file left behind
            raise

    def abort(self) -> None:
        if not self._fh.closed:
            with contextlib.suppress(OSError):  # flushing what is buffered may fail again (a full disk)
                self._fh.close()
        self._out.discard()

    def __enter__(self) -> LatentWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LatentReader:
    """Read a `.vaelat` file; latents are memory-mapped, so chunks are read without loading the whole file.

    Opening checks the header field by field and the latent data against the header's checksum (one read of
    the file), so a damaged or forged file is refused in one line before anything is decoded."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"latent file not found: {self.path}")
        size = self.path.stat().st_size
        with open(self.path, "rb") as fh:
            if size < len(MAGIC) + _TRAILER.size or fh.read(len(MAGIC)) != MAGIC:
                raise DataError(f"{self.path} is not a vae-deploy latent file")
            fh.seek(size - _TRAILER.size)
            header_len, trailer = _TRAILER.unpack(fh.read(_TRAILER.size))
            data_end = size - _TRAILER.size - header_len
            if trailer != MAGIC or data_end < len(MAGIC):
                raise DataError(f"{self.path} is truncated or corrupt (no valid trailer)")
            fh.seek(data_end)
            try:
                raw = json.loads(fh.read(header_len))
            except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, huge numbers, deep nesting
                raise DataError(f"{self.path} has a corrupt header: {exc}") from exc
            self.header = _parse_header(self.path, raw)
            frame_shape = tuple(self.header.latent_shape)
            expected = self.header.latent_frames * math.prod(frame_shape) * 2
            if data_end - len(MAGIC) != expected:
                raise DataError(f"{self.path} holds {data_end - len(MAGIC)} latent bytes, its header "
                                f"promises {expected}")
            if self.header.payload_sha256:
                fh.seek(len(MAGIC))
                if _sha256_of(fh, expected) != self.header.payload_sha256:
                    raise DataError(f"{self.path} is damaged: its latent data does not match the header's "
                                    f"payload_sha256 checksum")
        self.latents = np.memmap(self.path, dtype=np.float16, mode="r", offset=len(MAGIC),
                                 shape=(self.header.latent_frames, *frame_shape))

    def chunks(self, size: int, first: int = 0):
        """Yield fp16 latent chunks of at most `size` frames, in order; the first holds `first` more (a
        model whose first latent frame has its own rule reads it with the first chunk, as it was encoded)."""
        start, end = 0, first + size
        while start < self.header.latent_frames:
            yield np.asarray(self.latents[start:end])
            start, end = end, end + size


def _sha256_of(fh, length: int) -> str:
    digest = hashlib.sha256()
    while length > 0:
        block = fh.read(min(_HASH_BLOCK, length))
        if not block:
            break
        digest.update(block)
        length -= len(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- header validation

_FIELDS_V1 = ("model_sha256", "model_kind", "latent_shape", "fps", "frame_count", "latent_frames",
              "source_size", "working_size", "fit", "chunk", "dtype", "format", "version")
_FIELDS = {1: _FIELDS_V1,
           2: ("model_fingerprint", *_FIELDS_V1[1:-3], "payload_sha256", "latent_space", "dtype", "format",
               "version")}
# Early version 1 files have no chunk (decode then uses --chunk's); files written before normalized latents
# existed have no latent_space, and hold raw latents.
_OPTIONAL = {1: {"chunk": 0}, 2: {"latent_space": RAW}}
_FIT_FIELDS = ("mode", "short_side", "source_size", "content_size", "model_size", "channels")


def _parse_header(path: Path, raw: object) -> LatentHeader:
    """The header as a LatentHeader, every field's type and range checked; else one DataError naming the
    file and the field."""
    def bad(name: str, what: str, value: object) -> DataError:
        text = repr(value)
        text = text if len(text) <= 60 else text[:57] + "..."
        return DataError(f"{path} has a bad header: {name} must be {what}, got {text}")

    if not isinstance(raw, dict):
        raise DataError(f"{path} has a corrupt header: not a JSON object")
    if raw.get("format") != FORMAT:
        raise bad("format", repr(FORMAT), raw.get("format"))
    version = raw.get("version")
    if not _is_int(version):
        raise bad("version", "an integer", version)
    if version not in READABLE_VERSIONS:
        raise DataError(f"{path} is {FORMAT} version {version}; this vae-deploy reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))}")
    names = _FIELDS[version]
    missing = [n for n in names if n not in raw and n not in _OPTIONAL[version]]
    unknown = sorted(set(raw) - set(names))
    if missing or unknown:
        detail = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                             f"unknown {', '.join(unknown)}" if unknown else "") if part)
        raise DataError(f"{path} has a bad header for {FORMAT} version {version}: {detail}")
    values = {**_OPTIONAL[version], **raw}
    if version == 1:
        values["model_fingerprint"] = values.pop("model_sha256")  # the field's name in version 1

    fingerprint = values["model_fingerprint"]
    if not _is_sha256(fingerprint):
        raise bad("model_fingerprint", "64 hexadecimal digits", fingerprint)
    if version >= 2 and not _is_sha256(values["payload_sha256"]):
        raise bad("payload_sha256", "64 hexadecimal digits", values["payload_sha256"])
    if not isinstance(values["model_kind"], str) or not values["model_kind"]:
        raise bad("model_kind", "a model kind name", values["model_kind"])
    if not _ints(values["latent_shape"], 3, 1):
        raise bad("latent_shape", "3 positive integers (C, h, w)", values["latent_shape"])
    fps = values["fps"]
    if not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and math.isfinite(fps) and fps > 0):
        raise bad("fps", "a finite positive number", fps)
    for name in ("frame_count", "latent_frames", "chunk"):
        if not (_is_int(values[name]) and values[name] >= 0):
            raise bad(name, "a non-negative integer", values[name])
    if values["latent_frames"] > values["frame_count"]:
        raise DataError(f"{path} has a bad header: latent_frames ({values['latent_frames']}) exceeds "
                        f"frame_count ({values['frame_count']})")
    for name in ("source_size", "working_size"):
        if not _ints(values[name], 2, 1, MAX_FRAME_SIDE):
            raise bad(name, f"2 integers (width, height) from 1 to {MAX_FRAME_SIDE}", values[name])
    if values.get("latent_space", RAW) not in LATENT_SPACES:
        raise bad("latent_space", " or ".join(map(repr, LATENT_SPACES)), values["latent_space"])
    if values["dtype"] != "float16":
        raise bad("dtype", "'float16'", values["dtype"])
    _check_fit(values, bad)
    return LatentHeader(**values)


def _check_fit(values: dict, bad) -> None:
    """The fit record (video/fit.py FitPolicy.to_dict): its fields typed and sized, its sizes those of
    the header."""
    fit = values["fit"]
    if not isinstance(fit, dict) or set(fit) != set(_FIT_FIELDS):
        raise bad("fit", f"a fit record with {', '.join(_FIT_FIELDS)}", fit)
    if not isinstance(fit["mode"], str):
        raise bad("fit.mode", "a fit mode name", fit["mode"])
    if not (_is_int(fit["short_side"]) and 0 <= fit["short_side"] <= MAX_FRAME_SIDE):
        raise bad("fit.short_side", f"an integer from 0 to {MAX_FRAME_SIDE}", fit["short_side"])
    if not (_is_int(fit["channels"]) and fit["channels"] in (1, 3)):
        raise bad("fit.channels", "1 or 3", fit["channels"])
    for name in ("source_size", "content_size", "model_size"):
        if not _ints(fit[name], 2, 1, MAX_FRAME_SIDE):
            raise bad(f"fit.{name}", f"2 integers (width, height) from 1 to {MAX_FRAME_SIDE}", fit[name])
    if fit["source_size"] != values["source_size"]:
        raise bad("fit.source_size", f"the header's source_size {values['source_size']}", fit["source_size"])
    if fit["content_size"] != values["working_size"]:
        raise bad("fit.content_size", f"the header's working_size {values['working_size']}",
                  fit["content_size"])
    if any(m < c for m, c in zip(fit["model_size"], fit["content_size"], strict=True)):
        raise bad("fit.model_size", f"at least fit.content_size {fit['content_size']}", fit["model_size"])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ints(value: object, count: int, low: int, high: int | None = None) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(_is_int(v) and v >= low and (high is None or v <= high) for v in value))


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
