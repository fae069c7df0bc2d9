"""Checkpoints: safetensors weights + a JSON config. Loading never unpickles.

A checkpoint folder holds `model.safetensors` and `config.json`:
    {"format": "vae-deploy-checkpoint", "version": 1, "kind": "mlp", "model": {...config...}, ...extra}
Arbitrary nested state (an optimizer's state_dict, RNG states) is stored the same way: tensors in a
safetensors file, the nesting with the non-tensor leaves in its JSON metadata (`pack_state`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vae_deploy.config_io import to_dict
from vae_deploy.errors import ConfigError, ModelFormatError
from vae_deploy.files import atomic_path, write_json_atomic
from vae_deploy.models.registry import build_model

CHECKPOINT_FORMAT = "vae-deploy-checkpoint"
CHECKPOINT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (contiguous CPU copies, as safetensors requires).

    safetensors replaces the file it is given by one of its own, made 0600; atomic_path gives the
    published file the usual mode back (0666 less the umask), like every other output."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(Path(path)) as tmp:
        save_file(plain, str(tmp), metadata=metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"missing weights file: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(f"{path} is not a readable safetensors file: {exc}") from exc


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata() or {}


def save_model(folder: Path, model: nn.Module, extra: dict[str, Any] | None = None,
               weights_name: str = WEIGHTS_FILE, config_name: str = CONFIG_FILE) -> None:
    """Save weights and config of a registered model kind into `folder`."""
    folder = Path(folder)
    save_tensors(folder / weights_name, model.state_dict())
    config = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": model.kind,
        "model": to_dict(model.config),
        **(extra or {}),
    }
    write_json_atomic(folder / config_name, config)


def read_config(folder: Path, config_name: str = CONFIG_FILE) -> dict[str, Any]:
    path = Path(folder) / config_name
    if not path.is_file():
        raise ModelFormatError(f"{folder} is not a checkpoint folder: {config_name} is missing")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        raise ModelFormatError(f"{path} is not a vae-deploy checkpoint config")
    if config.get("version") != CHECKPOINT_VERSION:
        raise ModelFormatError(
            f"{path} has checkpoint version {config.get('version')}, "
            f"this vae-deploy reads {CHECKPOINT_VERSION}"
        )
    return config


def load_model(folder: Path, weights_name: str = WEIGHTS_FILE, config_name: str = CONFIG_FILE,
               entry_point: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from config.json and load its weights; refuse weights that do not fit the config.

    The config picks only among the registered kinds; a model built by a `--from` factory is rebuilt only
    when the caller names that factory (`entry_point`): a folder never chooses code to import."""
    folder = Path(folder)
    config = read_config(folder, config_name)
    try:
        model = build_model(config["kind"], config.get("model", {}), entry_point=entry_point)
    except ConfigError as exc:
        raise ConfigError(f"{folder / config_name}: {exc}") from exc
    weights = load_tensors(folder / weights_name)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        detail = "; ".join(
            part for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(extra)}" if extra else "",
                ", ".join(f"{k} is {found[k]} but the config needs {expected[k]}" for k in wrong[:3]),
            ) if part
        )
        raise ConfigError(f"checkpoint {folder / weights_name} does not match its config: {detail}")
    model.load_state_dict(weights)
    model.eval()
    return model, config


def pack_state(state: Any) -> tuple[dict[str, torch.Tensor], str]:
    """Split a nested structure into its tensors and a JSON skeleton with {"__tensor__": key} leaves."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = node
            return {"__tensor__": key}
        if isinstance(node, dict):
            # JSON keys are strings; remember int keys (optimizer param ids) to restore them.
            return {"__dict__": [[walk(k), walk(v)] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            return {"__list__" if isinstance(node, list) else "__tuple__": [walk(v) for v in node]}
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store {type(node).__name__} in a checkpoint")

    skeleton = walk(state)
    return tensors, json.dumps(skeleton)


def unpack_state(tensors: dict[str, torch.Tensor], skeleton: str) -> Any:
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "__tensor__" in node:
                return tensors[node["__tensor__"]]
            if "__dict__" in node:
                return {walk(k): walk(v) for k, v in node["__dict__"]}
            if "__list__" in node:
                return [walk(v) for v in node["__list__"]]
            if "__tuple__" in node:
                return tuple(walk(v) for v in node["__tuple__"])
        return node

    return walk(json.loads(skeleton))


def save_state(path: Path, state: Any) -> None:
    tensors, skeleton = pack_state(state)
    save_tensors(path, tensors, metadata={"skeleton": skeleton})


def load_state(path: Path) -> Any:
    tensors = load_tensors(path)
    skeleton = read_metadata(path).get("skeleton")
    if skeleton is None:
        raise ModelFormatError(f"{path} has no state skeleton in its metadata")
    return unpack_state(tensors, skeleton)
