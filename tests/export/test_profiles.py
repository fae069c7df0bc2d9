"""Export profiles: the shipped TOML files load by name from anywhere, bad ones are refused, ranges become
TensorRT shapes."""

import os
from pathlib import Path

import pytest
from cli_support import assert_one_line_error, invoke_main

from vae_deploy.config_io import read_toml
from vae_deploy.errors import ConfigError
from vae_deploy.export import graph_specs, load_profile
from vae_deploy.export.profile import PROFILE_DIR, packaged_profiles
from vae_deploy.models import MLPVAEConfig
from vae_deploy.runtime import read_manifest

ROOT = Path(__file__).parents[2]
PROFILES = ROOT / "export"  # the repository's view of the packaged profiles (links into the package)
SHIPPED = ["cpu-fp32", "cpu-int8", "gpu-fp16", "jetson-orin-fp16"]


@pytest.mark.parametrize(("name", "precision"), [("cpu-fp32", "fp32"), ("cpu-int8", "int8"),
                                                 ("gpu-fp16", "fp16"), ("jetson-orin-fp16", "fp16")])
def test_shipped_profiles(name, precision):
    profile = load_profile(PROFILE_DIR / f"{name}.toml")
    assert profile.name == name and profile.precision == precision and profile.opset == 18
    assert profile.keep_io_types and profile.tensorrt.workspace_mb >= 256
    assert set(profile.dynamic) == {"batch", "frames", "height", "width"}
    assert max(profile.parity_batch_sizes) <= profile.dynamic["batch"].max


def test_profile_ranges_give_tensorrt_shapes_per_graph():
    profile = load_profile("gpu-fp16")
    specs = graph_specs("mlp", MLPVAEConfig(latent_dim=20))
    assert specs["encoder"].profile_shapes(profile.ranges()) == {
        "images": ((1, 1, 28, 28), (128, 1, 28, 28), (8192, 1, 28, 28))}
    assert specs["decoder"].profile_shapes(profile.ranges()) == {"z": ((1, 20), (128, 20), (8192, 20))}


@pytest.mark.parametrize(("text", "pattern"), [
    ('precision = "int4"', "precision: must be one of"),
    ("opset = 3", "opset 3 is outside"),
    ("colour = 1", "unknown key"),
    ("[dynamic.batch]\nmin = 4\nopt = 2\nmax = 8", "min <= opt <= max"),
    ("parity_batch_sizes = [1, 5000]\n[dynamic.batch]\nmin = 1\nopt = 2\nmax = 64",
     "above dynamic.batch.max"),
    ("[tensorrt]\nworkspace = 1", "unknown key"),
    ('[quantization]\nmethod = "minmax"', r"unknown key \S*quantization\.method"),
    ("[quantization]\nframes = 0", "frames must be at least 1"),
    ("[quantization]\ncalibration = []", "must name at least one video"),
    ("[quantization]\nop_types = []", "at least one ONNX op type"),
])
def test_bad_profiles_are_refused(tmp_path, text, pattern):
    path = tmp_path / "p.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=pattern):
        load_profile(path)


def test_profiles_by_name_come_from_the_package_in_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no export/ folder here
    assert packaged_profiles() == SHIPPED
    assert load_profile("gpu-fp16").precision == "fp16"
    assert load_profile("jetson-orin-fp16").dynamic["batch"].max == 256
    for name in SHIPPED:
        assert load_profile(name).to_dict() == load_profile(PROFILE_DIR / f"{name}.toml").to_dict()


def test_an_unknown_profile_name_lists_the_packaged_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "mine.toml").write_text('precision = "fp16"\n')  # names no longer look here
    with pytest.raises(ConfigError) as info:
        load_profile("mine")
    assert str(info.value) == ("unknown export profile 'mine' (packaged profiles: cpu-fp32, cpu-int8, "
                               "gpu-fp16, jetson-orin-fp16; or give the path of a TOML file)")
    assert load_profile("export/mine.toml").precision == "fp16"  # ... and a path is used as given


def test_a_path_is_used_as_given_even_when_it_shares_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("gpu-fp16.toml").write_text('name = "mine"\nopset = 13\n')
    relative = load_profile("gpu-fp16.toml")
    assert (relative.name, relative.opset, relative.precision) == ("mine", 13, "fp32")
    assert load_profile(tmp_path / "gpu-fp16.toml").opset == 13
    with pytest.raises(ConfigError, match="file not found"):
        load_profile(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="file not found: cpu-fp32.toml"):
        load_profile("cpu-fp32.toml")  # a file name is a path: it is not looked up in the package


def test_the_top_level_export_folder_links_to_the_packaged_profiles():
    assert sorted(p.name for p in PROFILES.iterdir()) == [f"{name}.toml" for name in SHIPPED]
    for name in SHIPPED:
        link = PROFILES / f"{name}.toml"
        assert link.is_symlink() and os.readlink(link) == f"../vae_deploy/export/profiles/{name}.toml"
        assert link.resolve() == (PROFILE_DIR / f"{name}.toml").resolve()


def test_pyproject_ships_the_profiles_as_package_data():
    package_data = read_toml(ROOT / "pyproject.toml")["tool"]["setuptools"]["package-data"]
    patterns = package_data["vae_deploy.export"]
    assert all(any(Path("profiles", f"{name}.toml").match(p) for p in patterns) for name in SHIPPED)


def test_cli_export_takes_a_profile_name_from_any_directory(mlp_checkpoint, tmp_path, monkeypatch, capsys):
    # main() in this process, run from tmp_path (no export/ folder there): the same entry point and the same
    # lookup as a `vae-deploy` process, without two process starts (11 CPU s measured with them, 2.3 without).
    monkeypatch.chdir(tmp_path)
    result = invoke_main(monkeypatch, capsys, "export", mlp_checkpoint, "--out", "model", "--profile",
                         "cpu-fp32", "--real", "0")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "model")
    assert manifest.precision == "fp32" and manifest.export_profile["name"] == "cpu-fp32"
    assert manifest.export_profile == load_profile(PROFILE_DIR / "cpu-fp32.toml").to_dict()

    unknown = invoke_main(monkeypatch, capsys, "export", mlp_checkpoint, "--out", "other", "--profile",
                          "cpu-fp64")
    assert_one_line_error(unknown, "unknown export profile 'cpu-fp64' (packaged profiles: cpu-fp32, cpu-int8",
                          code=2)
    assert not (tmp_path / "other").exists()
