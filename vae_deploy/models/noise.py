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
    return torch.randn_like(_global_batch_like(mu, global_n))[offset:offset + local_n]


def _global_batch_like(mu: torch.Tensor, global_n: int) -> torch.Tensor:
    """An empty tensor of the global batch laid out in memory as `torch.randn_like` lays out `mu`.

    randn_like keeps a tensor's memory format (channels-last conv outputs, chunks of them) and draws in
    memory order, so eps of the same shape in another layout holds the same numbers at other positions: a
    contiguous draw gave a channels-last FrameVAE's rank other noise than one process (max abs 4.1). The
    batch dim goes outermost, as in the models' outputs, so that the global draw's rows are the samples'."""
    strides = torch.empty_like(mu).stride()  # randn_like's layout for mu (dense, in mu's dim order)
    order = [0, *sorted(range(1, mu.dim()), key=lambda d: -strides[d])]  # outermost first
    shape = (global_n, *mu.shape[1:])
    laid_out = torch.empty([shape[d] for d in order], dtype=mu.dtype, device=mu.device)
    return laid_out.permute([order.index(d) for d in range(mu.dim())])


@contextlib.contextmanager
def global_batch_rows(offset: int, local_n: int, global_n: int) -> Iterator[None]:
    """Inside: noise for a batch of `local_n` rows is rows offset..offset+local_n of a global batch's."""
    global _rows
    saved, _rows = _rows, (offset, local_n, global_n)
    try:
        yield
    finally:
        _rows = saved
