"""Export profiles: the shipped TOML files load, bad ones are refused, ranges become TensorRT shapes."""

from pathlib import Path

import pytest

from vae_deploy.errors import ConfigError
from vae_deploy.export import graph_specs, load_profile
from vae_deploy.models import MLPVAEConfig

PROFILES = Path(__file__).parents[2] / "export"


@pytest.mark.parametrize(("name", "precision"), [("cpu-fp32", "fp32"), ("cpu-int8", "int8"),
                                                 ("gpu-fp16", "fp16"), ("jetson-orin-fp16", "fp16")])
def test_shipped_profiles(name, precision):
    profile = load_profile(PROFILES / f"{name}.toml")
    assert profile.name == name and profile.precision == precision and profile.opset == 17
    assert profile.keep_io_types and profile.tensorrt.workspace_mb >= 256
    assert set(profile.dynamic) == {"batch", "frames", "height", "width"}
    assert max(profile.parity_batch_sizes) <= profile.dynamic["batch"].max


def test_profile_ranges_give_tensorrt_shapes_per_graph():
    profile = load_profile(PROFILES / "gpu-fp16.toml")
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


def test_profile_by_name_and_missing_profile(tmp_path, monkeypatch):
    monkeypatch.chdir(PROFILES.parent)
    assert load_profile("jetson-orin-fp16").dynamic["batch"].max == 256
    with pytest.raises(ConfigError, match="file not found"):
        load_profile(tmp_path / "missing.toml")
