"""A model on a `vae-deploy serve` server for the streaming commands: `encode`, `decode` and `run` with
`--server ws://HOST:PORT` (video/jobs.py) stream through the same pipeline as with a local model folder, the
codec's chunks answered by the server's sessions.

`RemoteServer(url, token)` is the job's `ModelServer` (video/model_open.py); `connect` opens a session per
mode the job needs (encode, decode, or both for `run`) and gives a `RemoteModel`, the pipeline's
`CodecProvider`: it knows the model from the server's summary (the `ready` reply's `model`: kind, channels,
factors, first-chunk rule, short side, fingerprint, latent normalization) as a local runner's manifest
would give it, and opens one `RemoteCodec` whose `encode`/`decode` send each chunk to its session.

Why the results are the local command's: the pipeline reads, fits and chunks the frames here exactly as it
does for a local model, and each session on the server runs the local codec (serve/session.py) on exactly
those chunks: the same padding of the last chunk, the same normalization, the same fp16 rounding, once, on
the server. The latents come back as those fp16 values and the decode session takes fp16 latents, so
nothing is rounded a second time; frames come back as the decoder's float32. A session alone on the server
therefore gives the local bytes; batched with other sessions, docs/serve.md says when bytes still match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vae_deploy.errors import ConfigError, DataError, VaeDeployError
from vae_deploy.runtime.latent_space import NORMALIZED, LatentNormalization
from vae_deploy.runtime.tile_plan import AUTO, OFF, TileRequest
from vae_deploy.serve.client import RemoteSession, ServerRefusal, session_url
from vae_deploy.video.latent_codec import VideoModelInfo
from vae_deploy.video.model_open import CodecProvider, ModelServer

OPEN_TIMEOUT = 30.0  # seconds to connect and open a session; a chunk's answer takes as long as it takes


class RemoteServer(ModelServer):
    """A running `vae-deploy serve`, named as `ws://HOST:PORT` (the `/session` path is added), with the
    token it requires (`--token`, or VAE_DEPLOY_TOKEN) when it has one."""

    def __init__(self, url: str, token: str | None = None, open_timeout: float = OPEN_TIMEOUT,
                 chunk_timeout: float | None = None):
        self.url = url
        self.session_url = session_url(url)  # a malformed address is one ConfigError line, before any work
        self.token = token
        self.open_timeout, self.chunk_timeout = open_timeout, chunk_timeout

    def check_options(self, tiling: TileRequest | None) -> None:
        """The server runs its codec untiled (its --max-frame-pixels bounds a frame instead): a tile size or
        a tile budget is refused here, before any connection; auto and off mean the same untiled run."""
        if tiling is None:
            return
        if tiling.tile not in (AUTO, OFF):
            raise ConfigError(f"--tile {tiling.tile}: the server runs its codec untiled (its "
                              f"--max-frame-pixels bounds a frame instead); leave --tile at auto or off with "
                              f"--server, or tile with a local --model")
        if tiling.budget is not None:
            raise ConfigError("--tile-budget is for a local model, not --server: the server runs its codec "
                              "untiled (its --max-frame-pixels bounds a frame instead)")

    def connect(self, modes: Sequence[str], *, fingerprint: str | None = None,
                latent_space: str = NORMALIZED) -> RemoteModel:
        return RemoteModel(self, tuple(modes), fingerprint, latent_space)


class RemoteModel(CodecProvider):
    """The server's model with one session per mode, for one video (module docstring)."""

    def __init__(self, server: RemoteServer, modes: tuple[str, ...], fingerprint: str | None,
                 latent_space: str):
        if not modes:
            raise ValueError("a remote model needs at least one mode (encode, decode)")
        self.server = server
        self.sessions: dict[str, RemoteSession] = {}
        self._opened = False
        try:
            for mode in modes:
                self.sessions[mode] = self._open(mode, fingerprint, latent_space)
            first = self.sessions[modes[0]]
            self.summary = first.model
            self.video_info = info_from_summary(first.model, server.url)
        except BaseException:
            self.close()
            raise
        # what reports call the backend: the server's, and where it runs
        self.name = f"{self.summary.get('backend') or 'a server'} at {server.url}"

    def _open(self, mode: str, fingerprint: str | None, latent_space: str) -> RemoteSession:
        try:
            return RemoteSession(self.server.session_url, mode, token=self.server.token,
                                 fingerprint=fingerprint, latent_space=latent_space,
                                 timeout=self.server.open_timeout, chunk_timeout=self.server.chunk_timeout)
        except ServerRefusal as refusal:
            if refusal.code == "wrong_model":
                raise DataError(f"the server at {self.server.url} serves another model than the one these "
                                f"latents were encoded by: {refusal.message}") from refusal
            raise

    def open_codec(self, info: VideoModelInfo, latent_space: str = NORMALIZED,
                   tiling: TileRequest | None = None,
                   model_size: tuple[int, int] | None = None) -> RemoteCodec:
        self.server.check_options(tiling)
        if self._opened:
            raise VaeDeployError("a remote model's sessions carry one video's state: connect again for "
                                 "another")
        wanted = info.stored_space(latent_space)
        for session in self.sessions.values():
            # an older server answers no latent_space: its sessions are in the model's default space
            got = session.latent_space or info.stored_space(NORMALIZED)
            if got != wanted:
                raise ConfigError(f"the server at {self.server.url} opened its {session.mode} session with "
                                  f"{got} latents, not the {wanted} ones asked for (an older vae-deploy "
                                  f"serve?)")
        self._opened = True
        return RemoteCodec(self.sessions.get("encode"), self.sessions.get("decode"), wanted)

    def close(self) -> None:
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            try:
                session.close()
            except (OSError, VaeDeployError):
                pass  # a server that is gone already has nothing left to free


