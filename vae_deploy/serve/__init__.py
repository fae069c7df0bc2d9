"""`vae-deploy serve`: a torch-free streaming VAE service. One WebSocket connection is one
session (encode: frames in, fp16 latents out; decode: the reverse), each session a state slot of one
`BatchedStreams`, so concurrent sessions share graph calls. docs/serve.md has the protocol.

Modules: protocol.py (the binary message format), batcher.py (the rounds across sessions), session.py (one
session's codec and limits), metrics.py (Prometheus), app.py (the ASGI app), server.py (uvicorn, binding and
the graceful stop), client.py (a Python client), remote_codec.py (a served model as the streaming commands'
codec: `encode`/`decode --server`). Nothing here imports torch.
"""
