"""Batch encoding of video collections: `vae-deploy encode-dataset` (issue 16).

    sources.py     which videos a batch holds, and where each one's .vaelat goes
    index.py       DIR/index.jsonl: one line per video (status, frames, latent shape, seconds, error)
    worker.py      one video encoded exactly as `vae-deploy encode` does, with a runner opened once
    local.py       the `local` engine: worker processes on this machine (spawn), threads split between them
    ray_engine.py  the `ray` engine: an actor pool on a local Ray or a cluster (the optional `ray` extra)
    jobs.py        encode_dataset_job: sources -> skip what is done -> an engine -> the index and a summary

This layer sits above video/ and runtime/ and imports only from them and the bottom modules; no torch.
"""
