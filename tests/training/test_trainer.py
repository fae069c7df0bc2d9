"""The trainer on real (tiny) runs: the run folder, the best-epoch rule, checkpoints, and resume after an
interruption giving exactly the uninterrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console
from training_helpers import STEPS_PER_EPOCH_5K, one_thread, tiny_recipe

from vae_deploy.errors import ConfigError, VaeDeployError
from vae_deploy.models.checkpoint import load_model, load_state, read_config
from vae_deploy.training.run_folder import RunFolder
from vae_deploy.training.trainer import Trainer, train

QUIET = Console(quiet=True)


def state_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_state(RunFolder(run_dir).state)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """3 epochs, seed 0, never stopped: what every interrupted run must end up equal to."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    with one_thread():
        train(tiny_recipe(epochs=3), out, console=QUIET)
    return out


def test_run_folder_contents(uninterrupted):
    run = RunFolder(uninterrupted)
    history = run.read_metrics()
    assert [r["epoch"] for r in history] == [0, 1, 2]
    for record in history:
        assert set(record) == {"epoch", "train_loss", "train_recon", "train_kl", "valid_loss", "valid_recon",
                               "valid_kl", "seconds", "steps"}
        # Each batch's total is recon + kl in float32, so the parts add up to float32 rounding.
        assert record["train_loss"] == pytest.approx(record["train_recon"] + record["train_kl"], rel=1e-6)
        assert record["valid_loss"] == pytest.approx(record["valid_recon"] + record["valid_kl"], rel=1e-6)
        assert record["seconds"] > 0
    assert [r["steps"] for r in history] == [STEPS_PER_EPOCH_5K * (e + 1) for e in range(3)]
    assert history[-1]["valid_loss"] < history[0]["valid_loss"]  # it learns
    # The best checkpoint is the epoch with the lowest validation loss (the seed's rule).
    config = read_config(run.root)
    best = min(history, key=lambda r: r["valid_loss"])
    assert config["epoch"] == best["epoch"] and config["valid_loss"] == best["valid_loss"]
    assert config["partial"] is False and config["recipe"]["train"]["epochs"] == 3


def test_checkpoint_round_trip(uninterrupted):
    """The best checkpoint loads back into a model that reproduces the validation loss it was saved with."""
    from vae_deploy.training.evaluation import average_loss
    from vae_deploy.training.tasks import build_task

    model, config = load_model(uninterrupted)
    recipe = tiny_recipe(epochs=3)
    task = build_task("mnist", recipe.data, recipe.train, torch.device("cpu"))
    history = RunFolder(uninterrupted).read_metrics()
    if config["epoch"] == history[-1]["epoch"]:  # the best is the last: the state file holds it too
        assert_same_weights(model.state_dict(), state_weights(uninterrupted))
    torch.manual_seed(0)
    a = average_loss(task, model, task.valid_batches())
    torch.manual_seed(0)
    b = average_loss(task, model, task.valid_batches())
    assert a == b and a["samples"] == 1000
    assert a["loss"] == pytest.approx(config["valid_loss"], rel=0.02)  # another draw of the sampling noise


def test_state_file_round_trip(uninterrupted):
    state = load_state(RunFolder(uninterrupted).state)
    assert state["epoch"] == 2 and state["step"] == 3 * STEPS_PER_EPOCH_5K
    assert state["history"] == RunFolder(uninterrupted).read_metrics()
    optimizer_state = state["optimizer"]["state"]
    assert sorted(optimizer_state) == list(range(8))  # 4 Linear layers x (weight, bias)
    assert float(optimizer_state[0]["step"]) == 3 * STEPS_PER_EPOCH_5K
    assert state["rng"]["torch"].dtype == torch.uint8


def test_resume_after_keyboard_interrupt_equals_uninterrupted(tmp_path, uninterrupted):
    out = tmp_path / "run"

    def interrupt(step: int) -> None:
        if step == STEPS_PER_EPOCH_5K + 8:  # inside epoch 1
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_recipe(epochs=3), out, console=QUIET, on_step=interrupt)
    assert [r["epoch"] for r in RunFolder(out).read_metrics()] == [0]
    result = train(tiny_recipe(epochs=3), out, resume=True, console=QUIET)
    history = RunFolder(out).read_metrics()
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert without_seconds(history) == without_seconds(RunFolder(uninterrupted).read_metrics())
    assert result.steps == 3 * STEPS_PER_EPOCH_5K
    assert_same_weights(state_weights(out), state_weights(uninterrupted))
    assert_same_weights(load_model(out)[0].state_dict(), load_model(uninterrupted)[0].state_dict())


