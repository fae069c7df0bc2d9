"""DIR/index.parquet: a Parquet copy of DIR/index.jsonl (`encode-dataset --index parquet`).

The copy is there so that a batch of millions of videos can be queried with a dataframe or SQL engine
("which failed, and why"). index.jsonl stays the record: it is what a rerun reads, and what survives a
crash. The copy is rewritten whole, through a temporary file and a rename, at the end of each run that
was not stopped. Its columns are index.FIELDS with fixed types, so an empty batch or a column that is null
in every row still has a schema. pyarrow is the optional extra `vae-deploy[parquet]`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

from vae_deploy.batch.index import FIELDS, IndexEntry
from vae_deploy.errors import ConfigError
from vae_deploy.files import atomic_path

INDEX_FORMATS = ("jsonl", "parquet")
PARQUET_FILE = "index.parquet"
INSTALL_HINT = "pip install 'vae-deploy[parquet]'"


def check_index_format(index_format: str) -> None:
    """One line for an unknown --index, or for parquet without pyarrow, before any work."""
    if index_format not in INDEX_FORMATS:
        raise ConfigError(f"--index must be one of {', '.join(INDEX_FORMATS)}, got {index_format!r}")
    if index_format == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ConfigError(f"--index parquet needs pyarrow: {INSTALL_HINT}")


def _schema():
    import pyarrow as pa

    types = {"source": pa.string(), "output": pa.string(), "status": pa.string(), "frames": pa.int64(),
             "latent_shape": pa.list_(pa.int64()), "seconds": pa.float64(), "error": pa.string(),
             "truncated": pa.bool_(), "shard": pa.string(), "source_size": pa.int64(),
             "source_mtime_ns": pa.int64(), "source_digest": pa.string()}
    return pa.schema([(name, types[name]) for name in FIELDS])  # a new index field needs its type here


def write_parquet_index(out_dir: Path, entries: Iterable[IndexEntry]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    table = pa.Table.from_pylist([e.to_json() for e in entries], schema=schema)
    target = Path(out_dir) / PARQUET_FILE
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return target
