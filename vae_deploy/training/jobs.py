"""`vae-deploy train` as a function: a recipe file and its overrides -> a trained run folder.

(`vae-deploy evaluate` is training/evaluation.py's evaluate_run.) The CLI only parses options, calls the
function and prints its result; a program can call it the same way.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from vae_deploy.errors import ConfigError
from vae_deploy.interrupts import Terminated
from vae_deploy.models.checkpoint import load_state
from vae_deploy.training.config import TrainRecipe, load_recipe
from vae_deploy.training.distributed import World, check_task, global_train_config
from vae_deploy.training.run_folder import RunFolder
from vae_deploy.training.tasks import get_task
from vae_deploy.training.trainer import TrainResult, check_resumable, check_run_folder, train

DEBUG_VARIABLE = "VAE_DEPLOY_DEBUG"  # cli/app.py's: show tracebacks (here: torchrun's failure report)
TORCH_LOG_LINE = re.compile(r"[IWEF]\d{4} [\d:.]+ +\d+ \S*torch/")  # torchrun's log lines (glog style)
STOP_LINE = re.compile(r"(terminated|interrupted)\b.*: ")  # a rank's stop line (cli/app.py _stopped)
# torch.distributed prefixes what a rank's uncaught exception prints (a stop landing in its error handling)
RANK_TRACEBACK_LINE = re.compile(r"\[rank\d+\]:")
# what Python prints when a stop lands in a rank's interpreter shutdown (an atexit or weakref callback):
# the same consequence of another rank's death as the stop lines
SHUTDOWN_NOISE_LINE = re.compile(r"Exception ignored in\b")  # "in: <obj>", "in atexit callback: ..."
ERROR_START = re.compile(r"(?<=\S)(?=error: )")  # a rank's message joined onto another's on one line
RUNS_DIR = Path("runs")  # where a run folder goes by default: runs/<recipe name>
STOP_TIMEOUT_S = 60.0  # after passing a stop on to torchrun: its ranks' grace (30 s) and some, then kill it


def train_job(recipe: Path, out: Path | None = None, *, data_dir: Path | None = None, resume: bool = False,
              epochs: int | None = None, seed: int | None = None, max_steps: int | None = None,
              device: str | None = None, threads: int | None = None, max_minutes: float | None = None,
              init_from: Path | None = None, console: Console | None = None) -> TrainResult:
    """Train the recipe file `recipe` into `out` (default RUNS_DIR/<recipe name>); `resume` continues the
    run there. The keyword overrides replace the recipe's [train] values where given (None keeps them);
    `data_dir` replaces the data folder. `console` shows progress (trainer.train)."""
    spec = job_recipe(recipe, data_dir=data_dir, epochs=epochs, seed=seed, max_steps=max_steps, device=device,
                      threads=threads, max_minutes=max_minutes, init_from=init_from)
    out_dir = out if out is not None else RUNS_DIR / spec.name
    return train(spec, out_dir, resume=resume, console=console)


def job_recipe(recipe: Path, *, data_dir: Path | None = None, init_from: Path | None = None,
               **overrides: Any) -> TrainRecipe:
    """The recipe file `recipe` with train_job's overrides applied: what a run of it trains."""
    spec = load_recipe(recipe).with_overrides(
        **overrides, init_from=str(init_from) if init_from is not None else None)
    # An absolute data folder in the run's recipe, so `evaluate` and `--resume` work from any directory.
    return spec.with_data_dir(data_dir.resolve() if data_dir is not None else None)


# train_job's keywords and the `vae-deploy train` options that pass them on to the ranks
RANK_FLAGS = {"epochs": "--epochs", "out": "--out", "data_dir": "--data-dir", "seed": "--seed",
              "max_steps": "--max-steps", "device": "--device", "threads": "--threads",
              "max_minutes": "--max-minutes", "init_from": "--init-from"}


def rank_arguments(recipe: Path, *, resume: bool = False, **options: Any) -> list[str]:
    """The `vae-deploy train` command line each rank runs for train_job(recipe, resume=..., **options)
    (options left None are left out)."""
    args = [str(recipe), *(["--resume"] if resume else [])]
    return args + [part for name, value in options.items() if value is not None
                   for part in (RANK_FLAGS[name], str(value))]


def preflight(nproc: int, recipe: Path, *, out: Path | None = None, resume: bool = False,
              data_dir: Path | None = None, init_from: Path | None = None, **overrides: Any) -> None:
    """What every rank of train_job(recipe, ...) on `nproc` processes would refuse before training, found by
    the launcher before it starts any: the recipe and its overrides, the run folder (a run there without
    --resume, --resume without one), a --resume of a run trained on another number of processes (or with
    another recipe), and more ranks than the data allows. Each raises the ranks' own error. Without it,
    each such mistake cost torchrun and N ranks starting torch (seconds each) to print one line; here it
    costs reading the recipe, the run folder's state file and the data's size. Writes nothing: the ranks
    then make the run folder as before. What only the ranks find (the model's and data's own checks, a
    disk that fills up) still ends the job from there."""
    spec = job_recipe(recipe, data_dir=data_dir, init_from=init_from, **overrides)
    run = RunFolder(out if out is not None else RUNS_DIR / spec.name)
    world = World(size=nproc)
    # The ranks' order (Trainer.__init__): the run folder, the state to resume, then the data.
    if check_run_folder(run, resume) and resume:
        check_resumable(run, load_state(run.state), spec, world.size)
    samples = get_task(spec.data_kind).train_samples(spec.data)
    if samples is not None:
        check_task(samples, global_train_config(spec.train, world).batch_size, world)


