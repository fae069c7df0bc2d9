"""vae-deploy: train a VAE in PyTorch, export encoder/decoder graphs, stream video through any backend."""

__version__ = "0.1.0"
