"""The generic trainer: any registered model kind on any registered task (training/tasks).

The loop is the seed's: per batch `loss = (recon + kl) / batch; zero_grad; backward; step`, then a
validation pass, keeping the epoch with the lowest validation loss (the seed's rule). Around it:

- Resume: after every finished epoch ONE file (train_state.safetensors) is replaced atomically with the
  weights, optimizer state, RNG states, progress and the metrics history. Then the best checkpoint and
  metrics.jsonl are written. An interruption at any point loses at most the unfinished epoch; `--resume`
  rebuilds metrics.jsonl (and, if it was cut off, the best checkpoint) from that file, so no epoch is lost
  or duplicated, and a seeded run continues exactly as if it had never stopped.
- Same numbers as the seed: the global RNG is drawn in the same order as the seed's loop (its DataLoader
  draws, the init, the sampling noise), losses are summed in float64 like its `.item()` sums and Adam is
  the same, so `--seed N` retraces the seed script run under torch.manual_seed(N) step for step.
- Speed: no DataLoader (the task slices in-memory tensors), and losses stay on the device until the epoch
  ends. `fused_adam = true` is faster still, at the price of last-bit differences from the seed's Adam.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from vae_deploy.errors import ConfigError, ModelFormatError
from vae_deploy.files import removing_new_folders
from vae_deploy.models.checkpoint import load_model, load_state, read_config, save_model, save_state
from vae_deploy.models.registry import build_model
from vae_deploy.training import distributed
from vae_deploy.training.config import TrainConfig, TrainRecipe, recipe_differences
from vae_deploy.training.device import resolve_device
from vae_deploy.training.evaluation import average_loss
from vae_deploy.training.run_folder import RunFolder
from vae_deploy.training.tasks import Task, build_task

STATE_VERSION = 1
PROGRESS_LOSS_EVERY = 20  # steps between loss readouts on the bar (each readout syncs the device)


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int  # finished epochs of the whole run, resumed parts included
    best_epoch: int | None
    best_valid_loss: float | None
    steps: int  # optimizer steps of the whole run
    stopped_at_max_steps: bool
    history: list[dict] = field(default_factory=list)


def make_optimizer(model: nn.Module, train: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    if train.fused_adam and device.type in ("cpu", "cuda"):
        return torch.optim.Adam(model.parameters(), lr=train.lr, fused=True)
    return torch.optim.Adam(model.parameters(), lr=train.lr)  # the seed's Adam, bit for bit


def warm_start(model: nn.Module, source_folder: Path) -> None:
    """train.init_from: copy a trained model's weights into the parts `model` shares with it."""
    if not hasattr(model, "warm_start_from"):
        raise ConfigError(f"train.init_from: a {type(model).__name__} cannot start from another model")
    try:
        source, _ = load_model(source_folder)
    except ModelFormatError as exc:
        raise ModelFormatError(f"train.init_from: {exc} (train the run it names first)") from exc
    model.warm_start_from(source)


def _draw_int64() -> int:
    return int(torch.empty((), dtype=torch.int64).random_().item())


def epoch_shuffle_generator() -> torch.Generator:
    """The generator that shuffles one epoch, drawn from the global RNG exactly like the seed's
    DataLoader(shuffle=True): its iterator draws a worker base seed (unused with no workers), then
    RandomSampler draws the seed of a fresh generator. Same draws, same order, same permutation."""
    _draw_int64()
    return torch.Generator().manual_seed(_draw_int64())


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_run_folder(run: RunFolder, resume: bool) -> bool:
    """The run folder's rules for a new run or a `resume` (ConfigError when broken); True when it holds a
    finished epoch to continue from. Reads the folder only: the --nproc launcher checks them too before it
    starts any rank (jobs.preflight)."""
    has_state = run.state.is_file()
    if resume and not run.root.is_dir():
        raise ConfigError(f"--resume: there is no run folder {run.root} to continue; drop --resume "
                          f"to start a new run there")
    if resume and not has_state and run.metrics.exists():
        raise ConfigError(f"--resume: {run.root} has {run.metrics.name} but no "
                          f"{run.state.name} to continue from")
    if not resume and run.has_run():
        raise ConfigError(f"{run.root} already holds a training run: pass --resume to continue it, "
                          f"or choose another --out")
    return has_state