def launch_distributed(nproc: int, recipe: Path, *, resume: bool = False, **options: Any) -> int:
    """`vae-deploy train --nproc N`: run `torchrun --nproc-per-node N -m vae_deploy train ARGS` (the torch
    launcher as `python -m torch.distributed.run`, on a free local port) and return its exit code. Each rank
    trains its shard of every global batch (training/distributed.py); rank 0 writes the run folder."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    preflight(nproc, recipe, resume=resume, **options)  # bad input: one line here, before N ranks start torch
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "vae_deploy", "train", *rank_arguments(recipe, resume=resume, **options)]
    debug = bool(os.environ.get(DEBUG_VARIABLE))  # everything, torchrun's report included
    # Otherwise the ranks' output goes through; torchrun's own logging and failure report (a traceback) do
    # not, and the `error:` line every rank prints for the same bad input is printed once.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    errors: list[str] = []
    with subprocess.Popen(command, stderr=None if debug else subprocess.PIPE, text=True, env=env) as process:
        try:
            if debug:
                return process.wait()
            assert process.stderr is not None
            report = _relay_stderr(process.stderr, errors)
        except KeyboardInterrupt as stop:
            _stop_ranks(process, signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
            raise  # the CLI prints the one `terminated` / `interrupted` line and exits 143 / 130
    killed = _killed_rank(report)
    if killed is not None:
        # The others' last words (a gloo "Connection closed by peer", or the SIGTERM torchrun sent them)
        # are the consequence: say what happened instead
        rank, signame = killed
        errors = [f"error: training rank {rank} was killed ({signame}), which ended the others; the "
                  f"finished epochs are kept: rerun with --resume to continue\n"]
    elif any(line.startswith("error: ") for line in errors):
        # A rank's error (bad input every rank finds) ends the job: torchrun stops the ranks that had not
        # reached it yet, and their stop lines are its consequence, not a stop the user asked for.
        errors = _distinct_errors(errors)
    sys.stderr.writelines(errors)
    if process.returncode != 0 and not errors:
        sys.stderr.write(f"error: a training process failed (torchrun exit code {process.returncode}); "
                         f"rerun with {DEBUG_VARIABLE}=1 for torchrun's report\n")
    return process.returncode


def _distinct_errors(lines: list[str]) -> list[str]:
    """The distinct `error:` messages of the ranks' lines, each on a line of its own. Two ranks writing the
    same message at once can join them on one line ("...dataerror: ..."): such a line is split where a
    message starts right after another's text."""
    messages: list[str] = []
    for line in lines:
        for piece in ERROR_START.split(line.rstrip("\n")):
            if piece.startswith("error: ") and f"{piece}\n" not in messages:
                messages.append(f"{piece}\n")
    return messages


def _relay_stderr(stream, errors: list[str]) -> str:
    """Pass the ranks' stderr through, without torchrun's logging, keeping back into `errors` each
    distinct `error:` line, the ranks' stop lines and tracebacks (printed once the cause is known); returns
    torchrun's failure report (a ChildFailedError traceback: which rank failed, how), "" when none."""
    for line in stream:
        if line.startswith("Traceback (most recent call last):"):
            return stream.read()
        if TORCH_LOG_LINE.match(line):
            continue
        if (line.startswith("error: ") or STOP_LINE.match(line) or RANK_TRACEBACK_LINE.match(line)
                or SHUTDOWN_NOISE_LINE.match(line)):
            if line not in errors or RANK_TRACEBACK_LINE.match(line):
                errors.append(line)
            continue
        sys.stderr.write(line)
        sys.stderr.flush()
    return ""


def _killed_rank(report: str) -> tuple[int, str] | None:
    """(rank, signal name) when torchrun's report says the first failure was a rank killed by a signal (a
    negative exit code: kill -9, the OOM killer), else None."""
    found = re.search(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*-(\d+)", report, re.DOTALL)
    if found is None:
        return None
    number = int(found.group(2))
    try:
        return int(found.group(1)), signal.Signals(number).name
    except ValueError:
        return int(found.group(1)), f"signal {number}"


def _stop_ranks(process: subprocess.Popen, signum: int) -> None:
    """Ctrl-C reaches every process of the terminal's group, but SIGTERM (`docker stop`, systemd, a job
    scheduler) reaches the launcher alone: pass the signal on to torchrun, which passes it to every rank
    (each ends like a one-process run: finished epochs kept) and kills what has not ended after its own
    30 s. Their output meanwhile is read and dropped (every rank would report the stop; the CLI says it
    once): left unread, a full pipe would block a rank's last words, and a closed one would end the ranks
    with broken-pipe errors instead of the signal."""
    process.send_signal(signum)
    try:
        process.communicate(timeout=STOP_TIMEOUT_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # torchrun hung, or a second Ctrl-C
        process.kill()
        process.wait()
