"""Batch encoding of video collections: `vae-deploy encode-dataset`.

    sources.py     which videos a batch holds, and where each one's .vaelat goes
    index.py       DIR/index.jsonl: one line per video (status, frames, latent shape, seconds, error)
    folder_lock.py one batch per DIR: an flock on the folder, held by the index for the batch
    index_parquet.py  --index parquet: DIR/index.parquet, a Parquet copy of index.jsonl (optional pyarrow)
    layouts.py     --format vaelat | webdataset: what a rerun skips, where workers write, DIR/dataset.json
    shards.py      --format webdataset: the key rule, packing tar shards deterministically, reading them back
    worker.py      one video encoded exactly as `vae-deploy encode` does, with a runner opened once
    local.py       the `local` engine: worker processes on this machine (spawn), threads split between them
    ray_engine.py  the `ray` engine: an actor pool on a local Ray or a cluster (the optional `ray` extra)
    jobs.py        encode_dataset_job: sources -> a layout skips what is done -> an engine -> the index and
                   the layout (shards packed as they complete) -> a summary

This layer sits above video/ and runtime/ and imports only from them and the bottom modules; no torch.
"""
