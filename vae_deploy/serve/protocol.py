"""The wire format of a session: every message is binary, and any language can write it.

    [4 bytes: header length N, unsigned little-endian] [N bytes: a JSON object, UTF-8] [the array's bytes]

The header always has "op". A message that carries an array adds "dtype" ("float32" or "float16") and
"shape" (a list of ints); the array's bytes follow the header, C order, little-endian, and their count must
be exactly the product of the shape times the dtype's size. Nothing else travels in the message: no pickle,
no numpy format, so a reader needs only a JSON parser. docs/serve.md lists the ops.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from vae_deploy.errors import InputShapeError

HEADER_PREFIX = struct.Struct("<I")  # the header's length in bytes
MAX_HEADER_BYTES = 64 * 1024  # a header is a few fields; a larger one is not a header
DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}  # the only arrays a session exchanges
MAX_DIMS = 8


class ProtocolError(InputShapeError):
    """A message that does not follow the wire format (the session is closed with code 1007)."""


def pack(header: dict, array: np.ndarray | None = None) -> bytes:
    """One message: `header` (with "op") and, if given, `array` (its dtype and shape are added)."""
    header = dict(header)
    body = b""
    if array is not None:
        name = array.dtype.name
        if name not in DTYPES:
            raise ProtocolError(f"arrays travel as {' or '.join(DTYPES)}, not {name}")
        header["dtype"], header["shape"] = name, list(array.shape)
        body = np.ascontiguousarray(array, dtype=DTYPES[name]).tobytes()
    text = json.dumps(header, separators=(",", ":")).encode()
    return HEADER_PREFIX.pack(len(text)) + text + body


def unpack(message: bytes) -> tuple[dict, np.ndarray | None]:
    """A message -> (header, array or None); anything malformed is a one-line ProtocolError."""
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise ProtocolError("messages are binary (a 4-byte header length, a JSON header, the array's bytes)")
    view = memoryview(message)
    if len(view) < HEADER_PREFIX.size:
        raise ProtocolError(f"a message starts with a {HEADER_PREFIX.size}-byte header length; got "
                            f"{len(view)} bytes")
    (length,) = HEADER_PREFIX.unpack_from(view)
    if length > MAX_HEADER_BYTES or HEADER_PREFIX.size + length > len(view):
        raise ProtocolError(f"header length {length} does not fit the message ({len(view)} bytes; a header "
                            f"is at most {MAX_HEADER_BYTES})")
    start = HEADER_PREFIX.size + length
    try:
        header = json.loads(bytes(view[HEADER_PREFIX.size:start]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"the header is not UTF-8 JSON: {err}") from err
    if not isinstance(header, dict) or not isinstance(header.get("op"), str):
        raise ProtocolError('the header must be a JSON object with a string "op"')
    body = view[start:]
    if "dtype" not in header and "shape" not in header:
        if len(body):
            raise ProtocolError(f"{len(body)} bytes follow a header without dtype and shape")
        return header, None
    return header, _array(header, body)


def _array(header: dict, body: memoryview) -> np.ndarray:
    dtype, shape = header.get("dtype"), header.get("shape")
    if dtype not in DTYPES:
        raise ProtocolError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if (not isinstance(shape, list) or not 0 < len(shape) <= MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ProtocolError(f"shape must be a list of 1 to {MAX_DIMS} non-negative ints, got {shape!r}")
    expected = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
    if expected != len(body):
        raise ProtocolError(f"a {dtype} array of shape {tuple(shape)} is {expected} bytes; the message "
                            f"carries {len(body)}")
    # a copy: the message buffer is not ours to keep, and the codec may write into what it is given
    return np.frombuffer(body, dtype=DTYPES[dtype]).reshape(shape).astype(DTYPES[dtype].newbyteorder("="))