def check_resumable(run: RunFolder, stored: dict, recipe: TrainRecipe, world_size: int) -> None:
    """Can `recipe` on `world_size` processes continue the run whose state file holds `stored`?"""
    if stored.get("version") != STATE_VERSION:
        raise ModelFormatError(f"{run.state} has state version {stored.get('version')}, "
                               f"this vae-deploy reads {STATE_VERSION}")
    stored_world = stored.get("world_size", 1)
    if stored_world != world_size:
        raise ConfigError(f"--resume: the run in {run.root} trained on {stored_world} process(es), "
                          f"this is {world_size}: the global batch would change")
    diffs = recipe_differences(stored["recipe"], recipe.to_dict())
    if diffs:
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise ConfigError(f"--resume: the recipe does not match the run in {run.root}: "
                          + "; ".join(diffs[:3]) + more)


class _Bar:
    """A rich progress bar for the current epoch with the running loss; one summary line per epoch.

    On a terminal the bar animates; otherwise (logs, tests) only the epoch lines are printed.
    """

    def __init__(self, console: Console, epochs: int):
        self.console = console
        self.epochs = epochs
        self.progress = Progress(
            TextColumn("epoch {task.fields[label]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
            transient=True,
        )
        self.task_id = self.progress.add_task("train", total=1, label="", loss="-", visible=False)

    def __enter__(self) -> _Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int, steps: int) -> None:
        self.progress.reset(self.task_id, total=steps, label=self._label(epoch), loss="-", visible=True)

    def _label(self, epoch: int) -> str:
        return f"{epoch} ({epoch + 1}/{self.epochs})"  # the seed's 0-based epoch, then how far along

    def advance(self, steps_done: int, loss_sum: torch.Tensor, samples: int) -> None:
        if steps_done % PROGRESS_LOSS_EVERY == 0:
            self.progress.update(self.task_id, advance=1, loss=f"{loss_sum.item() / samples:.3f}")
        else:
            self.progress.update(self.task_id, advance=1)

    def epoch_done(self, record: dict, best: bool) -> None:
        parts = ", ".join(f"{k[6:]} {v:.3f}" for k, v in record.items()
                          if k.startswith("valid_") and k != "valid_loss")
        self.console.print(
            f"epoch {self._label(record['epoch'])}  train {record['train_loss']:.3f}  "
            f"valid {record['valid_loss']:.3f} ({parts})  {record['seconds']:.1f}s"
            + ("  best, saved" if best else ""),
            highlight=False, markup=False, soft_wrap=True,
        )


