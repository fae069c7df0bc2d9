"""External VAEs: how a diffusers folder or a `--from` entry point becomes an `AdaptedVAE` (contract.py), and
the registration of their model kinds from the family table (models/families.py).

A family module (diffusers_kl.py, ...) exposes `wrap(diffusers_model) -> module keeping the contract`; the
table maps a diffusers config's `_class_name` to it. diffusers is imported only here, when a diffusers
model is built or loaded (the `diffusers` extra). Weights load from local files only: nothing is ever
downloaded.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from vae_deploy.errors import ConfigError, MissingBackendError, ModelFormatError, VaeDeployError
from vae_deploy.models.adapters.contract import AdaptedVAE, AdapterConfig
from vae_deploy.models.families import ADAPTER_KINDS, ENTRY_POINT_KIND, FAMILIES, Family, family_names
from vae_deploy.models.registry import ModelKind, register_kind

DIFFUSERS_HINT = "pip install 'vae-deploy[diffusers]'"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def family(class_name: str, where: str) -> Family:
    try:
        return FAMILIES[class_name]
    except (KeyError, TypeError) as err:  # TypeError: a config.json whose _class_name is a list or an object
        raise ConfigError(f"{where} holds a {class_name!r}, which vae-deploy does not adapt (supported: "
                          f"{family_names()}; others through --from package.module:factory)") from err


def kind_for(config: AdapterConfig) -> str:
    return ENTRY_POINT_KIND if config.entry_point else family(config.class_name, "the config").kind


def _diffusers_class(class_name: str):
    try:
        import diffusers
        from diffusers.utils import logging as diffusers_logging
    except ImportError as err:
        raise MissingBackendError(f"diffusers models need diffusers ({DIFFUSERS_HINT})") from err
    # Its info-level advice (install accelerate, config keys a class ignores) would bury our one-line output.
    diffusers_logging.set_verbosity_error()
    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise MissingBackendError(f"this diffusers ({diffusers.__version__}) has no {class_name}; upgrade it "
                                  f"({DIFFUSERS_HINT})")
    return cls


def _wrap(class_name: str, model: nn.Module) -> nn.Module:
    return importlib.import_module(family(class_name, "the config").module).wrap(model)


def import_entry_point(spec: str) -> Callable[[], nn.Module]:
    """"package.module:factory" -> the factory; one ConfigError line for each way it can be wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--from {spec!r} must be 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except SystemExit as exc:  # sys.exit() in user code must not end the export as if it had succeeded
        raise ConfigError(f"--from {spec}: importing {module_name} called sys.exit({exc.code!r})") from exc
    except Exception as exc:  # noqa: BLE001 - any error of the user's module is theirs to see, in one line
        raise ConfigError(f"--from {spec}: cannot import {module_name} ({type(exc).__name__}: {exc})"
                          ) from exc
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ConfigError(f"--from {spec}: {module_name} has no {attr}")
    if not callable(factory):
        raise ConfigError(f"--from {spec}: {attr} is not callable")
    return factory


def call_factory(spec: str) -> nn.Module:
    try:
        module = import_entry_point(spec)()
    except ConfigError:
        raise
    except SystemExit as exc:  # any code, 0 too: the export has no module, so it failed
        raise ConfigError(f"--from {spec}: the factory called sys.exit({exc.code!r}) instead of returning a "
                          f"module") from exc
    except Exception as exc:  # noqa: BLE001 - the factory is user code
        raise ConfigError(f"--from {spec}: the factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise ConfigError(f"--from {spec}: the factory returned a {type(module).__name__}, not a torch "
                          f"module")
    return module


def build_adapted(config: AdapterConfig, entry_point: str | None = None) -> AdaptedVAE:
    """The registry's builder of every adapter kind (build_model): the wrapped module with fresh weights."""
    return AdaptedVAE(config, build_inner(config, entry_point), kind_for(config))


def build_inner(config: AdapterConfig, entry_point: str | None = None) -> nn.Module:
    """The contract module `config` describes, with fresh (untrained) weights; the caller loads the saved
    ones (the PyTorch reference of a model folder).

    A config comes from a folder, so it only picks among the project's own families; an entry point it
    records is imported only when the caller names that same one (`entry_point`, e.g. `verify --from`):
    loading a folder never runs code the folder chooses."""
    if config.entry_point:
        if entry_point != config.entry_point:
            raise ConfigError(untrusted_entry_point(config.entry_point, entry_point))
        return call_factory(config.entry_point)
    if entry_point:
        raise ConfigError(f"this model is a diffusers {config.class_name}, not one exported with --from: "
                          f"--from {entry_point} does not apply to it")
    family(config.class_name, "the config")  # before diffusers is asked for any name
    model = _diffusers_class(config.class_name).from_config(dict(config.config))
    return _wrap(config.class_name, model.eval())


