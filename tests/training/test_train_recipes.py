"""Recipes: the shipped ones carry the seed's settings; unknown or ill-typed keys are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from vae_deploy.errors import ConfigError
from vae_deploy.models import MLPVAEConfig
from vae_deploy.training.config import load_recipe, recipe_differences, recipe_from_dict
from vae_deploy.training.tasks.mnist import MnistDataConfig

ROOT = Path(__file__).resolve().parents[2]


def test_seed_recipe_has_the_seed_settings():
    recipe = load_recipe(ROOT / "train" / "mnist_mlp.toml")
    assert recipe.model_kind == "mlp" and recipe.data_kind == "mnist" and recipe.name == "mnist_mlp"
    assert recipe.model == MLPVAEConfig(input_dim=784, inter_dim=256, latent_dim=2)
    assert recipe.data == MnistDataConfig(source="auto")
    t = recipe.train
    assert (t.epochs, t.batch_size, t.lr, t.seed) == (100, 128, 1e-3, 0)
    assert (t.kl_weight, t.fused_adam, t.max_steps) == (1.0, False, None)


def test_z20_recipe_differs_only_in_latent():
    seed = load_recipe(ROOT / "train" / "mnist_mlp.toml")
    z20 = load_recipe(ROOT / "train" / "mnist_mlp_z20.toml")
    assert z20.model.latent_dim == 20
    assert recipe_differences(seed.to_dict(), z20.to_dict()) == ["model.latent_dim was 2, now 20"]


def test_round_trip_through_dict():
    recipe = load_recipe(ROOT / "train" / "mnist_mlp.toml")
    assert recipe_from_dict(recipe.to_dict()) == recipe


BASE = {"model": {"kind": "mlp"}, "data": {"kind": "mnist"}, "train": {}}


@pytest.mark.parametrize("table, key, value, message", [
    ("model", "latent_dims", 2, "unknown key model.latent_dims"),
    ("data", "folder", "x", "unknown key data.folder"),
    ("train", "learning_rate", 0.1, "unknown key train.learning_rate"),
    ("train", "lr", "fast", "train.lr: expected a number"),
    ("train", "epochs", 1.5, "train.epochs: expected an integer"),
    ("train", "fused_adam", 1, "train.fused_adam: expected true or false"),
    ("data", "source", "kaggle", "data.source: must be one of"),
    ("model", "kind", "transformer", "unknown model kind 'transformer'"),
    ("data", "kind", "cifar", "unknown data kind 'cifar'"),
    ("train", "epochs", 0, "epochs and batch_size must be at least 1"),
])
def test_bad_keys_are_refused_by_name(table, key, value, message):
    tables = {name: dict(content) for name, content in BASE.items()}
    tables[table][key] = value
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(tables)


@pytest.mark.parametrize(("line", "message"), [
    ("lr = nan", "train: lr must be a finite number, got nan"),
    ("lr = inf", "train: lr must be a finite number, got inf"),
    ("lr = -inf", "train: lr must be a finite number, got -inf"),
    ("lr = 0.0", "train: lr must be positive, got 0.0"),
    ("lr_final = nan", "train: lr_final must be a finite number, got nan"),
    ("kl_weight = inf", "train: kl_weight must be a finite number, got inf"),
    ("kl_weight = -1.0", "train: kl_weight must be at least 0, got -1.0"),
    ("max_minutes = nan", "train: max_minutes must be a finite number, got nan"),
])
def test_non_finite_or_negative_numbers_in_a_recipe_file_are_refused_by_key(tmp_path, line, message):
    """TOML spells nan and inf; a nan lr passed `lr <= 0` (every comparison with nan is False)."""
    path = tmp_path / "r.toml"
    path.write_text(f'[model]\nkind = "mlp"\n[data]\nkind = "mnist"\n[train]\n{line}\n')
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert str(caught.value) == f"{path}: {message}"


def test_unknown_table_and_missing_kind():
    with pytest.raises(ConfigError, match="unknown recipe table optimizer"):
        recipe_from_dict({**BASE, "optimizer": {}})
    with pytest.raises(ConfigError, match=r"\[data\] table with a kind"):
        recipe_from_dict({"model": {"kind": "mlp"}, "data": {}})


def test_recipe_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\nkind = "mlp"\n[data]\nkind = "mnist"\n[train]\nbatchsize = 64\n')
    with pytest.raises(ConfigError, match=r"bad.toml: unknown key train.batchsize"):
        load_recipe(path)
    path.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="file not found"):
        load_recipe(tmp_path / "missing.toml")


def test_overrides_are_checked_and_data_dir_needs_a_data_dir_field(tmp_path):
    recipe = load_recipe(ROOT / "train" / "mnist_mlp.toml")
    assert recipe.with_overrides(epochs=3, seed=None).train.epochs == 3
    with pytest.raises(ConfigError, match="train.epochs"):
        recipe.with_overrides(epochs="3")
    assert recipe.with_data_dir(tmp_path).data.data_dir == str(tmp_path)


def test_resume_may_change_epochs_but_not_the_model():
    a = load_recipe(ROOT / "train" / "mnist_mlp.toml")
    assert recipe_differences(a.to_dict(), a.with_overrides(epochs=7, max_steps=3).to_dict()) == []
    diffs = recipe_differences(a.to_dict(), a.with_overrides(lr=0.01, seed=1).to_dict())
    assert diffs == ["train.lr was 0.001, now 0.01", "train.seed was 0, now 1"]
