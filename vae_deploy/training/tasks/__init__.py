"""Training tasks: what the generic trainer trains on, keyed by the recipe's `[data] kind`.

A task owns its data (already on the training device), the batching, the loss, and the pictures that
`evaluate` draws. The trainer, checkpoints, resume, metrics and progress bar know nothing else, so a new
kind of data (video clips, NTCHW, MSE reconstruction) is one new Task subclass registered here.
"""

from vae_deploy.training.tasks.base import TASKS, Task, build_task, get_task, register_task

__all__ = ["TASKS", "Task", "build_task", "get_task", "register_task"]

# Built-in tasks register themselves on import. A new task module (e.g. video clips) adds its import here.
from vae_deploy.training.tasks import mnist as _mnist  # noqa: E402,F401
from vae_deploy.training.tasks import moving_mnist as _moving_mnist  # noqa: E402,F401
from vae_deploy.training.tasks import video as _video  # noqa: E402,F401
