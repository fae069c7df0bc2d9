"""A Python client of `vae-deploy serve`, with the chunk API of the local codec and of FrameStream; no torch,
only numpy and the `websockets` library's synchronous client.

    from vae_deploy.serve.client import connect

    with connect("ws://127.0.0.1:8000/session", "encode") as session:
        for chunk in chunks:                         # float32 (T, C, H, W) in [0, 1], fitted to the model
            latents = session.encode(chunk)          # float16 (t, C_lat, h, w): what `encode` stores
    with connect(url, "decode") as session:
        frames = session.decode(latents)             # float32 (T, C, H, W)

`RemoteFrameStream` mirrors video/frames.py's FrameStream (push RGB uint8 frames, get `CodedChunk`s) over an
encode and a decode session. A refusal from the server raises `ServerRefusal` with its code and message.
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from vae_deploy.errors import VaeDeployError
from vae_deploy.serve.protocol import pack, unpack
from vae_deploy.video.chunker import Chunker
from vae_deploy.video.fit import plan_fit
from vae_deploy.video.frames import FrameCoder


class ServerRefusal(VaeDeployError):
    """The server ended the session: `code` is its error code (e.g. too_many_sessions), `close_code` the
    WebSocket close code."""

    def __init__(self, code: str, message: str, close_code: int | None = None):
        super().__init__(f"server refused ({code}): {message}")
        self.code, self.message, self.close_code = code, message, close_code


class RemoteSession:
    """One session (encode or decode) on a server: `encode(frames)` or `decode(latents)`, chunk by chunk."""

    def __init__(self, url: str, mode: str, token: str | None = None, fingerprint: str | None = None,
                 timeout: float = 60.0, max_size: int | None = 2**30):
        self.mode, self.timeout = mode, timeout
        # entered as a context manager: websockets 17.1 deprecates a bare connect(); closed in close()
        self._exit = ExitStack()
        try:
            self._ws: ClientConnection = self._exit.enter_context(ws_connect(
                url, open_timeout=timeout, max_size=max_size, compression=None))
        except OSError as err:
            raise VaeDeployError(f"cannot reach the server at {url}: {err}") from err
        opening = {"op": "open", "mode": mode}
        if token is not None:
            opening["token"] = token
        if fingerprint is not None:
            opening["fingerprint"] = fingerprint
        header, _ = self._exchange(pack(opening))
        self.model: dict = header.get("model", {})

    def _exchange(self, message: bytes) -> tuple[dict, np.ndarray | None]:
        try:
            self._ws.send(message)
        except ConnectionClosed:
            pass  # a server that refused at once: its error message may still wait to be read
        try:
            reply = self._ws.recv(timeout=self.timeout)
        except ConnectionClosed as err:
            raise self._refusal(err) from err
        header, array = unpack(reply)
        if header["op"] == "error":
            close = self._close_code()
            raise ServerRefusal(header.get("code", "error"), header.get("message", ""), close)
        return header, array

    def _close_code(self) -> int | None:
        try:  # the close frame follows the error message
            self._ws.recv(timeout=self.timeout)
        except ConnectionClosed as err:
            return err.rcvd.code if err.rcvd else None
        except TimeoutError:
            return None
        return None

    def _refusal(self, err: ConnectionClosed) -> ServerRefusal:
        rcvd = err.rcvd
        return ServerRefusal("closed", rcvd.reason if rcvd else "the connection closed",
                             rcvd.code if rcvd else None)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """float32 frames (T, C, H, W) -> float16 latents, as LatentCodec.encode."""
        return self._exchange(pack({"op": "chunk"}, np.asarray(frames, dtype=np.float32)))[1]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """float16 latents (t, C_lat, h, w) -> float32 frames, as LatentCodec.decode."""
        return self._exchange(pack({"op": "chunk"}, np.asarray(latents, dtype=np.float16)))[1]

    def close(self) -> None:
        """End the session (the server frees its state)."""
        try:
            self._ws.send(pack({"op": "end"}))
        except ConnectionClosed:
            pass
        self._exit.close()

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(url: str, mode: str, **options) -> RemoteSession:
    return RemoteSession(url, mode, **options)


class RemoteFrameStream(FrameCoder):
    """FrameStream's API (push RGB uint8 frames, flush at the end, `CodedChunk`s back) with the model on a
    server: frames are fitted and chunked here as FrameStream does, then encoded by one session and the
    latents decoded by another."""

    def __init__(self, url: str, frame_size: tuple[int, int], chunk: int = 8, short_side: int | None = None,
                 fit: str = "snap", **options):
        self._encoder = RemoteSession(url, "encode", **options)
        try:
            self._decoder = RemoteSession(url, "decode", **options)
        except BaseException:
            self._encoder.close()
            raise
        model = self._encoder.model
        if chunk % model["temporal_factor"]:
            self.close()
            raise VaeDeployError(f"chunk {chunk} is not a multiple of the model's temporal factor "
                                 f"{model['temporal_factor']}")
        self.policy = plan_fit(tuple(frame_size), short_side or model["short_side"], model["spatial_factor"],
                               model["channels"], fit)
        self._chunker: Chunker[np.ndarray] = Chunker(chunk, model["first_frames"])

    def _encode(self, fitted: np.ndarray) -> np.ndarray:
        return self._encoder.encode(fitted)

    def _decode(self, latents: np.ndarray) -> np.ndarray:
        return self._decoder.decode(latents)

    def close(self) -> None:
        self._encoder.close()
        self._decoder.close()
