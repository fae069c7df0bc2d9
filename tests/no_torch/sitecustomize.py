"""Makes a Python process look like the edge install (no train extra): put this folder on PYTHONPATH and
`import torch` (and the train extra's other packages) raises ModuleNotFoundError, and importlib's find_spec
fails, as when they are not installed. Used by tests that run `vae-deploy` as a real process."""

import importlib.abc
import sys

BLOCKED = ("torch", "torchvision", "safetensors", "matplotlib", "onnxconverter_common", "skimage")


class _BlockTrainExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: edge install test)", name=name)
        return None


sys.meta_path.insert(0, _BlockTrainExtra())
