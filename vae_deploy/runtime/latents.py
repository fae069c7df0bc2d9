"""The `.vaelat` latent container: a video's latents as fp16 plus the metadata needed to decode them.

Layout (little-endian), written front to back so encoding streams in constant memory:

    b"VAELAT01"                      8-byte magic
    latent data                      float16, C order, frames concatenated: (latent_frames, C, h, w)
    header                           UTF-8 JSON (see LatentHeader)
    uint64 header length, b"VAELAT01" trailer

The header sits at the end because the frame count is only known when the stream ends. Files are written to
a temporary name and renamed on close, so a reader never sees a half-written container.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vae_deploy.errors import DataError, InputShapeError
from vae_deploy.files import ensure_writable_dir

MAGIC = b"VAELAT01"
FORMAT = "vae-deploy-latents"
VERSION = 1
_TRAILER = struct.Struct("<Q8s")


@dataclass
class LatentHeader:
    model_sha256: str  # manifest fingerprint of the model that encoded; decode refuses another model
    model_kind: str
    latent_shape: list[int]  # (C, h, w) of one latent frame
    fps: float
    frame_count: int  # source frames encoded
    latent_frames: int = 0  # latent frames stored (frame_count / temporal factor, rounded up)
    source_size: list[int] = field(default_factory=list)  # (width, height) of the source frames
    working_size: list[int] = field(default_factory=list)  # (width, height) the model ran at
    fit: dict = field(default_factory=dict)  # how frames were fitted to the model; undone on decode
    chunk: int = 0  # frames per encoder call; decode uses the same chunks, so its frames equal `run`'s
    dtype: str = "float16"
    format: str = FORMAT
    version: int = VERSION


class LatentWriter:
    """Append latent chunks (T, C, h, w) and close to publish the file atomically."""

    def __init__(self, path: Path, header: LatentHeader):
        self.path = Path(path)
        self.header = header
        ensure_writable_dir(self.path.parent)
        self._tmp = self.path.with_name(f".{self.path.name}.part")
        self._fh = open(self._tmp, "wb")
        self._fh.write(MAGIC)

    def write(self, latents: np.ndarray) -> None:
        shape = tuple(self.header.latent_shape)
        if latents.ndim != 4 or tuple(latents.shape[1:]) != shape:
            raise InputShapeError(f"latent chunk must be (T, {', '.join(map(str, shape))}), "
                                  f"got {latents.shape}")
        self._fh.write(np.ascontiguousarray(latents, dtype=np.float16).tobytes())
        self.header.latent_frames += latents.shape[0]

    def close(self) -> None:
        """Write the header and trailer and rename into place (also after an interruption: what was encoded
        so far becomes a complete, decodable file)."""
        if self._fh.closed:
            return
        header = json.dumps(asdict(self.header)).encode("utf-8")
        self._fh.write(header)
        self._fh.write(_TRAILER.pack(len(header), MAGIC))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> LatentWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LatentReader:
    """Read a `.vaelat` file; latents are memory-mapped, so chunks are read without loading the whole file."""

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
                self.header = LatentHeader(**raw)
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
                raise DataError(f"{self.path} has a corrupt header: {exc}") from None
        if self.header.format != FORMAT or self.header.version != VERSION:
            raise DataError(f"{self.path} is latent format {self.header.format} v{self.header.version}, "
                            f"this vae-deploy reads {FORMAT} v{VERSION}")
        frame_shape = tuple(self.header.latent_shape)
        expected = self.header.latent_frames * int(np.prod(frame_shape)) * 2
        if data_end - len(MAGIC) != expected:
            raise DataError(f"{self.path} holds {data_end - len(MAGIC)} latent bytes, its header promises "
                            f"{expected}")
        self.latents = np.memmap(self.path, dtype=np.float16, mode="r", offset=len(MAGIC),
                                 shape=(self.header.latent_frames, *frame_shape))

    def chunks(self, size: int):
        """Yield fp16 latent chunks of at most `size` frames, in order."""
        for start in range(0, self.header.latent_frames, size):
            yield np.asarray(self.latents[start:start + size])
