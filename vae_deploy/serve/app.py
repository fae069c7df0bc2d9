"""The ASGI app (Starlette; uvicorn runs it): `GET /healthz`, `GET /model`, `GET /metrics`, and the session
WebSocket `/session` (docs/serve.md has the protocol).

One model is loaded once, before the app exists (a folder that fails to load is refused before the port is
bound); every session is a slot of its `Batcher`. A session's chunks run one at a time: the next message is
read only once the previous chunk is answered, so a fast client fills the WebSocket's bounded receive queue
and then TCP's window, and is slowed, never buffered without bound. Every refusal sends an `error` message
(a code and a one-line message) and then closes with a WebSocket close code and a short reason.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from vae_deploy.errors import VaeDeployError
from vae_deploy.runtime.latent_space import LATENT_SPACES, NORMALIZED
from vae_deploy.runtime.runner import Runner
from vae_deploy.serve.batcher import Batcher
from vae_deploy.serve.metrics import Metrics
from vae_deploy.serve.protocol import ProtocolError, pack, unpack
from vae_deploy.serve.session import MODES, Limits, Session
from vae_deploy.video.latent_codec import VideoModelInfo

# WebSocket close codes (RFC 6455 and the IANA registry; 4xxx are this app's own)
NORMAL, GOING_AWAY, INVALID, POLICY, TOO_BIG, INTERNAL, TRY_LATER = 1000, 1001, 1007, 1008, 1009, 1011, 1013
IDLE = 4408  # like HTTP's 408 Request Timeout


@dataclass(frozen=True)
class ServeConfig:
    max_sessions: int = 16
    max_batch: int = 8
    max_wait_ms: float = 2.0
    max_message_bytes: int = 64 * 2**20
    idle_timeout: float = 60.0  # seconds a session may stay silent before its state is freed
    token: str | None = None  # required of every session (and /model, /metrics) when set
    limits: Limits = field(default_factory=Limits)


class _Refusal(Exception):
    """Ends a session: the error message's code and text, and the close code."""

    def __init__(self, reason: str, close_code: int, message: str):
        super().__init__(message)
        self.reason, self.close_code, self.message = reason, close_code, message


class ServeState:
    """The loaded model and everything the sessions share; `begin_stop()` starts the graceful stop."""

    def __init__(self, runner: Runner, config: ServeConfig):
        self.runner, self.config = runner, config
        self.info = VideoModelInfo.from_manifest(runner.manifest)
        self.metrics = Metrics(config.max_batch)
        self.batcher = Batcher(runner, config.max_batch, config.max_wait_ms / 1000, self.metrics.on_round)
        # a session's codec blocks while its chunk waits for a round: a thread per session, never fewer
        self.executor = ThreadPoolExecutor(config.max_sessions, thread_name_prefix="vae-deploy-session")
        self.connections: set[object] = set()  # sessions open or opening (counted against max_sessions)
        self.stopping = asyncio.Event()

    def summary(self) -> dict:
        m, info, norm = self.runner.manifest, self.info, self.info.normalization
        return {"kind": info.kind, "graphs": sorted(m.graphs), "channels": info.channels,
                "spatial_factor": info.spatial_factor, "temporal_factor": info.temporal_factor,
                "first_frames": info.first_frames, "latent_channels": info.latent_channels,
                "short_side": info.short_side,
                "latent_space": "normalized" if norm is not None else "raw",
                # the normalization itself (float32 values, one per latent channel), so that a client knows
                # the model as a local codec does (`encode --server`); the server applies it
                "latent_normalization": None if norm is None else {"scale": norm.scale.tolist(),
                                                                    "shift": norm.shift.tolist()},
                "fingerprint": info.fingerprint, "backend": getattr(self.runner, "name", None),
                "max_batch": self.config.max_batch, "max_sessions": self.config.max_sessions}

    def begin_stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        self.batcher.close()
        self.executor.shutdown(wait=True)
        self.runner.close()


