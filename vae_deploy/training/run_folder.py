"""The run folder's file names, in one place.

    model.safetensors + config.json   the best epoch by validation loss (a checkpoint: models.checkpoint)
    train_state.safetensors           the last finished epoch: weights, optimizer, RNG states, progress and
                                      the metrics history, in ONE file so it is replaced atomically as a whole
    metrics.jsonl                     one JSON record per finished epoch
    eval/                             what `vae-deploy evaluate` draws
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vae_deploy.errors import DataError
from vae_deploy.files import ensure_writable_dir, write_text_atomic
from vae_deploy.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def weights(self) -> Path:
        return self.root / WEIGHTS_FILE

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def state(self) -> Path:
        return self.root / "train_state.safetensors"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def ensure(self) -> RunFolder:
        ensure_writable_dir(self.root)
        return self

    def has_run(self) -> bool:
        """True when a training run already wrote here (so a fresh run would overwrite it)."""
        return self.state.exists() or self.metrics.exists() or self.weights.exists()

    def remove_partial_files(self) -> list[Path]:
        """Delete temporaries of our files left by a killed run (files.atomic_path names them
        .<stem>.<random>.part<suffix>); a run folder has one writer, so none of them is in use."""
        stems = {p.stem for p in (self.weights, self.config, self.state, self.metrics)}
        removed = []
        for path in self.root.glob(".*.part*"):
            if path.is_file() and path.name.split(".")[1] in stems:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def write_metrics(self, history: list[dict]) -> None:
        """Rewrite metrics.jsonl from the full history: never a duplicate or a half-written line."""
        write_text_atomic(self.metrics, "".join(json.dumps(record) + "\n" for record in history))

    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        records = []
        for number, line in enumerate(self.metrics.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{self.metrics} line {number} is not JSON") from err
        return records
