"""Loss over a data stream (validation during training, the test set in `evaluate`) and the `evaluate`
command's report: test loss, recon and KL per sample, plus the task's pictures and the loss curves.

The loss is computed exactly like the seed's validation: model.eval(), no gradients, and the forward pass
*samples* z, so it is the single-sample ELBO estimate the seed printed (seeded here for repeatability).
Pictures of reconstructions use mu (no sampling).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vae_deploy.errors import ModelFormatError
from vae_deploy.files import write_json_atomic
from vae_deploy.models.checkpoint import load_model
from vae_deploy.training import plots
from vae_deploy.training.config import recipe_from_dict
from vae_deploy.training.device import resolve_device
from vae_deploy.training.run_folder import RunFolder
from vae_deploy.training.tasks import Task, build_task

REPORT_FILE = "report.json"  # written beside the pictures


@torch.no_grad()
def average_loss(task: Task, model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
    """{"loss": .., <part>: .., "samples": n}: sums over all batches divided by the number of samples."""
    model.eval()
    sums: torch.Tensor | None = None
    names: list[str] = []
    count = 0
    for batch in batches:
        total, parts, n = task.loss(model, batch)
        if sums is None:
            names = list(parts)
        values = torch.stack([total.detach(), *(parts[name].detach() for name in names)]).double()
        sums = values if sums is None else sums + values
        count += n
    if sums is None or count == 0:
        raise ModelFormatError("no samples to evaluate on")
    means = (sums / count).tolist()
    return {"loss": means[0], **dict(zip(names, means[1:], strict=True)), "samples": count}


def evaluate_run(run_dir: Path, data_dir: Path | None = None, out_dir: Path | None = None, seed: int = 0,
                 device: str = "auto", threads: int | None = None) -> dict[str, Any]:
    """Evaluate the best checkpoint of a run folder on its task's test set and draw the pictures.

    threads: torch CPU threads for the evaluation (None: the recipe's train.threads), so that runs trained
    with different settings can be timed alike.

    Returns the report (test loss/recon/kl per sample, the checkpoint's epoch, picture paths), also written
    as report.json beside the pictures.
    """
    run = RunFolder(Path(run_dir))
    model, config = load_model(run.root)  # refuses weights that do not match config.json
    if "recipe" not in config:
        raise ModelFormatError(f"{run.config} has no training recipe: "
                               f"it was not written by `vae-deploy train`")
    recipe = recipe_from_dict(config["recipe"]).with_data_dir(data_dir).with_overrides(threads=threads)
    out = Path(out_dir) if out_dir is not None else run.eval_dir
    RunFolder(out).ensure()  # an unwritable output folder fails before the data is loaded
    torch_device = resolve_device(device)
    model = model.to(torch_device)
    task = build_task(recipe.data_kind, recipe.data, recipe.train, torch_device)
    task.check_model(model)

    torch.manual_seed(seed)  # the sampling noise of the loss estimate
    test = average_loss(task, model, task.test_batches())
    pictures = task.write_pictures(model, out, seed)
    extra, extra_pictures = task.evaluate_extra(model, out, seed)
    pictures.update(extra_pictures)
    history = run.read_metrics()
    if history:
        pictures["loss_curves"] = plots.save_loss_curves(out / "loss_curves.png", history)
    report = {
        "run": str(run.root),
        "kind": config["kind"],
        "epoch": config.get("epoch"),
        "partial": bool(config.get("partial", False)),
        "steps": config.get("steps"),
        "test_loss": test["loss"],
        "test_recon": test.get("recon"),
        "test_kl": test.get("kl"),
        "test_samples": test["samples"],
        "seed": seed,
        "pictures": {name: str(path) for name, path in sorted(pictures.items())},
    }
    clashes = sorted(set(extra) & set(report))
    if clashes:
        raise ValueError(f"task {recipe.data_kind!r} reports keys the report already has: {clashes}")
    report.update(extra)
    write_json_atomic(out / REPORT_FILE, report)
    return report