class Trainer:
    """One training run in one run folder. Use `train()` below unless you need the pieces."""

    def __init__(self, recipe: TrainRecipe, out_dir: Path, resume: bool = False,
                 console: Console | None = None):
        # train.max_minutes counts from here: reading the data is part of the budget.
        minutes = recipe.train.max_minutes
        self.budget_seconds = None if minutes is None else 60.0 * minutes
        self.deadline = None if minutes is None else time.perf_counter() + self.budget_seconds
        self.recipe = recipe
        self.run = RunFolder(Path(out_dir))
        self.world = distributed.World.from_env()  # torchrun's ranks (training/distributed.py)
        self.console = console or Console(stderr=True)
        if not self.world.is_main:
            self.console = Console(quiet=True)  # rank 0 alone prints and writes
        has_state = check_run_folder(self.run, resume)
        # --resume before any epoch finished (--max-steps inside epoch 0, Ctrl-C) starts again at epoch 0.
        if resume and not has_state:
            self.console.print(f"--resume: {self.run.root} has no finished epoch yet; starting at epoch 0",
                               highlight=False)
        resume = resume and has_state
        if self.world.is_main:
            self.run.ensure()  # an unwritable output folder fails here, before any data is read
            self.run.remove_partial_files()
        stored = load_state(self.run.state) if resume else None
        if stored is not None:
            check_resumable(self.run, stored, recipe, self.world.size)

        train = recipe.train
        self.device = distributed.rank_device(resolve_device(train.device), self.world)
        distributed.init(self.world, self.device)
        if train.threads is not None:
            torch.set_num_threads(train.threads)
        torch.manual_seed(train.seed)
        self.model = build_model(recipe.model_kind, recipe.model)
        if stored is None and train.init_from is not None:
            warm_start(self.model, Path(train.init_from))
        self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, train, self.device)
        # N ranks: the task batches the global batch, each rank trains on its shard of every batch
        task_train = distributed.global_train_config(train, self.world)
        self.task: Task = build_task(recipe.data_kind, recipe.data, task_train, self.device)
        self.task.check_model(self.model)
        distributed.check_task(self.task.num_train, task_train.batch_size, self.world)
        self.loss_module = distributed.wrap(self.task, self.model, self.world, self.device)

        self.next_epoch = 0
        self.step = 0
        self.best_epoch: int | None = None
        self.best_loss: float | None = None
        self.history: list[dict] = []
        self.lr_progress = 0.0  # how far along the lr cosine the run is (0..1); kept so it never goes back
        if stored is not None:
            self._restore(stored)

    # ------------------------------------------------------------------ resume

    def _restore(self, stored: dict) -> None:
        try:
            self.model.load_state_dict(stored["model"])
            self.optimizer.load_state_dict(stored["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ConfigError(f"{self.run.state} does not fit the recipe's model: {str(exc).splitlines()[0]}"
                              ) from exc
        _set_rng_state(stored["rng"])
        self.next_epoch = int(stored["epoch"]) + 1
        self.step = int(stored["step"])
        self.best_epoch = stored["best_epoch"]
        self.best_loss = stored["best_loss"]
        self.history = list(stored["history"])
        self.lr_progress = float(stored.get("lr_progress", 0.0))
        if not self.world.is_main:
            return
        # Repair what an interruption between the state file and the other files may have left behind.
        self.run.write_metrics(self.history)
        if self.best_epoch == self.next_epoch - 1 and self._saved_best_epoch() != self.best_epoch:
            self._save_best(self.history[-1])  # the last finished epoch was the best: its weights are loaded

    def _saved_best_epoch(self) -> int | None:
        try:
            return read_config(self.run.root).get("epoch")
        except ModelFormatError:
            return None

    # ------------------------------------------------------------------ saving

    def _save_state(self, epoch: int) -> None:
        if not self.world.is_main:
            return
        save_state(self.run.state, {
            "version": STATE_VERSION,
            "recipe": self.recipe.to_dict(),
            "epoch": epoch,
            "step": self.step,
            "best_epoch": self.best_epoch,
            "best_loss": self.best_loss,
            "history": self.history,
            "lr_progress": self.lr_progress,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_state(),
            **({"world_size": self.world.size} if self.world.distributed else {}),
        })

    def _save_best(self, record: dict, partial: bool = False) -> None:
        if not self.world.is_main:
            return
        save_model(self.run.root, self.model, extra={
            "recipe": self.recipe.to_dict(),
            "epoch": None if partial else record["epoch"],
            "valid_loss": None if partial else record["valid_loss"],
            "steps": self.step,
            "partial": partial,
            **self.world.record(self.recipe.train.batch_size),
        })

    # ------------------------------------------------------------------ the loop

    def _train_epoch(self, bar: _Bar, on_step: Callable[[int], None] | None) -> tuple[dict, int, bool]:
        """One pass over the training batches. Returns (mean parts, samples, finished)."""
        self.model.train()
        steps_in_epoch = self.task.steps_per_epoch()
        max_steps = self.recipe.train.max_steps
        sums: torch.Tensor | None = None
        names: list[str] = []
        samples = 0
        done = 0
        # N ranks: each task reads only this rank's rows of every global batch (distributed.World.rows)
        rows = self.world.rows if self.world.distributed else None
        batches = self.task.train_batches(epoch_shuffle_generator(), rows)
        for global_n, batch in zip(self.task.batch_sizes(), batches, strict=True):
            batch, offset = distributed.shard(batch, global_n, self.world)  # one process: the whole batch
            total, parts, n = self.loss_module(batch, offset, global_n)  # self.task.loss(self.model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            distributed.scaled_loss(total, global_n, self.world).backward()  # one process: total / n
            if self.recipe.train.lr_final is not None:
                self._set_lr(steps_in_epoch)
            self.optimizer.step()
            self.step += 1
            done += 1
            if sums is None:
                names = list(parts)
            # float64 sums: the seed added per-batch `.item()` values in Python floats.
            values = torch.stack([total.detach(), *(parts[name].detach() for name in names)]).double()
            sums = values if sums is None else sums + values
            samples += n
            bar.advance(done, sums[0], samples)
            if on_step is not None:
                on_step(self.step)
            if max_steps is not None and self.step >= max_steps and done < steps_in_epoch:
                return {}, samples, False
            if self._out_of_time():
                break  # train.max_minutes: this epoch ends here and is validated and saved as usual
        sums, samples = distributed.sum_over_ranks(sums, samples, self.world)
        means = (sums / samples).tolist() if sums is not None else [math.nan] * (len(names) + 1)
        return {"loss": means[0], **dict(zip(names, means[1:], strict=True))}, samples, True

    def _set_lr(self, steps_per_epoch: int) -> None:
        """train.lr_final: cosine from lr (step 0) to lr_final, reached at the last step of the last epoch or,
        with train.max_minutes, when the time budget is spent, whichever comes first: a run cut short by its
        budget still ends on the low-lr part of the curve, where the last tenths of a dB come from. Progress
        never goes back (it is kept in the state file), so a resumed run goes on along the same curve."""
        train = self.recipe.train
        progress = self.step / max(1, train.epochs * steps_per_epoch - 1)
        if self.deadline is not None:
            spent = 1.0 - (self.deadline - time.perf_counter()) / self.budget_seconds
            progress = max(progress, distributed.rank0_value(spent, self.world, self.device))
        self.lr_progress = min(1.0, max(self.lr_progress, progress))
        lr = train.lr_final + (train.lr - train.lr_final) * 0.5 * (1.0 + math.cos(math.pi * self.lr_progress))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _out_of_time(self) -> bool:
        if self.deadline is None:
            return False
        return bool(distributed.rank0_value(time.perf_counter() >= self.deadline, self.world, self.device))

    def fit(self, on_step: Callable[[int], None] | None = None,
            on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
        """Train from the next unfinished epoch to `epochs`, or until `max_steps`."""
        train = self.recipe.train
        stopped = False
        if self.next_epoch >= train.epochs:
            self.console.print(f"{self.run.root}: all {train.epochs} epochs are already done",
                               highlight=False, markup=False)
        first = self.next_epoch
        with _Bar(self.console, train.epochs) as bar:
            for epoch in range(first, train.epochs):
                if train.max_steps is not None and self.step >= train.max_steps:
                    stopped = True
                    break
                if epoch > first and self._out_of_time():  # each invocation trains at least one step
                    stopped = True
                    self.console.print(f"stopped before epoch {epoch}: the {train.max_minutes:g} minutes of "
                                       f"train.max_minutes are spent; --resume continues", highlight=False,
                                       markup=False, soft_wrap=True)
                    break
                started = time.perf_counter()
                bar.start_epoch(epoch, self.task.steps_per_epoch())
                means, _, finished = self._train_epoch(bar, on_step)
                if not finished:
                    stopped = True
                    self._stop_mid_epoch(epoch)
                    break
                _draw_int64()  # the seed's validation DataLoader iterator draws one base seed too
                valid = average_loss(self.task, self.model, self.task.valid_batches())
                record = {"epoch": epoch, **{f"train_{k}": v for k, v in means.items()},
                          **{f"valid_{k}": v for k, v in valid.items() if k != "samples"},
                          "seconds": round(time.perf_counter() - started, 3), "steps": self.step,
                          **self.world.record(train.batch_size)}
                self.history.append(record)
                improved = self.best_loss is None or record["valid_loss"] < self.best_loss
                if improved:
                    self.best_epoch, self.best_loss = epoch, record["valid_loss"]
                # Order matters for resume: the state file first (it can rebuild the other two).
                self._save_state(epoch)
                if improved:
                    self._save_best(record)
                if self.world.is_main:
                    self.run.write_metrics(self.history)
                bar.epoch_done(record, improved)
                self.next_epoch = epoch + 1
                if on_epoch is not None:
                    on_epoch(record)
        return TrainResult(self.run.root, self.next_epoch, self.best_epoch, self.best_loss, self.step,
                           stopped, list(self.history))

    def _stop_mid_epoch(self, epoch: int) -> None:
        """--max-steps ended epoch `epoch` early. The resume point stays at the last finished epoch; a run
        with no finished epoch yet still gets a checkpoint (marked partial) so smoke runs can go on to
        evaluate and export."""
        note = f"stopped at step {self.step} (--max-steps) inside epoch {epoch}"
        if self.best_epoch is None:
            self._save_best({}, partial=True)
            note += "; saved the current weights as a partial checkpoint"
        self.console.print(note + "; --resume continues from the last finished epoch", highlight=False,
                           markup=False, soft_wrap=True)


def train(recipe: TrainRecipe, out_dir: Path, resume: bool = False, console: Console | None = None,
          on_step: Callable[[int], None] | None = None,
          on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train `recipe` into the run folder `out_dir` (continue it with resume=True).

    A run that fails or is stopped before it wrote anything (a full disk at the first checkpoint, a bad
    recipe found while loading data) leaves no empty run folder behind: the folders this call created are
    removed again while they are empty."""
    try:
        with removing_new_folders(Path(out_dir)):
            return Trainer(recipe, out_dir, resume=resume, console=console).fit(on_step=on_step,
                                                                               on_epoch=on_epoch)
    finally:
        distributed.shutdown()  # torchrun's ranks: leave the process group (an error here ends every rank)
