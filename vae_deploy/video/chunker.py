"""Frames into the model's chunks, one rule for the pipeline's reading stage (video/pipeline.py) and for
FrameStream (video/frames.py), so both cut a video at the same frames: `chunk` items each, the first chunk
`first` items longer (a model's first-chunk rule, VideoModelInfo.first_frames), the last one maybe shorter.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Chunker(Generic[T]):
    """Collects pushed items into chunks; a chunk comes back from the push that completed it."""

    def __init__(self, chunk: int, first: int = 0):
        self.chunk = chunk
        self._size = chunk + first  # the size of the chunk being collected
        self._pending: list[T] = []

    def push(self, item: T) -> list[T] | None:
        """Add one item; the chunk's items when this one completed it, else None."""
        self._pending.append(item)
        if len(self._pending) < self._size:
            return None
        return self.flush()

    def flush(self) -> list[T] | None:
        """The items pushed since the last complete chunk (None when there are none, which changes
        nothing); chunks after it have the steady size."""
        if not self._pending:
            return None
        done, self._pending, self._size = self._pending, [], self.chunk
        return done
