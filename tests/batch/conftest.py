"""The clips and serial-encode reference every encode-dataset test module uses, built once per module from
that module's GOOD and BAD clip names (batch_clips.py; each clip's encode is shared by the run's modules
that cut the same bytes); `serial` is keyed by the module's `reference_key(name)` (an output path, or a
WebDataset key)."""

from __future__ import annotations

from pathlib import Path

import pytest
from batch_clips import make_clips, serial_encode


@pytest.fixture(scope="module")
def clips(request, tmp_path_factory) -> Path:
    return make_clips(tmp_path_factory.mktemp("clips"), request.module.GOOD, request.module.BAD)


@pytest.fixture(scope="module")
def serial(request, clips, tmp_path_factory) -> dict[str, bytes]:
    """Each good clip through `vae-deploy encode`, one process per clip: the reference bytes."""
    encoded = serial_encode(clips, request.module.GOOD, tmp_path_factory)
    return {request.module.reference_key(name): data for name, data in encoded.items()}
