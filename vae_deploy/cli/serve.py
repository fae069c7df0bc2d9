"""`vae-deploy serve MODEL`: the model as a streaming service (vae_deploy/serve/, docs/serve.md). No torch;
needs the `serve` extra (pip install 'vae-deploy[serve]')."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vae_deploy.cli.options import BackendOption, ThreadsOption
from vae_deploy.errors import ConfigError, MissingBackendError
from vae_deploy.runtime.registry import DEFAULT_BACKEND


def serve(
    model: Annotated[Path, typer.Argument(help="The model folder to serve (a video model).")],
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on; another than loopback requires --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free one).")] = 8000,
    backend: BackendOption = DEFAULT_BACKEND,
    threads: ThreadsOption = None,
    max_batch: Annotated[int, typer.Option(
        "--max-batch", min=1, help="Most chunks of different sessions in one graph call.")] = 8,
    max_wait_ms: Annotated[float, typer.Option(
        "--max-wait-ms", min=0, max=60_000,
        help="How long a round waits after its oldest chunk for others to join.")]
        = 2.0,
    max_sessions: Annotated[int, typer.Option(
        "--max-sessions", min=1, help="Sessions open at once; more are refused (close code 1013).")] = 16,
    max_message_mb: Annotated[float, typer.Option(
        "--max-message-mb", min=0.001, max=4096, help="Largest message in MiB (close code 1009 beyond).")]
        = 64.0,
    max_frame_pixels: Annotated[int, typer.Option(
        "--max-frame-pixels", min=1, help="Largest frame (height x width at the model's input).")]
        = 1920 * 1088,
    max_chunk_frames: Annotated[int, typer.Option(
        "--max-chunk-frames", min=1, help="Most frames in one chunk.")] = 64,
    idle_timeout: Annotated[float, typer.Option(
        "--idle-timeout", min=0.01, max=86_400,
        help="Seconds a session may stay silent before it is closed and its state freed.")] = 60.0,
    token: Annotated[str | None, typer.Option(
        "--token", envvar="VAE_DEPLOY_TOKEN", help="Secret every client must send (required off loopback).")]
        = None,
) -> None:
    """Serve a model over WebSocket sessions (encode or decode, chunk by chunk) with batching across them."""
    try:
        from vae_deploy.serve.app import ServeConfig
        from vae_deploy.serve.server import serve as run_server
        from vae_deploy.serve.session import Limits
    except ImportError as err:
        raise MissingBackendError(f"serve needs the serve extra ({err.name} is missing): "
                                  f"pip install 'vae-deploy[serve]'") from err
    if model.exists() and not model.is_dir():
        raise ConfigError(f"{model} is a file: serve takes a model folder (one `vae-deploy export` wrote)")
    if not model.is_dir():
        raise ConfigError(f"model folder not found: {model}")
    config = ServeConfig(max_sessions=max_sessions, max_batch=max_batch, max_wait_ms=max_wait_ms,
                         max_message_bytes=int(max_message_mb * 2**20), idle_timeout=idle_timeout,
                         token=token, limits=Limits(max_frame_pixels, max_chunk_frames))
    run_server(model, host, port, config, backend, threads)
