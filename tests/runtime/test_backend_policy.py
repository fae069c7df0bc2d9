"""What the package knows about a backend it reads from the runner class (issue 23, item 3): the options it
takes (checked by the base class), whether it uses a GPU, its streaming thread default and its install
hint. A new backend is its module and one registry line; nothing in video/ or batch/ names backends."""

import ast
import os
from pathlib import Path

import pytest

from vae_deploy.batch import ray_engine
from vae_deploy.errors import ConfigError, MissingBackendError
from vae_deploy.runtime import load_runner, registry
from vae_deploy.runtime.registry import BACKENDS, register_backend, runner_class
from vae_deploy.runtime.runner import Runner
from vae_deploy.video.model_open import runner_options

ROOT = Path(__file__).resolve().parents[2]


class PolicyRunner(Runner):
    """A backend declared the way a new one would be (importable as tests.runtime's module below)."""

    name = "policy-gpu"
    install_hint = "the policy library (pip install policy)"
    uses_gpu = True
    stream_threads = True
    OPTIONS = {"threads": int, "fast": bool}

    def _load(self) -> None:
        pass


def test_every_backend_declares_its_policy_on_its_class():
    gpu = set()
    for name in BACKENDS:
        cls = runner_class(name)  # imports the runner module only: no onnxruntime, torch or TensorRT
        assert issubclass(cls, Runner) and cls.name == name
        assert cls.install_hint and "pip install" in cls.install_hint, name
        assert all(isinstance(t, type) or all(isinstance(u, type) for u in t) for t in cls.OPTIONS.values())
        if cls.uses_gpu:
            gpu.add(name)
    assert {"ort-cuda", "torch-cuda", "tensorrt"} <= gpu and not {"ort-cpu", "torch"} & gpu
    assert runner_class("ort-cpu").stream_threads and not runner_class("torch").stream_threads


@pytest.mark.parametrize("backend", ["ort-cpu", "torch"])
def test_a_misspelled_or_ill_typed_option_is_one_clear_line(backend, mlp_model_dir):
    with pytest.raises(ConfigError) as info:
        load_runner(mlp_model_dir, backend, threds=1)
    valid = ", ".join(runner_class(backend).OPTIONS)
    assert str(info.value) == f"{backend}: unknown option 'threds' (valid options: {valid})"
    with pytest.raises(ConfigError, match=f"^{backend}: option 'threads' must be int, got str '2'$"):
        load_runner(mlp_model_dir, backend, threads="2")


def test_streaming_threads_come_from_the_runner_class(monkeypatch):
    cpus = os.cpu_count() or 2
    assert runner_options("ort-cpu") == {"threads": cpus, "spinning": False}
    assert runner_options("ort-cpu", threads=1) == {"threads": 1, "spinning": False}
    assert runner_options("torch") == {} and runner_options("ort-cuda") == {}
    assert runner_options("torch", threads=3) == {"threads": 3}
    with pytest.raises(MissingBackendError, match="unknown backend 'nope'"):
        runner_options("nope")
    # A new backend: one registry line, and the pipeline and the Ray engine follow its class.
    monkeypatch.setitem(BACKENDS, "policy-gpu", BACKENDS["ort-cpu"])  # restored after the test
    register_backend("policy-gpu", f"{__name__}:PolicyRunner", "a test backend")
    assert runner_options("policy-gpu") == {"threads": cpus}
    assert runner_class("policy-gpu").uses_gpu
    assert "policy-gpu" not in registry.available_backends() or PolicyRunner.unavailable_reason() is None


def test_no_module_outside_the_runtime_names_a_backend_to_decide_policy():
    """The pipeline, batch jobs and Ray engine read the runner class; no list or comparison of backend names
    lives there (the default backend's name and help texts aside)."""
    names = set(BACKENDS)
    for path in [ROOT / "vae_deploy/video/pipeline.py", ROOT / "vae_deploy/batch/jobs.py",
                 ROOT / "vae_deploy/batch/ray_engine.py", ROOT / "vae_deploy/batch/worker.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare | ast.Tuple | ast.List | ast.Set):
                found = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant)} & names
                assert not found, (path.name, ast.unparse(node))
    assert not hasattr(ray_engine, "GPU_BACKENDS")