def test_max_steps_then_resume_equals_uninterrupted(tmp_path, uninterrupted):
    out = tmp_path / "run"
    result = train(tiny_recipe(epochs=3, max_steps=STEPS_PER_EPOCH_5K + 5), out, console=QUIET)
    assert result.stopped_at_max_steps and result.epochs_done == 1
    assert [r["epoch"] for r in RunFolder(out).read_metrics()] == [0]
    # Resume in two more pieces: to the end of epoch 1 exactly, then to the end.
    result = train(tiny_recipe(epochs=3, max_steps=2 * STEPS_PER_EPOCH_5K), out, resume=True, console=QUIET)
    assert result.epochs_done == 2 and result.stopped_at_max_steps
    train(tiny_recipe(epochs=3), out, resume=True, console=QUIET)
    assert without_seconds(RunFolder(out).read_metrics()) == without_seconds(
        RunFolder(uninterrupted).read_metrics())
    assert_same_weights(state_weights(out), state_weights(uninterrupted))


def test_max_steps_inside_the_first_epoch_leaves_a_partial_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = train(tiny_recipe(epochs=2, max_steps=5), out, console=QUIET)
    assert result.steps == 5 and result.epochs_done == 0 and result.best_epoch is None
    run = RunFolder(out)
    assert not run.state.exists() and not run.metrics.exists()
    model, config = load_model(out)  # smoke pipelines can go on to evaluate and export it
    assert config["partial"] is True and config["epoch"] is None and config["steps"] == 5
    # --resume with no finished epoch starts over at epoch 0 and replaces the partial checkpoint.
    train(tiny_recipe(epochs=1), out, resume=True, console=QUIET)
    assert read_config(out)["partial"] is False and read_config(out)["epoch"] == 0


def test_resume_rebuilds_files_cut_off_after_the_state_file(tmp_path, uninterrupted):
    """A kill between writing the state file and the other two: metrics.jsonl and the best checkpoint are
    one epoch behind. --resume must rebuild both from the state file (nothing lost, nothing twice)."""
    out = tmp_path / "run"
    train(tiny_recipe(epochs=2), out, console=QUIET)
    behind = tmp_path / "behind"
    shutil.copytree(out, behind)
    train(tiny_recipe(epochs=3), out, resume=True, console=QUIET)
    assert read_config(out)["epoch"] == 2  # epoch 2 was the best so far: the checkpoint must show it
    for name in ("metrics.jsonl", "config.json", "model.safetensors"):  # back to how the kill left them
        shutil.copy(behind / name, out / name)
    assert len(RunFolder(out).read_metrics()) == 2
    result = train(tiny_recipe(epochs=3), out, resume=True, console=QUIET)  # nothing left to train
    assert result.steps == 3 * STEPS_PER_EPOCH_5K
    assert without_seconds(RunFolder(out).read_metrics()) == without_seconds(
        RunFolder(uninterrupted).read_metrics())
    assert read_config(out)["epoch"] == 2
    assert_same_weights(load_model(out)[0].state_dict(), load_model(uninterrupted)[0].state_dict())


def test_resume_refuses_a_different_model(tmp_path, uninterrupted):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    with pytest.raises(ConfigError, match="model.latent_dim was 2, now 3"):
        Trainer(tiny_recipe(epochs=4, latent_dim=3), out, resume=True, console=QUIET)
    with pytest.raises(ConfigError, match="train.lr"):
        Trainer(tiny_recipe(epochs=4, lr=0.01), out, resume=True, console=QUIET)


def test_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path, uninterrupted):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a training run: pass --resume"):
        Trainer(tiny_recipe(epochs=3), out, console=QUIET)
    assert (out / "metrics.jsonl").read_text() == before


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(VaeDeployError, match="cannot write to output folder"):
        Trainer(tiny_recipe(), blocker / "run", console=QUIET)


def test_metrics_file_is_json_lines(uninterrupted):
    lines = (uninterrupted / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
