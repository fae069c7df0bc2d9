"""MNIST quality floors: the trainer's test loss against the seed script's at equal epochs.

Run the trainings first (commands in benchmarks/results/mnist_quality.md), then

    .venv/bin/python benchmarks/mnist_quality.py

reads the run folders' metrics.jsonl, the seed reference runs (benchmarks/seed_reference.py) and the
`evaluate --json` reports, and writes benchmarks/results/mnist_quality.{json,md}. With validation on the
test split (the seed's rule) a run's valid_loss at epoch e IS its test loss after e + 1 epochs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vae_deploy.files import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# The issue's numbers for the seed script on full MNIST (BCE + KL nats per test image).
ISSUE_SEED = {
    "z2": {1: 171.6, 3: 163.6, 10: 156.3, 20: 152.9, 100: 149.6, "best": 149.2},
    "z20": {10: 107.2},
}

CASES = {
    # name: (trainer run folder, seed reference JSONL, evaluate report, epochs to compare)
    "z2": ("runs/mnist_mlp", "benchmarks/results/seed_reference_z2.jsonl", "runs/mnist_mlp/eval/report.json",
           (1, 3, 10, 20, 100)),
    "z20": ("runs/mnist_mlp_z20_e10", "benchmarks/results/seed_reference_z20.jsonl",
            "runs/mnist_mlp_z20_e10/eval/report.json", (1, 3, 10)),
}


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cell(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def signed(ours: float, theirs: float | None) -> str:
    """ours - theirs at the issue's precision (it printed one decimal)."""
    return "-" if theirs is None else f"{round(ours, 1) - theirs:+.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    report: dict = {}
    sections = []
    for name, (run_dir, seed_file, eval_file, epochs) in CASES.items():
        ours = read_jsonl(args.root / run_dir / "metrics.jsonl")
        seed = read_jsonl(args.root / seed_file)
        eval_path = args.root / eval_file
        evaluation = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
        rows = []
        for e in epochs:
            if e > len(ours):
                continue
            mine = ours[e - 1]["valid_loss"]
            here = seed[e - 1]["valid_loss"] if e <= len(seed) else None
            rows.append({"epochs": e, "issue_seed": ISSUE_SEED[name].get(e), "seed_script_here": here,
                         "trainer": mine})
        best_ours = min(ours, key=lambda r: r["valid_loss"]) if ours else None
        best_seed = min(seed, key=lambda r: r["valid_loss"]) if seed else None
        if best_ours is not None and len(ours) >= max(epochs):
            rows.append({"epochs": f"best of {len(ours)}", "issue_seed": ISSUE_SEED[name].get("best"),
                         "seed_script_here": best_seed["valid_loss"] if best_seed else None,
                         "trainer": best_ours["valid_loss"], "best_epoch": best_ours["epoch"]})
        report[name] = {"rows": rows, "evaluate": evaluation,
                        "seconds_per_epoch": [r["seconds"] for r in ours]}

        table = "\n".join(
            f"| {r['epochs']} | {cell(r['issue_seed'])} | {cell(r['seed_script_here'])} | "
            f"{cell(r['trainer'])} | {signed(r['trainer'], r['issue_seed'])} |" for r in rows)
        eval_line = (f"`vae-deploy evaluate {run_dir} --json` on the best checkpoint "
                     f"(epoch {evaluation['epoch']}): "
                     f"test loss {evaluation['test_loss']:.2f} = recon {evaluation['test_recon']:.2f} + "
                     f"KL {evaluation['test_kl']:.2f} (one sampling draw, seed 0)" if evaluation else "")
        sections.append(f"""## latent {name[1:]}

| epochs | issue (seed script) | seed script here | vae-deploy train | trainer - issue (1 decimal) |
|---:|---:|---:|---:|---:|
{table}

{eval_line}
""")
    spread, spread_md = seed_spread(args.root)
    report["seed_spread_z2"] = spread
    write_json_atomic(RESULTS / "mnist_quality.json", report)
    write_text_atomic(RESULTS / "mnist_quality.md", HEADER + "\n".join(sections) + FOOTER + spread_md)
    print(f"wrote {RESULTS}/mnist_quality.{{json,md}}")


