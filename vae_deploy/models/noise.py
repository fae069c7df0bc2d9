"""Where the models draw their reparameterization noise: eps ~ N(0, I) shaped like mu, in one function.

One process: exactly `torch.randn_like(mu)`, the seed's own draw. A data-parallel run (training/
distributed.py) trains each rank on a slice of every global batch; inside `global_batch_rows` a draw for that
slice draws the noise of the whole global batch and keeps the slice's rows, so rank r's sample i gets the
eps that sample gets in one process and every rank's random stream stays in step with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_rows: tuple[int, int, int] | None = None  # (offset, local batch, global batch) inside global_batch_rows


def eps_like(mu: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like `mu` (batch first)."""
    if _rows is None or mu.dim() == 0 or mu.shape[0] != _rows[1]:
        return torch.randn_like(mu)
    offset, local_n, global_n = _rows
    return torch.randn((global_n, *mu.shape[1:]), dtype=mu.dtype, device=mu.device)[offset:offset + local_n]


@contextlib.contextmanager
def global_batch_rows(offset: int, local_n: int, global_n: int) -> Iterator[None]:
    """Inside: noise for a batch of `local_n` rows is rows offset..offset+local_n of a global batch's."""
    global _rows
    saved, _rows = _rows, (offset, local_n, global_n)
    try:
        yield
    finally:
        _rows = saved