def _authorized(state: ServeState, given: str | None) -> bool:
    token = state.config.token
    return token is None or (given is not None and hmac.compare_digest(given.encode(), token.encode()))


def _bearer(headers) -> str | None:
    value = headers.get("authorization", "")
    return value[7:] if value.lower().startswith("bearer ") else None


def create_app(state: ServeState) -> Starlette:
    async def healthz(request: Request) -> Response:
        if state.stopping.is_set():
            return JSONResponse({"status": "stopping"}, status_code=503)
        return JSONResponse({"status": "ok", "sessions": len(state.connections),
                             "streams": state.batcher.open_streams})  # streams: the state slots held

    async def model(request: Request) -> Response:
        if not _authorized(state, _bearer(request.headers)):
            return JSONResponse({"error": "a token is required (Authorization: Bearer ...)"}, status_code=401)
        return JSONResponse(state.summary())

    async def metrics(request: Request) -> Response:
        if not _authorized(state, _bearer(request.headers)):
            return JSONResponse({"error": "a token is required (Authorization: Bearer ...)"}, status_code=401)
        state.metrics.sessions.set(len(state.connections))
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    async def session(ws: WebSocket) -> None:
        await ws.accept()
        try:
            if state.stopping.is_set():
                raise _Refusal("shutting_down", GOING_AWAY, "the server is shutting down")
            if len(state.connections) >= state.config.max_sessions:
                raise _Refusal("too_many_sessions", TRY_LATER,
                               f"the server holds its {state.config.max_sessions} sessions (--max-sessions); "
                               f"try again later")
        except _Refusal as refusal:
            await _refuse(state, ws, refusal)
            return
        marker = object()
        state.connections.add(marker)  # no await since the count was checked: no race past the limit
        try:
            await _serve_session(state, ws)
        finally:
            state.connections.discard(marker)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, state.close)

    routes = [Route("/healthz", healthz), Route("/model", model), Route("/metrics", metrics),
              WebSocketRoute("/session", session)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.serve = state
    return app


async def _refuse(state: ServeState, ws: WebSocket, refusal: _Refusal) -> None:
    state.metrics.refusals.labels(refusal.reason).inc()
    try:
        await ws.send_bytes(pack({"op": "error", "code": refusal.reason, "message": refusal.message}))
        # a close reason is at most 123 bytes (RFC 6455); the error message above carries the whole line
        await ws.close(refusal.close_code, refusal.message.encode()[:120].decode(errors="ignore"))
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client is gone already


async def _next_message(state: ServeState, ws: WebSocket) -> bytes | None:
    """The session's next message; None when the client left. Refused: silence beyond the idle timeout,
    the server's stop, a text message, an oversized one."""
    receive = asyncio.ensure_future(ws.receive())
    stop = asyncio.ensure_future(state.stopping.wait())
    done, _ = await asyncio.wait({receive, stop}, timeout=state.config.idle_timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if receive not in done:
        receive.cancel()
        if stop in done:
            raise _Refusal("shutting_down", GOING_AWAY, "the server is shutting down")
        raise _Refusal("idle_timeout", IDLE, f"no message for {state.config.idle_timeout:g} s "
                                             f"(--idle-timeout): the session's state is freed")
    message = receive.result()
    if message["type"] == "websocket.disconnect":
        return None
    data = message.get("bytes")
    if data is None:
        raise _Refusal("bad_message", INVALID, "messages are binary: a 4-byte little-endian header length, a "
                                               "JSON header, the array's bytes (docs/serve.md)")
    if len(data) > state.config.max_message_bytes:
        raise _Refusal("message_too_big", TOO_BIG, f"a message of {len(data)} bytes is beyond this server's "
                                                   f"{state.config.max_message_bytes} (--max-message-mb)")
    return data


def _open(state: ServeState, header: dict, ws: WebSocket) -> tuple[str, str]:
    """The first message: {"op": "open", "mode": "encode" | "decode"}, with "token" when the server has one
    and optionally "fingerprint" (the model the client expects) and "latent_space" ("normalized", the
    default, or "raw"); (mode, latent space)."""
    if header.get("op") != "open":
        raise _Refusal("bad_message", INVALID, f'a session starts with {{"op": "open", "mode": '
                                               f'"encode" | "decode"}}, got op {header.get("op")!r}')
    if not _authorized(state, header.get("token") or _bearer(ws.headers)):
        raise _Refusal("unauthorized", POLICY, "this server requires its token (--token): send it as the "
                                               "open message's \"token\"")
    mode = header.get("mode")
    if mode not in MODES:
        raise _Refusal("bad_message", INVALID, f"mode must be {' or '.join(MODES)}, got {mode!r}")
    expected = header.get("fingerprint")
    if expected is not None and expected != state.info.fingerprint:
        raise _Refusal("wrong_model", INVALID, f"this server's model is {state.info.fingerprint[:16]}..., "
                                               f"not {str(expected)[:16]}... (latents from another model?)")
    space = header.get("latent_space", NORMALIZED)
    if space not in LATENT_SPACES:
        raise _Refusal("bad_message", INVALID, f"latent_space must be {' or '.join(LATENT_SPACES)}, got "
                                               f"{space!r}")
    return mode, space


async def _serve_session(state: ServeState, ws: WebSocket) -> None:
    loop = asyncio.get_running_loop()
    session: Session | None = None
    try:
        data = await _next_message(state, ws)
        if data is None:
            return
        mode, space = _open(state, unpack(data)[0], ws)
        # joining and leaving take the batcher's lock, which a running round holds: off the event loop
        session = await loop.run_in_executor(state.executor, Session, state.batcher, state.info, mode,
                                             state.config.limits, space)
        state.metrics.sessions_total.labels(mode).inc()
        await ws.send_bytes(pack({"op": "ready", "mode": mode, "latent_space": session.latent_space,
                                  "model": state.summary()}))
        answer = "latents" if mode == "encode" else "frames"
        while True:
            # the stop is checked between chunks: a chunk in flight is always answered first
            if state.stopping.is_set():
                raise _Refusal("shutting_down", GOING_AWAY, "the server is shutting down")
            data = await _next_message(state, ws)
            if data is None:
                return
            header, array = unpack(data)
            if header["op"] == "end":
                await ws.close(NORMAL, "session ended")
                return
            if header["op"] != "chunk" or array is None:
                raise _Refusal("bad_message", INVALID, f'expected {{"op": "chunk"}} with an array or '
                                                       f'{{"op": "end"}}, got op {header["op"]!r}')
            start = time.perf_counter()
            out = await loop.run_in_executor(state.executor, session.run, array)
            frames = array.shape[0] if mode == "encode" else out.shape[0]
            await ws.send_bytes(pack({"op": answer}, out))
            state.metrics.chunks.labels(mode).inc()
            state.metrics.frames.labels(mode).inc(frames)
            state.metrics.chunk_seconds.labels(mode).observe(time.perf_counter() - start)
    except _Refusal as refusal:
        await _refuse(state, ws, refusal)
    except ProtocolError as err:
        await _refuse(state, ws, _Refusal("bad_message", INVALID, str(err)))
    except VaeDeployError as err:
        await _refuse(state, ws, _Refusal("bad_chunk", INVALID, str(err)))
    except (WebSocketDisconnect, OSError):
        pass  # the client left mid-chunk: its state is freed below
    except Exception as err:  # a bug or a backend failure: this session ends, the server keeps serving
        await _refuse(state, ws, _Refusal("internal", INTERNAL, f"{type(err).__name__}: {err}"))
    finally:
        if session is not None:
            await loop.run_in_executor(state.executor, session.close)
