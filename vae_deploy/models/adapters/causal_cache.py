"""A causal model's Python cache list as explicit state tensors: what the adapter contract's step form
(`encode_step(video, *past) -> (..., *present)`) needs from a model that streams itself through a list.

Causal video VAEs in diffusers (Wan's `feat_cache`) keep, between calls, the last frames of every causal
convolution's input in a list, one slot per convolution, filled in call order. `CacheState` maps that list to
and from a fixed list of tensors:

- `cache(past)` builds the list a call fills, the past tensors in their slots (None elsewhere);
- `present(cache, past)` reads it back: each state tensor is the last F frames of (past, what the call
  cached). That equals the usual update (keep x[-F:], or past's tail + x when x is shorter), and it stays
  right in a traced graph run at another chunk length than the one traced, where the model's own Python
  branch on the frame count was frozen. A slot holding a non-tensor marker (Wan's "Rep" on the first
  chunk) passes its past through;
- `from_probe(...)` finds which slots are state, and their shapes, from one small run of the model's own
  walk (first chunk, then one steady chunk) at one latent pixel by two: a slot holds
  (batch, channels, frames, base * num // den, 2 * base * num // den) for a frame (or latent) size `base`.

Zero frames in front stand for frames a cache lacks: a causal convolution zero-pads exactly those. Slots a
walk never fills (1x1x1 shortcut convolutions) are not state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch

from vae_deploy.errors import ConfigError, InputShapeError


@dataclass(frozen=True)
class Slot:
    """One state tensor: its cache index, channels, frames, and height/width as base * num // den."""

    index: int
    channels: int
    frames: int
    num: int
    den: int

    def shape(self, batch, height, width) -> tuple:
        # + - * // only: export calls this with symbols to record formulas (docs/adapters.md)
        num, den = self.num, self.den
        return (batch, self.channels, self.frames, height * num // den, width * num // den)


@dataclass(frozen=True)
class CacheState:
    """The state of one cache list: `total` slots, of which `slots` are state tensors."""

    where: str  # names the model in errors ("AutoencoderKLWan encoder")
    total: int
    slots: tuple[Slot, ...]

    def shapes(self, batch, height, width) -> list[tuple]:
        return [s.shape(batch, height, width) for s in self.slots]

    def zeros(self, like: torch.Tensor, batch: int, height: int, width: int) -> list[torch.Tensor]:
        return [like.new_zeros(shape) for shape in self.shapes(batch, height, width)]

    def split(self, slot: int) -> tuple[CacheState, CacheState]:
        """The states of the slots before `slot` and from it on: a model run in two parts on one cache list
        (each part's list keeps every slot, so the indices stay those of the whole walk)."""
        before = tuple(s for s in self.slots if s.index < slot)
        after = tuple(s for s in self.slots if s.index >= slot)
        return CacheState(self.where, self.total, before), CacheState(self.where, self.total, after)

    def rescaled(self, factor: int) -> CacheState:
        """The same slots with sizes given in units `factor` times larger (an encoder's latent-resolution
        slots in latent positions instead of pixels): h * num // den becomes h * (num * factor) // den."""
        slots = []
        for s in self.slots:
            ratio = Fraction(s.num * factor, s.den)
            slots.append(Slot(s.index, s.channels, s.frames, ratio.numerator, ratio.denominator))
        return CacheState(self.where, self.total, tuple(slots))

    def empty(self) -> list:
        """The list of a first chunk: nothing cached."""
        return [None] * self.total

    def cache(self, past: tuple[torch.Tensor, ...]) -> list:
        if len(past) != len(self.slots):
            raise InputShapeError(f"{self.where} step: {len(self.slots)} state tensors expected, got "
                                  f"{len(past)}")
        cache = self.empty()
        for slot, p in zip(self.slots, past, strict=True):
            cache[slot.index] = p
        return cache

    def present(self, cache: list, past: list[torch.Tensor]) -> list[torch.Tensor]:
        present = []
        for slot, p in zip(self.slots, past, strict=True):
            held = cache[slot.index]
            if isinstance(held, torch.Tensor):
                present.append(torch.cat([p, held], dim=2)[:, :, -slot.frames:])
            else:  # a marker (Wan's "Rep"): the next chunk treats it as zero frames
                present.append(p)
        return present

    @classmethod
    def from_probe(cls, where: str, cache: list, first: list[int], base: int,
                   scale: Callable[[int], tuple[int, int]]) -> CacheState:
        """The filled slots of `cache` after a steady chunk at height `base` (width 2 * base); `first`: the
        slots the first chunk filled; `scale(h)` gives (num, den) with base * num // den == h."""
        used = [i for i, c in enumerate(cache) if isinstance(c, torch.Tensor)]
        if used != first:
            raise ConfigError(f"{where}: the first chunk fills cache slots {first}, later chunks {used}; "
                              f"vae-deploy needs the same slots in both")
        slots = []
        for i in used:
            _, channels, frames, h, w = cache[i].shape
            if w != 2 * h:
                raise ConfigError(f"{where}: cache slot {i} is {h}x{w} for a 1x2 layout")
            num, den = scale(h)
            if base * num // den != h:
                raise ConfigError(f"{where}: cache slot {i} is {h} high, not a power-of-two scale of {base}")
            slots.append(Slot(i, int(channels), int(frames), num, den))
        return cls(where, len(cache), tuple(slots))


def filled(cache: list) -> list[int]:
    """The slots a call filled (what `from_probe` takes as `first` after the first chunk)."""
    return [i for i, c in enumerate(cache) if c is not None]


__all__ = ["CacheState", "Slot", "filled"]