SPREAD_RUNS = "runs/mnist_mlp_seed{seed}_e10"  # seeds 1.. of the latent-2 recipe, 10 epochs
SPREAD_EPOCHS = (1, 3, 10)


def seed_spread(root: Path) -> tuple[dict, str]:
    """Test loss over seeds (seed 0 = runs/mnist_mlp) at a few epochs: how far apart equal trainings land."""
    runs = {0: read_jsonl(root / CASES["z2"][0] / "metrics.jsonl")}
    for seed in range(1, 10):
        history = read_jsonl(root / SPREAD_RUNS.format(seed=seed) / "metrics.jsonl")
        if len(history) >= max(SPREAD_EPOCHS):
            runs[seed] = history
    if len(runs) < 2:
        return {}, ""
    spread = {e: [runs[s][e - 1]["valid_loss"] for s in sorted(runs)] for e in SPREAD_EPOCHS}
    rows = "\n".join(
        f"| {e} | {ISSUE_SEED['z2'].get(e, '-')} | {' | '.join(f'{v:.2f}' for v in values)} | "
        f"{min(values):.2f} .. {max(values):.2f} | {sum(values) / len(values):.2f} |"
        for e, values in spread.items())
    seeds = sorted(runs)
    md = f"""
## Seed spread (latent 2)

`vae-deploy train train/mnist_mlp.toml --epochs 10 --seed N --out runs/mnist_mlp_seed{{N}}_e10 --threads 1`
for N = {", ".join(map(str, seeds[1:]))} (seed 0 is the 100-epoch run). The seed script gives the same numbers
seed for seed, so this is also the seed script's own spread.

| epochs | issue | {" | ".join(f"seed {s}" for s in seeds)} | range | mean |
|---:|---:|{"---:|" * len(seeds)}---:|---:|
{rows}
"""
    return {str(e): v for e, v in spread.items()}, md


HEADER = """\
# MNIST quality: vae-deploy train vs the seed script

Test loss = BCE + KL nats per test image on the full MNIST test split (10,000 images), computed like the
seed's validation (sampled z). The seed validates on the test split, so a run's validation loss after an
epoch is its test loss; "best" is the lowest over the run (the epoch the checkpoint keeps).

Commands (CPU, torch 2.14.1, 1 thread, seed 0; `nice` in the background):

    vae-deploy train train/mnist_mlp.toml --out runs/mnist_mlp --threads 1
    vae-deploy train train/mnist_mlp_z20.toml --epochs 10 --out runs/mnist_mlp_z20_e10 --threads 1
    vae-deploy evaluate runs/mnist_mlp --json          (report saved as runs/mnist_mlp/eval/report.json)
    vae-deploy evaluate runs/mnist_mlp_z20_e10 --json
    python benchmarks/seed_reference.py --epochs 100 --latent 2 --threads 1 \\
        --out benchmarks/results/seed_reference_z2.jsonl
    python benchmarks/seed_reference.py --epochs 10 --latent 20 --threads 1 \\
        --out benchmarks/results/seed_reference_z20.jsonl
    python benchmarks/mnist_quality.py

"""

FOOTER = """
"seed script here" is benchmarks/seed_reference.py: the seed's class, DataLoader and loop run on this
machine with torch.manual_seed(0). The trainer draws the global RNG in the same order, sums losses the same
way and uses the same Adam, so at equal settings the two columns are the same numbers
(tests/training/test_seed_equivalence.py checks this bit for bit). The issue's numbers agree with both to
the printed digit after 1 and 3 epochs and for the best epoch, and differ by about 0.1 in between: its run
was made under other conditions (float rounding changes with the thread count, for one: matrix products
split their sums differently), and training amplifies last-bit differences, so later epochs are another
draw of the same training. The seed spread below shows how large such draws are.
"""


if __name__ == "__main__":
    main()