def untrusted_entry_point(recorded: str, given: str | None) -> str:
    """Why a model recorded as `--from recorded` is not rebuilt when the user named `given` (or nothing)."""
    if given:
        return (f"this model was exported with --from {recorded}, not --from {given}; vae-deploy imports "
                f"only the factory a model records, and only when you name it")
    return (f"the PyTorch reference of this model is built by the factory it was exported with (--from "
            f"{recorded}); vae-deploy imports it only when you name it: --from package.module:factory")


def diffusers_folder(path: Path) -> Path | None:
    """The diffusers model folder `path` names (itself, or a pipeline folder's vae/), or None when it is
    not one (a vae-deploy run folder, say)."""
    path = Path(path)
    for folder in (path, path / "vae"):
        config = folder / "config.json"
        if config.is_file():
            try:
                data = json.loads(config.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(data, dict) and "_class_name" in data:
                return folder
    return None


def load_diffusers_folder(folder: Path) -> AdaptedVAE:
    """A local diffusers model folder (config.json + weights, as save_pretrained writes it), adapted."""
    folder = Path(folder)
    data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    class_name = data["_class_name"]
    fam = family(class_name, f"{folder}/config.json")
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise ModelFormatError(f"{folder} has a config.json but no weights ({' or '.join(WEIGHT_FILES)})")
    cls = _diffusers_class(class_name)
    try:
        # use_safetensors says which file: left to guess, diffusers logs an error for a .bin-only folder.
        # low_cpu_mem_usage=False: the same path with or without accelerate (no advice to install it), and
        # with ignore_mismatched_sizes the loading info lists every missing, unexpected and misshapen weight
        # (diffusers only warns, leaving those weights random) for _check_weights to refuse.
        model, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                          use_safetensors=weights.suffix == ".safetensors",
                                          low_cpu_mem_usage=False, ignore_mismatched_sizes=True)
    except Exception as exc:  # noqa: BLE001 - a config the class cannot build fails anywhere (IndexError...)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        # "Error(s) in loading state_dict for ...:" says nothing alone; its next line names the tensor
        first = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
        raise ModelFormatError(f"cannot load {folder} as a diffusers {class_name}: {first}") from exc
    _check_weights(weights, info)
    config = AdapterConfig(class_name=class_name, config={k: v for k, v in model.config.items()
                                                          if not k.startswith("_")})
    try:
        inner = _wrap(class_name, model.eval())
    except VaeDeployError:
        raise
    except (ValueError, TypeError, ArithmeticError) as exc:  # config values the adapter reads: a scaling
        # factor that is no number, a latents_std of 0
        raise ModelFormatError(f"cannot adapt {folder} as a diffusers {class_name}: its config.json has "
                               f"values vae-deploy cannot use ({type(exc).__name__}: {exc})") from exc
    return AdaptedVAE(config, inner, fam.kind)


def _check_weights(weights: Path, info: dict) -> None:
    """Refuse weights that do not fill the model config.json describes exactly: a missing weight would
    stay random and an unexpected one is unused, yet parity would pass (it compares the graphs with that
    same half-random model)."""
    def listed(keys: list[str], one: str, many: str) -> str:
        keys = sorted(keys)  # diffusers' order comes from sets: the same folder would name other keys
        shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
        return f"{len(keys)} {one if len(keys) == 1 else many} ({shown})"

    shapes = [f"{key} {tuple(found)} for {tuple(wanted)}"
              for key, found, wanted in info.get("mismatched_keys", [])]
    parts = [listed(list(keys), one, many) for keys, one, many in (
        (info.get("missing_keys", []), "missing weight", "missing weights"),
        (info.get("unexpected_keys", []), "unexpected weight", "unexpected weights"),
        (shapes, "weight of another shape", "weights of another shape")) if keys]
    if parts:
        raise ModelFormatError(f"{weights} does not match config.json: {'; '.join(parts)}")


def load_entry_point(spec: str) -> AdaptedVAE:
    """`--from package.module:factory`: the factory's module (weights and all) as an AdaptedVAE."""
    return AdaptedVAE(AdapterConfig(entry_point=spec), call_factory(spec).eval(), ENTRY_POINT_KIND)


# One record per adapter kind: the family chosen by the config, the graphs those of the step form.
for _kind in ADAPTER_KINDS:
    register_kind(ModelKind(_kind, AdapterConfig, AdaptedVAE, specs="video", build=build_adapted))


__all__ = ["ADAPTER_KINDS", "ENTRY_POINT_KIND", "FAMILIES", "AdaptedVAE", "AdapterConfig", "Family",
           "build_adapted", "build_inner", "call_factory", "diffusers_folder", "kind_for",
           "load_diffusers_folder", "load_entry_point", "untrusted_entry_point"]
