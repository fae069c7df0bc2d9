"""Datasets (above export, below training): MNIST from offline sources; video clip datasets join here.

Nothing here imports from training or cli.
"""

from vae_deploy.data.mnist import MnistSplit, load_mnist

__all__ = ["MnistSplit", "load_mnist"]
