"""A video model for the caller's own capture loop: push frames in, get latents and reconstructed frames out.

For pipelines that already own their frames (an OpenCV or GStreamer appsink loop, a camera SDK, frames off a
queue) and only want the model in the middle:

    from vae_deploy.video.frames import FrameStream

    with FrameStream.open("models/my_vae", frame_size=(640, 480)) as stream:
        for frame in my_frames():                        # RGB uint8 (H, W, 3), every frame the same size
            for chunk in stream.push(frame):             # a result whenever a chunk of frames is complete
                use(chunk.latents, chunk.frames)
        for chunk in stream.flush():                     # the last, partial chunk
            use(chunk.latents, chunk.frames)

Each result holds the chunk's fp16 latents (t, C, h, w) and its reconstruction as RGB uint8 (T, H, W, 3) at
the frame size pushed; a model whose first latent frame has its own rule (Wan: 1 frame) completes its first
chunk `first_frames` frames later. Frames are fitted exactly as `vae-deploy run` fits them and go through
the same codec in the same chunks, so the latents equal what `vae-deploy encode` stores for the same frames
and chunk. `tile` and `tile_budget` split large frames into spatial tiles like `run --tile
--tile-budget` (auto by default: only a frame too large for the budget). The streaming state is carried
from chunk to chunk inside the model's runner: memory stays constant however long the loop runs. No torch:
this runs on the edge install.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_deploy.runtime.registry import DEFAULT_BACKEND
from vae_deploy.runtime.runner import Runner
from vae_deploy.runtime.tile_plan import AUTO, TileRequest
from vae_deploy.video.chunker import Chunker
from vae_deploy.video.fit import FitPolicy, plan_fit
from vae_deploy.video.latent_codec import LatentCodec, VideoModelInfo
from vae_deploy.video.model_open import ModelChoice, open_model
from vae_deploy.video.pipeline import DEFAULT_CHUNK


@dataclass
class CodedChunk:
    latents: np.ndarray  # float16 (t, C, h, w): what a .vaelat file stores for these frames
    frames: np.ndarray  # uint8 (T, H, W, 3) RGB: the reconstruction at the size of the frames pushed


class FrameCoder:
    """Frames pushed one by one, fitted to the model and cut into its chunks, each chunk encoded and decoded:
    what FrameStream (a local runner) and serve's RemoteFrameStream (a server) share. A subclass sets
    `policy` (how frames fit the model) and `_chunker`, and says how a chunk is encoded and decoded."""

    policy: FitPolicy
    _chunker: Chunker[np.ndarray]

    def _encode(self, fitted: np.ndarray) -> np.ndarray:
        """Fitted frames (T, C, H, W) float32 -> fp16 latents, the stream's state carried."""
        raise NotImplementedError

    def _decode(self, latents: np.ndarray) -> np.ndarray:
        """fp16 latents -> fitted frames (T, C, H, W) float32, the stream's state carried."""
        raise NotImplementedError

    def push(self, frame: np.ndarray) -> list[CodedChunk]:
        """Add one RGB uint8 frame (H, W, 3); returns the chunk it completed, if any."""
        done = self._chunker.push(self.policy.fit(np.asarray(frame)))
        return [] if done is None else self._code(done)

    def flush(self) -> list[CodedChunk]:
        """Code the frames pushed since the last full chunk (the stream's end)."""
        rest = self._chunker.flush()
        return [] if rest is None else self._code(rest)

    def _code(self, frames: list[np.ndarray]) -> list[CodedChunk]:
        fitted = np.stack(frames)
        latents = self._encode(fitted)
        recon = self._decode(latents)[:fitted.shape[0]]  # drop frames decoded from end padding
        return [CodedChunk(latents, np.stack([self.policy.unfit(r) for r in recon]))]

    def close(self) -> None:
        """Release what the stream holds (a subclass's runner or sessions)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FrameStream(FrameCoder):
    """One video through a model, fed frame by frame (see the module docstring)."""

    def __init__(self, runner: Runner, frame_size: tuple[int, int], chunk: int = DEFAULT_CHUNK,
                 short_side: int | None = None, fit: str = "snap", owns_runner: bool = False,
                 tile: int | str = AUTO, tile_budget: int | str | None = None):
        self.runner = runner
        self.info = VideoModelInfo.from_manifest(runner.manifest)
        self.info.check_chunk(chunk)
        short = self.info.short_side if short_side is None else short_side
        self.policy: FitPolicy = plan_fit(tuple(frame_size), short, self.info.spatial_factor,
                                          self.info.channels, fit)
        self.chunk = chunk
        # spatial tiles as `run --tile/--tile-budget` (runtime/tile_plan.py); refused here, before any frame
        self._latent_codec = LatentCodec(runner, self.info, tiling=TileRequest(tile, tile_budget),
                                         model_size=self.policy.model_size)
        # the pipeline's chunking: the first chunk first_frames longer (a model's first rule)
        self._chunker: Chunker[np.ndarray] = Chunker(chunk, self.info.first_frames)
        self._owns_runner = owns_runner

    @classmethod
    def open(cls, model_dir: Path | str | None, frame_size: tuple[int, int], backend: str = DEFAULT_BACKEND,
             threads: int | None = None, **options) -> FrameStream:
        """A stream on a model folder (None: the packaged default model); closing it closes the runner."""
        runner = open_model(ModelChoice(None if model_dir is None else Path(model_dir), backend, threads))
        try:
            return cls(runner, frame_size, owns_runner=True, **options)
        except BaseException:
            runner.close()
            raise

    def _encode(self, fitted: np.ndarray) -> np.ndarray:
        return self._latent_codec.encode(fitted)

    def _decode(self, latents: np.ndarray) -> np.ndarray:
        return self._latent_codec.decode(latents)

    def close(self) -> None:
        if self._owns_runner:
            self.runner.close()