class RemoteCodec:
    """LatentCodec's `encode`, `decode` and `latent_space` over a server's sessions: each chunk goes to the
    server as it is (the server's codec pads the last one and rounds to fp16, as the local codec does)."""

    def __init__(self, encoder: RemoteSession | None, decoder: RemoteSession | None, latent_space: str):
        self._encoder, self._decoder, self.latent_space = encoder, decoder, latent_space

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """Fitted frames (T, C, H, W) float32 -> the server's fp16 latents (ceil(T / f), C_lat, h, w)."""
        if self._encoder is None:
            raise VaeDeployError("this remote codec has no encode session")
        return self._encoder.encode(frames)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """fp16 latents (t, C_lat, h, w) -> the server's float32 frames (t * f, C, H, W)."""
        if self._decoder is None:
            raise VaeDeployError("this remote codec has no decode session")
        if latents.dtype != np.float16:
            raise VaeDeployError(f"latents must be float16 (the stored precision), got {latents.dtype}")
        return self._decoder.decode(latents)


SUMMARY_FIELDS = ("kind", "channels", "spatial_factor", "temporal_factor", "latent_channels", "short_side",
                  "fingerprint", "first_frames", "latent_space")


def info_from_summary(summary: dict, url: str) -> VideoModelInfo:
    """The model as the server's summary describes it (its `ready` reply's `model`, docs/serve.md), as
    VideoModelInfo.from_manifest gives it for a local folder; a summary that lacks a field is one line."""
    missing = [name for name in SUMMARY_FIELDS if name not in summary]
    if summary.get("latent_space") == NORMALIZED and "latent_normalization" not in summary:
        missing.append("latent_normalization")
    if missing:
        raise VaeDeployError(f"the server at {url} describes its model without {', '.join(missing)}: is it a "
                             f"`vae-deploy serve` of this version?")
    try:
        latent = int(summary["latent_channels"])
        record = summary.get("latent_normalization")
        normalization = (LatentNormalization.from_preprocessing({"latent_normalization": record}, latent)
                         if record else None)
        return VideoModelInfo(kind=str(summary["kind"]), channels=int(summary["channels"]),
                              spatial_factor=int(summary["spatial_factor"]),
                              temporal_factor=int(summary["temporal_factor"]), latent_channels=latent,
                              short_side=int(summary["short_side"]), fingerprint=str(summary["fingerprint"]),
                              first_frames=int(summary["first_frames"]), normalization=normalization)
    except (TypeError, ValueError, VaeDeployError) as err:
        raise VaeDeployError(f"the server at {url} describes its model in a form this client does not read: "
                             f"{err}") from err
