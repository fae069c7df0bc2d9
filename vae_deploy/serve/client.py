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
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI, WebSocketException
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from vae_deploy.errors import ConfigError, VaeDeployError
from vae_deploy.serve.protocol import pack, unpack
from vae_deploy.video.chunker import Chunker
from vae_deploy.video.fit import plan_fit
from vae_deploy.video.frames import FrameCoder


class ServerRefusal(VaeDeployError):
    """The server ended the session: `code` is its error code (e.g. too_many_sessions), `close_code` the
    WebSocket close code."""

    def __init__(self, code: str, message: str, close_code: int | None = None):
        # the codes the server sends are its refusals; "closed", "timeout" and "bad_reply" are what the client
        # saw (a connection that ended without an error message, no answer, an answer not of this protocol)
        super().__init__(message if code in ("closed", "timeout", "bad_reply")
                         else f"server refused ({code}): {message}")
        self.code, self.message, self.close_code = code, message, close_code


SESSION_PATH = "/session"
_UNSET = object()  # chunk_timeout not given: the same as timeout


def session_url(server: str) -> str:
    """A server's session URL: `ws://HOST:PORT` (or wss://) gets the `/session` path the server listens on;
    a URL with a path is taken as it is. Anything else is one ConfigError line."""
    try:
        parts = urlsplit(server.strip())
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError as err:
        raise ConfigError(f"--server must be ws://HOST:PORT, got {server!r}: {err}") from err
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"--server must be ws://HOST:PORT (or wss://, a `vae-deploy serve` address), got "
                          f"{server!r}")
    path = parts.path if parts.path not in ("", "/") else SESSION_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class RemoteSession:
    """One session (encode or decode) on a server: `encode(frames)` or `decode(latents)`, chunk by chunk.
    `latent_space` ("normalized", the server's default, or "raw") is the space the session's latents are
    in; `self.latent_space` is what the server answered (raw for a model without a normalization).
    `timeout` bounds the connection and the open exchange, `chunk_timeout` (default: `timeout`) the wait for
    a chunk's answer; None waits as long as the server computes (its keepalive pings still find a dead
    connection)."""

    def __init__(self, url: str, mode: str, token: str | None = None, fingerprint: str | None = None,
                 timeout: float = 60.0, max_size: int | None = 2**30, latent_space: str | None = None,
                 chunk_timeout: float | None | object = _UNSET):
        self.mode, self.timeout, self.url = mode, timeout, url
        self.chunk_timeout = timeout if chunk_timeout is _UNSET else chunk_timeout
        # entered as a context manager: websockets 17.1 deprecates a bare connect(); closed in close()
        self._exit = ExitStack()
        try:
            self._ws: ClientConnection = self._exit.enter_context(ws_connect(
                url, open_timeout=timeout, max_size=max_size, compression=None))
        except (OSError, TimeoutError, InvalidURI, InvalidHandshake, WebSocketException) as err:
            raise VaeDeployError(f"cannot reach the server at {url}: {_reason(err)}") from err
        opening = {"op": "open", "mode": mode}
        if token is not None:
            opening["token"] = token
        if fingerprint is not None:
            opening["fingerprint"] = fingerprint
        if latent_space is not None:
            opening["latent_space"] = latent_space
        try:
            header, _ = self._exchange(pack(opening), self.timeout)
        except BaseException:
            self._exit.close()
            raise
        if header.get("op") != "ready":
            self._exit.close()
            raise ServerRefusal("bad_reply", f"the server at {url} answered the open message with "
                                             f"{header.get('op')!r}, not 'ready': is it `vae-deploy serve`?")
        self.model: dict = header.get("model", {})
        self.latent_space: str | None = header.get("latent_space")

    def _exchange(self, message: bytes, timeout: float | None) -> tuple[dict, np.ndarray | None]:
        try:
            self._ws.send(message)
        except ConnectionClosed:
            pass  # a server that refused at once: its error message may still wait to be read
        try:
            reply = self._ws.recv(timeout=timeout)
        except ConnectionClosed as err:
            raise self._refusal(err) from err
        except TimeoutError as err:
            raise ServerRefusal("timeout", f"no answer from the server at {self.url} in {timeout:g} s"
                                ) from err
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
        how = f" (close code {rcvd.code})" if rcvd is not None else " without a close frame"
        why = f": {rcvd.reason}" if rcvd is not None and rcvd.reason else ""
        return ServerRefusal("closed", f"the server at {self.url} closed the session{how}{why}",
                             rcvd.code if rcvd else None)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """float32 frames (T, C, H, W) -> float16 latents, as LatentCodec.encode."""
        return self._exchange(pack({"op": "chunk"}, np.asarray(frames, dtype=np.float32)),
                              self.chunk_timeout)[1]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """float16 latents (t, C_lat, h, w) -> float32 frames, as LatentCodec.decode."""
        return self._exchange(pack({"op": "chunk"}, np.asarray(latents, dtype=np.float16)),
                              self.chunk_timeout)[1]

    def close(self) -> None:
        """End the session (the server frees its state)."""
        try:
            self._ws.send(pack({"op": "end"}))
        except (ConnectionClosed, OSError):
            pass
        self._exit.close()

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reason(err: BaseException) -> str:
    """Why a connection failed, in words (a refused connection's errno text, a handshake's HTTP status)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


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
