"""Errors a user can cause. The CLI turns these into one clear line and a non-zero exit.

This module sits below every layer (no imports from the package), so any layer may raise these.
"""


class VaeDeployError(Exception):
    """A problem with the user's input or environment, with a message fit to print as is."""

    exit_code = 2


class DataError(VaeDeployError):
    """Missing, corrupt or truncated data."""


class ConfigError(VaeDeployError):
    """Unknown, ill-typed or inconsistent configuration (recipes, checkpoints, profiles)."""


class ModelFormatError(VaeDeployError):
    """A model folder or checkpoint that is missing files, tampered with, or of another version."""


class MissingBackendError(VaeDeployError):
    """A backend whose library is not installed or whose device is absent."""


class OutputError(VaeDeployError):
    """An output that could not be written: a full disk, a quota, a read-only folder. Nothing was published
    under its name."""

    exit_code = 1


class InputShapeError(VaeDeployError, ValueError):
    """An array of the wrong shape, dtype or content handed to a model."""


class ParityError(VaeDeployError):
    """A backend's outputs differ from the reference by more than the tolerance."""

    exit_code = 1
